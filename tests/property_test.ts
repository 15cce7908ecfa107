/**
 * A property-based pass over every endpoint (npm fast-check): random and mutated JSON, XML,
 * binary bodies, headers, methods and paths against the real relay (memory KV, fixed clock,
 * the rate limit on). Three properties hold for every request:
 *
 * 1. no 5xx;
 * 2. a refused request (4xx) leaves the KV dump unchanged (rate-limit counters aside: they
 *    count refused requests too, on purpose);
 * 3. no secret (app tokens, the path-secret app id, the metrics token, client-data, keys,
 *    endpoints, ingress ids, the sealing secret) in any log line, nor in a response unless the
 *    request itself carried it (an error may quote the caller's own input).
 *
 * Bounded and seeded: `FC_SEED` replays a run (every test prints its seed), `FC_RUNS` sets the
 * runs per test (default 500).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import {
  APP2_TOKEN,
  APP_TOKEN,
  type Harness,
  harness,
  PATH_APP,
  PUBLIC_URL,
  testSubscriptionKeys,
} from "./_harness.ts";

const SEED = Number(Deno.env.get("FC_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const RUNS = Number(Deno.env.get("FC_RUNS") ?? 500);
const METRICS_TOKEN = "metrics-token-0123456789abcdef";
const SECRET = encodeBase64Url(new Uint8Array(32).fill(7));

interface Fixture {
  h: Harness;
  clientId: string;
  clientData: string;
  ingressId: string;
  endpoint: string;
  p256dh: string;
  auth: string;
  secrets: string[];
}

async function fixture(): Promise<Fixture> {
  const h = await harness({
    RELAY_REGISTRATION_RATE_LIMIT: "120",
    RELAY_METRICS_TOKEN: METRICS_TOKEN,
    RELAY_CORS_ORIGINS: "https://app.example.org",
  });
  const { publicKey } = await testSubscriptionKeys();
  const endpoint = `https://push.example.com/wpush/${encodeBase64Url(randomBytes(18))}`;
  const auth = encodeBase64Url(randomBytes(16));
  const res = await h.request("/registrations", {
    method: "POST",
    json: {
      transport: "web-push",
      subscription: { endpoint, keys: { p256dh: publicKey, auth } },
      ingress: true,
    },
  });
  assert.equal(res.status, 201);
  const reg = await res.json();
  assert.equal((await h.subscribe(reg["client-data"], ["t1", "t2"])).status, 200);
  await h.relay.engine.idle();
  const ingressId = new URL(reg["push-resource"]).pathname.split("/")[2]!;
  const vapid = await h.kv.get<{ privateKey: string }>(["meta", "vapid"]);
  const secrets = [
    APP_TOKEN,
    APP2_TOKEN,
    PATH_APP,
    METRICS_TOKEN,
    SECRET,
    reg["client-data"],
    endpoint,
    new URL(endpoint).pathname.slice(1),
    publicKey,
    auth,
    ingressId,
    ...(vapid.value ? [vapid.value.privateKey] : []),
  ];
  return {
    h,
    clientId: reg["client-id"],
    clientData: reg["client-data"],
    ingressId,
    endpoint,
    p256dh: publicKey,
    auth,
    secrets,
  };
}

interface Req {
  method: string;
  path: string;
  headers: [string, string][];
  body: string | Uint8Array | null;
}

// --- generators -------------------------------------------------------------------------------

/** Printable ASCII without CR/LF: what a header value can be. */
const headerText = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map(String.fromCharCode),
  maxLength: 40,
});

/** A known path, mutated (case, slashes, percent-encoding, extra segments) or random. */
function pathArb(f: Fixture, binary: boolean): fc.Arbitrary<string> {
  const known = fc.constantFrom(
    "/gateway",
    `/gateway/${PATH_APP}`,
    "/gateway/app1",
    "/registrations",
    `/registrations/${f.clientId}`,
    "/registrations/nobody",
    "/transports",
    "/healthz",
    "/metrics",
    `/push/${f.ingressId}`,
    `/push/${encodeBase64Url(randomBytes(24))}`,
    "/",
  );
  const mutated = fc.tuple(known, fc.integer({ min: 0, max: 7 }), fc.nat()).map(([p, how, n]) => {
    const i = p.length > 1 ? 1 + (n % (p.length - 1)) : 0;
    switch (how) {
      case 0:
        return p.toUpperCase();
      case 1:
        return `/${p}`;
      case 2:
        return p.replace(/\//g, "%2f").replace(/^%2f/, "/");
      case 3:
        return `${p}/`;
      case 4:
        return `${p}/x/${n}`;
      case 5:
        return p.slice(0, i) + "%" + (n % 256).toString(16).padStart(2, "0") + p.slice(i);
      case 6:
        return p.slice(0, i) + "//" + p.slice(i);
      default:
        return `${p}?q=${n}`;
    }
  });
  const random = fc.webPath().map((p) => (p.startsWith("/") ? p : `/${p}`));
  const favoured = binary
    ? fc.constant(`/push/${f.ingressId}`)
    : fc.constantFrom("/gateway", `/gateway/${PATH_APP}`, "/gateway/app1", "/registrations");
  return fc.oneof(
    { weight: 6, arbitrary: favoured },
    { weight: 3, arbitrary: known },
    { weight: 3, arbitrary: mutated },
    { weight: 1, arbitrary: random },
  ).map((p) => (p.startsWith("/") ? p : `/${p}`));
}

const methodArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant("POST") },
  { weight: 3, arbitrary: fc.constantFrom("GET", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS") },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Z]{3,10}$/) },
);

/** Usually `likely`, sometimes absent or another value. */
function mostly<T>(likely: fc.Arbitrary<T>, other: fc.Arbitrary<T>, absent = 1) {
  return fc.oneof(
    { weight: 7, arbitrary: likely },
    { weight: 2, arbitrary: other },
    { weight: absent, arbitrary: fc.constant(undefined) },
  );
}

/** Rarely present. */
function rarely<T>(a: fc.Arbitrary<T>) {
  return fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: a });
}

