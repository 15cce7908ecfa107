/**
 * The topic-to-gateway map (CC/CD 70025 §4.2) in lib/store/upstream.ts, on a `:memory:` KV: one
 * entry per upstream subscriber, expiry checked on read, `no-subscribers` removals that spare
 * newer subscribes; and the push answer's `no-subscribers` as a relay reads it.
 */

import assert from "node:assert/strict";
import { noSubscribersOf } from "../../lib/delivery/upstream_client.ts";
import { createStore, keys } from "../../lib/store/mod.ts";

const T = Date.parse("2026-11-24T09:00:00Z");

async function withStore(fn: (s: ReturnType<typeof createStore>, kv: Deno.Kv) => Promise<void>) {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(createStore(kv), kv);
  } finally {
    kv.close();
  }
}

Deno.test("A map entry counts until its expiry and not at or after it, though KV still holds it", async () => {
  await withStore(async (s, kv) => {
    await s.upstream.record("app", "sub-a", ["t1", "t2"], T + 60_000, T);
    assert.deepEqual([...await s.upstream.active("app", ["t1", "t2", "t3"], T)].sort(), [
      "t1",
      "t2",
    ]);
    assert.deepEqual([...await s.upstream.active("app", ["t1"], T + 59_999)], ["t1"]);
    assert.deepEqual([...await s.upstream.active("app", ["t1"], T + 60_000)], []);
    // Stored expiry is what counts; KV's expireIn only collects the record later.
    assert.notEqual((await kv.get(keys.upstreamMapEntry("app", "t1", "sub-a"))).value, null);
    assert.equal(await s.upstream.count(T), 2);
    assert.equal(await s.upstream.count(T + 60_000), 0);
  });
});

Deno.test("A topic stays relayed while any subscriber's entry is live; a refresh moves the expiry", async () => {
  await withStore(async (s) => {
    await s.upstream.record("app", "sub-a", ["t"], T + 10_000, T);
    await s.upstream.record("app", "sub-b", ["t"], T + 90_000, T);
    assert.equal((await s.upstream.active("app", ["t"], T + 50_000)).size, 1);
    await s.upstream.remove("app", "sub-b", ["t"]);
    assert.equal((await s.upstream.active("app", ["t"], T + 50_000)).size, 0);
    await s.upstream.record("app", "sub-a", ["t"], T + 120_000, T + 5_000);
    assert.equal((await s.upstream.active("app", ["t"], T + 50_000)).size, 1);
  });
});

Deno.test("Map entries of one app never count for another", async () => {
  await withStore(async (s) => {
    await s.upstream.record("app1", "sub-a", ["t"], T + 60_000, T);
    assert.equal((await s.upstream.active("app2", ["t"], T)).size, 0);
    assert.equal(await s.upstream.drop("app2", ["t"], T), 0);
    assert.equal((await s.upstream.active("app1", ["t"], T)).size, 1);
  });
});

Deno.test("drop() removes every entry written up to the answered request, and keeps those written after it", async () => {
  await withStore(async (s) => {
    await s.upstream.record("app", "sub-a", ["t", "u"], T + 60_000, T);
    await s.upstream.record("app", "sub-b", ["t"], T + 60_000, T + 10);
    assert.equal(await s.upstream.drop("app", ["t"], T + 5), 1);
    assert.equal((await s.upstream.active("app", ["t"], T + 20)).size, 1);
    assert.equal(await s.upstream.drop("app", ["t", "t"], T + 10), 1);
    assert.deepEqual([...await s.upstream.active("app", ["t", "u"], T + 20)], ["u"]);
  });
});

Deno.test("A thousand topics of 256 four-byte characters fit the map's atomics", async () => {
  await withStore(async (s) => {
    const topics = Array.from({ length: 1000 }, (_, i) => `${i}`.padEnd(256, "\u{1F600}"));
    await s.upstream.record("app", "sub-a", topics, T + 60_000, T);
    assert.equal(await s.upstream.count(T), 1000);
    await s.upstream.remove("app", "sub-a", topics);
    assert.equal(await s.upstream.count(T), 0);
  });
});

Deno.test("noSubscribersOf() reads push-response or a bare answer, with topic objects or strings", () => {
  assert.deepEqual(noSubscribersOf({ "push-response": { "no-subscribers": [{ topic: "a" }] } }), [
    "a",
  ]);
  assert.deepEqual(noSubscribersOf({ "no-subscribers": ["a", { topic: "b" }, 7, {}] }), ["a", "b"]);
  assert.deepEqual(noSubscribersOf({ "push-response": {} }), []);
  assert.deepEqual(noSubscribersOf(undefined), []);
  assert.deepEqual(noSubscribersOf("text"), []);
});
