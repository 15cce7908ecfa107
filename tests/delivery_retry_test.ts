/**
 * Retryable failures (timeouts, network errors, 429, 5xx) back off
 * exponentially with jitter and honour Retry-After; after a bounded number of attempts or the
 * message's TTL the delivery is dead-lettered (kept and counted), never silently dropped; a
 * push service that keeps failing trips a circuit breaker for that service only. Driven with
 * an injected clock and a fake transport.
 */

import assert from "node:assert/strict";
import { type Harness, harness, settle, T0, testSubscriptionKeys } from "./_harness.ts";
import type { DeliveryOutcome } from "../lib/transports/types.ts";
import { backoffMs } from "../lib/delivery/retry.ts";
import { listClientSubscriptions, listDeadLetters, listDeliveries } from "./_inspect.ts";

const RETRY = { baseMs: 1000, maxMs: 60_000, maxAttempts: 4 };

async function subscribed(h: Harness, topic = "t") {
  const dev = await h.registerDevice();
  await h.subscribe(dev["client-data"], [topic]);
  await settle(h);
  h.webPush.sent = [];
  return dev;
}

/** Moves the clock to the next queued delivery and runs a tick; returns false when none. */
async function runNextRetry(h: Harness): Promise<boolean> {
  const queued = await listDeliveries(h.relay.store);
  if (queued.length === 0) return false;
  h.clock.now = Math.max(h.clock.now, Math.min(...queued.map((d) => d.dueAt)));
  await h.relay.engine.tick();
  return true;
}

const unavailable: DeliveryOutcome = {
  kind: "retry",
  status: 503,
  reason: "push service answered 503",
};

Deno.test("Retries: a 503 is retried with exponential backoff and equal jitter until it is delivered", async () => {
  const h = await harness({}, { delivery: { retry: RETRY, random: () => 0.5 } });
  try {
    await subscribed(h);
    let calls = 0;
    h.webPush.respond = () => (++calls <= 2 ? unavailable : { kind: "delivered", status: 201 });
    assert.equal(
      (await h.push([{ topic: "t", priority: 80, timestamp: "2026-11-24T09:15:02Z" }])).status,
      200,
    );
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    // Attempt 1 failed: backoff 1000 ms halved plus half of it times the jitter (0.5) = 750 ms.
    let [retry] = await listDeliveries(h.relay.store);
    assert.equal(retry!.dueAt, T0 + 750);
    assert.equal(retry!.attempts, 1);
    assert.equal(retry!.lastError, "push service answered 503");

    h.clock.now = T0 + 749;
    await h.relay.engine.tick();
    assert.equal(h.webPush.sent.length, 1, "not before its time");
    h.clock.now = T0 + 750;
    await h.relay.engine.tick();
    assert.equal(h.webPush.sent.length, 2);
    // Attempt 2 failed: 2000 ms halved plus 0.5 of the other half = 1500 ms.
    [retry] = await listDeliveries(h.relay.store);
    assert.equal(retry!.dueAt, T0 + 750 + 1500);
    assert.equal(retry!.attempts, 2);

    assert.equal(await runNextRetry(h), true);
    assert.equal(h.webPush.sent.length, 3);
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    assert.deepEqual(await listDeadLetters(h.relay.store), []);
    // The retried message is the same update, with its urgency.
    for (const s of h.webPush.sent) {
      assert.deepEqual(s.message.payload, {
        kind: "json",
        data: { type: "update", topic: "t", timestamp: "2026-11-24T09:15:02Z", priority: 80 },
      });
      assert.equal(s.message.urgency, "high");
    }
    assert.equal(h.relay.metrics.deliveries.get({ transport: "web-push", outcome: "retried" }), 2);
  } finally {
    await h.close();
  }
});