/** Headers shaped for JSON endpoints or for the ingress (`binary`), with odd values mixed in. */
function headersArb(f: Fixture, binary: boolean): fc.Arbitrary<[string, string][]> {
  const auth = fc.constantFrom(
    `Bearer ${APP_TOKEN}`,
    `Bearer ${APP_TOKEN}`,
    `Bearer ${APP_TOKEN}`,
    `Bearer ${APP_TOKEN}`,
    `Bearer ${APP2_TOKEN}`,
    `Bearer ${METRICS_TOKEN}`,
    `Bearer ${f.clientData}`,
    "Bearer wrong-token-0123456789",
    `vapid t=a.b.c, k=${f.p256dh}`,
    "Basic dXNlcjpwYXNz",
  );
  const oddType = fc.oneof(
    fc.constantFrom("text/plain", "application/xml", "application/merge-patch+json"),
    headerText,
  );
  return fc.record({
    "content-type": binary
      ? rarely(fc.oneof(fc.constant("application/octet-stream"), oddType))
      : mostly(fc.constantFrom("application/json", "application/json; charset=utf-8"), oddType),
    "content-encoding": binary
      ? mostly(fc.constantFrom("aes128gcm", "AES128GCM"), fc.oneof(fc.constant("gzip"), headerText))
      : rarely(fc.oneof(fc.constantFrom("identity", "gzip", "br"), headerText)),
    authorization: mostly(auth, headerText, 3),
    ttl: binary ? mostly(fc.nat().map(String), headerText) : rarely(fc.nat().map(String)),
    urgency: rarely(fc.oneof(fc.constantFrom("very-low", "low", "normal", "high"), headerText)),
    topic: rarely(fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{1,40}$/), headerText)),
    origin: rarely(fc.constantFrom("https://app.example.org", "https://evil.example")),
    "x-forwarded-for": rarely(fc.ipV4()),
  }).map((r) => Object.entries(r).filter((e): e is [string, string] => e[1] !== undefined));
}

/** Valid bodies of every JSON operation, to be mutated. */
function validBodies(f: Fixture, p256dh: string): unknown[] {
  const future = new Date(Date.UTC(2026, 10, 25)).toISOString();
  return [
    { "push-transports": [] },
    {
      "push-subscribe": {
        topics: ["t1", "t3"],
        "selected-transport": {
          "transport-uri": `${PUBLIC_URL}/transports/web-push`,
          "client-data": f.clientData,
        },
        expires: future,
      },
    },
    { push: { messages: [{ topic: "t1", priority: 90, timestamp: future, "client-id": "x" }] } },
    { push: [{ topic: "t2" }] },
    {
      transport: "web-push",
      subscription: {
        endpoint: `https://push.example.com/wpush/fresh-${crypto.randomUUID()}`,
        keys: { p256dh, auth: encodeBase64Url(randomBytes(16)) },
      },
      ingress: true,
    },
    { transport: "fcm", token: "some-token" },
    { transport: "apns", token: "ab".repeat(32), environment: "production" },
  ];
}

/** Every path (list of keys) into a JSON value. */
function jsonPaths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  const out = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...jsonPaths(x, [...at, i])));
  else if (v && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) out.push(...jsonPaths(x, [...at, k]));
  }
  return out;
}

function setAt(v: unknown, path: (string | number)[], value: unknown, remove: boolean): unknown {
  if (path.length === 0) return value;
  const copy = structuredClone(v) as Record<string | number, unknown>;
  let node = copy;
  for (const k of path.slice(0, -1)) node = node[k] as Record<string | number, unknown>;
  const last = path.at(-1)!;
  if (remove) delete node[last];
  else node[last] = value;
  return copy;
}

