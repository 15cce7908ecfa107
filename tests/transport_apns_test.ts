import assert from "node:assert/strict";
import {
  type ApnsTransportOptions,
  createApnsHttpClient,
  createApnsTransport,
  validateApnsEnvironment,
  validateApnsKey,
  validateApnsToken,
} from "../lib/transports/apns.ts";
import type { ApnsTarget, OutboundMessage } from "../lib/transports/types.ts";
import { memoryLogger } from "../lib/log.ts";
import { type ApnsMock, MOCK_CA_PEM, startApnsMock } from "./mocks/apns_mock.ts";
import { makeApnsKey, makeServiceAccount } from "./mocks/keys.ts";

const TOPIC = "org.example.davpush";
const TOKEN = "740f4707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bb78ad";
const PRODUCTION: ApnsTarget = { transport: "apns", token: TOKEN, environment: "production" };
const SANDBOX: ApnsTarget = { transport: "apns", token: TOKEN, environment: "sandbox" };
const MINUTE = 60_000;

function update(priority = 90, ttl = 86400): OutboundMessage {
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
    ttl,
    urgency: "high",
    priority,
    collapseKey: "h6Jk2LmN0pQrStUv",
  };
}

const key = await makeApnsKey();

interface Setup {
  mock: ApnsMock;
  sandbox: ApnsMock;
  clock: { t: number };
  transport: ReturnType<typeof createApnsTransport>;
  logger: ReturnType<typeof memoryLogger>;
  client: Deno.HttpClient;
  [Symbol.asyncDispose](): Promise<void>;
}

async function setup(extra: Partial<ApnsTransportOptions> = {}): Promise<Setup> {
  const clock = { t: Date.UTC(2026, 10, 24, 9, 15, 2) };
  const now = () => clock.t;
  const mockOptions = {
    teamId: key.teamId,
    keyId: key.keyId,
    publicKey: key.publicKey,
    topic: TOPIC,
    now,
  };
  const mock = await startApnsMock(mockOptions);
  const sandbox = await startApnsMock(mockOptions);
  const client = createApnsHttpClient({ caCerts: [MOCK_CA_PEM] });
  const logger = memoryLogger();
  const transport = createApnsTransport({
    key: key.pem,
    keyId: key.keyId,
    teamId: key.teamId,
    topic: TOPIC,
    productionUrl: mock.url,
    sandboxUrl: sandbox.url,
    client,
    now,
    logger,
    ...extra,
  });
  return {
    mock,
    sandbox,
    clock,
    transport,
    logger,
    client,
    async [Symbol.asyncDispose]() {
      client.close();
      await mock.close();
      await sandbox.close();
    },
  };
}

Deno.test("validateApnsToken() wants an even number (64 or more) of hex digits", () => {
  assert.equal(validateApnsToken(TOKEN), TOKEN);
  assert.equal(validateApnsToken(TOKEN.toUpperCase()), TOKEN);
  assert.equal(validateApnsToken(TOKEN + "ab"), TOKEN + "ab");
  for (const bad of [TOKEN.slice(2), TOKEN + "a", TOKEN.slice(1) + "g", ` ${TOKEN}`, "", 7, null]) {
    assert.equal(validateApnsToken(bad), null, JSON.stringify(bad));
  }
  assert.equal(validateApnsEnvironment("sandbox"), "sandbox");
  assert.equal(validateApnsEnvironment("development"), null);
});

Deno.test("validateApnsKey() accepts a .p8 key and refuses others without echoing them", async () => {
  assert.equal(validateApnsKey(key.pem), key.pem.trim());
  assert.equal(validateApnsKey(key.pem.replaceAll("\n", "\\n")), key.pem.trim());
  const rsa = await makeServiceAccount();
  const lines = key.pem.trim().split("\n");
  const cases: [string, RegExp][] = [
    ["", /content of the \.p8/],
    ["MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg", /content of the \.p8/],
    ["-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----", /SEC1/],
    [rsa.privateKeyPem, /P-256/],
    [[lines[0], lines[1], lines.at(-1)].join("\n"), /complete PKCS#8/],
    ["-----BEGIN PRIVATE KEY-----\n***\n-----END PRIVATE KEY-----", /not base64/],
  ];
  for (const [pem, pattern] of cases) {
    assert.throws(() => validateApnsKey(pem), (e: Error) => {
      assert.match(e.message, /^RELAY_APNS_KEY /);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("MI"), "key material in the message");
      return true;
    });
  }
});

