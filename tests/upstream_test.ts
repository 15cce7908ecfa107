/**
 * Relaying to another gateway (CC/CD 70025 §4, §4.2, §5.3; README "Relaying to another
 * gateway") through the real HTTP app on the harness clock, against a stand-in upstream gateway
 * on 127.0.0.1: bootstrap, forwarded subscribes and their answers, the topic-to-gateway map,
 * durable upstream deliveries with their retries, dead letters and metrics, and `Via`.
 */

import assert from "node:assert/strict";
import { formatRfc3339 } from "../lib/time.ts";
import { APP_TOKEN, type Harness, harness, PUBLIC_URL, T0 } from "./_harness.ts";
import { listDeadLetters, listDeliveries } from "./_inspect.ts";
import { peerRelay } from "./fixtures/peer_relay.ts";
import { type GatewayMock, startGatewayMock } from "./mocks/gateway_mock.ts";

const UPSTREAM_TOKEN = "relay-at-vendor-token-0123456789";
const UPSTREAM_FCM = "https://vendor.example/transports/fcm";

function relayHarness(mock: GatewayMock, env: Record<string, string> = {}): Promise<Harness> {
  return harness({ RELAY_UPSTREAM_URL: mock.url, RELAY_UPSTREAM_TOKEN: UPSTREAM_TOKEN, ...env });
}

/** A push-subscribe at the relay for the upstream's FCM transport. */
function subscribeUpstream(
  h: Harness,
  topics: string[],
  o: { clientData?: string; expires?: number; headers?: Record<string, string> } = {},
): Promise<Response> {
  return h.request("/gateway", {
    method: "POST",
    headers: { authorization: `Bearer ${APP_TOKEN}`, ...o.headers },
    json: {
      "push-subscribe": {
        topics,
        "selected-transport": {
          "transport-uri": UPSTREAM_FCM,
          "client-data": o.clientData ?? "upstream-client-data-1",
        },
        expires: formatRfc3339(o.expires ?? h.now() + 86400_000),
      },
    },
  });
}

async function relayId(h: Harness): Promise<string> {
  return (await h.relay.store.meta.getOrCreate("relay-id", () => "")).value;
}

async function pushJson(h: Harness, messages: unknown[], headers: Record<string, string> = {}) {
  const res = await h.request("/gateway", {
    method: "POST",
    headers: { authorization: `Bearer ${APP_TOKEN}`, ...headers },
    json: { push: { messages } },
  });
  return { status: res.status, body: await res.json() };
}

Deno.test("§4 bootstrap: the upstream's transports follow the relay's own, transport-uris unchanged, fetched with the relay's credentials and Via", async () => {
  await using mock = startGatewayMock();
  const own = { transport: { "transport-uri": `${PUBLIC_URL}/transports/web-push` } };
  mock.answer = () => ({ status: 200, body: { "push-transports": [mock.transport, own] } });
  const h = await relayHarness(mock);
  try {
    assert.equal(await h.relay.upstream!.refresh(), true);
    const res = await h.request("/gateway", { method: "POST", json: { "push-transports": [] } });
    const list = (await res.json())["push-transports"];
    assert.equal(list.length, 2);
    assert.equal(list[0].transport["transport-uri"], `${PUBLIC_URL}/transports/web-push`);
    // Exactly as the upstream listed it; this relay's own transport is not listed twice.
    assert.deepEqual(list[1], mock.transport);
    const [req] = mock.of("push-transports");
    assert.equal(req!.headers.get("authorization"), `Bearer ${UPSTREAM_TOKEN}`);
    assert.equal(req!.headers.get("via"), `1.1 ${await relayId(h)}`);
    const status = await h.relay.upstream!.status();
    assert.equal(status.reachable, true);
    assert.equal(status.lastBootstrap, formatRfc3339(T0));
    assert.equal(status.transports, 1);
  } finally {
    await h.close();
  }
});

