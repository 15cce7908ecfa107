/**
 * Web Push ingress (README "Using the relay with WebDAV-Push servers"): `POST /push/{id}` as an RFC 8030 push resource, driven
 * through the real relay with fake transports and a settable clock.
 */

import assert from "node:assert/strict";
import {
  aes128gcmShaped,
  APP_TOKEN,
  FakeTransport,
  type Harness,
  harness,
  PUBLIC_URL,
  T0,
} from "./_harness.ts";
import { makeApnsKey, makeServiceAccount } from "./mocks/keys.ts";
import { encryptWebPush } from "../lib/crypto/ece.ts";
import { signJwt } from "../lib/crypto/jwt.ts";
import { generateVapidKeys, importVapidKeys } from "../lib/crypto/vapid.ts";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import {
  aes128gcmProblem,
  DEFAULT_INGRESS_RATE_PER_MINUTE,
  forwardedSize,
  MIN_INGRESS_BODY_BYTES,
  URGENCY_PRIORITY,
} from "../lib/ingress.ts";
import { parseVapidAuthorization } from "../routes/ingress.ts";
import { urgencyFor } from "../lib/transports/types.ts";
import type { Target, TransportId } from "../lib/transports/types.ts";

const [serviceAccount, apnsKey] = await Promise.all([makeServiceAccount(), makeApnsKey()]);

interface Rig {
  h: Harness;
  fake: Record<TransportId, FakeTransport>;
}

/** The real relay with FCM and APNs configured and every transport faked. */
async function rig(options: { ratePerMinute?: number } = {}): Promise<Rig> {
  const clock = () => h.clock.now;
  const fake = {
    "web-push": new FakeTransport("web-push", clock),
    fcm: new FakeTransport("fcm", clock),
    apns: new FakeTransport("apns", clock),
  };
  const h: Harness = await harness({
    RELAY_FCM_SERVICE_ACCOUNT: serviceAccount.json("https://oauth2.googleapis.com/token"),
    RELAY_APNS_KEY: apnsKey.pem,
    RELAY_APNS_KEY_ID: apnsKey.keyId,
    RELAY_APNS_TEAM_ID: apnsKey.teamId,
    RELAY_APNS_TOPIC: "net.example.davx",
  }, {
    transports: fake,
    delivery: { random: () => 0 },
    ...(options.ratePerMinute !== undefined
      ? { ingress: { ratePerMinute: options.ratePerMinute } }
      : {}),
  });
  return { h, fake };
}

/** A device's subscription keys (the device decrypts; the relay never sees the private key). */
async function deviceKeys() {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  return {
    uaPublic: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)),
    authSecret: randomBytes(16),
  };
}

const XML = `<push-message xmlns="https://bitfire.at/webdav-push" xmlns:D="DAV:">` +
  `<topic>c2f9d6e0-4b1a-4c55-9f3e-2d7a1b8c9e01</topic>` +
  `<content-update><D:sync-token>https://dav.example.org/sync/4711</D:sync-token></content-update>` +
  `</push-message>`;

async function encrypted(plaintext = XML): Promise<Uint8Array> {
  return await encryptWebPush({ plaintext, ...(await deviceKeys()) });
}

/** `n` bytes with a well-formed aes128gcm header (only the relay's structural checks apply). */
function shaped(n: number, patch: (b: Uint8Array) => void = () => {}): Uint8Array {
  const b = aes128gcmShaped(n);
  patch(b);
  return b;
}

