import assert from "node:assert/strict";
import {
  createFcmTransport,
  FCM_SCOPE,
  type FcmTransportOptions,
  parseServiceAccount,
  validateFcmToken,
} from "../lib/transports/fcm.ts";
import type { FcmTarget, OutboundMessage } from "../lib/transports/types.ts";
import { memoryLogger } from "../lib/log.ts";
import { fcmError, type FcmMock, startFcmMock } from "./mocks/fcm_mock.ts";
import { makeServiceAccount, type TestServiceAccount } from "./mocks/keys.ts";

const DEVICE: FcmTarget = {
  transport: "fcm",
  token: "dXk3c2VjcmV0LWRldmljZS10b2tlbg:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx",
};

function update(priority = 90): OutboundMessage {
  return {
    payload: {
      kind: "json",
      data: {
        type: "update",
        topic: "q9Xc1vLrT0mJ2aBd",
        timestamp: "2026-11-24T09:15:02Z",
        priority,
      },
    },
    ttl: 86400,
    urgency: "high",
    priority,
    collapseKey: "h6Jk2LmN0pQrStUv",
  };
}

// One RSA key for the whole file: generating 2048-bit keys is the slow part.
const account: TestServiceAccount = await makeServiceAccount();

interface Setup {
  mock: FcmMock;
  clock: { t: number };
  transport: ReturnType<typeof createFcmTransport>;
  logger: ReturnType<typeof memoryLogger>;
  [Symbol.asyncDispose](): Promise<void>;
}

function setup(extra: Partial<FcmTransportOptions> = {}): Setup {
  const clock = { t: Date.UTC(2026, 10, 24, 9, 15, 2) };
  const now = () => clock.t;
  const mock = startFcmMock({
    projectId: account.projectId,
    clientEmail: account.clientEmail,
    publicKey: account.publicKey,
    now,
  });
  const logger = memoryLogger();
  const transport = createFcmTransport({
    serviceAccount: parseServiceAccount(account.json(mock.tokenUri)),
    apiUrl: mock.url,
    now,
    logger,
    ...extra,
  });
  return {
    mock,
    clock,
    transport,
    logger,
    [Symbol.asyncDispose]: () => mock.close(),
  };
}

Deno.test("parseServiceAccount() reads a Firebase service-account key file", () => {
  const sa = parseServiceAccount(account.json("https://oauth2.googleapis.com/token"));
  assert.equal(sa.projectId, account.projectId);
  assert.equal(sa.clientEmail, account.clientEmail);
  assert.equal(sa.privateKeyId, account.privateKeyId);
  assert.equal(sa.tokenUri, "https://oauth2.googleapis.com/token");
  assert.match(sa.privateKey, /^-----BEGIN PRIVATE KEY-----\n/);
});

Deno.test("parseServiceAccount() says what is wrong without repeating the key", async () => {
  const good = JSON.parse(account.json("https://oauth2.googleapis.com/token"));
  const keyBody = account.privateKeyPem.split("\n")[3]!;
  const ec = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
  ]);
  const ecDer = new Uint8Array(await crypto.subtle.exportKey("pkcs8", ec.privateKey));
  const ecPem = `-----BEGIN PRIVATE KEY-----\n${btoa(String.fromCharCode(...ecDer))}\n` +
    "-----END PRIVATE KEY-----\n";
  const lines = account.privateKeyPem.trim().split("\n");
  const truncated = [...lines.slice(0, 10), lines.at(-1)].join("\n");
  const cases: [string, string, RegExp][] = [
    ["not JSON", account.json("x").slice(0, 200), /is not valid JSON/],
    ["an array", "[]", /must be a JSON object/],
    ["wrong type", JSON.stringify({ ...good, type: "authorized_user" }), /"type"/],
    ["no project_id", JSON.stringify({ ...good, project_id: undefined }), /"project_id"/],
    ["no client_email", JSON.stringify({ ...good, client_email: "" }), /"client_email"/],
    ["no private_key", JSON.stringify({ ...good, private_key: 42 }), /"private_key"/],
    ["EC key", JSON.stringify({ ...good, private_key: ecPem }), /PKCS#8 RSA/],
    ["truncated key", JSON.stringify({ ...good, private_key: truncated }), /complete PKCS#8/],
    ["http token_uri", JSON.stringify({ ...good, token_uri: "http://evil.example/t" }), /https/],
  ];
  for (const [name, json, pattern] of cases) {
    assert.throws(() => parseServiceAccount(json), (e: Error) => {
      assert.match(e.message, /^RELAY_FCM_SERVICE_ACCOUNT /, name);
      assert.match(e.message, pattern, name);
      assert.ok(!e.message.includes(keyBody.slice(0, 16)), `${name} leaks the key`);
      assert.ok(!e.message.includes("MII"), `${name} leaks key material`);
      return true;
    });
  }
});