Deno.test("§5.3 MUST: a subscribe for an upstream transport is forwarded as is, with this relay's credentials and Via, and answered with this relay's push-url", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    const expires = T0 + 3600_000;
    const res = await subscribeUpstream(h, ["cal-1", "cal-2"], {
      expires,
      headers: { via: "1.1 proxy.example (Squid, 6.1)" },
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { "push-url": `${PUBLIC_URL}/gateway/app1` });
    const [req] = mock.of("push-subscribe");
    assert.deepEqual(req!.body, {
      "push-subscribe": {
        topics: ["cal-1", "cal-2"],
        "selected-transport": {
          "transport-uri": UPSTREAM_FCM,
          "client-data": "upstream-client-data-1",
        },
        expires: formatRfc3339(expires),
      },
    });
    assert.equal(req!.path, "/gateway");
    assert.equal(req!.headers.get("authorization"), `Bearer ${UPSTREAM_TOKEN}`);
    assert.equal(req!.headers.get("via"), `1.1 proxy.example, 1.1 ${await relayId(h)}`);
    assert.equal((await h.relay.upstream!.status()).mapSize, 2);
  } finally {
    await h.close();
  }
});

Deno.test("§5.3: the upstream's refusal of a subscribe comes back with its status, body and Retry-After, and records nothing", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    const before = await h.dump();
    const refusal = { error: { code: "invalid-client-data", message: "not ours" } };
    mock.answer = () => ({ status: 403, body: refusal });
    const res = await subscribeUpstream(h, ["cal-1"]);
    assert.equal(res.status, 403);
    assert.deepEqual(await res.json(), refusal);
    mock.answer = () => ({
      status: 429,
      body: { error: { code: "rate-limited", message: "slow down" } },
      headers: { "retry-after": "30" },
    });
    const limited = await subscribeUpstream(h, ["cal-1"]);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get("retry-after"), "30");
    await limited.body?.cancel();
    assert.deepEqual(await h.dump(), before);
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, {
      "push-response": { "no-subscribers": [{ topic: "cal-1" }] },
    });
  } finally {
    await h.close();
  }
});

Deno.test("§5.3: the upstream refusing this relay's own credentials is a 502, and an unreachable upstream a 502 upstream-unavailable", async () => {
  const mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    mock.answer = () => ({ status: 401, body: { error: { code: "unauthorized", message: "" } } });
    const res = await subscribeUpstream(h, ["cal-1"]);
    assert.equal(res.status, 502);
    assert.equal((await res.json()).error.code, "upstream-refused-credentials");
    await mock.close();
    const down = await subscribeUpstream(h, ["cal-1"]);
    assert.equal(down.status, 502);
    assert.equal((await down.json()).error.code, "upstream-unavailable");
    const status = await h.relay.upstream!.status();
    assert.equal(status.reachable, false);
  } finally {
    await h.close();
  }
});

Deno.test("§4.2 MUST: topics subscribed through the upstream count as subscribed, and their messages go to the upstream's push-url with every field", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    assert.equal((await subscribeUpstream(h, ["cal-1"])).status, 200);
    const ts = formatRfc3339(T0 - 5000);
    const pushed = await pushJson(h, [
      { topic: "cal-1", priority: 80, timestamp: ts, "client-id": "c-5e0a17" },
      { topic: "unknown" },
    ], { via: "1.1 app-proxy" });
    assert.deepEqual(pushed, {
      status: 200,
      body: { "push-response": { "no-subscribers": [{ topic: "unknown" }] } },
    });
    await h.relay.engine.idle();
    const [req] = mock.of("push");
    assert.equal(req!.path, "/gateway/relay-app");
    assert.equal(req!.headers.get("authorization"), `Bearer ${UPSTREAM_TOKEN}`);
    assert.equal(req!.headers.get("via"), `1.1 app-proxy, 1.1 ${await relayId(h)}`);
    // §7.1: the client-id goes along, so the upstream leaves that client out.
    assert.deepEqual(req!.body, {
      push: {
        messages: [{ topic: "cal-1", priority: 80, timestamp: ts, "client-id": "c-5e0a17" }],
      },
    });
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    const metrics = h.relay.metrics;
    assert.equal(metrics.deliveries.get({ transport: "upstream", outcome: "delivered" }), 1);
    assert.equal(metrics.pushesReceived.get(), 1);
  } finally {
    await h.close();
  }
});

