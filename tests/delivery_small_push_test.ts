/**
 * The common push: one topic with a few devices (README "Benchmarks"). Its fan-out starts from
 * the subscriber list the push's look-up read, instead of listing the topic again; once every
 * subscriber is listed it commits its progress only every `commitEvery` subscribers (the final
 * commit ends it), not on the clock; and it shares KV commits with other pushes (group commit).
 * None of this changes who gets what (CC/CD 70025 §5.4, §6.2.2.1).
 */

import assert from "node:assert/strict";
import type { Entry, OutboxMessage } from "../lib/model.ts";
import type { Advance } from "../lib/store/mod.ts";
import { type Harness, harness, settle } from "./_harness.ts";
import { pendingWork } from "./_inspect.ts";

/** Counts calls of the store's subscription pages and outbox advances from now on. */
function count(h: Harness) {
  const calls = { pages: 0, advances: 0 };
  const subs = h.relay.store.subscriptions;
  const page = subs.page.bind(subs);
  subs.page = (...args) => (calls.pages++, page(...args));
  const outbox = h.relay.store.outbox;
  const advance = outbox.advance.bind(outbox);
  outbox.advance = (
    entry: Entry<OutboxMessage>,
    step: Advance,
  ) => (calls.advances++, advance(entry, step));
  return calls;
}

async function subscribed(h: Harness, n: number, topic: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const dev = await h.registerDevice();
    assert.equal((await h.subscribe(dev["client-data"], [topic])).status, 200);
    ids.push(dev["client-id"]);
  }
  await settle(h);
  h.webPush.sent = [];
  return ids;
}

Deno.test("A push to a small topic fans out from its look-up's list: the topic is not listed again, and every subscriber gets it", async () => {
  await using h = await closing(await harness());
  await subscribed(h, 3, "few");
  const calls = count(h);
  assert.equal((await h.push([{ topic: "few" }])).status, 200);
  await settle(h);
  assert.equal(calls.pages, 0);
  assert.equal(h.webPush.sent.length, 3);
  assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
});

Deno.test("A subscription that expired between the look-up and the send gets nothing (CC/CD 70025 §6.2.2.1), the listed one included", async () => {
  await using h = await closing(await harness());
  await subscribed(h, 2, "t");
  // One subscription ends in a minute; the push's look-up lists it, its send comes after.
  const dev = await h.registerDevice();
  const soon = new Date(h.now() + 60_000).toISOString();
  assert.equal((await h.subscribe(dev["client-data"], ["t"], { expires: soon })).status, 200);
  await settle(h);
  h.webPush.sent = [];
  const lookUp = h.relay.store.subscriptions.lookUp.bind(h.relay.store.subscriptions);
  h.relay.store.subscriptions.lookUp = async (...args) => {
    const found = await lookUp(...args);
    h.clock.now += 120_000; // the clock moves on while the push is recorded
    return found;
  };
  assert.equal((await h.push([{ topic: "t" }])).status, 200);
  await settle(h);
  assert.equal(h.webPush.sent.length, 2);
});

Deno.test("A topic with more subscribers than a look-up lists fans out page by page as before", async () => {
  await using h = await closing(await harness());
  await subscribed(h, 70, "many");
  const calls = count(h);
  assert.equal((await h.push([{ topic: "many" }])).status, 200);
  await settle(h);
  assert.ok(calls.pages >= 1);
  assert.equal(h.webPush.sent.length, 70);
});

Deno.test("A small fan-out slower than the progress cadence commits once, at its end, once every subscriber is listed", async () => {
  await using h = await closing(await harness());
  await subscribed(h, 2, "slow");
  const calls = count(h);
  // Answers come after the 250 ms cadence of progress commits.
  h.webPush.respond = () =>
    new Promise((r) => setTimeout(() => r({ kind: "delivered", status: 201 }), 400));
  assert.equal((await h.push([{ topic: "slow" }])).status, 200);
  await settle(h);
  assert.equal(h.webPush.sent.length, 2);
  assert.equal(calls.advances, 1);
  assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
});

Deno.test("Once listed, a fan-out still commits its progress every commitEvery subscribers (what a crash can send again stays bounded)", async () => {
  await using h = await closing(await harness({}, { delivery: { commitEvery: 10 } }));
  await subscribed(h, 30, "thirty");
  const calls = count(h);
  assert.equal((await h.push([{ topic: "thirty" }])).status, 200);
  await settle(h);
  assert.equal(h.webPush.sent.length, 30);
  assert.ok(calls.advances >= 2, `${calls.advances} commits`);
});

Deno.test("Group commit: concurrent single-subscriber pushes share KV commits for their records and their fan-outs' ends", async () => {
  await using h = await closing(await harness());
  const topics = ["a", "b", "c", "d", "e", "f", "g", "h"];
  for (const t of topics) await subscribed(h, 1, t);
  const before = h.relay.store.kv.groupStats;
  const answers = await Promise.all(
    Array.from({ length: 40 }, (_, i) => h.push([{ topic: topics[i % topics.length] }])),
  );
  assert.ok(answers.every((r) => r.status === 200));
  await settle(h);
  assert.equal(h.webPush.sent.length, 40);
  const after = h.relay.store.kv.groupStats;
  // 40 records and 40 fan-out ends: far fewer commits than parts.
  const parts = after.parts - before.parts;
  const groups = after.groups - before.groups;
  assert.ok(parts >= 40, `${parts} parts`);
  assert.ok(groups < parts / 2, `${groups} commits for ${parts} parts`);
  assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
});

/** `await using` for a harness. */
function closing(h: Harness): Harness & AsyncDisposable {
  return Object.assign(h, { [Symbol.asyncDispose]: () => h.close() });
}
