/**
 * Coalescing as pure functions (lib/delivery/coalesce.ts, CC/CD 70025 §8.3 MAY): the plan for
 * one topic's messages against its window, without a relay or KV.
 */

import assert from "node:assert/strict";
import { mergeAggregate, planTopic, trailingFor } from "../../lib/delivery/coalesce.ts";
import type { CoalesceWindow, Entry, OutboxMessage, PushMessage } from "../../lib/model.ts";

const NOW = Date.UTC(2026, 0, 1, 12);
let ids = 0;
const ctx = () => ({
  now: NOW,
  ttlMs: 60_000,
  lease: { owner: "me", until: NOW + 1000 },
  newId: () => `id${++ids}`,
  coalesceMs: 2000,
});
const msg = (priority: number, second: number, clientId?: string): PushMessage => ({
  topic: "t",
  priority,
  timestamp: new Date(NOW - 60_000 + second * 1000).toISOString(),
  ...(clientId !== undefined ? { clientId } : {}),
});

Deno.test("planTopic(): the first update goes out at once and opens a window; the rest merge into one trailing update", () => {
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [msg(10, 1), msg(90, 2), msg(30, 3)],
    window: null,
    trailing: null,
  }, ctx());
  assert.equal(plan.immediate.length, 1);
  assert.equal(plan.immediate[0]!.priority, 10);
  assert.equal(plan.merged, 2);
  assert.equal(plan.window.until, NOW + 2000);
  const t = plan.trailing!.value;
  assert.equal(t.notBefore, NOW + 2000);
  assert.equal(t.lease.owner, "");
  // The latest timestamp and the highest priority of what was merged.
  assert.equal(t.priority, 90);
  assert.equal(t.timestamp, msg(30, 3).timestamp);
  assert.equal(plan.window.trailing, t.id);
});

Deno.test("planTopic(): a window whose trailing update already started opens a new window", () => {
  const window: CoalesceWindow = {
    openedAt: NOW - 500,
    until: NOW + 1500,
    openerServed: true,
    trailing: "old",
  };
  const started: Entry<OutboxMessage> = {
    key: ["outbox", "old"],
    versionstamp: "v",
    value: {
      ...planTopic(
        { app: "a", topic: "t", messages: [msg(1, 1)], window: null, trailing: null },
        ctx(),
      )
        .immediate[0]!,
      id: "old",
      cursor: "c1",
    },
  };
  const plan = planTopic(
    { app: "a", topic: "t", messages: [msg(5, 5)], window, trailing: started },
    ctx(),
  );
  assert.equal(plan.immediate.length, 1);
  assert.equal(plan.merged, 0);
  assert.equal(plan.window.openedAt, NOW);
});

Deno.test("planTopic(): the window's opener gets the next update of someone else at once, and only that", () => {
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [msg(10, 1, "alice"), msg(20, 2, "bob"), msg(30, 3, "bob")],
    window: null,
    trailing: null,
  }, ctx());
  assert.deepEqual(plan.immediate.map((m) => [m.priority, m.only]), [[10, undefined], [
    20,
    "alice",
  ]]);
  const t = plan.trailing!.value.trailing!;
  // Alice already got bob's first update: only the one after it is left for her.
  assert.equal(trailingFor(t, "alice")!.priority, 30);
  // Bob gets nothing of his own; carol gets everything merged.
  assert.equal(trailingFor(t, "bob"), null);
  assert.equal(trailingFor(t, "carol")!.priority, 30);
});

Deno.test("mergeAggregate() keeps the latest timestamp and the highest priority", () => {
  const a = mergeAggregate(undefined, { timestamp: "2026-01-01T00:00:02Z", priority: 10 });
  const b = mergeAggregate(a, { timestamp: "2026-01-01T00:00:01Z", priority: 80 });
  assert.deepEqual(b, {
    timestamp: "2026-01-01T00:00:02Z",
    ms: Date.UTC(2026, 0, 1, 0, 0, 2),
    priority: 80,
  });
});

// ---------------------------------------------------------------------------------------------
// client-id arrays (README "The gateway protocol") and sync-tokens

const withIds = (priority: number, second: number, ids: string[], syncToken?: string) => ({
  ...msg(priority, second),
  clientId: ids.length === 1 ? ids[0]! : ids,
  ...(syncToken !== undefined ? { syncToken } : {}),
});

