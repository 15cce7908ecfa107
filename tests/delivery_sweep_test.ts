/**
 * The expiry sweep (CC/CD 70025 §6.2.1.6 MUST remove subscriptions not
 * refreshed in time) is idempotent and bounded per run, within KV's atomic limits (1000
 * mutations, 100 checks, 800 KiB); pruning on 404/410/Unregistered removes every subscription
 * of the client in bounded atomics, and its topics are then reported in no-subscribers.
 */

import assert from "node:assert/strict";
import { type Harness, harness, settle, T0 } from "./_harness.ts";
import { listClientSubscriptions, listDeadLetters } from "./_inspect.ts";

const HOUR = 3600_000;

async function countKeys(h: Harness, prefix: string): Promise<number> {
  let n = 0;
  for await (const _ of h.kv.list({ prefix: [prefix] })) n++;
  return n;
}

/** 25 clients x 100 topics = 2500 subscriptions expiring at T0 + 1 h, plus one refreshed client. */
async function seed(h: Harness) {
  const store = h.relay.store;
  const topics = [...Array(100).keys()].map((i) => `topic-${i}`);
  for (let c = 0; c < 25; c++) {
    await store.subscriptions.upsert("app1", `client-${c}`, "web-push", topics, T0 + HOUR, T0);
  }
  // Refreshed before the sweep: its old expiry index entry is stale and must not remove it.
  await store.subscriptions.upsert("app1", "keep", "web-push", topics.slice(0, 5), T0 + HOUR, T0);
  await store.subscriptions.upsert(
    "app1",
    "keep",
    "web-push",
    topics.slice(0, 5),
    T0 + 3 * HOUR,
    T0,
  );
}

Deno.test("Sweep (§6.2.1.6 MUST): expired subscriptions are removed at most sweepLimit per run, in atomics within KV limits, until none is left", async () => {
  const h = await harness({}, { delivery: { sweepLimit: 1000 } });
  try {
    await seed(h);
    assert.equal(await countKeys(h, "sub"), 2505);
    h.clock.now = T0 + HOUR + 1;
    const removedPerTick: number[] = [];
    for (let i = 0; i < 4; i++) {
      const before = await countKeys(h, "sub");
      await h.relay.engine.tick();
      removedPerTick.push(before - (await countKeys(h, "sub")));
    }
    assert.deepEqual(removedPerTick, [1000, 1000, 500, 0]);
    assert.equal(await countKeys(h, "sub"), 5);
    assert.equal(await countKeys(h, "subc"), 5);
    assert.equal(await countKeys(h, "subx"), 5);
    assert.deepEqual(
      (await listClientSubscriptions(h.relay.store, "keep")).map((s) => s.exp),
      Array(5).fill(T0 + 3 * HOUR),
    );
    const sweeps = h.logger.lines.filter((l) => l.event === "sweep").map((l) => l.fields.removed);
    assert.deepEqual(sweeps, [1000, 1000, 500]);
  } finally {
    await h.close();
  }
});

Deno.test("Sweep: idempotent, and two sweeps racing (two processes) never remove more than expired nor fail", async () => {
  const h = await harness();
  try {
    await seed(h);
    const now = T0 + HOUR + 1;
    const store = h.relay.store;
    const [a, b] = await Promise.all([
      store.subscriptions.sweepExpired(now, 1000),
      store.subscriptions.sweepExpired(now, 1000),
    ]);
    assert.equal(a + b, 1000);
    let total = a + b;
    for (let i = 0; i < 3; i++) total += await store.subscriptions.sweepExpired(now, 1000);
    assert.equal(total, 2500);
    assert.equal(await store.subscriptions.sweepExpired(now, 1000), 0);
    assert.equal(await countKeys(h, "sub"), 5);
  } finally {
    await h.close();
  }
});

Deno.test("Sweep: a subscription past its expiry gets nothing even before the sweep ran, and its topic is reported", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["soon"], {
      expires: new Date(T0 + 60_000).toISOString(),
    });
    await settle(h);
    h.webPush.sent = [];
    h.clock.now = T0 + 60_000;
    const res = await h.push([{ topic: "soon" }]);
    assert.deepEqual(await res.json(), {
      "push-response": { "no-subscribers": [{ topic: "soon" }] },
    });
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("Pruning: a 410 removes all 1000 subscriptions of the client in bounded atomics and revokes it; its topics then show in no-subscribers", async () => {
  const h = await harness();
  try {
    const gone = await h.registerDevice();
    const other = await h.registerDevice();
    const topics = [...Array(1000).keys()].map((i) => `p${i}`);
    assert.equal((await h.subscribe(gone["client-data"], topics)).status, 200);
    assert.equal((await h.subscribe(other["client-data"], ["p0"])).status, 200);
    await settle(h);
    const goneReg = await h.relay.store.registrations.get(gone["client-id"]);
    const goneEndpoint = goneReg!.target.transport === "web-push" ? goneReg!.target.endpoint : "";
    h.webPush.respond = (target) =>
      target.transport === "web-push" && target.endpoint === goneEndpoint
        ? { kind: "gone", status: 410, reason: "push service answered 410" }
        : { kind: "delivered", status: 201 };

    const res = await h.push([{ topic: "p7" }]);
    assert.deepEqual(await res.json(), { "push-response": {} });
    await settle(h);
    assert.equal(await h.relay.store.registrations.get(gone["client-id"]), null);
    assert.deepEqual(await listClientSubscriptions(h.relay.store, gone["client-id"]), []);
    const leftovers = (await h.dump()).filter((k) =>
      k.includes(gone["client-id"]) && !k.startsWith('["dead"')
    );
    assert.deepEqual(leftovers, []);
    assert.equal(h.relay.metrics.deliveries.get({ transport: "web-push", outcome: "pruned" }), 1);

    const after = await h.push([{ topic: "p7" }, { topic: "p0" }, { topic: "p999" }]);
    assert.deepEqual(await after.json(), {
      "push-response": { "no-subscribers": [{ topic: "p7" }, { topic: "p999" }] },
    });
    await settle(h);
    // Its client-data is refused from now on: the device must register again.
    assert.equal((await h.subscribe(gone["client-data"], ["p1"])).status, 403);
  } finally {
    await h.close();
  }
});

Deno.test("Pruning: only 'gone' prunes; 429, 5xx and refusals leave the client subscribed", async () => {
  const h = await harness({}, { delivery: { retry: { maxAttempts: 1 } } });
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["t"]);
    await settle(h);
    for (
      const outcome of [
        { kind: "retry", status: 429, reason: "429" },
        { kind: "retry", status: 503, reason: "503" },
        { kind: "failed", status: 400, reason: "400" },
      ] as const
    ) {
      h.webPush.respond = () => outcome;
      await h.push([{ topic: "t" }]);
      await settle(h);
      assert.equal((await listClientSubscriptions(h.relay.store, dev["client-id"])).length, 1);
    }
    assert.equal((await listDeadLetters(h.relay.store)).length, 3);
  } finally {
    await h.close();
  }
});
