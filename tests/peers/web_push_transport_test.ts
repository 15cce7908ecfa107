import assert from "node:assert/strict";
import { createEphemeralKeyPool, encryptWebPush } from "../../lib/crypto/ece.ts";
import { createVapid, generateVapidKeys } from "../../lib/crypto/vapid.ts";
import { decodeBase64Url } from "../../lib/encoding.ts";
import { bounded } from "../../lib/transports/bounded.ts";
import { createWebPushTransport } from "../../lib/transports/web_push.ts";
import type { OutboundMessage, WebPushTarget } from "../../lib/transports/types.ts";
import { startWebPushTesting } from "./web_push_testing.ts";

// The real clock, read once: the push service checks VAPID against it, and every date here
// (Retry-After, the payload) derives from it.
// A whole second, since an HTTP-date Retry-After has no fractions.
const NOW = Math.floor(Date.now() / 1000) * 1000;
const now = () => NOW;

/**
 * VAPID on the real clock: web-push-testing checks the JWT's `exp` against its own clock, so a
 * fixed test clock would turn into an expired token once real time passes it.
 */
async function relayVapid() {
  const keys = await generateVapidKeys();
  return await createVapid({ ...keys, subject: "mailto:ops@relay.example", now: Date.now });
}

function update(data: Record<string, unknown>, extra: Partial<OutboundMessage> = {}) {
  return {
    payload: { kind: "json", data },
    ttl: 86400,
    urgency: "high",
    priority: 90,
    ...extra,
  } satisfies OutboundMessage as OutboundMessage;
}

Deno.test("RFC 8030/8291/8292: web-push-testing verifies our VAPID, decrypts the message intact, then 410 is gone", async () => {
  await using push = await startWebPushTesting();
  const vapid = await relayVapid();
  const pool = createEphemeralKeyPool({ size: 2 });
  try {
    using transport = createWebPushTransport({ vapid, now, keyPool: pool });
    const subscription = await push.subscribe(vapid.publicKey);
    const target: WebPushTarget = { transport: "web-push", ...subscription, ...subscription.keys };
    const data = {
      type: "update",
      topic: "Zk3m8PqW0oYt5sUe",
      timestamp: new Date(NOW).toISOString(),
      priority: 90,
      note: "ünïcödé ✓",
    };

    const first = await transport.send(target, update(data, { collapseKey: "abcDEF_-09" }));
    assert.deepEqual(first, { kind: "delivered", status: 201 });
    const second = await transport.send(target, update({ type: "update", n: 2 }));
    assert.deepEqual(second, { kind: "delivered", status: 201 });
    assert.deepEqual((await push.notifications(subscription)).map((m) => JSON.parse(m)), [
      data,
      { type: "update", n: 2 },
    ]);

    await push.expire(subscription);
    const gone = await transport.send(target, update(data));
    assert.equal(gone.kind, "gone");
    assert.equal(gone.kind === "gone" && gone.status, 410);
  } finally {
    await pool.close();
  }
});

Deno.test("RFC 8292 §4: web-push-testing refuses a JWT signed by another key, which is failed, not gone", async () => {
  await using push = await startWebPushTesting();
  const subscribedWith = await relayVapid();
  const subscription = await push.subscribe(subscribedWith.publicKey);
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  const outcome = await transport.send(
    { transport: "web-push", endpoint: subscription.endpoint, ...subscription.keys },
    update({ type: "update" }),
  );
  assert.equal(outcome.kind, "failed");
  assert.equal(outcome.kind === "failed" && outcome.status, 400);
  assert.deepEqual(await push.notifications(subscription), []);
});

Deno.test("web-push payloads of kind encrypted are forwarded byte for byte", async () => {
  await using push = await startWebPushTesting();
  const vapid = await relayVapid();
  const subscription = await push.subscribe(vapid.publicKey);
  // Encrypt for the subscription as a WebDAV-Push server would, then forward as-is.
  const body = await encryptWebPush({
    plaintext: "<push-message xmlns='DAV:Push'/>",
    uaPublic: decodeBase64Url(subscription.keys.p256dh),
    authSecret: decodeBase64Url(subscription.keys.auth),
  });
  using transport = createWebPushTransport({ vapid, now });
  const outcome = await transport.send(
    { transport: "web-push", endpoint: subscription.endpoint, ...subscription.keys },
    { payload: { kind: "encrypted", body }, ttl: 60, urgency: "normal", priority: 50 },
  );
  assert.deepEqual(outcome, { kind: "delivered", status: 201 });
  assert.deepEqual(await push.notifications(subscription), ["<push-message xmlns='DAV:Push'/>"]);
});

