/**
 * Web Push ingress end to end (README, "Using the relay with WebDAV-Push servers"), over real
 * HTTP on 127.0.0.1:
 *
 *   npm `web-push` (playing the WebDAV-Push server: RFC 8291 encryption, RFC 8292 VAPID)
 *     ──POST──▶ relay /push/{id} ──▶ FCM mock / APNs mock / Web Push mock / web-push-testing
 *
 * The device's key pair lives only in the test. What the mocks receive is decrypted with npm
 * `http_ece` (an independent RFC 8188 implementation) and the WebDAV-Push `push-message` is
 * read namespace-correctly; the bytes are the ones the sender produced.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createECDH, type ECDH, randomBytes } from "node:crypto";
import ece from "http_ece";
import { jwtVerify } from "jose";
import webpush from "web-push";
import { loadConfig } from "../../lib/config.ts";
import { decodeBase64Url, encodeBase64Url } from "../../lib/encoding.ts";
import { memoryLogger } from "../../lib/log.ts";
import { createRelay, type Relay } from "../../relay.ts";
import { createApnsHttpClient } from "../../lib/transports/apns.ts";
import { childElement, parseXml } from "../../dav/xml.ts";
import { type ApnsMock, MOCK_CA_PEM, startApnsMock } from "../mocks/apns_mock.ts";
import { fcmError, type FcmMock, startFcmMock } from "../mocks/fcm_mock.ts";
import { makeApnsKey, makeServiceAccount } from "../mocks/keys.ts";
import { startWebPushTesting } from "./web_push_testing.ts";

const WP_NS = "https://bitfire.at/webdav-push";
const APNS_TOPIC = "net.example.davx";
const [serviceAccount, apnsKey] = await Promise.all([makeServiceAccount(), makeApnsKey()]);

/** A WebDAV-Push `push-message` (draft-bitfire-webdav-push §4.1.4 shape), with a decoy `topic`. */
function pushMessage(topic: string, prefixed: boolean): string {
  const decoy = `<x:topic xmlns:x="urn:example:not-webdav-push">decoy</x:topic>`;
  return prefixed
    ? `<?xml version="1.0" encoding="utf-8"?><P:push-message xmlns:P="${WP_NS}" xmlns:D="DAV:">` +
      `${decoy}<P:topic>${topic}</P:topic><P:content-update>` +
      `<D:sync-token>https://dav.example.org/sync/4712</D:sync-token></P:content-update></P:push-message>`
    : `<push-message xmlns="${WP_NS}" xmlns:D="DAV:">${decoy}<topic>${topic}</topic>` +
      `<content-update><D:sync-token>https://dav.example.org/sync/4711</D:sync-token>` +
      `</content-update></push-message>`;
}

/** The `topic` of a WebDAV-Push message, by namespace and local name, never by prefix. */
function topicOf(xml: string): string {
  const root = parseXml(xml);
  assert.equal(root.name, `{${WP_NS}}push-message`);
  const topic = childElement(root, `{${WP_NS}}topic`);
  assert.ok(topic, "push-message has no WebDAV-Push topic");
  return topic.text;
}

interface Device {
  ecdh: ECDH;
  auth: Buffer;
  keys: { p256dh: string; auth: string };
}

/** The device's subscription keys; the private half never leaves the test. */
function device(): Device {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  const auth = randomBytes(16);
  return {
    ecdh,
    auth,
    keys: { p256dh: encodeBase64Url(ecdh.getPublicKey()), auth: encodeBase64Url(auth) },
  };
}

/** Decrypts with npm http_ece using the device's private key. */
function decrypt(body: Uint8Array, dev: Device): string {
  const plaintext = ece.decrypt(Buffer.from(body), {
    version: "aes128gcm",
    privateKey: dev.ecdh,
    authSecret: dev.auth,
  });
  return new TextDecoder().decode(plaintext);
}

type VapidKeys = { publicKey: string; privateKey: string };

/**
 * The WebDAV-Push server: npm web-push builds the request (encryption, VAPID, TTL, Urgency,
 * Topic) exactly as it would send it; fetch carries it (web-push itself only speaks https).
 */
