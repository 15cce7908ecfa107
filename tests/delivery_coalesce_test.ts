/**
 * Coalescing (CC/CD 70025 §8.3 MAY): for one client and one
 * topic the first update goes out at once; further updates within RELAY_COALESCE_MS of it are
 * merged into one trailing delivery with the latest timestamp and the highest priority;
 * different topics or clients are never merged; RELAY_COALESCE_MS=0 delivers every message.
 * The windows live in KV, so a restart or a second process merges into the same window.
 */

import assert from "node:assert/strict";
import { type Harness, harness, settle } from "./_harness.ts";
import { peerRelay } from "./fixtures/peer_relay.ts";
import { pendingWork } from "./_inspect.ts";

const WINDOW = { RELAY_COALESCE_MS: "2000" };

async function device(h: Harness, topics: string[]) {
  const dev = await h.registerDevice();
  await h.subscribe(dev["client-data"], topics);
  return dev;
}

/** Updates sent so far, per client id, as [topic, timestamp, priority]. */
async function received(h: Harness, sent = h.webPush.sent) {
  const byEndpoint = new Map<string, string>();
  const out: Record<string, [string, string, number][]> = {};
  for (const s of sent) {
    if (s.message.payload.kind !== "json" || s.message.payload.data.type !== "update") continue;
    const endpoint = s.target.transport === "web-push" ? s.target.endpoint : "";
    let client = byEndpoint.get(endpoint);
    if (!client) {
      for await (
        const e of h.kv.list<{ clientId: string; target: { endpoint?: string } }>({
          prefix: ["reg"],
        })
      ) {
        if (e.value.target.endpoint === endpoint) client = e.value.clientId;
      }
      byEndpoint.set(endpoint, client!);
    }
    const d = s.message.payload.data;
    (out[client!] ??= []).push([d.topic as string, d.timestamp as string, d.priority as number]);
  }
  return out;
}

async function push(h: Harness, m: Record<string, unknown>, at: number) {
  h.clock.now = at;
  const res = await h.push([m]);
  assert.equal(res.status, 200);
  await settle(h);
}