// ---------------------------------------------------------------------------------------------
// A local fake push service for the answers web-push-testing cannot give.

interface Seen {
  path: string;
  headers: Headers;
  body: Uint8Array;
}

function fakePushService(
  respond: (path: string) => Response | Promise<Response>,
) {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      const path = new URL(request.url).pathname;
      seen.push({
        path,
        headers: request.headers,
        body: new Uint8Array(await request.arrayBuffer()),
      });
      return await respond(path);
    },
  );
  const origin = `http://127.0.0.1:${server.addr.port}`;
  return {
    seen,
    origin,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

const KEYS = {
  // RFC 8291 Appendix A's user agent keys: any valid subscription keys would do.
  p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
  auth: "BTBZMqHH6r4Tts7J_aSIgg",
};

function targetAt(origin: string, path: string): WebPushTarget {
  return { transport: "web-push", endpoint: `${origin}${path}`, ...KEYS };
}

Deno.test("RFC 8030 §5: the request carries TTL, Urgency, Topic, Content-Encoding, Content-Type and VAPID", async () => {
  await using fake = fakePushService(() => new Response(null, { status: 201 }));
  const vapid = await relayVapid();
  using transport = createWebPushTransport({ vapid, now });
  const outcome = await transport.send(
    targetAt(fake.origin, "/push/device-1"),
    update({ type: "update" }, { ttl: 3600.7, urgency: "very-low", collapseKey: "Q2FsREFW" }),
  );
  assert.deepEqual(outcome, { kind: "delivered", status: 201 });
  const [request] = fake.seen;
  assert.ok(request);
  assert.equal(request.path, "/push/device-1");
  assert.equal(request.headers.get("ttl"), "3600");
  assert.equal(request.headers.get("urgency"), "very-low");
  assert.equal(request.headers.get("topic"), "Q2FsREFW");
  assert.equal(request.headers.get("content-encoding"), "aes128gcm");
  assert.equal(request.headers.get("content-type"), "application/octet-stream");
  assert.equal(request.headers.get("authorization"), await vapid.authorization(fake.origin));
  assert.match(request.headers.get("authorization")!, /^vapid t=[\w-]+\.[\w-]+\.[\w-]+, k=[\w-]+$/);
  assert.equal(new DataView(request.body.buffer).getUint32(16), 4096);
});

Deno.test("RFC 8030 §5.4: no Topic header without a collapse key, nor for an invalid one", async () => {
  await using fake = fakePushService(() => new Response(null, { status: 201 }));
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  await transport.send(targetAt(fake.origin, "/a"), update({}));
  await transport.send(targetAt(fake.origin, "/b"), update({}, { collapseKey: "x".repeat(33) }));
  await transport.send(targetAt(fake.origin, "/c"), update({}, { collapseKey: "not/base64url" }));
  assert.deepEqual(fake.seen.map((s) => s.headers.get("topic")), [null, null, null]);
});

Deno.test("RFC 8030 §6.2: push service answers map to delivered, gone, retry and failed", async () => {
  const statuses: Record<string, [number, Record<string, string>?]> = {
    "/200": [200],
    "/202": [202],
    "/404": [404],
    "/410": [410],
    "/429": [429, { "retry-after": "120" }],
    "/503": [503],
    "/503-date": [503, { "retry-after": new Date(NOW + 30_000).toUTCString() }],
    "/500": [500],
    "/400": [400],
    "/401": [401],
    "/403": [403],
    "/413": [413],
    "/301": [301, { location: "https://elsewhere.example/" }],
  };
  await using fake = fakePushService((path) => {
    const [status, headers] = statuses[path]!;
    return new Response(status === 301 ? null : "a body the transport must discard", {
      status,
      headers: headers ?? {},
    });
  });
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  const outcome = async (path: string) => {
    const result = await transport.send(targetAt(fake.origin, path), update({ type: "update" }));
    return {
      kind: result.kind,
      ...("retryAfterMs" in result ? { after: result.retryAfterMs } : {}),
    };
  };
  assert.deepEqual(await outcome("/200"), { kind: "delivered" });
  assert.deepEqual(await outcome("/202"), { kind: "delivered" });
  assert.deepEqual(await outcome("/404"), { kind: "gone" });
  assert.deepEqual(await outcome("/410"), { kind: "gone" });
  assert.deepEqual(await outcome("/429"), { kind: "retry", after: 120_000 });
  assert.deepEqual(await outcome("/503"), { kind: "retry" });
  assert.deepEqual(await outcome("/503-date"), { kind: "retry", after: 30_000 });
  assert.deepEqual(await outcome("/500"), { kind: "retry" });
  assert.deepEqual(await outcome("/400"), { kind: "failed" });
  assert.deepEqual(await outcome("/401"), { kind: "failed" });
  assert.deepEqual(await outcome("/403"), { kind: "failed" });
  assert.deepEqual(await outcome("/413"), { kind: "failed" });
  // Redirects are not followed: the message and the VAPID token stay with the push service.
  assert.deepEqual(await outcome("/301"), { kind: "failed" });
  assert.equal(fake.seen.length, Object.keys(statuses).length);
});

Deno.test("a refused connection is a retry whose reason does not contain the endpoint", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  const outcome = await transport.send(
    targetAt(`http://127.0.0.1:${port}`, "/secret-device-path"),
    update({ type: "update" }),
  );
  assert.equal(outcome.kind, "retry");
  assert.equal(outcome.kind === "retry" && outcome.reason, "network error: connection refused");
  assert.ok(!JSON.stringify(outcome).includes("secret-device-path"));
});