async function davSend(
  resource: string,
  keys: { p256dh: string; auth: string },
  xml: string,
  options: {
    vapid?: VapidKeys;
    topic?: string;
    urgency?: "very-low" | "low" | "normal" | "high";
    ttl?: number;
    headers?: Record<string, string | null>;
    body?: Uint8Array;
  } = {},
): Promise<{ res: Response; body: Uint8Array }> {
  const details = webpush.generateRequestDetails({ endpoint: resource, keys }, xml, {
    TTL: options.ttl ?? 3600,
    contentEncoding: "aes128gcm",
    ...(options.topic ? { topic: options.topic } : {}),
    ...(options.urgency ? { urgency: options.urgency } : {}),
    ...(options.vapid
      ? {
        vapidDetails: {
          subject: "https://dav.example.org/",
          publicKey: options.vapid.publicKey,
          privateKey: options.vapid.privateKey,
        },
      }
      : {}),
  });
  const headers = new Headers();
  for (const [k, v] of Object.entries(details.headers)) {
    if (k.toLowerCase() !== "content-length") headers.set(k, String(v));
  }
  // WebDAV-Push §4.1.4: the encrypted body is sent as application/xml.
  headers.set("content-type", 'application/xml; charset="UTF-8"');
  for (const [k, v] of Object.entries(options.headers ?? {})) {
    if (v === null) headers.delete(k);
    else headers.set(k, v);
  }
  const body = options.body ?? new Uint8Array(details.body as Buffer);
  const res = await fetch(details.endpoint, {
    method: "POST",
    headers,
    body: body as BufferSource,
  });
  await res.body?.cancel();
  return { res, body };
}

/** A plain Web Push service: records each request and answers `status`. */
function startWebPushMock() {
  const received: { path: string; headers: Headers; body: Uint8Array }[] = [];
  const state = { status: 201 };
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      received.push({
        path: new URL(req.url).pathname,
        headers: req.headers,
        body: new Uint8Array(await req.arrayBuffer()),
      });
      return new Response(null, { status: state.status });
    },
  );
  return {
    origin: `http://127.0.0.1:${server.addr.port}`,
    received,
    state,
    async close() {
      ac.abort();
      await server.finished;
    },
  };
}

interface Running {
  relay: Relay;
  url: string;
  fcm: FcmMock;
  apns: ApnsMock;
  close(): Promise<void>;
}

/** The relay on a real port (its public URL is that port, so VAPID `aud` is its origin). */
async function startRelay(): Promise<Running> {
  const fcm = startFcmMock({
    projectId: serviceAccount.projectId,
    clientEmail: serviceAccount.clientEmail,
    publicKey: serviceAccount.publicKey,
    now: Date.now,
  });
  const apns = await startApnsMock({
    teamId: apnsKey.teamId,
    keyId: apnsKey.keyId,
    publicKey: apnsKey.publicKey,
    topic: APNS_TOPIC,
    now: Date.now,
  });
  const apnsClient = createApnsHttpClient({ caCerts: [MOCK_CA_PEM] });
  const kv = await Deno.openKv(":memory:");
  const ac = new AbortController();
  // The relay's public URL is the server's own address, so the server starts first.
  const app: { fetch?: Relay["app"]["fetch"] } = {};
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    (req, info) => app.fetch!(req, { remoteAddr: info.remoteAddr }),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  const relay = await createRelay({
    config: loadConfig({
      RELAY_PUBLIC_URL: url,
      RELAY_APPS: "app1:app-one-token-0123456789abcdef",
      RELAY_SECRET: encodeBase64Url(new Uint8Array(32).fill(9)),
      RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
      RELAY_REGISTRATION_RATE_LIMIT: "0",
      RELAY_FCM_SERVICE_ACCOUNT: serviceAccount.json(fcm.tokenUri),
      RELAY_FCM_API_URL: fcm.url,
      RELAY_APNS_KEY: apnsKey.pem,
      RELAY_APNS_KEY_ID: apnsKey.keyId,
      RELAY_APNS_TEAM_ID: apnsKey.teamId,
      RELAY_APNS_TOPIC: APNS_TOPIC,
      RELAY_APNS_API_URL: apns.url,
      RELAY_APNS_SANDBOX_URL: apns.url,
    }),
    kv,
    logger: memoryLogger(),
    apnsClient,
  });
  app.fetch = relay.app.fetch;
  return {
    relay,
    url,
    fcm,
    apns,
    async close() {
      await relay.engine.shutdown(1000);
      ac.abort();
      await server.finished;
      kv.close();
      apnsClient.close();
      await fcm.close();
      await apns.close();
    },
  };
}

