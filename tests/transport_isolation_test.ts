import assert from "node:assert/strict";
import { bounded } from "../lib/transports/bounded.ts";
import { createFcmTransport, parseServiceAccount } from "../lib/transports/fcm.ts";
import { createApnsHttpClient, createApnsTransport } from "../lib/transports/apns.ts";
import { createWebPushTransport } from "../lib/transports/web_push.ts";
import { createVapid, generateVapidKeys } from "../lib/crypto/vapid.ts";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import type {
  DeliveryOutcome,
  OutboundMessage,
  Target,
  Transport,
} from "../lib/transports/types.ts";
import { startFcmMock } from "./mocks/fcm_mock.ts";
import { MOCK_CA_PEM, startApnsMock } from "./mocks/apns_mock.ts";
import { makeApnsKey, makeServiceAccount } from "./mocks/keys.ts";

const MESSAGE: OutboundMessage = {
  payload: {
    kind: "json",
    data: {
      type: "update",
      topic: "q9Xc1vLrT0mJ2aBd",
      timestamp: "2026-11-24T09:15:02Z",
      priority: 50,
    },
  },
  ttl: 3600,
  urgency: "normal",
  priority: 50,
  collapseKey: "h6Jk2LmN0pQrStUv",
};
const FCM_TARGET: Target = { transport: "fcm", token: "fcm-device-token:APA91b" };
const APNS_TARGET: Target = {
  transport: "apns",
  token: "740f4707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bb78ad",
  environment: "production",
};