Deno.test("a push service that does not answer within bounded()'s timeoutMs is a retry", async () => {
  const { promise: release, resolve } = Promise.withResolvers<void>();
  await using fake = fakePushService(async () => {
    await release;
    return new Response(null, { status: 201 });
  });
  using webPush = createWebPushTransport({ vapid: await relayVapid(), now });
  // The relay's one timeout per send is bounded()'s: the transport honours its signal.
  const transport = bounded(webPush, { concurrency: 1, timeoutMs: 50 });
  try {
    const outcome = await transport.send(targetAt(fake.origin, "/slow"), update({}));
    assert.deepEqual(outcome, { kind: "retry", reason: "timeout" });
  } finally {
    resolve();
  }
});

Deno.test("an aborted signal (shutdown) is a retry, before or during the request", async () => {
  const { promise: release, resolve } = Promise.withResolvers<void>();
  await using fake = fakePushService(async () => {
    await release;
    return new Response(null, { status: 201 });
  });
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  try {
    const already = AbortSignal.abort();
    assert.deepEqual(await transport.send(targetAt(fake.origin, "/x"), update({}), already), {
      kind: "retry",
      reason: "aborted",
    });
    const controller = new AbortController();
    const pending = transport.send(targetAt(fake.origin, "/y"), update({}), controller.signal);
    while (fake.seen.length === 0) await new Promise((r) => setTimeout(r, 5));
    controller.abort();
    assert.deepEqual(await pending, { kind: "retry", reason: "aborted" });
  } finally {
    resolve();
  }
});

Deno.test("bad subscription keys, an oversized or non-JSON payload and a non-http endpoint fail without a request", async () => {
  await using fake = fakePushService(() => new Response(null, { status: 201 }));
  using transport = createWebPushTransport({ vapid: await relayVapid(), now });
  const badKeys = await transport.send(
    { ...targetAt(fake.origin, "/k"), p256dh: KEYS.auth },
    update({}),
  );
  assert.equal(badKeys.kind, "failed");
  assert.match(badKeys.kind === "failed" ? badKeys.reason : "", /p256dh must be 65 bytes, got 16/);
  const tooBig = await transport.send(
    targetAt(fake.origin, "/big"),
    update({ blob: "x".repeat(4000) }),
  );
  assert.equal(tooBig.kind, "failed");
  assert.match(tooBig.kind === "failed" ? tooBig.reason : "", /at most 3993/);
  const ftp = await transport.send(
    { ...targetAt(fake.origin, "/f"), endpoint: "ftp://push.example/secret" },
    update({}),
  );
  assert.equal(ftp.kind, "failed");
  assert.ok(!JSON.stringify(ftp).includes("secret"));
  const notJson = await transport.send(targetAt(fake.origin, "/j"), update({ n: 1n }));
  assert.deepEqual(notJson, { kind: "failed", reason: "payload is not JSON: TypeError" });
  assert.equal(fake.seen.length, 0);
});

Deno.test("the injected fetch is the only HTTP client used", async () => {
  let calls = 0;
  const fakeFetch: typeof fetch = (input, init) => {
    calls++;
    assert.equal(String(input), "https://push.example/device");
    assert.equal(init?.method, "POST");
    return Promise.resolve(new Response(null, { status: 201 }));
  };
  using transport = createWebPushTransport({ vapid: await relayVapid(), now, fetch: fakeFetch });
  const target = targetAt("https://push.example", "/device");
  assert.deepEqual(await transport.send(target, update({})), { kind: "delivered", status: 201 });
  assert.deepEqual(await transport.send(target, update({})), { kind: "delivered", status: 201 });
  assert.equal(calls, 2);
});