async function register(
  r: Running,
  body: Record<string, unknown>,
): Promise<{ clientId: string; resource: string }> {
  const res = await fetch(`${r.url}/registrations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, ingress: true }),
  });
  const json = await res.json();
  assert.equal(res.status, 201, JSON.stringify(json));
  assert.match(json["push-resource"], new RegExp(`^${r.url}/push/[A-Za-z0-9_-]{32}$`));
  return { clientId: json["client-id"], resource: json["push-resource"] };
}

Deno.test("ingress e2e: web-push (npm) → relay → FCM mock; http_ece decrypts the unchanged body; refusals; UNREGISTERED makes it 410", async () => {
  const r = await startRelay();
  try {
    const dev = device();
    const dav = webpush.generateVAPIDKeys();
    const { resource } = await register(r, {
      transport: "fcm",
      token: "fcm-registration-token-for-a-davx5-device",
      "ingress-vapid-public-key": dav.publicKey,
    });
    const xml = pushMessage("c2f9d6e0-4b1a-4c55-9f3e-2d7a1b8c9e01", true);
    const sent = await davSend(resource, dev.keys, xml, {
      vapid: dav,
      topic: "R3iM_PAQ7OMDAXW4-mMna7rqSGI",
      urgency: "high",
      ttl: 7200,
    });
    assert.equal(sent.res.status, 201);
    assert.match(sent.res.headers.get("location") ?? "", new RegExp(`^${resource}/messages/`));
    assert.equal(sent.res.headers.get("ttl"), "7200");
    await r.relay.engine.idle();

    assert.deepEqual(r.fcm.problems, []);
    assert.equal(r.fcm.sends.length, 1);
    const message = r.fcm.sends[0]!.body.message as {
      token: string;
      data: Record<string, string>;
      android: Record<string, string>;
    };
    assert.equal(message.token, "fcm-registration-token-for-a-davx5-device");
    assert.deepEqual(Object.keys(message.data).sort(), ["body", "content-encoding", "type"]);
    assert.equal(message.data.type, "webpush");
    assert.equal(message.data["content-encoding"], "aes128gcm");
    const forwarded = decodeBase64Url(message.data.body!);
    assert.deepEqual(forwarded, sent.body);
    assert.equal(message.android.collapse_key, "R3iM_PAQ7OMDAXW4-mMna7rqSGI");
    assert.equal(message.android.priority, "high");
    assert.match(message.android.ttl!, /^7[12]\d\ds$/);
    assert.equal(decrypt(forwarded, dev), xml);
    assert.equal(topicOf(decrypt(forwarded, dev)), "c2f9d6e0-4b1a-4c55-9f3e-2d7a1b8c9e01");

    // Refusals, each over real HTTP, none forwarded.
    const other = webpush.generateVAPIDKeys();
    assert.equal((await davSend(resource, dev.keys, xml, { vapid: other })).res.status, 403);
    assert.equal((await davSend(resource, dev.keys, xml)).res.status, 401);
    const aesgcm = await davSend(resource, dev.keys, xml, {
      vapid: dav,
      headers: { "content-encoding": "aesgcm" },
    });
    assert.equal(aesgcm.res.status, 415);
    const huge = await davSend(resource, dev.keys, xml, {
      vapid: dav,
      body: new Uint8Array(5000),
    });
    assert.equal(huge.res.status, 413);
    const noTtl = await davSend(resource, dev.keys, xml, { vapid: dav, headers: { ttl: null } });
    assert.equal(noTtl.res.status, 400);
    assert.equal(r.fcm.sends.length, 1);

    // FCM says the app instance is gone: the registration is pruned, the resource is 410.
    r.fcm.enqueue(fcmError(404, "NOT_FOUND", "Requested entity was not found.", {
      errorCode: "UNREGISTERED",
    }));
    assert.equal((await davSend(resource, dev.keys, xml, { vapid: dav })).res.status, 201);
    await r.relay.engine.idle();
    assert.equal((await davSend(resource, dev.keys, xml, { vapid: dav })).res.status, 410);
    assert.equal(r.fcm.sends.length, 2);
  } finally {
    await r.close();
  }
});

Deno.test("ingress e2e: web-push (npm) → relay → Web Push mock: same bytes, Topic/Urgency/TTL carried, relay's own VAPID; a 410 makes the resource 410", async () => {
  const r = await startRelay();
  const service = startWebPushMock();
  try {
    const dev = device();
    const { resource } = await register(r, {
      transport: "web-push",
      subscription: { endpoint: `${service.origin}/wpush/device-1`, keys: dev.keys },
    });
    const xml = pushMessage("contacts-0001", false);
    // No VAPID registered: the resource takes unauthenticated messages (RustiCal has no VAPID).
    const sent = await davSend(resource, dev.keys, xml, { topic: "abc_DEF-123", urgency: "low" });
    assert.equal(sent.res.status, 201);
    await r.relay.engine.idle();

    assert.equal(service.received.length, 1);
    const got = service.received[0]!;
    assert.equal(got.path, "/wpush/device-1");
    assert.deepEqual(got.body, sent.body);
    assert.equal(got.headers.get("content-encoding"), "aes128gcm");
    assert.equal(got.headers.get("topic"), "abc_DEF-123");
    assert.equal(got.headers.get("urgency"), "low");
    assert.ok(Number(got.headers.get("ttl")) > 3500 && Number(got.headers.get("ttl")) <= 3600);
    // RFC 8292: the relay signs with its own key, for the push service's origin.
    const m = /^vapid t=([^,]+), k=(\S+)$/.exec(got.headers.get("authorization") ?? "");
    assert.ok(m);
    assert.equal(m[2], r.relay.vapidPublicKey);
    const key = await crypto.subtle.importKey(
      "raw",
      decodeBase64Url(m[2]!) as BufferSource,
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["verify"],
    );
    const { payload } = await jwtVerify(m[1]!, key, { audience: service.origin });
    assert.ok(payload.exp! * 1000 <= Date.now() + 12 * 3600_000 + 5000);
    assert.equal(decrypt(got.body, dev), xml);
    assert.equal(topicOf(decrypt(got.body, dev)), "contacts-0001");

    // The device's push service says it is gone: from then on the resource is 410.
    service.state.status = 410;
    assert.equal((await davSend(resource, dev.keys, xml)).res.status, 201);
    await r.relay.engine.idle();
    const gone = await davSend(resource, dev.keys, xml);
    assert.equal(gone.res.status, 410);
    assert.equal(service.received.length, 2);
  } finally {
    await r.close();
    await service.close();
  }
});

Deno.test("ingress e2e: web-push (npm) → relay → APNs mock: background push with the body, apns-collapse-id from Topic", async () => {
  const r = await startRelay();
  try {
    const dev = device();
    const token = "0a1b".repeat(16);
    const { resource } = await register(r, { transport: "apns", token, environment: "sandbox" });
    const xml = pushMessage("cal-work", true);
    const sent = await davSend(resource, dev.keys, xml, { topic: "work_cal" });
    assert.equal(sent.res.status, 201);
    await r.relay.engine.idle();
    assert.deepEqual(r.apns.problems, []);
    assert.equal(r.apns.requests.length, 1);
    const req = r.apns.requests[0]!;
    assert.equal(req.path, `/3/device/${token}`);
    assert.equal(req.headers["apns-push-type"], "background");
    assert.equal(req.headers["apns-collapse-id"], "work_cal");
    const json = JSON.parse(req.body);
    assert.deepEqual(json.aps, { "content-available": 1 });
    assert.equal(json.type, "webpush");
    assert.equal(json["content-encoding"], "aes128gcm");
    assert.deepEqual(decodeBase64Url(json.body), sent.body);
    assert.equal(topicOf(decrypt(decodeBase64Url(json.body), dev)), "cal-work");
    // 4096 bytes fit Web Push but not APNs once base64url-encoded: 413 at ingress.
    const big = await davSend(resource, dev.keys, "x".repeat(3900));
    assert.equal(big.res.status, 413);
    assert.equal(r.apns.requests.length, 1);
  } finally {
    await r.close();
  }
});

Deno.test("ingress e2e: web-push-testing (independent push service) verifies the relay's VAPID and decrypts what web-push (npm) encrypted", async () => {
  await using push = await startWebPushTesting();
  const r = await startRelay();
  try {
    const dav = webpush.generateVAPIDKeys();
    // The device's push service binds the subscription to the relay's VAPID key.
    const sub = await push.subscribe(r.relay.vapidPublicKey);
    const { resource } = await register(r, {
      transport: "web-push",
      subscription: sub,
      "ingress-vapid-public-key": dav.publicKey,
    });
    const xml = pushMessage("b0b1b2b3", true);
    const sent = await davSend(resource, sub.keys, xml, { vapid: dav, topic: "b0b1b2b3" });
    assert.equal(sent.res.status, 201);
    const [plaintext] = await push.waitForNotifications(sub, { count: 1, timeoutMs: 5000 });
    assert.equal(plaintext, xml);
    assert.equal(topicOf(plaintext!), "b0b1b2b3");
  } finally {
    await r.close();
  }
});