Deno.test("Messages for topics that also have local subscribers are delivered locally as well", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    const dev = await h.registerDevice();
    assert.equal((await h.subscribe(dev["client-data"], ["shared"])).status, 200);
    assert.equal((await subscribeUpstream(h, ["shared"])).status, 200);
    assert.deepEqual((await pushJson(h, [{ topic: "shared", priority: 60 }])).body, {
      "push-response": {},
    });
    await h.relay.engine.idle();
    const updates = h.webPush.payloads().filter((p) => p.type === "update");
    assert.deepEqual(updates.map((p) => p.topic), ["shared"]);
    assert.equal(mock.of("push").length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("§5.2.2 through the upstream: an unsubscribe removes the subscriber's map entry once the upstream accepted it, and no other subscriber's", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"], { clientData: "device-a" });
    await subscribeUpstream(h, ["cal-1"], { clientData: "device-b" });
    const past = T0 - 1000;
    assert.equal(
      (await subscribeUpstream(h, ["cal-1"], { clientData: "device-a", expires: past })).status,
      200,
    );
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, { "push-response": {} });
    // Refused by the upstream: the entry stays.
    mock.answer = () => ({
      status: 503,
      body: { error: { code: "storage-unavailable", message: "" } },
    });
    const refused = await subscribeUpstream(h, ["cal-1"], {
      clientData: "device-b",
      expires: past,
    });
    assert.equal(refused.status, 503);
    await refused.body?.cancel();
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, { "push-response": {} });
    mock.answer = () => ({ status: 200, body: { "push-url": mock.pushUrl } });
    await subscribeUpstream(h, ["cal-1"], { clientData: "device-b", expires: past });
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, {
      "push-response": { "no-subscribers": [{ topic: "cal-1" }] },
    });
    await h.relay.engine.idle();
  } finally {
    await h.close();
  }
});

Deno.test("§6.2.2.1: a map entry is void after the subscription's expiry", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"], { expires: T0 + 60_000 });
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, { "push-response": {} });
    h.clock.now = T0 + 60_000;
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, {
      "push-response": { "no-subscribers": [{ topic: "cal-1" }] },
    });
    await h.relay.engine.idle();
  } finally {
    await h.close();
  }
});

Deno.test("§4.2: a topic the upstream lists in no-subscribers leaves the map, so the relay's next push lists it", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["gone", "kept"]);
    mock.answer = (req) =>
      req.op === "push"
        ? { status: 200, body: { "push-response": { "no-subscribers": [{ topic: "gone" }] } } }
        : { status: 500 };
    const first = await pushJson(h, [{ topic: "gone" }, { topic: "kept" }]);
    assert.deepEqual(first.body, { "push-response": {} });
    await h.relay.engine.idle();
    const next = await pushJson(h, [{ topic: "gone" }, { topic: "kept" }]);
    assert.deepEqual(next.body, { "push-response": { "no-subscribers": [{ topic: "gone" }] } });
    await h.relay.engine.idle();
    assert.deepEqual(mock.of("push").at(-1)!.body, {
      push: { messages: [{ topic: "kept", priority: 50, timestamp: formatRfc3339(T0) }] },
    });
  } finally {
    await h.close();
  }
});

Deno.test("Upstream deliveries are recorded before the 200 and retried while the upstream answers 5xx or 429, never sooner than its Retry-After", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    mock.answer = () => ({ status: 503, headers: { "retry-after": "120" } });
    assert.deepEqual((await pushJson(h, [{ topic: "cal-1" }])).body, { "push-response": {} });
    await h.relay.engine.idle();
    let [queued] = await listDeliveries(h.relay.store);
    assert.equal(queued!.reason, "upstream");
    assert.equal(queued!.attempts, 1);
    assert.ok(queued!.dueAt >= T0 + 120_000, `due at +${queued!.dueAt - T0} ms`);
    assert.equal(queued!.lastError, "upstream answered 503");

    mock.answer = () => ({ status: 429, headers: { "retry-after": "300" } });
    h.clock.now = queued!.dueAt;
    await h.relay.engine.tick();
    [queued] = await listDeliveries(h.relay.store);
    assert.equal(queued!.attempts, 2);
    assert.ok(queued!.dueAt >= h.clock.now + 300_000);

    mock.answer = () => ({ status: 200, body: { "push-response": {} } });
    h.clock.now = queued!.dueAt;
    await h.relay.engine.tick();
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    assert.equal(mock.of("push").length, 3);
    const metrics = h.relay.metrics;
    assert.equal(metrics.deliveries.get({ transport: "upstream", outcome: "retried" }), 2);
    assert.equal(metrics.deliveries.get({ transport: "upstream", outcome: "delivered" }), 1);
    assert.match(
      metrics.render(),
      /relay_deliveries_total\{outcome="dead_lettered",transport="upstream"\} 0/,
    );
  } finally {
    await h.close();
  }
});