async function register(
  h: Harness,
  transport: TransportId,
  extra: Record<string, unknown> = {},
): Promise<{ clientId: string; clientData: string; resource: string; path: string }> {
  let body: Record<string, unknown>;
  if (transport === "web-push") {
    const keys = await deviceKeys();
    body = {
      transport,
      subscription: {
        endpoint: `https://push.example.com/wpush/${crypto.randomUUID()}`,
        keys: { p256dh: encodeBase64Url(keys.uaPublic), auth: encodeBase64Url(keys.authSecret) },
      },
    };
  } else if (transport === "fcm") {
    body = { transport, token: `fcm-token-${crypto.randomUUID()}` };
  } else {
    body = { transport, token: "ab".repeat(32), environment: "production" };
  }
  const res = await h.request("/registrations", {
    method: "POST",
    json: { ...body, ingress: true, ...extra },
  });
  assert.equal(res.status, 201, await res.clone().text());
  const json = await res.json();
  return {
    clientId: json["client-id"],
    clientData: json["client-data"],
    resource: json["push-resource"],
    path: new URL(json["push-resource"]).pathname,
  };
}

function post(
  h: Harness,
  path: string,
  body: Uint8Array,
  headers: Record<string, string | null> = {},
): Promise<Response> {
  const all: Record<string, string | null> = {
    "content-encoding": "aes128gcm",
    ttl: "3600",
    ...headers,
  };
  const init = new Headers();
  for (const [k, v] of Object.entries(all)) if (v !== null) init.set(k, v);
  return h.request(path, { method: "POST", headers: init, body: body as BufferSource });
}

async function errorCode(res: Response): Promise<string> {
  return (await res.json()).error.code;
}

/** A WebDAV-Push server's VAPID key pair and a header factory. */
async function davServer() {
  const keys = await generateVapidKeys();
  const { signingKey } = await importVapidKeys(keys);
  return {
    publicKey: keys.publicKey,
    async authorization(claims: Record<string, unknown>, k = keys.publicKey): Promise<string> {
      const jwt = await signJwt({ typ: "JWT", alg: "ES256" }, {
        sub: "mailto:dav@example.org",
        ...claims,
      }, signingKey);
      return `vapid t=${jwt}, k=${k}`;
    },
  };
}

const ORIGIN = new URL(PUBLIC_URL).origin;
const inAnHour = () => Math.floor(T0 / 1000) + 3600;