Deno.test("APNs send: a background push over HTTP/2 with every header and an ES256 provider JWT", async () => {
  await using s = await setup();
  const outcome = await s.transport.send(PRODUCTION, update(90));
  assert.deepEqual(outcome, { kind: "delivered", status: 200 });
  assert.deepEqual(s.mock.problems, []);
  assert.equal(s.mock.requests.length, 1);
  const r = s.mock.requests[0]!;
  assert.match(r.protocol, /^h2/);
  assert.equal(r.method, "POST");
  assert.equal(r.path, `/3/device/${TOKEN}`);
  const nowS = Math.floor(s.clock.t / 1000);
  assert.equal(r.headers["apns-topic"], TOPIC);
  assert.equal(r.headers["apns-push-type"], "background");
  assert.equal(
    r.headers["apns-priority"],
    "5",
    "background pushes are priority 5 whatever the priority",
  );
  assert.equal(r.headers["apns-expiration"], String(nowS + 86400));
  assert.equal(r.headers["apns-collapse-id"], "h6Jk2LmN0pQrStUv");
  assert.equal(r.headers["content-type"], "application/json");
  assert.match(r.headers["authorization"] ?? "", /^bearer [\w-]+\.[\w-]+\.[\w-]+$/);
  assert.deepEqual(r.jwt, {
    header: { alg: "ES256", kid: key.keyId },
    claims: { iss: key.teamId, iat: nowS },
  });
  assert.deepEqual(JSON.parse(r.body), {
    aps: { "content-available": 1 },
    type: "update",
    topic: "q9Xc1vLrT0mJ2aBd",
    timestamp: "2026-11-24T09:15:02Z",
    priority: 90,
  });
  assert.equal(s.sandbox.requests.length, 0);
});

Deno.test("APNs mock refuses HTTP/1.1 where node:http2 can serve TLS", async () => {
  await using s = await setup();
  if (!s.mock.h2Only) return; // Deno 2.5: Deno.serve fallback, which also speaks HTTP/1.1
  const h1 = Deno.createHttpClient({ caCerts: [MOCK_CA_PEM], http1: true, http2: false });
  try {
    await assert.rejects(fetch(`${s.mock.url}/3/device/${TOKEN}`, { method: "POST", client: h1 }));
  } finally {
    h1.close();
  }
});

Deno.test("APNs send: a sandbox registration goes to the sandbox host; TTL 0 means no storage", async () => {
  await using s = await setup();
  assert.equal((await s.transport.send(SANDBOX, update(10, 0))).kind, "delivered");
  assert.equal(s.mock.requests.length, 0);
  assert.equal(s.sandbox.requests.length, 1);
  const r = s.sandbox.requests[0]!;
  assert.equal(r.headers["apns-expiration"], "0");
  assert.equal(r.headers["apns-priority"], "5");
});

Deno.test("APNs send: an encrypted Web Push body rides beside aps, still encrypted", async () => {
  await using s = await setup();
  const message: OutboundMessage = {
    payload: { kind: "encrypted", body: new Uint8Array([0xfb, 0xff, 0x00, 1, 2, 3]) },
    ttl: 60,
    urgency: "low",
    priority: 30,
  };
  assert.equal((await s.transport.send(PRODUCTION, message)).kind, "delivered");
  const r = s.mock.requests[0]!;
  assert.deepEqual(JSON.parse(r.body), {
    aps: { "content-available": 1 },
    type: "webpush",
    "content-encoding": "aes128gcm",
    body: "-_8AAQID",
  });
  assert.equal(r.headers["apns-collapse-id"], undefined);
  assert.equal(r.headers["apns-expiration"], String(Math.floor(s.clock.t / 1000) + 60));
});

Deno.test("APNs provider JWT is reused for 50 minutes and renewed once after", async () => {
  await using s = await setup();
  const t0 = s.clock.t;
  for (const minutes of [0, 5, 19, 20, 35, 49]) {
    s.clock.t = t0 + minutes * MINUTE;
    assert.equal(
      (await s.transport.send(PRODUCTION, update())).kind,
      "delivered",
      `${minutes} min`,
    );
  }
  assert.equal(s.transport.tokensIssued, 1);
  s.clock.t = t0 + 50 * MINUTE;
  // Many sends at the moment of renewal share one new token.
  const outcomes = await Promise.all(
    Array.from({ length: 10 }, () => s.transport.send(PRODUCTION, update())),
  );
  assert.ok(outcomes.every((o) => o.kind === "delivered"));
  assert.equal(s.transport.tokensIssued, 2);
  assert.equal(s.mock.tokensSeen.length, 2);
  const iats = s.mock.requests.map((r) => r.jwt?.claims.iat);
  assert.equal(new Set(iats).size, 2);
  assert.deepEqual(s.mock.problems, [], "the mock saw no token renewed within 20 minutes");
});

