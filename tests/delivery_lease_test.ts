/**
 * Inside one test process: two relays (as two processes would run
 * them) on one KV with an injected clock. The outbox holds one record per message; a live
 * holder's work is never taken over; a dead holder's is, after the lease, and the holder's
 * next commit then fails so it stops; only the uncommitted in-flight part goes out twice; a
 * graceful shutdown hands work over at once; a queued delivery is claimed by one process.
 */

import assert from "node:assert/strict";
import { type Harness, harness, settle, T0 } from "./_harness.ts";
import { peerRelay } from "./fixtures/peer_relay.ts";
import type { OutboxMessage } from "../lib/model.ts";
import type { Sent } from "./_harness.ts";
import { pendingWork } from "./_inspect.ts";

const LEASE = 10_000;

/** A gate that holds sends until opened. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { opened, open };
}

async function subscribers(h: Harness, n: number, topic = "t"): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], [topic]);
    ids.push(dev["client-id"]);
  }
  await settle(h);
  h.webPush.sent = [];
  return ids;
}

function endpoints(sent: Sent[]): string[] {
  return sent.map((s) => (s.target.transport === "web-push" ? s.target.endpoint : ""));
}

async function outbox(h: Harness): Promise<OutboxMessage[]> {
  const out: OutboxMessage[] = [];
  for await (const e of h.kv.list<OutboxMessage>({ prefix: ["outbox"] })) out.push(e.value);
  return out;
}

Deno.test("Outbox: a push is answered 200 once one outbox record holds it (the message and a fan-out position), not one write per subscriber", async () => {
  const h = await harness({}, { delivery: { leaseMs: LEASE } });
  try {
    await subscribers(h, 30);
    const g = gate();
    h.webPush.respond = async () => {
      await g.opened;
      return { kind: "delivered", status: 201 };
    };
    const before = (await h.dump()).length;
    const res = await h.push([{ topic: "t", timestamp: "2026-11-24T09:15:02Z" }]);
    assert.equal(res.status, 200);
    const records = await outbox(h);
    assert.equal(records.length, 1);
    assert.equal(records[0]!.cursor, null);
    assert.equal(records[0]!.lease.owner, h.relay.engine.owner);
    assert.equal(records[0]!.timestamp, "2026-11-24T09:15:02Z");
    // The outbox record and this process's heartbeat: nothing per subscriber.
    const added = (await h.dump()).length - before;
    assert.ok(added <= 2, `${added} keys written`);
    assert.equal(await h.relay.store.queue.count(), 0);
    g.open();
    await settle(h);
    assert.equal(h.webPush.sent.length, 30);
    assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
  } finally {
    await h.close();
  }
});

Deno.test("Leases: a live holder is never taken over; a dead one (no heartbeat for the lease) is, from its last commit, and its own next commit then fails", async () => {
  const h = await harness({}, {
    delivery: { leaseMs: LEASE, sendConcurrency: 10, commitEvery: 20 },
  });
  const b = await peerRelay(h, {}, { delivery: { leaseMs: LEASE } });
  try {
    const ids = await subscribers(h, 200);
    const g = gate();
    let n = 0;
    // A delivers 100, then its next sends hang: it is "killed" in the middle of a fan-out.
    h.webPush.respond = async () => {
      if (++n > 100) await g.opened;
      return { kind: "delivered", status: 201 };
    };
    assert.equal((await h.push([{ topic: "t" }])).status, 200);
    await h.webPush.waitFor(110);
    // Let A's cursor commit for its first 100 deliveries land (on a loaded machine it can
    // trail the sends), so the duplicate bound below measures the design, not the scheduler.
    for (let i = 0; i < 200; i++) {
      const [entry] = await outbox(h);
      if (entry?.cursor && ids.filter((id) => id <= entry.cursor!).length >= 100) break;
      await new Promise((r) => setTimeout(r, 10));
    }

    // A is alive (its heartbeat is fresh): B's ticks leave its work alone.
    await b.relay.engine.tick();
    h.clock.now = T0 + LEASE - 1;
    await b.relay.engine.tick();
    assert.equal(b.webPush.sent.length, 0);
    const [held] = await outbox(h);
    assert.equal(held!.lease.owner, h.relay.engine.owner);
    assert.equal(held!.cursor !== null, true);

    // A stops beating (its timer would beat every LEASE / 3 of real time; the clock jumps).
    h.clock.now = T0 + LEASE + 1;
    await b.relay.engine.tick();
    assert.ok(b.logger.lines.some((l) => l.event === "fanout.takeover"));
    // B sent exactly the subscribers after A's last committed cursor (client-id order), so
    // only what A had in flight or had finished since that commit reaches a device twice: at
    // most 10 in flight plus 20 between commits.
    const fromA = endpoints(h.webPush.sent);
    const fromB = endpoints(b.webPush.sent);
    assert.equal(fromB.length, ids.filter((id) => id > held!.cursor!).length);
    assert.ok(fromB.length >= 100);
    assert.equal(new Set([...fromA, ...fromB]).size, 200);
    const duplicates = fromA.length + fromB.length - 200;
    assert.ok(duplicates >= 10 && duplicates <= 30, `${duplicates} duplicates`);
    assert.deepEqual(await outbox(h), []);

    // A's hanging sends end; its commit is refused (the lease moved), so it stops there.
    g.open();
    await h.relay.engine.idle();
    assert.ok(h.logger.lines.some((l) => l.event === "fanout.lease_lost"));
    assert.equal(h.webPush.sent.length, 110);
    assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
  } finally {
    await b.relay.engine.shutdown(1000);
    await h.close();
  }
});

Deno.test("Leases: a takeover fails if the holder's heartbeat was renewed after it was read", async () => {
  const h = await harness({}, { delivery: { leaseMs: LEASE } });
  try {
    const store = h.relay.store;
    const value: OutboxMessage = {
      id: "m1",
      app: "app1",
      topic: "t",
      timestamp: "2026-11-24T09:15:02Z",
      priority: 50,
      createdAt: T0,
      expiresAt: T0 + 86400_000,
      cursor: null,
      lease: { owner: "other", until: T0 + 600_000 },
    };
    await store.outbox.record({
      outbox: [{ value }],
      beat: { owner: "other", value: { until: T0 } },
    });
    const [entry] = await store.outbox.list(10);
    const holder = (await store.workers.getMany(["other"])).get("other")!;
    assert.equal(holder.value!.until, T0); // expired: looks dead
    await store.workers.beat("other", { until: T0 + LEASE }); // ... but it comes back
    assert.equal(
      await store.workers.claim(entry!, { owner: "me", until: T0 + 1000 }, holder),
      null,
    );
    // Read again, it is alive: the engine leaves it alone.
    await h.relay.engine.tick();
    assert.equal((await store.outbox.get("m1"))!.value.lease.owner, "other");
  } finally {
    await h.close();
  }
});

Deno.test("Shutdown: a stopping process finishes its in-flight sends, commits them and hands the rest over at once, so nothing goes out twice", async () => {
  const h = await harness({}, {
    delivery: { leaseMs: LEASE, sendConcurrency: 5, commitEvery: 10 },
  });
  const b = await peerRelay(h, {}, { delivery: { leaseMs: LEASE } });
  try {
    await subscribers(h, 120);
    h.webPush.respond = async () => {
      await new Promise((r) => setTimeout(r, 2));
      return { kind: "delivered", status: 201 };
    };
    assert.equal((await h.push([{ topic: "t" }])).status, 200);
    await h.webPush.waitFor(30);
    await h.relay.engine.shutdown(2000);
    const fromA = endpoints(h.webPush.sent);
    assert.ok(fromA.length < 120);
    const [released] = await outbox(h);
    assert.equal(released!.lease.owner, "");
    // Its heartbeat is gone too, and B does not wait for any lease to run out.
    assert.equal(
      (await h.relay.store.workers.getMany([h.relay.engine.owner])).get(h.relay.engine.owner)!
        .value,
      null,
    );
    await b.relay.engine.tick();
    const fromB = endpoints(b.webPush.sent);
    assert.equal(fromA.length + fromB.length, 120);
    assert.equal(new Set([...fromA, ...fromB]).size, 120);
    // Pushes that still arrive while stopping are recorded for others, not started here.
    assert.equal((await h.push([{ topic: "t" }])).status, 200);
    assert.equal((await outbox(h))[0]!.lease.owner, "");
  } finally {
    await b.relay.engine.shutdown(1000);
    await h.close();
  }
});

Deno.test("Queue: a due retry is claimed and sent by exactly one of two processes ticking together", async () => {
  const breaker = { threshold: 1000 };
  const h = await harness({}, { delivery: { leaseMs: LEASE, random: () => 0.5, breaker } });
  const b = await peerRelay(h, {}, { delivery: { leaseMs: LEASE, breaker } });
  try {
    await subscribers(h, 20);
    h.webPush.respond = () => ({ kind: "retry", status: 503, reason: "503" });
    await h.push([{ topic: "t" }]);
    await settle(h);
    assert.equal(await h.relay.store.queue.count(), 20);
    h.webPush.sent = [];
    h.webPush.respond = () => ({ kind: "delivered", status: 201 });
    h.clock.now = T0 + 1000;
    await Promise.all([h.relay.engine.tick(), b.relay.engine.tick(), h.relay.engine.tick()]);
    const all = [...endpoints(h.webPush.sent), ...endpoints(b.webPush.sent)];
    assert.equal(all.length, 20);
    assert.equal(new Set(all).size, 20);
    assert.equal(await h.relay.store.queue.count(), 0);
  } finally {
    await b.relay.engine.shutdown(1000);
    await h.close();
  }
});

Deno.test("Delivery starts at once: on an idle relay the first send leaves well within 100 ms of the 200", async () => {
  const h = await harness({}, { now: Date.now });
  try {
    await subscribers(h, 1);
    const answered = performance.now();
    assert.equal((await h.push([{ topic: "t" }])).status, 200);
    await h.webPush.waitFor(1, 100);
    assert.ok(performance.now() - answered < 100);
  } finally {
    await h.close();
  }
});