Deno.test("validateFcmToken() accepts 1 to 4096 printable characters", () => {
  assert.equal(validateFcmToken(DEVICE.token), DEVICE.token);
  assert.equal(validateFcmToken("a".repeat(4096)), "a".repeat(4096));
  for (const bad of ["", "a".repeat(4097), "abc def", "abc\n", "tök", 42, null, undefined]) {
    assert.equal(validateFcmToken(bad), null, JSON.stringify(bad));
  }
});

Deno.test("FCM send: RS256 JWT-bearer grant, then a data message with every field a string", async () => {
  await using s = setup();
  const outcome = await s.transport.send(DEVICE, update(90));
  assert.deepEqual(outcome, { kind: "delivered", status: 200 });
  assert.deepEqual(s.mock.problems, []);

  assert.equal(s.mock.tokenRequests.length, 1);
  const tr = s.mock.tokenRequests[0]!;
  assert.equal(tr.contentType, "application/x-www-form-urlencoded");
  assert.equal(tr.grantType, "urn:ietf:params:oauth:grant-type:jwt-bearer");
  assert.deepEqual(tr.header, { alg: "RS256", typ: "JWT", kid: account.privateKeyId });
  const iat = Math.floor(s.clock.t / 1000);
  assert.deepEqual(tr.claims, {
    iss: account.clientEmail,
    scope: FCM_SCOPE,
    aud: s.mock.tokenUri,
    iat,
    exp: iat + 3600,
  });

  assert.equal(s.mock.sends.length, 1);
  const send = s.mock.sends[0]!;
  assert.equal(send.path, `/v1/projects/${account.projectId}/messages:send`);
  assert.match(send.accessToken ?? "", /^ya29\.mock-1-/);
  assert.equal(send.headers.get("content-type"), "application/json; charset=UTF-8");
  assert.deepEqual(send.body, {
    message: {
      token: DEVICE.token,
      data: {
        type: "update",
        topic: "q9Xc1vLrT0mJ2aBd",
        timestamp: "2026-11-24T09:15:02Z",
        priority: "90",
      },
      android: { priority: "high", ttl: "86400s", collapse_key: "h6Jk2LmN0pQrStUv" },
    },
  });
});

Deno.test("FCM send: priority 75 and above is high, below is normal; arrays become JSON text", async () => {
  await using s = setup();
  const subscribed: OutboundMessage = {
    payload: {
      kind: "json",
      data: {
        type: "subscribed",
        topics: ["a", "b"],
        expires: "2026-11-26T08:00:00Z",
        truncated: true,
      },
    },
    ttl: 600,
    urgency: "normal",
    priority: 74,
  };
  assert.equal((await s.transport.send(DEVICE, subscribed)).kind, "delivered");
  assert.equal((await s.transport.send(DEVICE, update(75))).kind, "delivered");
  const [a, b] = s.mock.sends.map((x) => x.body.message as Record<string, unknown>);
  assert.deepEqual(a!.data, {
    type: "subscribed",
    topics: '["a","b"]',
    expires: "2026-11-26T08:00:00Z",
    truncated: "true",
  });
  assert.deepEqual(a!.android, { priority: "normal", ttl: "600s" });
  assert.equal((b!.android as Record<string, unknown>).priority, "high");
});

Deno.test("FCM send: an encrypted Web Push body goes out as webpush data, still encrypted", async () => {
  await using s = setup();
  const body = new Uint8Array([0xfb, 0xff, 0x00, 1, 2, 3]);
  const outcome = await s.transport.send(DEVICE, {
    payload: { kind: "encrypted", body },
    ttl: 60,
    urgency: "low",
    priority: 30,
    collapseKey: "t1",
  });
  assert.equal(outcome.kind, "delivered");
  const message = s.mock.sends[0]!.body.message as Record<string, unknown>;
  assert.deepEqual(message.data, {
    type: "webpush",
    "content-encoding": "aes128gcm",
    body: "-_8AAQID",
  });
  assert.deepEqual(message.android, { priority: "normal", ttl: "60s", collapse_key: "t1" });
});