function jsonBodyArb(f: Fixture, p256dh: string): fc.Arbitrary<string> {
  const valid = fc.constantFrom(...validBodies(f, p256dh));
  const mutatedValue = valid.chain((v) => {
    const paths = jsonPaths(v);
    return fc.tuple(fc.constantFrom(...paths), fc.jsonValue({ maxDepth: 3 }), fc.boolean())
      .map(([path, value, remove]) => JSON.stringify(setAt(v, path, value, remove)));
  });
  const broken = fc.tuple(valid, fc.nat()).map(([v, n]) => {
    const text = JSON.stringify(v);
    return text.slice(0, n % text.length);
  });
  const duplicated = valid.map((v) => {
    const text = JSON.stringify(v);
    return `${text.slice(0, -1)},${text.slice(1)}`;
  });
  return fc.oneof(
    { weight: 2, arbitrary: valid.map((v) => JSON.stringify(v)) },
    { weight: 5, arbitrary: mutatedValue },
    { weight: 2, arbitrary: fc.json({ maxDepth: 4 }) },
    { weight: 1, arbitrary: broken },
    { weight: 1, arbitrary: duplicated },
  );
}

const xmlArb = fc.oneof(
  fc.constant(
    '<?xml version="1.0" encoding="utf-8"?><push-register xmlns="https://bitfire.at/webdav-push"><subscription><web-push-subscription><push-resource>https://push.example.com/x</push-resource></web-push-subscription></subscription></push-register>',
  ),
  fc.constant('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>'),
  fc.array(fc.constantFrom("<", ">", "</", "a", '="', "&amp;", "<?xml?>", " xmlns:P="), {
    maxLength: 40,
  }).map((parts) => parts.join("")),
);

/** Binary bodies for the ingress: random, or an aes128gcm header followed by random bytes. */
const binaryArb = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.tuple(fc.integer({ min: 0, max: 5000 }), fc.nat({ max: 2 ** 32 - 1 }), fc.boolean()).map(
    ([len, rs, keyid]) => {
      const b = new Uint8Array(len);
      if (len >= 22) {
        new DataView(b.buffer).setUint32(16, rs);
        b[20] = keyid ? 65 : 3;
        b[21] = 0x04;
      }
      return b;
    },
  ),
);

function requestArb(f: Fixture, body: fc.Arbitrary<Req["body"]>, binary: boolean) {
  return fc.record({
    method: methodArb,
    path: pathArb(f, binary),
    headers: headersArb(f, binary),
    body,
  });
}

// --- the properties -----------------------------------------------------------------------------

/** Statuses seen in this process, for the summary each test prints. */
const statuses = new Map<number, number>();

async function check(f: Fixture, req: Req): Promise<void> {
  const { h } = f;
  await h.relay.engine.idle();
  const before = await h.dump();
  const logged = h.logger.lines.length;
  const hasBody = req.body !== null && req.method !== "GET" && req.method !== "HEAD";
  const res = await h.request(req.path, {
    method: req.method,
    headers: req.headers,
    ...(hasBody ? { body: req.body as BodyInit } : {}),
  });
  const text = await res.text();
  statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
  await h.relay.engine.idle();
  const what = `${req.method} ${req.path} -> ${res.status} ${text.slice(0, 200)}`;
  assert.ok(res.status < 500, `no 5xx: ${what}`);
  if (res.status >= 400) assert.deepEqual(await h.dump(), before, `refused, changed KV: ${what}`);
  const lines = JSON.stringify(h.logger.lines.slice(logged));
  const sent = JSON.stringify(req) + (typeof req.body === "string" ? req.body : "");
  const answer = text + JSON.stringify([...res.headers]);
  for (const secret of f.secrets) {
    assert.equal(lines.includes(secret), false, `secret in a log line: ${what}`);
    if (!sent.includes(secret) && !decodeURIComponentSafe(sent).includes(secret)) {
      assert.equal(answer.includes(secret), false, `secret in the response: ${what}`);
    }
  }
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

async function run(
  name: string,
  binary: boolean,
  body: (f: Fixture, p256dh: string) => fc.Arbitrary<Req["body"]>,
) {
  const f = await fixture();
  try {
    const p256dh = (await testSubscriptionKeys()).publicKey;
    console.log(`${name}: fast-check seed ${SEED}, ${RUNS} runs (replay: FC_SEED=${SEED})`);
    await fc.assert(
      fc.asyncProperty(requestArb(f, body(f, p256dh), binary), (req) => check(f, req)),
      { seed: SEED, numRuns: RUNS, endOnFailure: true },
    );
    const seen = [...statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}: ${n}`);
    console.log(`${name}: statuses ${seen.join(", ")}`);
    statuses.clear();
    assert.deepEqual(f.h.logger.lines.filter((l) => l.level === "error"), []);
  } finally {
    await f.h.close();
  }
}

Deno.test("Property: JSON bodies (random and mutated) on every endpoint: no 5xx, refused requests change nothing, no secret leaks", async () => {
  await run("json", false, (f, p256dh) => jsonBodyArb(f, p256dh));
});

Deno.test("Property: XML, binary and empty bodies on every endpoint: no 5xx, refused requests change nothing, no secret leaks", async () => {
  await run(
    "xml+binary",
    true,
    () => fc.oneof(xmlArb, binaryArb, fc.constant(null), fc.string({ maxLength: 100 })),
  );
});
