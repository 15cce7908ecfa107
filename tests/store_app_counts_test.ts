/**
 * Per-app counters (lib/store/app_counts.ts): each app's subscriptions and registrations
 * (clients holding at least one of its subscriptions), kept in the atomics that write the
 * subscription records. They must stay exact when writers race, follow every way a
 * subscription ends, and take over records stored before they existed without going wrong.
 */

import assert from "node:assert/strict";
import type { SubscriptionValue } from "../lib/model.ts";
import { createStore, keys, type Store } from "../lib/store/mod.ts";
import { T0 } from "./_harness.ts";

const HOUR = 3600_000;

async function withStore(fn: (store: Store, kv: Deno.Kv) => Promise<void>): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(createStore(kv), kv);
  } finally {
    kv.close();
  }
}

async function counts(store: Store, app: string) {
  return (await store.subscriptions.appCounts([app])).get(app);
}

Deno.test("Per-app counts follow subscribe, refresh, unsubscribe, client removal and the expiry sweep", async () => {
  await withStore(async (store) => {
    const subs = store.subscriptions;
    await subs.upsert("a", "c1", "web-push", ["t1", "t2"], T0 + HOUR, T0);
    await subs.upsert("a", "c2", "web-push", ["t1"], T0 + 2 * HOUR, T0);
    await subs.upsert("b", "c1", "web-push", ["t9"], T0 + HOUR, T0);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 3, registrations: 2 });
    assert.deepEqual(await counts(store, "b"), { subscriptions: 1, registrations: 1 });
    // A refresh changes nothing.
    await subs.upsert("a", "c1", "web-push", ["t1", "t2"], T0 + 2 * HOUR, T0);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 3, registrations: 2 });
    // Unsubscribing one of two topics keeps the client; the second removes it.
    await subs.remove("a", "c1", ["t1"]);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 2, registrations: 2 });
    await subs.remove("a", "c1", ["t2", "never-subscribed"]);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 1, registrations: 1 });
    // Removing a client (pruning, unregistering) ends it in every app.
    await subs.upsert("a", "c1", "web-push", ["t3"], T0 + HOUR, T0);
    await store.registrations.remove("c1");
    assert.deepEqual(await counts(store, "a"), { subscriptions: 1, registrations: 1 });
    assert.deepEqual(await counts(store, "b"), { subscriptions: 0, registrations: 0 });
    // The sweep (CC/CD 70025 §6.2.1.6) removes expired ones.
    assert.equal(await subs.sweepExpired(T0 + 2 * HOUR, 1000), 1);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
    assert.deepEqual(await counts(store, "unknown"), { subscriptions: 0, registrations: 0 });
  });
});

Deno.test("Per-app counts stay exact when writers race on one client and app", async () => {
  await withStore(async (store) => {
    const subs = store.subscriptions;
    const topics = (p: string, n: number) => Array.from({ length: n }, (_, i) => `${p}${i}`);
    // Two processes subscribing one client to different (and overlapping) topics at once.
    await Promise.all([
      subs.upsert("a", "c1", "web-push", topics("x", 30), T0 + HOUR, T0),
      subs.upsert("a", "c1", "web-push", topics("y", 30), T0 + HOUR, T0),
      subs.upsert("a", "c1", "web-push", topics("x", 10), T0 + HOUR, T0),
      subs.upsert("a", "c2", "web-push", topics("x", 5), T0 + HOUR, T0),
    ]);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 65, registrations: 2 });
    // Racing removals of the same subscriptions and of the whole client count once.
    await Promise.all([
      subs.remove("a", "c1", topics("x", 30)),
      subs.remove("a", "c1", topics("x", 30)),
      store.registrations.remove("c2"),
      store.registrations.remove("c2"),
    ]);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 30, registrations: 1 });
    await Promise.all([
      store.registrations.remove("c1"),
      subs.remove("a", "c1", topics("y", 30)),
      subs.sweepExpired(T0 + HOUR, 1000),
    ]);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
    assert.equal(await store.subscriptions.count(), 0);
  });
});

Deno.test("Per-app counts keep every atomic within KV's 100 checks: many topics, many clients", async () => {
  await withStore(async (store) => {
    const subs = store.subscriptions;
    const many = Array.from({ length: 250 }, (_, i) => `topic-${i}`);
    await subs.upsert("a", "c1", "web-push", many, T0 + HOUR, T0);
    await subs.upsert("b", "c1", "web-push", many.slice(0, 120), T0 + HOUR, T0);
    for (let i = 0; i < 120; i++) {
      await subs.upsert("a", `client-${i}`, "web-push", ["shared"], T0 + HOUR, T0);
    }
    assert.deepEqual(await counts(store, "a"), { subscriptions: 370, registrations: 121 });
    // One client in two apps: 370 subscriptions, removed in atomics of 50 with their pairs.
    assert.equal((await store.registrations.remove("c1")).length, 370);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 120, registrations: 120 });
    assert.deepEqual(await counts(store, "b"), { subscriptions: 0, registrations: 0 });
    // 120 clients' subscriptions expire at once: 120 pairs in the sweep.
    assert.equal(await subs.sweepExpired(T0 + HOUR, 1000), 120);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
  });
});

Deno.test("Subscriptions stored before the per-app counters are counted once refreshed, and never subtracted before", async () => {
  await withStore(async (store, kv) => {
    // Records as the relay wrote them before: no `c` mark, no per-app counters.
    const old = async (app: string, topic: string, clientId: string) => {
      const value: SubscriptionValue = { exp: T0 + HOUR, tr: "web-push" };
      await kv.atomic()
        .set(keys.subscription(app, topic, clientId), value)
        .set(keys.clientSubscription(clientId, app, topic), value.exp)
        .set(keys.subscriptionExpiry(value.exp, app, topic, clientId), null)
        .sum(keys.subscriptionCount, 1n)
        .commit();
    };
    await old("a", "t1", "c1");
    await old("a", "t2", "c1");
    await old("a", "t1", "c2");
    await old("a", "t1", "c3");
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
    // Refreshed: counted from now on.
    await store.subscriptions.upsert("a", "c1", "web-push", ["t1"], T0 + 2 * HOUR, T0);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 1, registrations: 1 });
    // Uncounted ones going never drive a counter below what it counted.
    await store.subscriptions.remove("a", "c2", ["t1"]);
    await store.registrations.remove("c1");
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
    assert.equal(await store.subscriptions.sweepExpired(T0 + HOUR, 1000), 1);
    assert.deepEqual(await counts(store, "a"), { subscriptions: 0, registrations: 0 });
    assert.equal(await store.subscriptions.count(), 0);
    // No per-pair count is left behind.
    let left = 0;
    for await (const _ of kv.list({ prefix: ["stat", "client-app"] })) left++;
    assert.equal(left, 0);
  });
});
