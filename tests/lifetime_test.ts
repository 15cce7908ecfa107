/**
 * Registration lifetime (README "The client API"): a registration that has had no active
 * subscription for one refresh-interval is removed with everything it holds; its push
 * resource then answers 410 for at least 7 days, then 404. The sweep runs from the background
 * tick, bounded per run; registrations stored before lifetimes existed get one. All on the
 * harness clock.
 */

import assert from "node:assert/strict";
import { encodeBase64Url } from "../lib/encoding.ts";
import { createStore, keys } from "../lib/store/mod.ts";
import type { Registration } from "../lib/model.ts";
import { targetHash } from "../lib/targets.ts";
import { aes128gcmShaped, type Harness, harness } from "./_harness.ts";
import { listClientSubscriptions } from "./_inspect.ts";

const RI_MS = 604800 * 1000;
const DAY = 86400_000;
/** How long a removed registration's push resource answers 410. */
const INGRESS_GONE_MS = 7 * DAY;

async function postIngress(h: Harness, resource: string): Promise<number> {
  const res = await h.request(new URL(resource).pathname, {
    method: "POST",
    headers: { "content-encoding": "aes128gcm", ttl: "60" },
    body: aes128gcmShaped(),
  });
  await res.body?.cancel();
  return res.status;
}

async function registerWithIngress(h: Harness) {
  const res = await h.request("/registrations", {
    method: "POST",
    json: { ...(await webPush()), ingress: true },
  });
  assert.equal(res.status, 201);
  return await res.json() as {
    "client-id": string;
    "client-data": string;
    "push-resource": string;
  };
}

async function webPush() {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return {
    transport: "web-push",
    subscription: {
      endpoint: `https://push.example.com/wpush/${crypto.randomUUID()}`,
      keys: { p256dh: encodeBase64Url(raw), auth: "AAECAwQFBgcICQoLDA0ODw" },
    },
  };
}

/** Advances the harness clock to `at` and runs one background tick there. */
async function tickAt(h: Harness, at: number): Promise<void> {
  h.clock.now = at;
  await h.relay.engine.tick();
  await h.relay.engine.idle();
}

/** Every KV entry that mentions `needle` (records and indexes of one client). */
async function traces(h: Harness, needle: string): Promise<string[]> {
  return (await h.dump()).filter((l) => l.includes(needle));
}

Deno.test("Lifetime: a registration without subscriptions is removed after one refresh-interval with everything it holds; its push resource answers 410 for 7 days, then 404", async () => {
  const h = await harness();
  try {
    const t0 = h.now();
    const r = await registerWithIngress(h);
    const id = new URL(r["push-resource"]).pathname.slice("/push/".length);
    assert.equal(await postIngress(h, r["push-resource"]), 201);
    await h.relay.engine.idle();

    await tickAt(h, t0 + RI_MS - 1000);
    assert.notEqual(await h.relay.store.registrations.get(r["client-id"]), null);

    await tickAt(h, t0 + RI_MS + 1000);
    assert.equal(await h.relay.store.registrations.get(r["client-id"]), null);
    assert.deepEqual(await traces(h, r["client-id"]), [
      `["ingress","${id}"]={"clientId":"${r["client-id"]}","gone":true}`,
    ]);
    assert.equal(await postIngress(h, r["push-resource"]), 410);
    const subscribe = await h.subscribe(r["client-data"], ["t1"]);
    assert.equal(subscribe.status, 403);

    const removedAt = t0 + RI_MS + 1000;
    await tickAt(h, removedAt + INGRESS_GONE_MS - 1000);
    assert.equal(await postIngress(h, r["push-resource"]), 410);
    await tickAt(h, removedAt + INGRESS_GONE_MS + 1000);
    assert.equal(await postIngress(h, r["push-resource"]), 404);
    assert.deepEqual(await traces(h, r["client-id"]), []);
    assert.deepEqual(await traces(h, id), []);
  } finally {
    await h.close();
  }
});

Deno.test("Lifetime: an active subscription keeps a registration; it goes one refresh-interval after its latest subscription expired", async () => {
  const h = await harness();
  try {
    const t0 = h.now();
    const r = await h.registerDevice();
    const expires = t0 + 3 * DAY;
    const sub = await h.subscribe(r["client-data"], ["t1", "t2"], {
      expires: new Date(expires).toISOString(),
    });
    assert.equal(sub.status, 200);
    await h.relay.engine.idle();

    // Past one refresh-interval after the registration, but not after the subscription.
    await tickAt(h, t0 + RI_MS + 1000);
    assert.notEqual(await h.relay.store.registrations.get(r["client-id"]), null);
    // The expired subscriptions are swept long before; the registration still counts from
    // their expiry.
    assert.deepEqual(await listClientSubscriptions(h.relay.store, r["client-id"]), []);
    await tickAt(h, expires + RI_MS - 1000);
    assert.notEqual(await h.relay.store.registrations.get(r["client-id"]), null);
    await tickAt(h, expires + RI_MS + 1000);
    assert.equal(await h.relay.store.registrations.get(r["client-id"]), null);
    assert.deepEqual(await traces(h, r["client-id"]), []);
  } finally {
    await h.close();
  }
});