Deno.test("APNs 403 ExpiredProviderToken renews the JWT once and retries", async () => {
  await using s = await setup();
  assert.equal((await s.transport.send(PRODUCTION, update())).kind, "delivered");
  s.clock.t += 25 * MINUTE;
  s.mock.enqueue({ status: 403, reason: "ExpiredProviderToken" });
  assert.deepEqual(await s.transport.send(PRODUCTION, update()), {
    kind: "delivered",
    status: 200,
  });
  assert.equal(s.transport.tokensIssued, 2);
  assert.equal(s.mock.requests.length, 3);
  assert.notEqual(
    s.mock.requests[1]!.headers.authorization,
    s.mock.requests[2]!.headers.authorization,
  );

  // Expired again right after: the new token is not yet 20 minutes old, so it is kept and the
  // message waits until renewal is allowed rather than provoking TooManyProviderTokenUpdates.
  s.clock.t += 2 * MINUTE;
  s.mock.enqueue({ status: 403, reason: "ExpiredProviderToken" });
  assert.deepEqual(await s.transport.send(PRODUCTION, update()), {
    kind: "retry",
    status: 403,
    reason: "ExpiredProviderToken",
    retryAfterMs: 18 * MINUTE,
  });
  assert.equal(s.transport.tokensIssued, 2);
  assert.deepEqual(s.mock.problems, []);
});

Deno.test("APNs answers map to delivered, gone, retry and failed", async () => {
  await using s = await setup();
  const cases: [number, string, Record<string, string>, Record<string, unknown>][] = [
    [410, "Unregistered", {}, { kind: "gone", status: 410, reason: "Unregistered" }],
    [400, "BadDeviceToken", {}, { kind: "gone", status: 400, reason: "BadDeviceToken" }],
    [400, "DeviceTokenNotForTopic", {}, {
      kind: "gone",
      status: 400,
      reason: "DeviceTokenNotForTopic",
    }],
    [400, "BadCollapseId", {}, { kind: "failed", status: 400, reason: "BadCollapseId" }],
    [403, "InvalidProviderToken", {}, {
      kind: "retry",
      status: 403,
      reason: "InvalidProviderToken",
    }],
    [404, "BadPath", {}, { kind: "failed", status: 404, reason: "BadPath" }],
    [429, "TooManyRequests", { "retry-after": "120" }, {
      kind: "retry",
      status: 429,
      reason: "TooManyRequests",
      retryAfterMs: 120_000,
    }],
    [500, "InternalServerError", {}, { kind: "retry", status: 500, reason: "InternalServerError" }],
    [503, "ServiceUnavailable", {}, { kind: "retry", status: 503, reason: "ServiceUnavailable" }],
  ];
  for (const [status, reason, headers, expected] of cases) {
    s.mock.enqueue({ status, reason, headers });
    assert.deepEqual(await s.transport.send(PRODUCTION, update()), expected, `${status} ${reason}`);
  }
  assert.equal(s.transport.tokensIssued, 1);
});

Deno.test("APNs payloads over 4 KiB fail before any request", async () => {
  await using s = await setup();
  const big: OutboundMessage = {
    payload: { kind: "encrypted", body: new Uint8Array(3100) },
    ttl: 60,
    urgency: "normal",
    priority: 50,
  };
  assert.deepEqual(await s.transport.send(PRODUCTION, big), {
    kind: "failed",
    status: 413,
    reason: "PayloadTooLarge",
  });
  assert.equal(s.mock.requests.length, 0);
});

Deno.test("APNs network errors and aborts are retried", async () => {
  await using s = await setup();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = listener.addr.port;
  listener.close();
  const down = createApnsTransport({
    key: key.pem,
    keyId: key.keyId,
    teamId: key.teamId,
    topic: TOPIC,
    productionUrl: `https://127.0.0.1:${closedPort}`,
    sandboxUrl: `https://127.0.0.1:${closedPort}`,
    client: s.client,
    now: () => s.clock.t,
  });
  assert.deepEqual(await down.send(PRODUCTION, update()), { kind: "retry", reason: "network" });
  const controller = new AbortController();
  controller.abort();
  assert.deepEqual(await s.transport.send(PRODUCTION, update(), controller.signal), {
    kind: "retry",
    reason: "aborted",
  });
});

Deno.test("APNs never logs or returns the JWT, the key or device tokens", async () => {
  await using s = await setup();
  s.mock.enqueue({ status: 410, reason: "Unregistered" });
  const outcomes = [await s.transport.send(PRODUCTION, update())];
  s.clock.t += 30 * MINUTE;
  s.mock.enqueue({ status: 403, reason: "ExpiredProviderToken" }, {
    status: 403,
    reason: "InvalidProviderToken",
  });
  outcomes.push(await s.transport.send(PRODUCTION, update()));
  const text = JSON.stringify({ lines: s.logger.lines, outcomes });
  assert.ok(s.logger.lines.some((l) => l.event === "apns.auth.rejected"));
  const secrets = [
    TOKEN,
    ...s.mock.requests.map((r) => r.headers.authorization!.slice(7)),
    key.pem.split("\n")[1]!,
  ];
  for (const secret of secrets) assert.ok(!text.includes(secret), "a secret leaked");
});
