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
  testSubscriptionKeys,
} from "./_harness.ts";
import { binaryArb, jsonBodyArb, type Req, requestArb, xmlArb } from "./fixtures/fuzz.ts";

const SEED = Number(Deno.env.get("FC_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const RUNS = Number(Deno.env.get("FC_RUNS") ?? 500);
const METRICS_TOKEN = "metrics-token-0123456789abcdef";
const SECRET = encodeBase64Url(new Uint8Array(32).fill(7));

interface Fixture {
  h: Harness;
  metricsToken: string;
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
    metricsToken: METRICS_TOKEN,
    clientId: reg["client-id"],
    clientData: reg["client-data"],
    ingressId,
    endpoint,
    p256dh: publicKey,
    auth,
    secrets,
  };
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