Deno.test("planTopic(): with a client-id array, each named client counts as an originator: none gets a merged update of only its own changes", () => {
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [msg(10, 1), withIds(20, 2, ["alice", "bob"]), withIds(30, 3, ["bob", "carol"])],
    window: null,
    trailing: null,
  }, ctx());
  assert.equal(plan.immediate.length, 1);
  const t = plan.trailing!.value.trailing!;
  assert.equal(trailingFor(t, "bob"), null);
  assert.equal(trailingFor(t, "alice")!.priority, 30);
  assert.equal(trailingFor(t, "carol")!.priority, 20);
  assert.equal(trailingFor(t, "dave")!.priority, 30);
});

Deno.test("planTopic(): a window opened by a client-id array serves each of its openers with the next update not excluding it, at once", () => {
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [
      withIds(10, 1, ["alice", "bob", "carol"]),
      withIds(20, 2, ["bob"]),
      withIds(30, 3, ["alice"]),
      withIds(40, 4, ["carol"]),
    ],
    window: null,
    trailing: null,
  }, ctx());
  // The opener goes to everyone but its three; alice and carol get bob's change at once, then
  // bob gets alice's (his first from someone else); carol's own change serves nobody new.
  assert.deepEqual(plan.immediate.map((m) => [m.priority, m.only]), [
    [10, undefined],
    [20, ["alice", "carol"]],
    [30, "bob"],
  ]);
  assert.equal(plan.immediate[1]!.clientId, undefined);
  assert.equal(plan.window.openerServed, true);
  const t = plan.trailing!.value.trailing!;
  // What each opener still gets: the merged updates after its own first one, none of its own.
  assert.equal(trailingFor(t, "alice")!.priority, 40); // 30 was hers, 40 carol's
  assert.equal(trailingFor(t, "carol")!.priority, 30); // 40 was hers
  assert.equal(trailingFor(t, "bob")!.priority, 40); // after his 30
  assert.equal(trailingFor(t, "dave")!.priority, 40);
});

Deno.test("planTopic(): an opener excluded from the next update too waits for the one after", () => {
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [withIds(10, 1, ["alice", "bob"]), withIds(20, 2, ["alice"]), msg(30, 3)],
    window: null,
    trailing: null,
  }, ctx());
  assert.deepEqual(plan.immediate.map((m) => [m.priority, m.only]), [
    [10, undefined],
    [20, "bob"],
    [30, "alice"],
  ]);
  const t = plan.trailing!.value.trailing!;
  assert.equal(trailingFor(t, "alice"), null);
  assert.equal(trailingFor(t, "bob")!.priority, 30);
});

Deno.test("planTopic(): a merged trailing update carries the latest message's sync-token, none when the latest had none", () => {
  const run = (tokens: (string | undefined)[]) =>
    planTopic({
      app: "a",
      topic: "t",
      messages: tokens.map((s, i) => withIds(50, i, [], s)),
      window: null,
      trailing: null,
    }, ctx());
  const a = run(["s1", "s2", "s3"]);
  assert.equal(a.immediate[0]!.syncToken, "s1");
  assert.equal(a.trailing!.value.syncToken, "s3");
  assert.equal(run(["s1", "s2", undefined]).trailing!.value.syncToken, undefined);
  assert.equal(run([undefined, undefined, "s3"]).trailing!.value.syncToken, "s3");
});

Deno.test("planTopic(): what a record cannot track within its size budget is sent at once instead of merged", () => {
  const many = Array.from({ length: 100 }, (_, i) => `${"x".repeat(250)}-${i}`);
  const plan = planTopic({
    app: "a",
    topic: "t",
    messages: [msg(10, 1), withIds(20, 2, many), withIds(30, 3, many)],
    window: null,
    trailing: null,
  }, ctx());
  assert.equal(plan.immediate.length, 3);
  assert.equal(plan.merged, 0);
  // An opener array too large to track opens no window: the next update goes out at once.
  const big = planTopic({
    app: "a",
    topic: "t",
    messages: [withIds(10, 1, many), msg(20, 2)],
    window: null,
    trailing: null,
  }, ctx());
  assert.deepEqual(big.immediate.map((m) => m.priority), [10, 20]);
  assert.equal(big.merged, 0);
});