Deno.test("An upstream delivery is retried until its TTL, not a fixed number of attempts, and then dead-lettered and counted", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock, { RELAY_TTL: "900" });
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    mock.answer = () => ({ status: 502 });
    await pushJson(h, [{ topic: "cal-1" }]);
    await h.relay.engine.idle();
    for (let i = 0; i < 40; i++) {
      const [queued] = await listDeliveries(h.relay.store);
      if (!queued) break;
      h.clock.now = queued.dueAt;
      await h.relay.engine.tick();
    }
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    const [dead] = await listDeadLetters(h.relay.store);
    assert.equal(dead!.reason, "upstream");
    assert.equal(dead!.why, "expired");
    assert.ok(dead!.attempts > 8, `${dead!.attempts} attempts`);
    assert.ok(h.clock.now < T0 + 900_000);
    assert.equal(mock.of("push").length, dead!.attempts);
    const metrics = h.relay.metrics;
    assert.equal(metrics.deliveries.get({ transport: "upstream", outcome: "dead_lettered" }), 1);
    assert.equal(
      metrics.deliveries.get({ transport: "upstream", outcome: "retried" }),
      dead!.attempts - 1,
    );
  } finally {
    await h.close();
  }
});

Deno.test("An upstream's 508 (a loop) or other refusal is a dead letter at once, not a retry", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    mock.answer = () => ({ status: 508, body: { error: { code: "loop-detected", message: "" } } });
    await pushJson(h, [{ topic: "cal-1" }]);
    await h.relay.engine.idle();
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    const [dead] = await listDeadLetters(h.relay.store);
    assert.equal(dead!.why, "refused");
    assert.equal(dead!.lastError, "upstream answered 508 loop-detected");
    assert.equal(h.relay.metrics.deliveries.get({ transport: "upstream", outcome: "failed" }), 1);
  } finally {
    await h.close();
  }
});

Deno.test("A push of many messages is batched into upstream requests that each fit one KV record, all recorded before the 200", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    const topics = Array.from(
      { length: 600 },
      (_, i) => `${String(i).padStart(4, "0")}${"t".repeat(200)}`,
    );
    assert.equal((await subscribeUpstream(h, topics)).status, 200);
    mock.answer = () => ({ status: 503 });
    const res = await pushJson(h, topics.map((topic) => ({ topic })));
    assert.deepEqual(res.body, { "push-response": {} });
    await h.relay.engine.idle();
    const queued = await listDeliveries(h.relay.store);
    assert.ok(queued.length > 1, `${queued.length} batches`);
    mock.answer = () => ({ status: 200, body: { "push-response": {} } });
    h.clock.now = Math.max(...queued.map((d) => d.dueAt));
    await h.relay.engine.tick();
    const sent = mock.of("push").slice(queued.length).flatMap((r) =>
      (r.body.push as { messages: { topic: string }[] }).messages.map((m) => m.topic)
    );
    assert.deepEqual(sent.sort(), topics);
  } finally {
    await h.close();
  }
});

Deno.test("RFC 9110 §7.6.3: a push or subscribe whose Via already names this relay is refused with 508 loop-detected, changing nothing", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    await h.relay.engine.idle();
    const before = await h.dump();
    const id = await relayId(h);
    const looped = await pushJson(h, [{ topic: "cal-1" }], {
      via: `1.1 a.example, 1.1 ${id.toUpperCase()}`,
    });
    assert.equal(looped.status, 508);
    assert.equal(looped.body.error.code, "loop-detected");
    const sub = await subscribeUpstream(h, ["cal-2"], {
      headers: { via: `HTTP/1.1 ${id} (relay)` },
    });
    assert.equal(sub.status, 508);
    await sub.body?.cancel();
    assert.deepEqual(await h.dump(), before);
    assert.equal(mock.of("push-subscribe").length, 1);
    assert.equal(mock.of("push").length, 0);
    const malformed = await pushJson(h, [{ topic: "cal-1" }], { via: "1.1" });
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.error.code, "invalid-request");
  } finally {
    await h.close();
  }
});

