/**
 * Who owns a registration (README "The client API"): knowing a device's endpoint or token
 * never lets anyone change, take over or delete that device's registration. A Web Push
 * registration is its endpoint and its keys; an FCM or APNs token is the device; "ingress" on a
 * repeated registration adds a push resource, never removes one. Registrations stored before
 * keys were part of the identity (under the endpoint alone) keep their client-id.
 */

import assert from "node:assert/strict";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import { keys } from "../lib/store/mod.ts";
import { targetHash } from "../lib/targets.ts";
import type { Registration } from "../lib/model.ts";
import { aes128gcmShaped, type Harness, harness, settle } from "./_harness.ts";
import { listClientSubscriptions } from "./_inspect.ts";
import { makeApnsKey, makeServiceAccount } from "./mocks/keys.ts";

/** The device-index hash an older relay stored a Web Push registration under: its endpoint. */
async function endpointOnlyHash(endpoint: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(`w\u0000${endpoint}`),
  );
  return encodeBase64Url(new Uint8Array(digest));
}

async function p256dh(): Promise<string> {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  return encodeBase64Url(new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)));
}

interface Device {
  endpoint: string;
  p256dh: string;
  auth: string;
}

async function device(): Promise<Device> {
  return {
    endpoint: `https://push.example.com/wpush/${crypto.randomUUID()}`,
    p256dh: await p256dh(),
    auth: encodeBase64Url(randomBytes(16)),
  };
}

interface Answer {
  "client-id": string;
  "client-data": string;
  "push-resource"?: string;
}

async function register(h: Harness, d: Device, extra: Record<string, unknown> = {}) {
  const res = await h.request("/registrations", {
    method: "POST",
    json: {
      transport: "web-push",
      subscription: { endpoint: d.endpoint, keys: { p256dh: d.p256dh, auth: d.auth } },
      ...extra,
    },
  });
  assert.equal(res.status, 201, await res.clone().text());
  return await res.json() as Answer;
}

function postIngress(h: Harness, resource: string) {
  return h.request(new URL(resource).pathname, {
    method: "POST",
    headers: { "content-encoding": "aes128gcm", ttl: "60" },
    body: aes128gcmShaped(),
  });
}

/** Every KV entry that belongs to `clientId` (its records and indexes), as text. */
async function holdings(h: Harness, clientId: string): Promise<string[]> {
  return (await h.dump()).filter((line) => line.includes(clientId));
}