Deno.test("ingress: push-resource ids are 192 random bits; an id never issued is 404", async () => {
  const { h } = await rig();
  try {
    const a = await register(h, "web-push");
    const b = await register(h, "fcm");
    for (const r of [a, b]) {
      assert.match(r.resource, new RegExp(`^${PUBLIC_URL}/push/[A-Za-z0-9_-]{32}$`));
      assert.equal(r.resource.includes(r.clientId), false);
    }
    assert.notEqual(a.path, b.path);
    const body = await encrypted();
    const unknown = await post(h, `/push/${encodeBase64Url(randomBytes(24))}`, body);
    assert.equal(unknown.status, 404);
    assert.equal(await errorCode(unknown), "not-found");
    assert.equal((await post(h, "/push/x", body)).status, 404);
    assert.equal((await post(h, `/push/${"A".repeat(300)}`, body)).status, 404);
    // The capability never reaches the log, not even in the request log's path.
    const log = JSON.stringify(h.logger.lines);
    assert.equal(log.includes(a.path.slice(6)), false);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: RFC 8030 message to a Web Push device is forwarded byte for byte, 201 with Location and TTL", async () => {
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "web-push");
    const body = await encrypted();
    // WebDAV-Push names the body application/xml; servers also send octet-stream or nothing.
    for (const type of ['application/xml; charset="UTF-8"', "application/octet-stream", null]) {
      const res = await post(h, dev.path, body, {
        "content-type": type,
        urgency: "high",
        topic: "R3iM_PAQ7OMDAXW4-mMna7rqSGI",
      });
      assert.equal(res.status, 201);
      assert.match(
        res.headers.get("location") ?? "",
        new RegExp(`^${dev.resource}/messages/\\S+$`),
      );
      assert.equal(res.headers.get("ttl"), "3600");
    }
    await h.relay.engine.idle();
    assert.equal(fake["web-push"].sent.length, 3);
    const sent = fake["web-push"].sent[0]!;
    assert.equal(sent.target.transport, "web-push");
    assert.deepEqual(sent.message.payload, { kind: "encrypted", body });
    assert.equal(sent.message.urgency, "high");
    assert.equal(sent.message.collapseKey, "R3iM_PAQ7OMDAXW4-mMna7rqSGI");
    assert.equal(sent.message.ttl, 3600);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: Urgency maps to priority 10/30/50/90 and back to the same urgency; absent is normal", async () => {
  assert.deepEqual(URGENCY_PRIORITY, { "very-low": 10, low: 30, normal: 50, high: 90 });
  for (const [u, p] of Object.entries(URGENCY_PRIORITY)) assert.equal(urgencyFor(p), u);
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "fcm");
    const body = await encrypted();
    for (const u of ["very-low", "LOW", "normal", "high", null]) {
      assert.equal((await post(h, dev.path, body, { urgency: u })).status, 201);
    }
    const bad = await post(h, dev.path, body, { urgency: "urgent" });
    assert.equal(bad.status, 400);
    assert.equal(await errorCode(bad), "invalid-urgency");
    await h.relay.engine.idle();
    // Deliveries run concurrently: compare the priorities, not their order.
    assert.deepEqual(fake.fcm.sent.map((s) => s.message.priority).sort((x, y) => x - y), [
      10,
      30,
      50,
      50,
      90,
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: TTL is required (400), over 28 days is lowered and the TTL header says so", async () => {
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "web-push");
    const body = await encrypted();
    const missing = await post(h, dev.path, body, { ttl: null });
    assert.equal(missing.status, 400);
    assert.equal(await errorCode(missing), "missing-ttl");
    for (const ttl of ["-1", "1.5", "abc", ""]) {
      const res = await post(h, dev.path, body, { ttl });
      assert.equal(res.status, 400, ttl);
      assert.equal(await errorCode(res), "invalid-ttl");
    }
    const long = await post(h, dev.path, body, { ttl: String(90 * 86400) });
    assert.equal(long.status, 201);
    assert.equal(long.headers.get("ttl"), String(28 * 86400));
    const zero = await post(h, dev.path, body, { ttl: "0" });
    assert.equal(zero.status, 201);
    assert.equal(zero.headers.get("ttl"), "0");
    await h.relay.engine.idle();
    // Both deliveries run concurrently: tell them apart by TTL, not by arrival order.
    const ttls = fake["web-push"].sent.map((s) => s.message.ttl).sort((a, b) => b - a);
    assert.equal(ttls.length, 2);
    assert.equal(ttls[0], 28 * 86400);
    // TTL 0 (RFC 8030 §5.2): one immediate attempt, at most a second of lifetime.
    assert.ok(ttls[1]! <= 1);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: only Content-Encoding aes128gcm is accepted (415), whatever the Content-Type", async () => {
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "web-push");
    const body = await encrypted();
    for (const enc of [null, "aesgcm", "gzip", "identity", "aes128gcm, gzip"]) {
      const res = await post(h, dev.path, body, { "content-encoding": enc });
      assert.equal(res.status, 415, String(enc));
      assert.equal(await errorCode(res), "unsupported-content-encoding");
    }
    const upper = await post(h, dev.path, body, {
      "content-encoding": "AES128GCM",
      "content-type": "text/plain",
    });
    assert.equal(upper.status, 201);
    await h.relay.engine.idle();
    assert.equal(fake["web-push"].sent.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: bodies over 4096 bytes are 413; too short for an aes128gcm header is 400", async () => {
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "web-push");
    const over = await post(h, dev.path, shaped(4097));
    assert.equal(over.status, 413);
    assert.equal(await errorCode(over), "payload-too-large");
    assert.equal((await post(h, dev.path, shaped(4096))).status, 201);
    // RFC 8188/8291: 86-byte header + 1 delimiter octet + 16-byte tag.
    assert.equal(MIN_INGRESS_BODY_BYTES, 103);
    assert.equal((await post(h, dev.path, await encrypted(""))).status, 201);
    const short = await post(h, dev.path, shaped(102));
    assert.equal(short.status, 400);
    assert.equal(await errorCode(short), "invalid-encryption");
    assert.equal((await post(h, dev.path, new Uint8Array(0))).status, 400);
    const badKeyid = await post(h, dev.path, shaped(200, (b) => (b[20] = 0)));
    assert.equal(badKeyid.status, 400);
    const badRs = await post(
      h,
      dev.path,
      shaped(200, (b) => new DataView(b.buffer).setUint32(16, 17)),
    );
    assert.equal(badRs.status, 400);
    await h.relay.engine.idle();
    assert.equal(fake["web-push"].sent.length, 2);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: aes128gcmProblem() and parseVapidAuthorization() read headers strictly but tolerantly", () => {
  assert.equal(aes128gcmProblem(shaped(103)), null);
  assert.match(aes128gcmProblem(shaped(102)) ?? "", /at least 103/);
  assert.match(aes128gcmProblem(shaped(150, (b) => (b[21] = 0x02))) ?? "", /keyid/);
  assert.deepEqual(parseVapidAuthorization("vapid t=a.b.c, k=BKEY"), { t: "a.b.c", k: "BKEY" });
  assert.deepEqual(parseVapidAuthorization('VAPID k="BKEY",t="a.b.c"'), { t: "a.b.c", k: "BKEY" });
  assert.equal(parseVapidAuthorization("vapid t=a.b.c"), null);
  assert.equal(parseVapidAuthorization("Bearer a.b.c"), null);
  assert.equal(parseVapidAuthorization("WebPush a.b.c"), null);
  assert.equal(parseVapidAuthorization("vapid t=a, t=b, k=c"), null);
});

