/**
 * The admin API's dead letters (README "Admin API and page"): listed newest first without
 * secrets (older records too), filtered and paginated by an opaque cursor, retried as new work
 * (a fan-out's expired rest resumes after its cursor) and deleted.
 */

import assert from "node:assert/strict";
import type { DeadLetter } from "../lib/model.ts";
import { createSealer } from "../lib/seal.ts";
import { keys } from "../lib/store/mod.ts";
import { APP2_TOKEN, type Harness, harness, settle, T0 } from "./_harness.ts";
import { ADMIN, admin, json, refused } from "./_admin.ts";
import { listDeadLetters, listDeliveries } from "./_inspect.ts";

/** The keyed topic hash, with the harness's RELAY_SECRET (32 bytes of 7). */
async function topicHash(app: string, topic: string): Promise<string> {
  return await (await createSealer(new Uint8Array(32).fill(7))).topicHash(app, topic);
}

/** A time on the harness clock as the admin API writes it (RFC 3339, whole seconds). */
const at = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

/** Three dead letters (app1 at T0, app2 at T0+1s, app1 at T0+2s) and one from an older relay. */
async function deadLetters(h: Harness) {
  const [d1, d2] = [await h.registerDevice(), await h.registerDevice()];
  await h.subscribe(d1["client-data"], ["secret-topic-one"]);
  await h.subscribe(d2["client-data"], ["secret-topic-two"], { token: APP2_TOKEN });
  await settle(h);
  h.webPush.respond = () => refused;
  await h.push([{ topic: "secret-topic-one" }]);
  await settle(h);
  h.clock.now += 1000;
  await h.push([{ topic: "secret-topic-two" }], { token: APP2_TOKEN });
  await settle(h);
  h.clock.now += 1000;
  await h.push([{ topic: "secret-topic-one", priority: 90 }]);
  await settle(h);
  // As a relay before these fields wrote it: no app, transport, topic hash or last status.
  const old: DeadLetter = {
    id: "000000000oldrecord0001",
    dueAt: h.now() - 10_000,
    clientId: d1["client-id"],
    reason: "ack",
    payload: { kind: "json", data: { type: "subscribed", topics: ["secret-topic-one"] } },
    priority: 50,
    ttl: 0,
    attempts: 8,
    createdAt: h.now() - 20_000,
    expiresAt: h.now() + 3600_000,
    deadAt: h.now() - 10_000,
    why: "too many attempts",
    lastError: "timeout",
  };
  await h.kv.set(keys.deadLetter(old.id), old);
  h.webPush.respond = () => ({ kind: "delivered", status: 201 });
  return { d1, d2, old };
}

Deno.test("Admin dead letters: newest first, with app, transport, topic hash, attempts, last status and reason, never a secret", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN });
  try {
    const { d1, d2, old } = await deadLetters(h);
    const page = await json(await admin(h, "/admin/dead-letters"));
    const list = page["dead-letters"];
    assert.equal(page["next-cursor"], null);
    assert.deepEqual(
      list.map((d: Record<string, unknown>) => [d.app, d["client-id"], d["dead-at"]]),
      [
        ["app1", d1["client-id"], at(T0 + 2000)],
        ["app2", d2["client-id"], at(T0 + 1000)],
        ["app1", d1["client-id"], at(T0)],
        [null, d1["client-id"], at(old.deadAt)],
      ],
    );
    const [newest] = list;
    const stored = (await listDeadLetters(h.relay.store)).find((d) => d.id === newest.id)!;
    assert.deepEqual(newest, {
      id: stored.id,
      app: "app1",
      transport: "web-push",
      "client-id": d1["client-id"],
      "topic-hash": await topicHash("app1", "secret-topic-one"),
      kind: "retry",
      attempts: 1,
      "last-status": 400,
      reason: "refused",
      "last-error": "push service answered 400",
      "created-at": at(T0 + 2000),
      "dead-at": at(T0 + 2000),
      "expires-at": at(T0 + 86400_000 + 2000),
      retryable: true,
    });
    // The older record lists with what it has.
    assert.deepEqual(
      [list[3].transport, list[3]["topic-hash"], list[3]["last-status"], list[3].kind],
      [null, null, null, "ack"],
    );
    // Never a topic, payload, endpoint or key.
    const text = JSON.stringify(page);
    assert.doesNotMatch(text, /secret-topic|push\.example\.com|AAECAwQFBgcICQoLDA0ODw|payload/);
    const keysOfDevice = (await h.relay.store.registrations.get(d1["client-id"]))!.target;
    assert.ok(keysOfDevice.transport === "web-push" && !text.includes(keysOfDevice.p256dh));
  } finally {
    await h.close();
  }
});