Deno.test("Lifetime: registering the same device again renews its lifetime", async () => {
  const h = await harness();
  try {
    const t0 = h.now();
    const body = await webPush();
    const first = await (await h.request("/registrations", { method: "POST", json: body })).json();
    h.clock.now = t0 + 5 * DAY;
    const again = await (await h.request("/registrations", { method: "POST", json: body })).json();
    assert.equal(again["client-id"], first["client-id"]);
    await tickAt(h, t0 + RI_MS + 1000);
    assert.notEqual(await h.relay.store.registrations.get(first["client-id"]), null);
    await tickAt(h, t0 + 5 * DAY + RI_MS + 1000);
    assert.equal(await h.relay.store.registrations.get(first["client-id"]), null);
  } finally {
    await h.close();
  }
});

Deno.test("Lifetime: registrations stored before lifetimes existed are scheduled once and removed when idle", async () => {
  const h = await harness();
  try {
    const t0 = h.now();
    // As an older relay stored it: a record and its index, nothing else.
    const reg: Registration = {
      clientId: "older-client-000000001",
      target: { transport: "fcm", token: "older-token" },
      createdAt: t0 - 400 * DAY,
    };
    const hash = await targetHash(reg.target);
    await h.kv.atomic().set(keys.registration(reg.clientId), reg)
      .set(keys.registrationByTarget(hash), reg.clientId).commit();
    await h.kv.delete(keys.meta("registration-lifetimes"));
    await tickAt(h, t0 + 1000);
    assert.equal((await h.kv.get(keys.meta("registration-lifetimes"))).value !== null, true);
    assert.deepEqual((await h.kv.get(keys.registrationLife(reg.clientId))).value, {
      renewedAt: t0 + 1000,
      checkAt: t0 + 1000 + RI_MS,
    });
    await tickAt(h, t0 + RI_MS);
    assert.notEqual(await h.relay.store.registrations.get(reg.clientId), null);
    await tickAt(h, t0 + RI_MS + 2000);
    assert.equal(await h.relay.store.registrations.get(reg.clientId), null);
    assert.deepEqual(await traces(h, reg.clientId), []);
  } finally {
    await h.close();
  }
});

Deno.test("Lifetime: one sweep looks at a bounded number of registrations; the next goes on", async () => {
  const h = await harness();
  try {
    const t0 = h.now();
    for (let i = 0; i < 30; i++) await h.registerDevice();
    const sweep = (limit: number) => h.relay.store.lifetimes.sweep(t0 + RI_MS + 1000, limit);
    assert.deepEqual(await sweep(20), { removed: 20, renewed: 0, forgotten: 0 });
    assert.deepEqual(await sweep(20), { removed: 10, renewed: 0, forgotten: 0 });
    assert.equal((await h.dump()).filter((l) => l.startsWith('["reg')).length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("Lifetime: a client that subscribes while the sweep is removing it keeps its registration and what it subscribed to", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.now();
    const store = createStore(kv, { now: () => now });
    const reg: Registration = {
      clientId: "racing-client",
      target: {
        transport: "web-push",
        endpoint: "https://push.example.com/r",
        p256dh: "p",
        auth: "a",
      },
      createdAt: now,
    };
    await store.bulk.registrations([{ reg, targetHash: await targetHash(reg.target) }]);
    await store.subscriptions.upsert("app1", reg.clientId, "web-push", ["t1"], now + 3600_000, now);
    // What the sweep read before it decided to remove the client...
    const [life, active] = await kv.getMany<unknown[]>([
      keys.registrationLife(reg.clientId),
      keys.clientActiveUntil(reg.clientId),
    ]);
    // ...then the client subscribes again before the removal runs.
    await store.subscriptions.upsert("app1", reg.clientId, "web-push", ["t2"], now + 7200_000, now);
    assert.equal(
      await store.registrations.removeUnlessChanged(reg.clientId, [life!, active!]),
      false,
    );
    assert.deepEqual(
      (await listClientSubscriptions(store, reg.clientId)).map((s) => s.topic).sort(),
      ["t1", "t2"],
    );
    assert.ok((await store.registrations.getMany([reg.clientId])).has(reg.clientId));
  } finally {
    kv.close();
  }
});