Deno.test("The relay's name in Via is generated once and kept in KV: the same after a restart", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    await h.relay.upstream!.refresh();
    const again = await peerRelay(h, {
      RELAY_UPSTREAM_URL: mock.url,
      RELAY_UPSTREAM_TOKEN: UPSTREAM_TOKEN,
    });
    await again.relay.upstream!.refresh();
    const [a, b] = mock.of("push-transports").map((r) => r.headers.get("via"));
    assert.match(a!, /^1\.1 relay-[A-Za-z0-9_-]{12}$/);
    assert.equal(b, a);
    await again.relay.engine.shutdown(1000);
  } finally {
    await h.close();
  }
});

Deno.test("A path-secret upstream app: no Authorization, and the secret path never reaches the logs", async () => {
  await using mock = startGatewayMock();
  const secret = "relay-site-7-path-secret-0123456789abcdef";
  const h = await harness({ RELAY_UPSTREAM_URL: `${mock.origin}/gateway/${secret}` });
  try {
    mock.answer = (req) =>
      req.op === "push-subscribe"
        ? { status: 200, body: { "push-url": `${mock.origin}/gateway/${secret}` } }
        : req.op === "push"
        ? { status: 503 }
        : { status: 200, body: { "push-transports": [mock.transport] } };
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    await pushJson(h, [{ topic: "cal-1" }]);
    await h.relay.engine.idle();
    for (const req of mock.requests) {
      assert.equal(req.path, `/gateway/${secret}`);
      assert.equal(req.headers.get("authorization"), null);
    }
    assert.equal(mock.of("push").length, 1);
    assert.equal(JSON.stringify(h.logger.lines).includes(secret), false);
    assert.equal(JSON.stringify(await h.relay.upstream!.status()).includes(secret), false);
  } finally {
    await h.close();
  }
});

Deno.test("Every tick fetches the upstream's bootstrap again once an hour has passed, or a minute after a failed fetch", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  try {
    // The first tick of a process fetches it (main.ts ticks at start).
    await h.relay.engine.tick();
    await h.relay.engine.idle();
    assert.equal(mock.of("push-transports").length, 1);
    h.clock.now = T0 + 3599_000;
    await h.relay.engine.tick();
    await h.relay.engine.idle();
    assert.equal(mock.of("push-transports").length, 1);
    mock.answer = () => ({ status: 503 });
    h.clock.now = T0 + 3600_000;
    await h.relay.engine.tick();
    await h.relay.engine.idle();
    assert.equal(mock.of("push-transports").length, 2);
    assert.equal((await h.relay.upstream!.status()).lastBootstrap, formatRfc3339(T0));
    h.clock.now = T0 + 3660_000;
    await h.relay.engine.tick();
    await h.relay.engine.idle();
    assert.equal(mock.of("push-transports").length, 3);
  } finally {
    await h.close();
  }
});

Deno.test("Upstream deliveries left by a stopped process are sent by another process on the same KV", async () => {
  await using mock = startGatewayMock();
  const h = await relayHarness(mock);
  const env = { RELAY_UPSTREAM_URL: mock.url, RELAY_UPSTREAM_TOKEN: UPSTREAM_TOKEN };
  try {
    await h.relay.upstream!.refresh();
    await subscribeUpstream(h, ["cal-1"]);
    mock.answer = () => ({ status: 503 });
    await pushJson(h, [{ topic: "cal-1" }]);
    await h.relay.engine.shutdown(1000);
    const [left] = await listDeliveries(h.relay.store);
    assert.equal(left!.reason, "upstream");

    const other = await peerRelay(h, env);
    mock.answer = () => ({ status: 200, body: { "push-response": {} } });
    h.clock.now = left!.dueAt;
    await other.relay.engine.tick();
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    assert.equal(mock.of("push").length, 2);
    assert.equal(
      other.relay.metrics.deliveries.get({ transport: "upstream", outcome: "delivered" }),
      1,
    );
    await other.relay.engine.shutdown(1000);
  } finally {
    await h.close();
  }
});

Deno.test("A relay without an upstream does not read Via: a malformed one is no error", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    assert.equal((await h.subscribe(dev["client-data"], ["t"])).status, 200);
    assert.deepEqual(await pushJson(h, [{ topic: "t" }], { via: "1.1" }), {
      status: 200,
      body: { "push-response": {} },
    });
    assert.equal(h.relay.upstream, null);
    await h.relay.engine.idle();
  } finally {
    await h.close();
  }
});