Deno.test("Coalescing: the first update goes out at once; later ones in the window merge into one trailing delivery with the latest timestamp and the highest priority", async () => {
  const h = await harness(WINDOW);
  try {
    const a = await device(h, ["t"]);
    await settle(h);
    const t0 = h.clock.now;
    await push(h, { topic: "t", priority: 50, timestamp: "2026-11-24T09:15:01Z" }, t0);
    assert.deepEqual(await received(h), { [a["client-id"]]: [["t", "2026-11-24T09:15:01Z", 50]] });
    await push(h, { topic: "t", priority: 20, timestamp: "2026-11-24T09:15:05Z" }, t0 + 500);
    await push(h, { topic: "t", priority: 90, timestamp: "2026-11-24T09:15:03Z" }, t0 + 1000);
    h.clock.now = t0 + 1999;
    await h.relay.engine.tick();
    assert.equal(
      (await received(h))[a["client-id"]]!.length,
      1,
      "nothing before the window closes",
    );

    h.clock.now = t0 + 2000;
    await h.relay.engine.tick();
    assert.deepEqual((await received(h))[a["client-id"]], [
      ["t", "2026-11-24T09:15:01Z", 50],
      ["t", "2026-11-24T09:15:05Z", 90],
    ]);
    assert.equal(h.webPush.sent.at(-1)!.message.urgency, "high");
    assert.equal(h.relay.metrics.deliveries.get({ transport: "any", outcome: "coalesced" }), 2);

    // The window is over: the next update goes out at once and opens a new one.
    await push(h, { topic: "t", priority: 50, timestamp: "2026-11-24T09:15:09Z" }, t0 + 2500);
    assert.equal((await received(h))[a["client-id"]]!.length, 3);
    assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: updates inside one push request merge too, and a window with nothing merged sends nothing more", async () => {
  const h = await harness(WINDOW);
  try {
    const a = await device(h, ["t", "quiet"]);
    await settle(h);
    const t0 = h.clock.now;
    h.clock.now = t0;
    await h.push([
      { topic: "t", priority: 10, timestamp: "2026-11-24T09:15:01Z" },
      { topic: "t", priority: 60, timestamp: "2026-11-24T09:15:02Z" },
      { topic: "t", priority: 30, timestamp: "2026-11-24T09:15:03Z" },
      { topic: "quiet", timestamp: "2026-11-24T09:15:01Z" },
    ]);
    await settle(h);
    h.clock.now = t0 + 2000;
    await h.relay.engine.tick();
    assert.deepEqual((await received(h))[a["client-id"]]!.sort(), [
      ["quiet", "2026-11-24T09:15:01Z", 50],
      ["t", "2026-11-24T09:15:01Z", 10],
      ["t", "2026-11-24T09:15:03Z", 60],
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: different topics are never merged", async () => {
  const h = await harness(WINDOW);
  try {
    const a = await device(h, ["t1", "t2"]);
    await settle(h);
    const t0 = h.clock.now;
    await push(h, { topic: "t1", priority: 10, timestamp: "2026-11-24T09:15:01Z" }, t0);
    await push(h, { topic: "t2", priority: 20, timestamp: "2026-11-24T09:15:02Z" }, t0 + 100);
    await push(h, { topic: "t1", priority: 30, timestamp: "2026-11-24T09:15:03Z" }, t0 + 200);
    await push(h, { topic: "t2", priority: 40, timestamp: "2026-11-24T09:15:04Z" }, t0 + 300);
    h.clock.now = t0 + 2100;
    await h.relay.engine.tick();
    // Sends run concurrently, so only the set is compared, not the arrival order.
    assert.deepEqual((await received(h))[a["client-id"]]!.sort(), [
      ["t1", "2026-11-24T09:15:01Z", 10],
      ["t1", "2026-11-24T09:15:03Z", 30],
      ["t2", "2026-11-24T09:15:02Z", 20],
      ["t2", "2026-11-24T09:15:04Z", 40],
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: never across clients: each gets the merge of the changes it did not make (§7.1), and a window's opener gets the next change of someone else at once", async () => {
  const h = await harness(WINDOW);
  try {
    const a = (await device(h, ["t"]))["client-id"];
    const b = (await device(h, ["t"]))["client-id"];
    await settle(h);
    const t0 = h.clock.now;
    // A's change opens the window: B gets it at once, A nothing (its own change).
    await push(
      h,
      { topic: "t", priority: 10, timestamp: "2026-11-24T09:15:01Z", "client-id": a },
      t0,
    );
    assert.deepEqual(await received(h), { [b]: [["t", "2026-11-24T09:15:01Z", 10]] });
    // B's change is A's first update in this window: A gets it at once.
    await push(
      h,
      { topic: "t", priority: 20, timestamp: "2026-11-24T09:15:02Z", "client-id": b },
      t0 + 100,
    );
    assert.deepEqual((await received(h))[a], [["t", "2026-11-24T09:15:02Z", 20]]);
    // Then one of A's changes and one without a client-id, both merged.
    await push(
      h,
      { topic: "t", priority: 90, timestamp: "2026-11-24T09:15:05Z", "client-id": a },
      t0 + 200,
    );
    await push(h, { topic: "t", priority: 40, timestamp: "2026-11-24T09:15:04Z" }, t0 + 300);
    assert.equal(Object.values(await received(h)).flat().length, 2);

    h.clock.now = t0 + 2000;
    await h.relay.engine.tick();
    assert.deepEqual(await received(h), {
      // A: not its own change (priority 90), only the anonymous one.
      [a]: [["t", "2026-11-24T09:15:02Z", 20], ["t", "2026-11-24T09:15:04Z", 40]],
      // B: not its own change; A's and the anonymous one merged.
      [b]: [["t", "2026-11-24T09:15:01Z", 10], ["t", "2026-11-24T09:15:05Z", 90]],
    });
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: a client that made every merged change gets no trailing delivery", async () => {
  const h = await harness(WINDOW);
  try {
    const a = (await device(h, ["t"]))["client-id"];
    const b = (await device(h, ["t"]))["client-id"];
    await settle(h);
    const t0 = h.clock.now;
    await push(h, { topic: "t", timestamp: "2026-11-24T09:15:01Z" }, t0);
    await push(h, { topic: "t", timestamp: "2026-11-24T09:15:02Z", "client-id": a }, t0 + 100);
    h.clock.now = t0 + 2000;
    await h.relay.engine.tick();
    assert.deepEqual(await received(h), {
      [a]: [["t", "2026-11-24T09:15:01Z", 50]],
      [b]: [["t", "2026-11-24T09:15:01Z", 50], ["t", "2026-11-24T09:15:02Z", 50]],
    });
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: RELAY_COALESCE_MS=0 delivers every message", async () => {
  const h = await harness({ RELAY_COALESCE_MS: "0" });
  try {
    const a = (await device(h, ["t"]))["client-id"];
    await settle(h);
    await h.push([
      { topic: "t", timestamp: "2026-11-24T09:15:01Z" },
      { topic: "t", timestamp: "2026-11-24T09:15:02Z" },
    ]);
    await h.push([{ topic: "t", timestamp: "2026-11-24T09:15:03Z" }]);
    await settle(h);
    assert.deepEqual((await received(h))[a]!.map((u) => u[1]).sort(), [
      "2026-11-24T09:15:01Z",
      "2026-11-24T09:15:02Z",
      "2026-11-24T09:15:03Z",
    ]);
    assert.equal(h.relay.metrics.deliveries.get({ transport: "any", outcome: "coalesced" }), 0);
    assert.deepEqual((await h.dump()).filter((k) => k.startsWith('["cw"')), []);
  } finally {
    await h.close();
  }
});

Deno.test("Coalescing: windows live in KV: after a restart, and across two processes, updates merge into the same single trailing delivery", async () => {
  const h = await harness(WINDOW);
  const other = await peerRelay(h, WINDOW);
  try {
    const a = (await device(h, ["t"]))["client-id"];
    await settle(h);
    const t0 = h.clock.now;
    await push(h, { topic: "t", priority: 30, timestamp: "2026-11-24T09:15:01Z" }, t0);
    await push(h, { topic: "t", priority: 80, timestamp: "2026-11-24T09:15:02Z" }, t0 + 100);
    // The first process stops; the second one takes the next push for the same topic.
    await h.relay.engine.shutdown(1000);
    h.clock.now = t0 + 200;
    const res = await other.push([{ topic: "t", priority: 40, timestamp: "2026-11-24T09:15:03Z" }]);
    assert.equal(res.status, 200);
    await other.relay.engine.idle();
    assert.equal(other.webPush.sent.length, 0, "merged into the open window");
    h.clock.now = t0 + 2000;
    await other.relay.engine.tick();
    assert.deepEqual(await received(h), { [a]: [["t", "2026-11-24T09:15:01Z", 30]] });
    assert.deepEqual((await received(h, other.webPush.sent))[a], [[
      "t",
      "2026-11-24T09:15:03Z",
      80,
    ]]);
    await other.relay.engine.tick();
    assert.equal(other.webPush.sent.length, 1);
    assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
  } finally {
    await other.relay.engine.shutdown(1000);
    await h.close();
  }
});

for (const coalesce of ["0", "2000"]) {
  Deno.test(`KV limits: a 1 MiB push of 400 messages with the longest topics and client-ids is recorded and delivered (RELAY_COALESCE_MS=${coalesce})`, async () => {
    const h = await harness({ RELAY_COALESCE_MS: coalesce });
    try {
      // Topics of 256 four-byte characters: about 1 KiB of UTF-8 each.
      const long = (i: number) => `${i}`.padStart(4, "0") + "😀".repeat(252);
      // client-ids are limited to 256 UTF-16 units: three-byte characters, about 770 bytes.
      const longId = (i: number) => `${i}`.padStart(4, "0") + "€".repeat(252);
      const topics = [...Array(200).keys()].map(long);
      const dev = await h.registerDevice();
      for (let i = 0; i < topics.length; i += 20) {
        assert.equal((await h.subscribe(dev["client-data"], topics.slice(i, i + 20))).status, 200);
      }
      await settle(h);
      h.webPush.sent = [];
      const messages = [...Array(400).keys()].map((i) => ({
        topic: topics[i % topics.length],
        "client-id": longId(i),
        timestamp: "2026-11-24T09:15:02Z",
      }));
      const res = await h.push(messages);
      assert.equal(res.status, 200, await res.clone().text());
      assert.deepEqual(await res.json(), { "push-response": {} });
      await settle(h);
      h.clock.now += 2000;
      await h.relay.engine.tick();
      const updates = h.webPush.sent.length;
      // Without coalescing every message goes out; with it, each topic's first at once and its
      // second in a trailing update.
      assert.equal(updates, 400);
      assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
    } finally {
      await h.close();
    }
  });
}