Deno.test("Retries: backoff doubles per attempt up to the ceiling, jittered within [half, full]", () => {
  const lows = [1, 2, 3, 4, 5, 6, 7, 8].map((a) => backoffMs(a, RETRY, () => 0));
  const highs = [1, 2, 3, 4, 5, 6, 7, 8].map((a) =>
    Math.round(backoffMs(a, RETRY, () => 0.999999))
  );
  assert.deepEqual(lows, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.deepEqual(highs, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
});

Deno.test("Retries: Retry-After from a 429 is honoured when it is longer than the backoff", async () => {
  const h = await harness({}, { delivery: { retry: RETRY, random: () => 0.5 } });
  try {
    await subscribed(h);
    let calls = 0;
    h.webPush.respond = () =>
      ++calls === 1
        ? { kind: "retry", status: 429, retryAfterMs: 120_000, reason: "push service answered 429" }
        : { kind: "delivered", status: 201 };
    await h.push([{ topic: "t" }]);
    await settle(h);
    const [retry] = await listDeliveries(h.relay.store);
    assert.equal(retry!.dueAt, T0 + 120_000);
    h.clock.now = T0 + 119_999;
    await h.relay.engine.tick();
    assert.equal(h.webPush.sent.length, 1);
    h.clock.now = T0 + 120_000;
    await h.relay.engine.tick();
    assert.equal(h.webPush.sent.length, 2);
    assert.deepEqual(await listDeliveries(h.relay.store), []);
  } finally {
    await h.close();
  }
});

Deno.test("Retries: timeouts and network errors are retried like 5xx", async () => {
  const h = await harness({}, { delivery: { retry: RETRY, random: () => 0.5 } });
  try {
    await subscribed(h);
    const failures: DeliveryOutcome[] = [
      { kind: "retry", reason: "timeout" },
      { kind: "retry", reason: "network error: connection refused" },
    ];
    h.webPush.respond = () => failures.shift() ?? { kind: "delivered", status: 201 };
    await h.push([{ topic: "t" }]);
    await settle(h);
    while (await runNextRetry(h));
    assert.equal(h.webPush.sent.length, 3);
    assert.deepEqual(await listDeadLetters(h.relay.store), []);
  } finally {
    await h.close();
  }
});

Deno.test("Dead letters: after maxAttempts failures the delivery is kept as a dead letter and counted, not dropped", async () => {
  const h = await harness({}, { delivery: { retry: RETRY, random: () => 0.5 } });
  try {
    const dev = await subscribed(h);
    h.webPush.respond = () => unavailable;
    await h.push([{ topic: "t", timestamp: "2026-11-24T09:15:02Z" }]);
    await settle(h);
    while (await runNextRetry(h));
    assert.equal(h.webPush.sent.length, RETRY.maxAttempts);
    const dead = await listDeadLetters(h.relay.store);
    assert.equal(dead.length, 1);
    assert.equal(dead[0]!.clientId, dev["client-id"]);
    assert.equal(dead[0]!.why, "too many attempts");
    assert.equal(dead[0]!.attempts, RETRY.maxAttempts);
    assert.equal(dead[0]!.lastError, "push service answered 503");
    assert.deepEqual(dead[0]!.payload, {
      kind: "json",
      data: { type: "update", topic: "t", timestamp: "2026-11-24T09:15:02Z", priority: 50 },
    });
    assert.equal(
      h.relay.metrics.deliveries.get({ transport: "web-push", outcome: "dead_lettered" }),
      1,
    );
    assert.match(
      h.relay.metrics.render(),
      /relay_deliveries_total{outcome="dead_lettered",transport="web-push"} 1/,
    );
    // The client is not pruned for failures that are not "gone".
    assert.equal((await listClientSubscriptions(h.relay.store, dev["client-id"])).length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("Dead letters: a delivery whose TTL would run out before the next attempt is dead-lettered as expired", async () => {
  const h = await harness({ RELAY_TTL: "5" }, {
    delivery: { retry: { ...RETRY, maxAttempts: 100 }, random: () => 0.5 },
  });
  try {
    await subscribed(h);
    h.webPush.respond = () => unavailable;
    await h.push([{ topic: "t" }]);
    await settle(h);
    while (await runNextRetry(h));
    // 750 ms, then 1500 ms, then 3000 ms would pass the 5 s TTL.
    assert.equal(h.webPush.sent.length, 3);
    assert.ok(h.clock.now < T0 + 5000);
    const dead = await listDeadLetters(h.relay.store);
    assert.deepEqual(dead.map((d) => d.why), ["expired"]);
    // The TTL the push service is told shrinks with the message's age.
    assert.deepEqual(h.webPush.sent.map((s) => s.message.ttl), [5, 4, 2]);
  } finally {
    await h.close();
  }
});

Deno.test("Dead letters: a permanent refusal (e.g. 400) is dead-lettered at once with its reason", async () => {
  const h = await harness({}, { delivery: { retry: RETRY } });
  try {
    const dev = await subscribed(h);
    h.webPush.respond = () => ({
      kind: "failed",
      status: 400,
      reason: "push service answered 400",
    });
    await h.push([{ topic: "t" }]);
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    const dead = await listDeadLetters(h.relay.store);
    assert.equal(dead.length, 1);
    assert.equal(dead[0]!.why, "refused");
    assert.equal(dead[0]!.lastError, "push service answered 400");
    assert.ok(await h.relay.store.registrations.get(dev["client-id"]));
  } finally {
    await h.close();
  }
});

Deno.test("Breaker: a push service that keeps failing is short-circuited; other services are not; it recovers after the cooldown", async () => {
  const h = await harness({}, {
    delivery: {
      retry: { ...RETRY, maxAttempts: 8 },
      breaker: { threshold: 3, cooldownMs: 10_000 },
      random: () => 0.5,
    },
  });
  try {
    const { publicKey } = await testSubscriptionKeys();
    const register = async (endpoint: string) => {
      const res = await h.request("/registrations", {
        method: "POST",
        json: {
          transport: "web-push",
          subscription: { endpoint, keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" } },
        },
      });
      const body = await res.json();
      await h.subscribe(body["client-data"], ["t"]);
      return body["client-id"] as string;
    };
    await register("https://failing.example.com/push/1");
    await register("https://healthy.example.net/push/1");
    await settle(h);
    h.webPush.sent = [];
    let failingUp = false;
    h.webPush.respond = (target) =>
      target.transport === "web-push" && target.endpoint.startsWith("https://failing.") &&
        !failingUp
        ? unavailable
        : { kind: "delivered", status: 201 };
    const sentTo = (host: string) =>
      h.webPush.sent.filter((s) =>
        s.target.transport === "web-push" && s.target.endpoint.includes(host)
      )
        .length;

    for (let i = 0; i < 6; i++) {
      await h.push([{ topic: "t", timestamp: `2026-11-24T09:15:0${i}Z` }]);
      await settle(h);
    }
    // Three failures opened the breaker: the next three never reached the failing service.
    assert.equal(sentTo("failing.example.com"), 3);
    assert.equal(sentTo("healthy.example.net"), 6);
    assert.equal(
      h.relay.metrics.deliveries.get({ transport: "web-push", outcome: "short_circuited" }),
      3,
    );
    const queued = await listDeliveries(h.relay.store);
    assert.equal(queued.length, 6);
    // Short-circuited sends are not counted as attempts and wait for the breaker to close.
    const shortCircuited = queued.filter((d) => d.attempts === 0);
    assert.equal(shortCircuited.length, 3);
    for (const d of shortCircuited) assert.ok(d.dueAt >= T0 + 10_000);

    failingUp = true;
    while (await runNextRetry(h));
    assert.equal(sentTo("failing.example.com"), 3 + 6);
    assert.equal(sentTo("healthy.example.net"), 6);
    assert.deepEqual(await listDeadLetters(h.relay.store), []);
    assert.ok(h.logger.lines.some((l) => l.event === "breaker.open"));
    assert.ok(h.logger.lines.some((l) => l.event === "breaker.closed"));
  } finally {
    await h.close();
  }
});

Deno.test("Acknowledging pushes are retried and dead-lettered through the same queue", async () => {
  const h = await harness({}, {
    delivery: { retry: { ...RETRY, maxAttempts: 2 }, random: () => 0.5 },
  });
  try {
    h.webPush.respond = () => unavailable;
    const dev = await h.registerDevice();
    const res = await h.subscribe(dev["client-data"], ["ack-topic"], {
      expires: new Date(T0 + 3600_000).toISOString(),
    });
    assert.equal(res.status, 200);
    await settle(h);
    while (await runNextRetry(h));
    assert.equal(h.webPush.sent.length, 2);
    const dead = await listDeadLetters(h.relay.store);
    assert.deepEqual(dead.map((d) => [d.reason, d.why]), [["ack", "too many attempts"]]);
  } finally {
    await h.close();
  }
});