Deno.test("Admin dead letters: filtered by app and transport, paginated by an opaque cursor; bad queries are 400", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN });
  try {
    await deadLetters(h);
    const ids = async (query: string) =>
      (await json(await admin(h, `/admin/dead-letters${query}`)))["dead-letters"].map(
        (d: { id: string; app: string }) => d.app,
      );
    assert.deepEqual(await ids("?app=app2"), ["app2"]);
    assert.deepEqual(await ids("?app=app1&transport=web-push"), ["app1", "app1"]);
    assert.deepEqual(await ids("?transport=web-push"), ["app1", "app2", "app1"]);
    assert.deepEqual(await ids("?transport=fcm"), []);
    assert.deepEqual(await ids("?app=&transport=&limit=&cursor="), ["app1", "app2", "app1", null]);

    const all = (await json(await admin(h, "/admin/dead-letters")))["dead-letters"];
    const paged: unknown[] = [];
    let cursor: string | null = "";
    while (cursor !== null) {
      const q = `?limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const page: Record<string, unknown> = await json(await admin(h, `/admin/dead-letters${q}`));
      paged.push(...(page["dead-letters"] as unknown[]));
      cursor = page["next-cursor"] as string | null;
      assert.ok(cursor === null || !/^0|oldrecord/.test(cursor), "the cursor is opaque");
    }
    assert.deepEqual(paged, all);
    const two = await json(await admin(h, "/admin/dead-letters?limit=2&app=app1"));
    assert.equal(two["dead-letters"].length, 2);
    assert.equal(two["next-cursor"], null);

    const before = await h.dump();
    for (
      const q of [
        "?limit=0",
        "?limit=101",
        "?limit=ten",
        "?transport=carrier-pigeon",
        "?cursor=not-ours",
        `?app=${"a".repeat(301)}`,
      ]
    ) {
      const body = await json(await admin(h, `/admin/dead-letters${q}`), 400);
      assert.match(body.error.code, /^invalid-/, q);
    }
    assert.deepEqual(await h.dump(), before);
  } finally {
    await h.close();
  }
});

Deno.test("Admin dead letters: a retry queues it again as new work (202) and it is delivered; delete is 204; unknown ids 404", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN });
  try {
    const { d1, old } = await deadLetters(h);
    const [newest, second] = (await json(await admin(h, "/admin/dead-letters")))["dead-letters"];
    h.webPush.sent = [];
    const res = await json(
      await admin(h, `/admin/dead-letters/${newest.id}/retry`, { method: "POST" }),
      202,
    );
    assert.match(res.queued, /^[0-9a-z]{9}/);
    await settle(h);
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    const { timestamp: _t, ...update } = h.webPush.payloads()[0]!;
    assert.deepEqual(update, { type: "update", topic: "secret-topic-one", priority: 90 });
    // A new delivery: its first attempt carries the full RELAY_TTL again.
    assert.equal(h.webPush.sent[0]!.message.ttl, 86400);
    assert.deepEqual(await listDeliveries(h.relay.store), []);
    const left = (await listDeadLetters(h.relay.store)).map((d) => d.id);
    assert.equal(left.includes(newest.id), false);
    // Retried once only.
    const again = await admin(h, `/admin/dead-letters/${newest.id}/retry`, { method: "POST" });
    assert.equal((await json(again, 404)).error.code, "not-found");

    // The older record (an acknowledgement) can be retried too.
    await json(await admin(h, `/admin/dead-letters/${old.id}/retry`, { method: "POST" }), 202);
    await settle(h);
    await settle(h);
    assert.equal(h.webPush.sent.length, 2);
    assert.equal(h.webPush.sent[1]!.target.transport, "web-push");
    assert.equal(
      (await h.relay.store.registrations.get(d1["client-id"]))?.clientId,
      d1["client-id"],
    );

    const del = await admin(h, `/admin/dead-letters/${second.id}`, { method: "DELETE" });
    assert.equal(del.status, 204);
    assert.equal(
      (await admin(h, `/admin/dead-letters/${second.id}`, { method: "DELETE" })).status,
      404,
    );
    for (const id of ["nope", "..", "x".repeat(80)]) {
      const r = await admin(h, `/admin/dead-letters/${encodeURIComponent(id)}/retry`, {
        method: "POST",
      });
      assert.equal(r.status, 404, id);
      await r.body?.cancel();
    }
    assert.equal((await listDeadLetters(h.relay.store)).length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("Admin dead letters: retrying a fan-out whose message expired midway resumes it after the subscriber where it stopped", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN, RELAY_TTL: "60" }, {
    delivery: { pageSize: 1, sendConcurrency: 1 },
  });
  try {
    const devices = [await h.registerDevice(), await h.registerDevice(), await h.registerDevice()];
    for (const d of devices) await h.subscribe(d["client-data"], ["topic-x"]);
    await settle(h);
    h.webPush.sent = [];
    // The first send takes longer than the message's TTL: the rest of the fan-out expires.
    h.webPush.respond = () => {
      h.clock.now += 61_000;
      return { kind: "delivered", status: 201 };
    };
    await h.push([{ topic: "topic-x", priority: 70 }]);
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    const [rest] = (await json(await admin(h, "/admin/dead-letters")))["dead-letters"];
    assert.deepEqual(
      [rest.kind, rest.app, rest.transport, rest["client-id"], rest.retryable],
      ["fan-out", "app1", null, null, true],
    );
    assert.equal(
      rest["topic-hash"],
      await topicHash("app1", "topic-x"),
    );

    h.webPush.respond = () => ({ kind: "delivered", status: 201 });
    await json(await admin(h, `/admin/dead-letters/${rest.id}/retry`, { method: "POST" }), 202);
    await settle(h);
    await settle(h);
    // The two subscribers after the first, once each, with the message's priority.
    const endpoints = h.webPush.sent.map((s) =>
      s.target.transport === "web-push" && s.target.endpoint
    );
    assert.equal(endpoints.length, 3);
    assert.equal(new Set(endpoints).size, 3);
    assert.ok(h.webPush.sent.slice(1).every((s) => s.message.priority === 70));
    assert.deepEqual(await listDeadLetters(h.relay.store), []);
    assert.equal(await h.relay.store.outbox.count(), 0);
  } finally {
    await h.close();
  }
});