Deno.test("Who owns a registration: the same endpoint with the same p256dh and auth gets the same client-id", async () => {
  const h = await harness();
  try {
    const d = await device();
    const first = await register(h, d);
    // The same keys in another base64 spelling (padding) are the same keys.
    const again = await register(h, { ...d, auth: `${d.auth}==` });
    assert.equal(again["client-id"], first["client-id"]);
    const regs = (await h.dump()).filter((l) => l.startsWith('["reg",'));
    assert.equal(regs.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("Who owns a registration: the same endpoint with other keys is a new client; the existing one keeps its keys, subscriptions and push resource", async () => {
  const h = await harness();
  try {
    const victim = await device();
    const v = await register(h, victim, { ingress: true });
    assert.equal((await h.subscribe(v["client-data"], ["t1"])).status, 200);
    await settle(h);
    const before = await holdings(h, v["client-id"]);

    // A stranger who knows the endpoint registers it with keys of their own, without and with
    // "ingress", and tries to delete the victim's registration with what they got.
    const attacker = { ...victim, p256dh: await p256dh(), auth: encodeBase64Url(randomBytes(16)) };
    const a1 = await register(h, attacker);
    const a2 = await register(h, attacker, { ingress: true });
    assert.notEqual(a1["client-id"], v["client-id"]);
    assert.equal(a2["client-id"], a1["client-id"]);
    assert.notEqual(a2["push-resource"], v["push-resource"]);
    const del = await h.request(`/registrations/${v["client-id"]}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${a1["client-data"]}` },
    });
    assert.equal(del.status, 403);

    assert.deepEqual(await holdings(h, v["client-id"]), before);
    const reg = await h.relay.store.registrations.get(v["client-id"]);
    assert.deepEqual(reg?.target, { transport: "web-push", ...victim });
    assert.deepEqual((await listClientSubscriptions(h.relay.store, v["client-id"])).length, 1);
    assert.equal((await postIngress(h, v["push-resource"]!)).status, 201);

    // The victim's pushes still go out with the victim's keys only.
    h.webPush.sent = [];
    assert.equal((await h.push([{ topic: "t1" }])).status, 200);
    await settle(h);
    const targets = h.webPush.sent.map((s) => s.target);
    assert.ok(targets.length >= 1);
    for (const t of targets) assert.deepEqual(t, { transport: "web-push", ...victim });
  } finally {
    await h.close();
  }
});

Deno.test("Who owns a registration: an FCM or APNs token registered again returns the same client-id", async () => {
  const [serviceAccount, apnsKey] = await Promise.all([makeServiceAccount(), makeApnsKey()]);
  const h = await harness({
    RELAY_FCM_SERVICE_ACCOUNT: serviceAccount.json("https://oauth2.googleapis.com/token"),
    RELAY_APNS_KEY: apnsKey.pem,
    RELAY_APNS_KEY_ID: apnsKey.keyId,
    RELAY_APNS_TEAM_ID: apnsKey.teamId,
    RELAY_APNS_TOPIC: "net.example.davx",
  });
  try {
    const post = async (json: Record<string, unknown>) => {
      const res = await h.request("/registrations", { method: "POST", json });
      assert.equal(res.status, 201);
      return (await res.json())["client-id"] as string;
    };
    const fcm = { transport: "fcm", token: `fcm-token-${crypto.randomUUID()}` };
    assert.equal(await post(fcm), await post({ ...fcm, ingress: true }));
    const apns = { transport: "apns", token: "ab".repeat(32), environment: "sandbox" };
    const sandbox = await post(apns);
    assert.equal(await post(apns), sandbox);
    assert.notEqual(await post({ ...apns, environment: "production" }), sandbox);
  } finally {
    await h.close();
  }
});

Deno.test('Who owns a registration: "ingress" on a repeated registration can add a push resource, never remove one', async () => {
  const h = await harness();
  try {
    const d = await device();
    const plain = await register(h, d);
    assert.equal(plain["push-resource"], undefined);
    const added = await register(h, d, { ingress: true });
    assert.equal(added["client-id"], plain["client-id"]);
    assert.match(added["push-resource"] ?? "", /\/push\/[A-Za-z0-9_-]{32}$/);
    const kept = await register(h, d);
    assert.equal(kept["push-resource"], added["push-resource"]);
    const keptToo = await register(h, d, { ingress: false });
    assert.equal(keptToo["push-resource"], added["push-resource"]);
    assert.equal((await postIngress(h, added["push-resource"]!)).status, 201);
  } finally {
    await h.close();
  }
});

Deno.test("Who owns a registration: a Web Push registration stored under its endpoint alone keeps its client-id for the same keys, and is left alone by other keys", async () => {
  const h = await harness();
  try {
    // As a relay before this change stored it: the device index hashed the endpoint only.
    const d = await device();
    const target = { transport: "web-push" as const, ...d };
    const old: Registration = { clientId: "old-client-0123456789", target, createdAt: h.now() };
    const legacy = await endpointOnlyHash(d.endpoint);
    await h.relay.store.registrations.put(old, legacy);
    assert.notEqual(legacy, await targetHash(target));

    const other = await register(h, { ...d, p256dh: await p256dh() });
    assert.notEqual(other["client-id"], old.clientId);
    assert.equal((await h.kv.get(keys.registrationByTarget(legacy))).value, old.clientId);
    assert.deepEqual((await h.relay.store.registrations.get(old.clientId))?.target, target);

    const same = await register(h, d);
    assert.equal(same["client-id"], old.clientId);
    // It now lives under its new hash only.
    assert.equal((await h.kv.get(keys.registrationByTarget(legacy))).value, null);
    assert.equal(
      (await h.kv.get(keys.registrationByTarget(await targetHash(target)))).value,
      old.clientId,
    );
    assert.equal((await register(h, d))["client-id"], old.clientId);
  } finally {
    await h.close();
  }
});

Deno.test("Who owns a registration: two identical registrations at once end with one client", async () => {
  const h = await harness();
  try {
    const d = await device();
    const answers = await Promise.all([...Array(8)].map(() => register(h, d)));
    assert.equal(new Set(answers.map((a) => a["client-id"])).size, 1);
    assert.equal((await h.dump()).filter((l) => l.startsWith('["reg",')).length, 1);
  } finally {
    await h.close();
  }
});