Deno.test("FCM access token is cached until shortly before it expires", async () => {
  await using s = setup();
  for (let i = 0; i < 3; i++) {
    assert.equal((await s.transport.send(DEVICE, update())).kind, "delivered");
  }
  assert.equal(s.mock.tokenRequests.length, 1);
  s.clock.t += 3599_000 - 300_000 - 1; // just before the 5-minute margin
  assert.equal((await s.transport.send(DEVICE, update())).kind, "delivered");
  assert.equal(s.mock.tokenRequests.length, 1);
  s.clock.t += 1;
  assert.equal((await s.transport.send(DEVICE, update())).kind, "delivered");
  assert.equal(s.mock.tokenRequests.length, 2);
  const tokens = new Set(s.mock.sends.map((x) => x.accessToken));
  assert.equal(tokens.size, 2);
});

Deno.test("FCM access token is fetched once for many concurrent sends (single flight)", async () => {
  await using s = setup();
  s.mock.tokenDelayMs = 50;
  const outcomes = await Promise.all(
    Array.from({ length: 25 }, () => s.transport.send(DEVICE, update())),
  );
  assert.ok(outcomes.every((o) => o.kind === "delivered"));
  assert.equal(s.mock.tokenRequests.length, 1);
  assert.equal(s.transport.tokenRequests, 1);
  assert.equal(new Set(s.mock.sends.map((x) => x.accessToken)).size, 1);
});

Deno.test("FCM 401 fetches a new access token once and tries again", async () => {
  await using s = setup();
  assert.equal((await s.transport.send(DEVICE, update())).kind, "delivered");
  s.mock.revokeTokens();
  // Concurrent sends that all meet the 401 still share one new token.
  const outcomes = await Promise.all([1, 2, 3].map(() => s.transport.send(DEVICE, update())));
  assert.deepEqual(outcomes.map((o) => o.kind), ["delivered", "delivered", "delivered"]);
  assert.equal(s.mock.tokenRequests.length, 2);
  assert.equal(s.mock.sends.length, 1 + 3 + 3);

  // A second 401 in a row is not retried again: the message waits for a later attempt.
  const unauthenticated = fcmError(401, "UNAUTHENTICATED", "Request had invalid authentication");
  s.mock.enqueue(unauthenticated, unauthenticated);
  const outcome = await s.transport.send(DEVICE, update());
  assert.deepEqual(outcome, { kind: "retry", status: 401, reason: "fcm-unauthenticated" });
  assert.equal(s.mock.tokenRequests.length, 3);
  assert.equal(s.mock.sends.length, 7 + 2);
});

Deno.test("FCM answers map to delivered, gone, retry and failed", async () => {
  await using s = setup();
  const retryAt = new Date(s.clock.t + 90_000).toUTCString();
  const cases: [string, Parameters<typeof s.mock.enqueue>[0], Record<string, unknown>][] = [
    [
      "404 UNREGISTERED prunes",
      fcmError(404, "NOT_FOUND", "Requested entity was not found.", { errorCode: "UNREGISTERED" }),
      { kind: "gone", status: 404, reason: "UNREGISTERED" },
    ],
    [
      "400 INVALID_ARGUMENT about the registration token prunes",
      fcmError(
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        {
          errorCode: "INVALID_ARGUMENT",
        },
      ),
      { kind: "gone", status: 400, reason: "INVALID_ARGUMENT (registration token)" },
    ],
    [
      "400 with a message.token field violation prunes",
      fcmError(400, "INVALID_ARGUMENT", "Invalid value at 'message.token'", {
        fieldViolations: [{ field: "message.token", description: "Invalid registration token" }],
      }),
      { kind: "gone", status: 400, reason: "INVALID_ARGUMENT (registration token)" },
    ],
    [
      "400 INVALID_ARGUMENT about the message keeps the device",
      fcmError(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'", {
        errorCode: "INVALID_ARGUMENT",
        fieldViolations: [{ field: "message.android.ttl", description: "Invalid duration" }],
      }),
      { kind: "failed", status: 400, reason: "INVALID_ARGUMENT" },
    ],
    [
      "403 SENDER_ID_MISMATCH keeps the device",
      fcmError(403, "PERMISSION_DENIED", "SenderId mismatch", { errorCode: "SENDER_ID_MISMATCH" }),
      { kind: "failed", status: 403, reason: "SENDER_ID_MISMATCH" },
    ],
    [
      "429 QUOTA_EXCEEDED retries after Retry-After seconds",
      fcmError(429, "RESOURCE_EXHAUSTED", "Quota exceeded", { errorCode: "QUOTA_EXCEEDED" }, {
        "retry-after": "30",
      }),
      { kind: "retry", status: 429, reason: "QUOTA_EXCEEDED", retryAfterMs: 30_000 },
    ],
    [
      "503 UNAVAILABLE retries after a Retry-After date",
      fcmError(503, "UNAVAILABLE", "The service is currently unavailable.", {
        errorCode: "UNAVAILABLE",
      }, {
        "retry-after": retryAt,
      }),
      { kind: "retry", status: 503, reason: "UNAVAILABLE", retryAfterMs: 90_000 },
    ],
    [
      "500 INTERNAL retries",
      fcmError(500, "INTERNAL", "Internal error encountered.", { errorCode: "INTERNAL" }),
      { kind: "retry", status: 500, reason: "INTERNAL" },
    ],
    [
      "502 with an HTML body retries",
      {
        status: 502,
        body: "<!DOCTYPE html><html><title>Error 502 (Server Error)!!1</title></html>",
        headers: { "content-type": "text/html; charset=UTF-8" },
      },
      { kind: "retry", status: 502, reason: "http 502" },
    ],
  ];
  for (const [name, response, expected] of cases) {
    s.mock.enqueue(response);
    assert.deepEqual(await s.transport.send(DEVICE, update()), expected, name);
  }
  assert.equal(s.mock.tokenRequests.length, 1);
});