Deno.test("ingress: VAPID-restricted resource: missing/invalid 401, another key 403, aud and exp enforced", async () => {
  const { h, fake } = await rig();
  const dav = await davServer();
  const other = await davServer();
  try {
    const dev = await register(h, "fcm", { "ingress-vapid-public-key": dav.publicKey });
    const body = await encrypted();
    const ok = await dav.authorization({ aud: ORIGIN, exp: inAnHour() });
    assert.equal((await post(h, dev.path, body, { authorization: ok })).status, 201);

    const cases: [string, string | null][] = [
      ["missing", null],
      ["not vapid", "Bearer abc"],
      ["garbage jwt", `vapid t=abc, k=${dav.publicKey}`],
      ["wrong aud", await dav.authorization({ aud: "https://evil.example", exp: inAnHour() })],
      ["expired", await dav.authorization({ aud: ORIGIN, exp: Math.floor(T0 / 1000) - 1 })],
      ["no exp", await dav.authorization({ aud: ORIGIN })],
      [
        "exp over 24 h",
        await dav.authorization({ aud: ORIGIN, exp: Math.floor(T0 / 1000) + 25 * 3600 }),
      ],
      // Signed by dav's key but claiming other's: the signature does not verify with k.
      [
        "k not the signer",
        await dav.authorization({ aud: ORIGIN, exp: inAnHour() }, other.publicKey),
      ],
      [
        "k not a point",
        `vapid t=${ok.slice(8, ok.indexOf(","))}, k=${encodeBase64Url(randomBytes(65))}`,
      ],
    ];
    for (const [name, authorization] of cases) {
      const res = await post(h, dev.path, body, { authorization });
      assert.equal(res.status, 401, name);
      assert.equal(res.headers.get("www-authenticate"), "vapid", name);
      assert.equal(await errorCode(res), "invalid-vapid", name);
    }
    // RFC 8292 §4.2: a valid JWT, but the resource is restricted to another key.
    const foreign = await post(h, dev.path, body, {
      authorization: await other.authorization({ aud: ORIGIN, exp: inAnHour() }),
    });
    assert.equal(foreign.status, 403);
    assert.equal(await errorCode(foreign), "vapid-key-mismatch");
    // The README's error order: 401 before 400 before 403.
    assert.equal((await post(h, dev.path, body, { authorization: null, ttl: null })).status, 401);
    const foreignNoTtl = await post(h, dev.path, body, {
      authorization: await other.authorization({ aud: ORIGIN, exp: inAnHour() }),
      ttl: null,
    });
    assert.equal(foreignNoTtl.status, 400);

    // An unrestricted resource ignores Authorization altogether.
    const open = await register(h, "web-push");
    assert.equal((await post(h, open.path, body, { authorization: "vapid nonsense" })).status, 201);
    await h.relay.engine.idle();
    assert.equal(fake.fcm.sent.length, 1);
    assert.equal(fake["web-push"].sent.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test('ingress: a deleted or pruned registration answers 410; registering again without "ingress" keeps the push resource', async () => {
  const { h, fake } = await rig();
  try {
    const body = await encrypted();
    const deleted = await register(h, "web-push");
    const del = await h.request(`/registrations/${deleted.clientId}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${deleted.clientData}` },
    });
    assert.equal(del.status, 204);
    const gone = await post(h, deleted.path, body);
    assert.equal(gone.status, 410);
    assert.equal(await errorCode(gone), "gone");

    // The same APNs device registers again without "ingress": "ingress" on a repeated
    // registration can add a push resource, never remove one (README "The client API").
    const apns = await register(h, "apns");
    const again = await h.request("/registrations", {
      method: "POST",
      json: { transport: "apns", token: "ab".repeat(32), environment: "production" },
    });
    const renewed = await again.json();
    assert.equal(renewed["client-id"], apns.clientId);
    assert.equal(renewed["push-resource"], `${PUBLIC_URL}${apns.path}`);
    assert.equal((await post(h, apns.path, body)).status, 201);

    // The push service says the device is gone : pruned, then 410 from then on.
    const pruned = await register(h, "fcm");
    fake.fcm.respond = () => ({ kind: "gone", status: 404, reason: "UNREGISTERED" });
    assert.equal((await post(h, pruned.path, body)).status, 201);
    await h.relay.engine.idle();
    assert.equal(await h.relay.store.registrations.get(pruned.clientId), null);
    assert.equal((await post(h, pruned.path, body)).status, 410);
    assert.equal(fake.fcm.sent.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: a flooded push resource gets 429 with Retry-After; other resources are unaffected", async () => {
  assert.equal(DEFAULT_INGRESS_RATE_PER_MINUTE, 120);
  const { h, fake } = await rig({ ratePerMinute: 3 });
  try {
    const a = await register(h, "web-push");
    const b = await register(h, "web-push");
    const body = await encrypted();
    h.clock.now = T0 + 15_000;
    for (let i = 0; i < 3; i++) assert.equal((await post(h, a.path, body)).status, 201);
    const flood = await post(h, a.path, body);
    assert.equal(flood.status, 429);
    assert.equal(flood.headers.get("retry-after"), "45");
    assert.equal(await errorCode(flood), "rate-limited");
    assert.equal((await post(h, b.path, body)).status, 201);
    h.clock.now = T0 + 60_000;
    assert.equal((await post(h, a.path, body)).status, 201);
    await h.relay.engine.idle();
    assert.equal(fake["web-push"].sent.length, 5);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: FCM and APNs get the body wrapped; what would exceed their 4 KiB is 413 at ingress", async () => {
  const { h, fake } = await rig();
  try {
    const fcm = await register(h, "fcm");
    const apns = await register(h, "apns");
    const body = await encrypted();
    for (const dev of [fcm, apns]) {
      assert.equal((await post(h, dev.path, body, { topic: "cal-1", urgency: "low" })).status, 201);
    }
    await h.relay.engine.idle();
    for (const t of ["fcm", "apns"] as const) {
      const sent = fake[t].sent[0]!;
      assert.deepEqual(sent.message.payload, { kind: "encrypted", body });
      assert.equal(sent.message.collapseKey, "cal-1");
      assert.equal(sent.message.priority, 30);
    }
    // Base64url grows 4096 bytes to 5462 characters: too much for either service.
    for (const dev of [fcm, apns]) {
      const res = await post(h, dev.path, shaped(4000));
      assert.equal(res.status, 413);
      assert.equal(await errorCode(res), "payload-too-large");
    }
    // The largest bodies that still fit, computed from the transports' own encoders.
    const largest = (t: Target["transport"]) => {
      let n = 4096;
      while (
        n > 0 &&
        forwardedSize(t, new Uint8Array(n))!.size > forwardedSize(t, new Uint8Array(n))!.limit
      ) n--;
      return n;
    };
    const apnsMax = largest("apns");
    const fcmMax = largest("fcm");
    assert.ok(apnsMax > 2900 && apnsMax < 3100, String(apnsMax));
    assert.ok(fcmMax > 2900 && fcmMax < 3100, String(fcmMax));
    assert.equal((await post(h, apns.path, shaped(apnsMax))).status, 201);
    assert.equal((await post(h, apns.path, shaped(apnsMax + 1))).status, 413);
    assert.equal((await post(h, fcm.path, shaped(fcmMax))).status, 201);
    assert.equal((await post(h, fcm.path, shaped(fcmMax + 1))).status, 413);
    // A Web Push device takes the full 4096 bytes.
    assert.equal(forwardedSize("web-push", shaped(4096)), null);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: RFC 8030 §5.4: an undelivered message is replaced by a newer one with the same Topic", async () => {
  const { h, fake } = await rig();
  try {
    const dev = await register(h, "fcm");
    const [a, b, c, d] = await Promise.all([encrypted(), encrypted(), encrypted(), encrypted()]);
    // The push service is failing: every message waits in the queue for a retry.
    fake.fcm.respond = () => ({ kind: "retry", reason: "push service answered 503" });
    assert.equal((await post(h, dev.path, a, { topic: "cal-1" })).status, 201);
    assert.equal((await post(h, dev.path, c, { topic: "cal-2" })).status, 201);
    assert.equal((await post(h, dev.path, d)).status, 201);
    await h.relay.engine.idle();
    h.clock.now += 1000;
    assert.equal((await post(h, dev.path, b, { topic: "cal-1" })).status, 201);
    await h.relay.engine.idle();
    assert.equal(fake.fcm.sent.length, 4);

    // The service recovers: a (replaced by b) is dropped; b, c and the Topic-less d go out.
    fake.fcm.respond = () => ({ kind: "delivered", status: 200 });
    h.clock.now += 600_000;
    await h.relay.engine.tick();
    await h.relay.engine.idle();
    const retried = fake.fcm.sent.slice(4).map((s) =>
      encodeBase64Url((s.message.payload as { body: Uint8Array }).body)
    );
    assert.deepEqual(retried.sort(), [b, c, d].map((x) => encodeBase64Url(x)).sort());
    assert.equal(retried.includes(encodeBase64Url(a)), false);
    assert.equal(h.relay.metrics.deliveries.get({ transport: "fcm", outcome: "replaced" }), 1);
    assert.equal(await h.relay.store.queue.count(), 0);
  } finally {
    await h.close();
  }
});

Deno.test("ingress: the push resource is not part of the gateway: app tokens and other paths are untouched", async () => {
  const { h } = await rig();
  try {
    const dev = await register(h, "web-push");
    // A known path with a method it does not serve: 405 with Allow (README "Errors and
    // operations").
    const get = await h.request(dev.path, { headers: { authorization: `Bearer ${APP_TOKEN}` } });
    assert.equal(get.status, 405);
    assert.equal(get.headers.get("allow"), "POST");
    // The Location of a message is not a resource the relay serves.
    const res = await post(h, dev.path, await encrypted());
    const location = new URL(res.headers.get("location")!).pathname;
    assert.equal((await h.request(location, { method: "DELETE" })).status, 404);
  } finally {
    await h.close();
  }
});