/** A transport whose sends settle when the test says so, ignoring the abort signal. */
function stubTransport(
  answer: () => Promise<DeliveryOutcome>,
): Transport & { calls: number; maxConcurrent: number } {
  let running = 0;
  const stub = {
    id: "fcm" as const,
    calls: 0,
    maxConcurrent: 0,
    async send(): Promise<DeliveryOutcome> {
      stub.calls++;
      running++;
      stub.maxConcurrent = Math.max(stub.maxConcurrent, running);
      try {
        return await answer();
      } finally {
        running--;
      }
    },
  };
  return stub;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("bounded() keeps at most `concurrency` sends in flight", async () => {
  const stub = stubTransport(() => delay(20).then(() => ({ kind: "delivered", status: 200 })));
  const t = bounded(stub, { concurrency: 3, timeoutMs: 1000 });
  const outcomes = await Promise.all(Array.from({ length: 10 }, () => t.send(FCM_TARGET, MESSAGE)));
  assert.ok(outcomes.every((o) => o.kind === "delivered"));
  assert.equal(stub.calls, 10);
  assert.equal(stub.maxConcurrent, 3);
  assert.equal(t.inFlight, 0);
  assert.equal(t.queued, 0);
});

Deno.test("bounded() turns a send that outlives timeoutMs into a retry, even one ignoring its signal", async () => {
  const never = Promise.withResolvers<DeliveryOutcome>();
  const t = bounded(stubTransport(() => never.promise), { concurrency: 1, timeoutMs: 50 });
  const started = performance.now();
  assert.deepEqual(await t.send(FCM_TARGET, MESSAGE), { kind: "retry", reason: "timeout" });
  assert.ok(performance.now() - started < 500);
  assert.equal(t.inFlight, 0, "the slot is released at the timeout");
  never.resolve({ kind: "delivered", status: 200 });
});

Deno.test("bounded() answers retry at once when the queue is full, and when the caller aborts", async () => {
  const gate = Promise.withResolvers<DeliveryOutcome>();
  const t = bounded(stubTransport(() => gate.promise), {
    concurrency: 1,
    timeoutMs: 5000,
    maxQueue: 1,
  });
  const first = t.send(FCM_TARGET, MESSAGE);
  const controller = new AbortController();
  const queued = t.send(FCM_TARGET, MESSAGE, controller.signal);
  assert.equal(t.queued, 1);
  // `local`: the relay's own limit and its own abort say nothing about the push service.
  assert.deepEqual(await t.send(FCM_TARGET, MESSAGE), {
    kind: "retry",
    reason: "saturated",
    local: true,
  });
  controller.abort();
  assert.deepEqual(await queued, { kind: "retry", reason: "aborted", local: true });
  assert.equal(t.queued, 0);
  gate.resolve({ kind: "delivered", status: 200 });
  assert.deepEqual(await first, { kind: "delivered", status: 200 });
  assert.equal(t.inFlight, 0);
});

Deno.test("bounded() gives each send its own deadline: a later send outlives an earlier one's timeout, an answer in time is kept", async () => {
  const never = Promise.withResolvers<DeliveryOutcome>();
  const signals: AbortSignal[] = [];
  let answerNext: ((o: DeliveryOutcome) => void) | undefined;
  const t = bounded({
    id: "fcm",
    send(_target, _message, signal) {
      signals.push(signal!);
      if (signals.length === 2) {
        const answered = Promise.withResolvers<DeliveryOutcome>();
        answerNext = answered.resolve;
        return answered.promise;
      }
      return never.promise;
    },
  }, { concurrency: 3, timeoutMs: 200 });
  let lateSettled = false;
  const early = t.send(FCM_TARGET, MESSAGE);
  const inTime = t.send(FCM_TARGET, MESSAGE);
  await delay(120);
  const late = t.send(FCM_TARGET, MESSAGE).finally(() => {
    lateSettled = true;
  });
  answerNext!({ kind: "delivered", status: 201 });
  assert.deepEqual(await inTime, { kind: "delivered", status: 201 });
  assert.deepEqual(await early, { kind: "retry", reason: "timeout" });
  // The early send's deadline passed; the late one, started 120 ms after it, still runs.
  assert.equal(lateSettled, false);
  assert.equal(signals[0]!.aborted, true);
  assert.equal(signals[2]!.aborted, false);
  assert.deepEqual(await late, { kind: "retry", reason: "timeout" });
  assert.equal(signals[2]!.aborted, true);
  assert.equal(signals[1]!.aborted, false, "a send that answered is never aborted");
  assert.equal(t.inFlight, 0);
  never.resolve({ kind: "delivered", status: 200 });
});

Deno.test("bounded() stops every send in flight when the caller's signal fires, and aborts the transport's signals", async () => {
  const never = Promise.withResolvers<DeliveryOutcome>();
  const signals: AbortSignal[] = [];
  const t = bounded({
    id: "fcm",
    send(_target, _message, signal) {
      signals.push(signal!);
      return never.promise;
    },
  }, { concurrency: 4, timeoutMs: 60_000 });
  const controller = new AbortController();
  const sends = Array.from({ length: 3 }, () => t.send(FCM_TARGET, MESSAGE, controller.signal));
  // Another caller's send is not stopped by this caller's signal.
  const other = new AbortController();
  const bystander = t.send(FCM_TARGET, MESSAGE, other.signal);
  await delay(10);
  controller.abort(new Error("shutting down"));
  for (const outcome of await Promise.all(sends)) {
    assert.deepEqual(outcome, { kind: "retry", reason: "aborted" });
  }
  assert.deepEqual(signals.map((s) => s.aborted), [true, true, true, false]);
  assert.equal(t.inFlight, 1);
  other.abort();
  assert.deepEqual(await bystander, { kind: "retry", reason: "aborted" });
  assert.equal(t.inFlight, 0);
  never.resolve({ kind: "delivered", status: 200 });
});

Deno.test("bounded() turns a transport that throws into a retry", async () => {
  const t = bounded(stubTransport(() => Promise.reject(new Error("bug"))), {
    concurrency: 1,
    timeoutMs: 1000,
  });
  assert.deepEqual(await t.send(FCM_TARGET, MESSAGE), { kind: "retry", reason: "transport-error" });
});

Deno.test("an FCM that never answers does not slow Web Push or APNs deliveries", async () => {
  const now = () => Date.now();
  const [account, apnsKey, vapidKeys] = await Promise.all([
    makeServiceAccount(),
    makeApnsKey(),
    generateVapidKeys(),
  ]);

  // FCM: the token endpoint answers, messages:send never does.
  const fcmMock = startFcmMock({
    projectId: account.projectId,
    clientEmail: account.clientEmail,
    publicKey: account.publicKey,
    now,
  });
  fcmMock.hang = true;
  // APNs: the HTTP/2 TLS mock.
  const apnsMock = await startApnsMock({
    teamId: apnsKey.teamId,
    keyId: apnsKey.keyId,
    publicKey: apnsKey.publicKey,
    topic: "org.example.davpush",
    now,
  });
  const client = createApnsHttpClient({ caCerts: [MOCK_CA_PEM] });
  // Web Push: a push service that accepts everything.
  let webPushRequests = 0;
  const webPushController = new AbortController();
  const webPushServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: webPushController.signal, onListen() {} },
    async (req) => {
      await req.arrayBuffer();
      webPushRequests++;
      return new Response(null, { status: 201 });
    },
  );
  const ua = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]);
  const webPushTarget: Target = {
    transport: "web-push",
    endpoint: `http://127.0.0.1:${webPushServer.addr.port}/push/abc`,
    p256dh: encodeBase64Url(new Uint8Array(await crypto.subtle.exportKey("raw", ua.publicKey))),
    auth: encodeBase64Url(randomBytes(16)),
  };

  // Long enough that the other transports' local deliveries finish first even on a loaded
  // machine: the test checks the order of events, not durations.
  const timeoutMs = 2000;
  const fcm = bounded(
    createFcmTransport({
      serviceAccount: parseServiceAccount(account.json(fcmMock.tokenUri)),
      apiUrl: fcmMock.url,
      now,
    }),
    { concurrency: 2, timeoutMs },
  );
  const apns = bounded(
    createApnsTransport({
      key: apnsKey.pem,
      keyId: apnsKey.keyId,
      teamId: apnsKey.teamId,
      topic: "org.example.davpush",
      productionUrl: apnsMock.url,
      sandboxUrl: apnsMock.url,
      client,
      now,
    }),
    { concurrency: 4, timeoutMs },
  );
  const webPush = bounded(
    createWebPushTransport({
      vapid: await createVapid({ ...vapidKeys, subject: "mailto:relay@example.org", now }),
      now,
    }),
    { concurrency: 4, timeoutMs },
  );

  try {
    const started = performance.now();
    const timed = (p: Promise<DeliveryOutcome>) =>
      p.then((outcome) => ({ outcome, ms: performance.now() - started }));
    // The FCM sends go first, so they hold FCM's slots and fill its queue.
    const fcmResults = Array.from({ length: 4 }, () => timed(fcm.send(FCM_TARGET, MESSAGE)));
    const others = [
      ...Array.from({ length: 8 }, () => timed(apns.send(APNS_TARGET, MESSAGE))),
      ...Array.from({ length: 8 }, () => timed(webPush.send(webPushTarget, MESSAGE))),
    ];
    let fcmFinished = 0;
    for (const r of fcmResults) r.then(() => fcmFinished++);
    const done = await Promise.all(others);
    for (const { outcome } of done) assert.equal(outcome.kind, "delivered");
    assert.equal(fcmFinished, 0, "Web Push and APNs finished before any FCM send ended");
    assert.equal(fcm.inFlight, 2, "FCM holds only its own two slots");
    assert.equal(fcm.queued, 2);
    assert.equal(apnsMock.requests.length, 8);
    assert.equal(webPushRequests, 8);

    const fcmDone = await Promise.all(fcmResults);
    for (const { outcome } of fcmDone) {
      assert.deepEqual(outcome, { kind: "retry", reason: "timeout" });
    }
    const fcmTimes = fcmDone.map((d) => d.ms).sort((a, b) => a - b);
    // Lower bounds only: a slower machine makes these longer, never shorter.
    assert.ok(fcmTimes[0]! >= timeoutMs - 5, "the first FCM sends ran their full timeout");
    assert.ok(
      fcmTimes[3]! >= 2 * timeoutMs - 10,
      "the queued ones waited for a slot, then timed out",
    );
    assert.equal(fcmMock.sends.length, 4);
    assert.equal(fcmMock.tokenRequests.length, 1);
  } finally {
    client.close();
    webPush.close();
    webPushController.abort();
    await Promise.all([fcmMock.close(), apnsMock.close(), webPushServer.finished]);
  }
});