Deno.test("FCM 404 for a wrong project is not a pruning answer", async () => {
  await using t = setup();
  const wrong = createFcmTransport({
    serviceAccount: {
      ...parseServiceAccount(account.json(t.mock.tokenUri)),
      projectId: "someone-elses-project",
    },
    apiUrl: t.mock.url,
    now: () => t.clock.t,
  });
  const outcome = await wrong.send(DEVICE, update());
  assert.deepEqual(outcome, { kind: "failed", status: 404, reason: "NOT_FOUND" });
  assert.equal(t.mock.sends[0]!.path, "/v1/projects/someone-elses-project/messages:send");
});

Deno.test("FCM token endpoint failures retry the message and back off before asking again", async () => {
  await using s = setup();
  s.mock.enqueueToken({
    status: 400,
    body: JSON.stringify({ error: "invalid_grant", error_description: "Invalid JWT Signature." }),
    headers: { "content-type": "application/json" },
  });
  const first = await s.transport.send(DEVICE, update());
  assert.deepEqual(first, { kind: "retry", status: 400, reason: "fcm-token-invalid_grant" });
  assert.equal(s.mock.sends.length, 0);
  assert.deepEqual(await s.transport.send(DEVICE, update()), first);
  assert.equal(s.mock.tokenRequests.length, 1, "no new token request within the backoff");
  s.clock.t += 5_000;
  assert.equal((await s.transport.send(DEVICE, update())).kind, "delivered");
  assert.equal(s.mock.tokenRequests.length, 2);
  assert.ok(s.logger.lines.some((l) => l.event === "fcm.token.failed"));
});

Deno.test("FCM network errors and aborts are retried", async () => {
  await using s = setup();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = listener.addr.port;
  listener.close();
  const down = createFcmTransport({
    serviceAccount: parseServiceAccount(account.json(s.mock.tokenUri)),
    apiUrl: `http://127.0.0.1:${closedPort}`,
    now: () => s.clock.t,
  });
  assert.deepEqual(await down.send(DEVICE, update()), { kind: "retry", reason: "network" });
  const controller = new AbortController();
  controller.abort();
  assert.deepEqual(await s.transport.send(DEVICE, update(), controller.signal), {
    kind: "retry",
    reason: "aborted",
  });
});

Deno.test("FCM never logs or returns tokens, assertions or the key", async () => {
  await using s = setup();
  s.mock.enqueueToken({ status: 503, body: "unavailable" });
  await s.transport.send(DEVICE, update());
  s.clock.t += 10_000;
  s.mock.enqueue(
    fcmError(404, "NOT_FOUND", "Requested entity was not found.", { errorCode: "UNREGISTERED" }),
  );
  const outcomes = [await s.transport.send(DEVICE, update())];
  s.mock.revokeTokens();
  outcomes.push(await s.transport.send(DEVICE, update()));
  const text = JSON.stringify({ lines: s.logger.lines, outcomes });
  const secrets = [
    DEVICE.token,
    ...s.mock.sends.map((x) => x.accessToken ?? "-"),
    account.privateKeyPem.split("\n")[2]!,
  ];
  for (const secret of secrets) assert.ok(!text.includes(secret), "a secret leaked");
});
