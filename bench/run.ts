/**
 * `deno task bench`: every benchmark of the relay in one run, then BENCHMARKS.md is rewritten
 * with the table, the date, the Deno version and the machine. `--smoke` runs a tiny version
 * (seconds, for CI) that checks the same things work and writes nothing.
 *
 * Sections (see the README's Benchmarks section for what each figure means):
 * 1. Crypto floor: the bare RFC 8291 pipeline on Web Crypto, using both cores.
 * 2. Fan-out: one push to N subscriptions of the relay (`main.ts` as its own process) on a
 *    local HTTPS sink that only counts; deliveries/s and time to the last delivery, as a
 *    ratio to the floor measured in the same run (right before and right after the fan-outs).
 * 3. npm web-push on Node.js to the same sink, same N.
 * 4. Ingest: `POST /gateway` pushes with 32 concurrent clients on loopback.
 * 5. Storage: KV bytes per registration and per subscription over 100,000 of each, and the
 *    relay's resident memory before, during and after a fan-out to all 100,000.
 * 6. Stranger (`--only=stranger`, run on its own, a few seconds, never part of the full run):
 *    the KV bytes one client address can make the relay store in one minute at the default
 *    limits, without any credential (README "Threat model").
 *
 * @module
 */

import { signJwt } from "../lib/crypto/jwt.ts";
import { generateVapidKeys, importVapidKeys, type VapidKeys } from "../lib/crypto/vapid.ts";
import { encodeBase64Url, randomBytes, randomToken } from "../lib/encoding.ts";
import { DatabaseSync } from "node:sqlite";
import { loadConfig } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { createStore } from "../lib/store/mod.ts";
import type { Transport } from "../lib/transports/types.ts";
import { createRelay } from "../relay.ts";
import { fastestP256Backend, type P256Backend } from "../lib/crypto/ece.ts";
import { measureFloorHere, measureFloorWorkers, type Pipeline } from "./crypto_floor.ts";
import {
  CERT_DIR,
  cpuSeconds,
  epochMs,
  type RelayProc,
  residentMemory,
  type Sink,
  startRelay,
  startSink,
  startTaskFlags,
} from "./_procs.ts";
import {
  kvFileBytes,
  seedClients,
  type SeededClient,
  seedSubscriptions,
  subscriberKeys,
} from "./_seed.ts";

const smoke = Deno.args.includes("--smoke");
const only = Deno.args.find((a) => a.startsWith("--only="))?.slice(7).split(",");
const want = (section: string) => !only || only.includes(section);
/** Extra `deno run` flags for the relay, for experiments (e.g. `--relay-flags=--v8-flags=...`). */
const relayFlags = Deno.args.filter((a) => a.startsWith("--relay-flags=")).map((a) => a.slice(14));

const P = smoke
  ? {
    floorMs: 300,
    fanout: [50, 200],
    repeats: 2,
    warm: 20,
    nodeWarm: 20,
    ingestMs: 800,
    storageN: 300,
    inFlight: 256,
  }
  : {
    floorMs: 3000,
    fanout: [1000, 10_000],
    /** Fan-outs of N <= 1,000 last about half a second: the median of this many is reported. */
    repeats: 3,
    /**
     * Deliveries before the measured fan-outs: a relay keeps getting faster for its first several
     * thousand (JIT tiers, heap sizing, in the relay and in the sink); a long-running relay is
     * past that. Measured: N = 1,000 right after 500 deliveries ran at ~0.85 of the same run
     * after 10,000.
     */
    warm: 10_000,
    /** npm web-push runs in a fresh Node.js process each time; its warm-up only warms the sink. */
    nodeWarm: 500,
    ingestMs: 10_000,
    storageN: 100_000,
    inFlight: 256,
  };
const INGEST_CLIENTS = 32;
/** How many times a fan-out of `n` is measured. */
const repeatsOf = (n: number) => (n <= 1000 ? P.repeats : 1);
export const APP = "bench";
export const TOKEN = randomToken(24);
const HOUR = 3600_000;

const failures: string[] = [];
function check(ok: boolean, what: string) {
  if (!ok) {
    failures.push(what);
    console.error(`FAIL: ${what}`);
  }
}
const log = (s: string) => console.error(`bench: ${s}`);
const fmt = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const MiB = 1024 * 1024;

// --- machine ----------------------------------------------------------------------------------

async function machine() {
  let cpu = "unknown";
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(await Deno.readTextFile("/proc/cpuinfo"))?.[1] ??
      "unknown";
  } catch { /* not Linux */ }
  let node = "absent";
  try {
    const out = await new Deno.Command("node", { args: ["--version"], stdout: "piped" }).output();
    node = new TextDecoder().decode(out.stdout).trim();
  } catch { /* absent */ }
  return {
    cores: navigator.hardwareConcurrency,
    cpu,
    os: `${Deno.build.os} ${Deno.build.arch}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    node,
  };
}

/** The 1-minute load average, or "unknown" off Linux. */
async function loadAverage(): Promise<string> {
  try {
    return (await Deno.readTextFile("/proc/loadavg")).split(" ")[0] ?? "unknown";
  } catch {
    return "unknown";
  }
}

// --- 1. crypto floor --------------------------------------------------------------------------

interface FloorResult {
  /** The floor: the best of the two ways below. */
  rate: number;
  here: number;
  workers: number;
  /** CPU microseconds per message (this process, worker run). */
  cpuUs: number;
  /** The relay's own encryption (lib/crypto/ece.ts) in the same workers: messages/s. */
  relay: number;
  relayCpuUs: number;
}

/** Messages/s of `pipeline` in one worker per core, and CPU microseconds per message. */
async function inWorkers(pipeline: Pipeline): Promise<{ rate: number; cpuUs: number }> {
  const cpu0 = await cpuSeconds(Deno.pid);
  const t0 = performance.now();
  const rate = await measureFloorWorkers(navigator.hardwareConcurrency, 32, P.floorMs, pipeline);
  const cpu = await cpuSeconds(Deno.pid) - cpu0;
  const secs = (performance.now() - t0) / 1000;
  return { rate, cpuUs: (cpu / (rate * secs)) * 1e6 };
}

export async function floor(p256: P256Backend): Promise<FloorResult> {
  const here = await measureFloorHere(64, P.floorMs);
  const bare = await inWorkers({ kind: "bare" });
  const relay = await inWorkers({ kind: "relay", p256 });
  return {
    rate: Math.max(here, bare.rate),
    here,
    workers: bare.rate,
    cpuUs: bare.cpuUs,
    relay: relay.rate,
    relayCpuUs: relay.cpuUs,
  };
}

// --- 2./3. fan-out ------------------------------------------------------------------------------

interface FanOutResult {
  n: number;
  /** Each run's deliveries/s when the fan-out was repeated (the result is their median). */
  runs?: number[];
  /** Deliveries per second: n / (last delivery - push sent). */
  rate: number;
  /** Milliseconds from sending the push to the sink counting the last delivery. */
  lastMs: number;
  /** Milliseconds until the relay answered the push. */
  answerMs?: number;
  /** Milliseconds from sending the push to the sink counting the first delivery. */
  firstMs?: number;
  /** CPU microseconds per delivery, sender process only. */
  cpuUs: number;
  /** CPU microseconds per delivery the sink used (it shares the cores). */
  sinkCpuUs: number;
  /** Connections the sink accepted during the fan-out (kept-alive ones from the warm-up not counted). */
  connections: number;
}

export async function pushTo(relay: RelayProc, topic: string): Promise<Response> {
  return await fetch(`${relay.url}/gateway`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({
      push: { messages: [{ topic, timestamp: new Date().toISOString(), priority: 50 }] },
    }),
  });
}

export async function relayFanOut(
  relay: RelayProc,
  sink: Sink,
  topic: string,
  n: number,
): Promise<FanOutResult> {
  await sink.reset();
  const cpu0 = await cpuSeconds(relay.pid);
  const sinkCpu0 = await cpuSeconds(sink.pid);
  const start = epochMs();
  const res = await pushTo(relay, topic);
  const answerMs = epochMs() - start;
  const body = await res.text();
  check(res.status === 200 && body === '{"push-response":{}}', `push to ${topic}: ${body}`);
  const stats = await sink.wait(n, 300_000);
  const cpu = await cpuSeconds(relay.pid) - cpu0;
  const sinkCpu = await cpuSeconds(sink.pid) - sinkCpu0;
  check(stats.count === n, `fan-out ${topic}: ${stats.count} of ${n} delivered`);
  check(stats.bad === 0, `fan-out ${topic}: ${stats.bad} malformed deliveries`);
  const lastMs = stats.last - start;
  return {
    n,
    rate: n / (lastMs / 1000),
    lastMs,
    answerMs,
    firstMs: stats.first - start,
    cpuUs: (cpu / n) * 1e6,
    sinkCpuUs: (sinkCpu / n) * 1e6,
    connections: stats.connections,
  };
}

export async function nodeFanOut(
  sink: Sink,
  clients: SeededClient[],
  vapid: { publicKey: string; privateKey: string },
  payload: string,
): Promise<FanOutResult> {
  await sink.reset();
  const sinkCpu0 = await cpuSeconds(sink.pid);
  const n = clients.length;
  const child = new Deno.Command("node", {
    args: [new URL("node_webpush.mjs", import.meta.url).pathname],
    env: { NODE_EXTRA_CA_CERTS: `${CERT_DIR}ca.pem` },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const job = {
    endpoints: clients.map((c) => c.target.endpoint),
    p256dh: clients.map((c) => c.target.p256dh),
    auth: clients[0]!.target.auth,
    payload,
    vapid: { ...vapid, subject: "mailto:bench@relay.example" },
    concurrency: P.inFlight,
  };
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(job)));
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`node web-push failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const r = JSON.parse(text) as { start: number; end: number; ok: number; failed: number };
  const stats = await sink.stats();
  check(r.failed === 0 && stats.count === n, `node web-push: ${stats.count} of ${n}: ${text}`);
  const lastMs = stats.last - r.start;
  // CPU of the whole node process (start-up included), from the rusage of the child.
  const sinkCpuUs = ((await cpuSeconds(sink.pid) - sinkCpu0) / n) * 1e6;
  return {
    n,
    rate: n / (lastMs / 1000),
    lastMs,
    cpuUs: NaN,
    sinkCpuUs,
    connections: stats.connections,
  };
}

// --- 4. ingest --------------------------------------------------------------------------------

interface IngestResult {
  rate: number;
  p50: number;
  p99: number;
  requests: number;
  errors: number;
  deliveries: number;
}

export async function ingest(relay: RelayProc, sink: Sink, ms: number): Promise<IngestResult> {
  // The load generator runs on Node.js (bench/ingest_client.mjs), the same client for every
  // Deno version under test, and reports the latencies it saw.
  await sink.reset();
  const child = new Deno.Command("node", {
    args: [new URL("ingest_client.mjs", import.meta.url).pathname],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(
    new TextEncoder().encode(JSON.stringify({
      url: `${relay.url}/gateway`,
      token: TOKEN,
      clients: INGEST_CLIENTS,
      warmupMs: Math.min(1000, ms / 4),
      ms,
    })),
  );
  await writer.close();
  const out = await child.output();
  if (!out.success) {
    throw new Error(`ingest client failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const { latencies, errors, secs } = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    latencies: number[];
    errors: number;
    secs: number;
  };
  latencies.sort((a, b) => a - b);
  const q = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
  await new Promise((r) => setTimeout(r, 300));
  const stats = await sink.stats();
  check(errors === 0, `ingest: ${errors} failed requests`);
  check(stats.bad === 0, `ingest: ${stats.bad} malformed deliveries`);
  return {
    rate: latencies.length / secs,
    p50: q(0.5),
    p99: q(0.99),
    requests: latencies.length,
    errors,
    deliveries: stats.count,
  };
}

// --- 5. storage and memory --------------------------------------------------------------------

interface StorageResult {
  n: number;
  bytesPerRegistration: number;
  bytesPerSubscription: number;
  kvBytes: number;
  rssBefore: number;
  rssPeak: number;
  rssAfter: number;
  fanOut: FanOutResult;
}

async function storage(sink: Sink, keys: string[], env: Record<string, string>) {
  const n = P.storageN;
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-storage-" });
  const path = `${dir}/relay.sqlite3`;
  const now = Date.now();
  try {
    // An empty database with the relay's own meta keys, as a started relay leaves it.
    const first = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags);
    await first.stop();
    const size0 = await kvFileBytes(path);

    let kv = await Deno.openKv(path);
    log(`storage: registering ${n} clients`);
    // Endpoints as long as real ones (FCM: ~150 characters after the origin), on the sink.
    const clients = await seedClients(createStore(kv), n, {
      endpointBase: `${sink.url}/fcm/send`,
      keys,
      pathBytes: 105,
      now,
    });
    kv.close();
    const size1 = await kvFileBytes(path);

    kv = await Deno.openKv(path);
    log(`storage: subscribing ${n} clients to one topic`);
    await seedSubscriptions(createStore(kv), APP, "all-clients", clients, now + 47 * HOUR, now);
    kv.close();
    const size2 = await kvFileBytes(path);

    const relay = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const before = await residentMemory(relay.pid);
      log(`storage: fan-out to all ${n}`);
      let sampled = before.rss;
      const sampler = setInterval(() => {
        residentMemory(relay.pid).then((m) => (sampled = Math.max(sampled, m.rss))).catch(
          () => {},
        );
      }, 100);
      const fanOut = await relayFanOut(relay, sink, "all-clients", n);
      clearInterval(sampler);
      await new Promise((r) => setTimeout(r, 1500));
      const after = await residentMemory(relay.pid);
      return {
        n,
        bytesPerRegistration: (size1 - size0) / n,
        bytesPerSubscription: (size2 - size1) / n,
        kvBytes: size2,
        rssBefore: before.rss,
        rssPeak: Math.max(after.peak, sampled),
        rssAfter: after.rss,
        fanOut,
      } satisfies StorageResult;
    } finally {
      await relay.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// --- stranger -------------------------------------------------------------------------------------

/** Bytes of keys and values in a KV SQLite file, and its entries (read beside a running KV). */
function kvLogical(path: string): { bytes: number; entries: number } {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const row = db.prepare("SELECT sum(length(k) + length(v)) AS b, count(*) AS n FROM kv").get();
    return { bytes: Number(row?.b ?? 0), entries: Number(row?.n ?? 0) };
  } finally {
    db.close();
  }
}

/**
 * What a stranger can store in one minute from one address at the default limits
 * (`RELAY_REGISTRATION_RATE_LIMIT` 60 a minute, 120 ingress messages a minute per push
 * resource), in the largest form each request allows: a 4096-character endpoint with a push
 * resource restricted to a VAPID key; 4096-byte ingress bodies with a TTL of 28 days and a
 * Topic each, to a device whose push service fails (so each message is kept until it becomes
 * a dead letter, kept 7 days). The relay runs in this process on a SQLite KV with the real
 * wiring and a clock this section moves; only the Web Push transport is replaced.
 */
type Post = (path: string, init: RequestInit) => Promise<Response>;

/** One minute's registrations from one address, each as large as allowed; statuses and URLs. */
async function strangerRegistrations(post: Post, limit: number, vapidKey: string) {
  const keys = await subscriberKeys(1);
  const statuses: number[] = [];
  const resources: string[] = [];
  for (let i = 0; i <= limit; i++) {
    const endpoint = `https://93.184.216.34/${"x".repeat(4096 - 26)}${randomToken(3)}`;
    const res = await post("/registrations", {
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        transport: "web-push",
        subscription: {
          endpoint: endpoint.slice(0, 4096),
          keys: { p256dh: keys[0]!, auth: encodeBase64Url(randomBytes(16)) },
        },
        ingress: true,
        "ingress-vapid-public-key": vapidKey,
      }),
    });
    statuses.push(res.status);
    if (res.status === 201) resources.push((await res.json())["push-resource"]);
    else await res.body?.cancel();
  }
  return { statuses, resources };
}

/** One minute's ingress messages to one push resource, each as large as allowed; statuses. */
async function strangerMessages(post: Post, resource: string, vapid: VapidKeys, now: number) {
  const body = new Uint8Array(4096);
  new DataView(body.buffer).setUint32(16, 4096);
  body[20] = 65;
  body[21] = 0x04;
  const jwt = await signJwt(
    { alg: "ES256", typ: "JWT" },
    { aud: "https://relay.example.net", exp: Math.floor(now / 1000) + 3600, sub: "mailto:a@b" },
    (await importVapidKeys(vapid)).signingKey,
  );
  const statuses: number[] = [];
  for (let i = 0; i <= 120; i++) {
    const res = await post(new URL(resource).pathname, {
      headers: {
        "content-encoding": "aes128gcm",
        ttl: "2419200",
        topic: randomToken(24),
        authorization: `vapid t=${jwt}, k=${vapid.publicKey}`,
      },
      body,
    });
    statuses.push(res.status);
    await res.body?.cancel();
  }
  return statuses;
}

/**
 * What a stranger can store in one minute from one address at the default limits
 * (`RELAY_REGISTRATION_RATE_LIMIT` 60 a minute, 120 ingress messages a minute per push
 * resource), in the largest form each request allows: a 4096-character endpoint with a push
 * resource restricted to a VAPID key; 4096-byte ingress bodies with a TTL of 28 days and a
 * Topic each, to a device whose push service fails (so each message is kept until it becomes
 * a dead letter, kept 7 days). The relay runs in this process on a SQLite KV with the real
 * wiring and a clock this section moves; only the Web Push transport is replaced.
 */
async function stranger() {
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-stranger-" });
  const path = `${dir}/relay.sqlite3`;
  const clock = { now: Date.now() };
  const failing: Transport = {
    id: "web-push",
    send: () => Promise.resolve({ kind: "retry", status: 503, reason: "bench: always 503" }),
  };
  const config = loadConfig({
    RELAY_KV_PATH: path,
    RELAY_APPS: `${APP}:${TOKEN}`,
    RELAY_PUBLIC_URL: "https://relay.example.net",
  });
  const kv = await Deno.openKv(path);
  const relay = await createRelay({
    config,
    kv,
    now: () => clock.now,
    logger: silentLogger,
    resolve: () => Promise.resolve(["93.184.216.34"]),
    transports: { "web-push": failing },
    // The breaker's cooldown runs on real time; this section moves only the relay's clock.
    delivery: { breaker: { threshold: 1_000_000 } },
  });
  const post: Post = async (path, init) =>
    await relay.app.request(`https://relay.example.net${path}`, { method: "POST", ...init }, {
      remoteAddr: { hostname: "2001:db8:51:7::1" },
    });
  try {
    const vapid = await generateVapidKeys();
    const start = kvLogical(path);
    const regs = await strangerRegistrations(post, config.registrationRateLimit, vapid.publicKey);
    const registered = kvLogical(path);
    const messages = await strangerMessages(post, regs.resources[0]!, vapid, clock.now);
    await relay.engine.idle();
    const queued = kvLogical(path);
    // Every retry until the messages are dead letters (8 attempts, at most 5 minutes apart).
    for (let i = 0; i < 12; i++) {
      clock.now += 6 * 60_000;
      await relay.engine.tick();
      await relay.engine.idle();
    }
    const dead = kvLogical(path);
    const count = (xs: number[]) => xs.filter((x) => x === 201).length;
    return {
      registrations: count(regs.statuses),
      refused: regs.statuses.length - count(regs.statuses),
      registrationBytes: registered.bytes - start.bytes,
      registrationEntries: registered.entries - start.entries,
      messages: count(messages),
      refusedMessages: messages.length - count(messages),
      queuedBytes: queued.bytes - registered.bytes,
      deadBytes: dead.bytes - registered.bytes,
      deadLetters: await relay.store.kv.count({ prefix: ["dead"] }),
      idleMinutes: config.refreshInterval / 60,
    };
  } finally {
    await relay.engine.shutdown(1000);
    kv.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function strangerTable(r: Awaited<ReturnType<typeof stranger>>): string {
  const perReg = r.registrationBytes / r.registrations;
  const perMsg = r.deadBytes / r.messages;
  const kib = (b: number) => `${fmt(b / 1024, 1)} KiB`;
  const mib = (b: number) => `${fmt(b / MiB, 0)} MiB`;
  return [
    "| Stranger, one address (IPv6: one /64), default limits | KV bytes (keys + values) |",
    "| --- | --- |",
    `| ${r.registrations} registrations in a minute (${r.refused} more refused with 429), 4096-character endpoints, push resource with a VAPID key | ${
      kib(r.registrationBytes)
    } a minute (${fmt(perReg)} B each, ${
      fmt(r.registrationEntries / r.registrations, 1)
    } entries each) |`,
    `| kept for one refresh-interval (${
      fmt(r.idleMinutes)
    } minutes) without a subscription, at most | ${mib(r.registrationBytes * r.idleMinutes)} |`,
    `| ${r.messages} ingress messages in a minute to one of its push resources (${r.refusedMessages} more refused with 429), 4096 bytes, TTL 28 days, a Topic each, the device's push service failing | ${
      kib(r.queuedBytes)
    } while queued, ${kib(r.deadBytes)} as ${r.deadLetters} dead letters (${
      fmt(perMsg)
    } B each, kept 7 days) |`,
  ].join("\n");
}

// --- report -----------------------------------------------------------------------------------

interface Results {
  machine: Awaited<ReturnType<typeof machine>>;
  /** How the relay process was started. */
  relayCommand: string;
  /** 1-minute load average (Linux) when the run started and ended: other work on the machine. */
  load: { start: string; end: string };
  date: string;
  floors: FloorResult[];
  floor: number;
  /** The relay's own encryption in workers, averaged over the floor runs. */
  relayCrypto: number;
  /** The P-256 implementation this process measured as the faster (used for `relayCrypto`). */
  p256: P256Backend;
  /** The one the relay process chose (its `crypto` log line). */
  relayP256: string;
  fanOuts: FanOutResult[];
  node: FanOutResult[];
  ingest: { coalesce: number; r: IngestResult }[];
  storage?: StorageResult;
}

function table(r: Results): string {
  const m = r.machine;
  const lines: string[] = [];
  const row = (...cells: string[]) => lines.push(`| ${cells.join(" | ")} |`);
  const ratio = (x: number) => `${fmt(x / r.floor, 2)} of floor`;
  row("Measure", "Conditions", "Result", "vs. target");
  row("---", "---", "---", "---");
  const fl = r.floors;
  if (fl.length > 0) {
    row(
      "Crypto floor (bare RFC 8291 on Web Crypto)",
      `key pair + export, ECDH, 3 × HKDF, AES-GCM per message; best of one isolate × 64 in flight and ${m.cores} workers × 32 in flight; ${fl.length} runs of ${
        P.floorMs / 1000
      } s (right before and right after the fan-outs)`,
      `**${fmt(r.floor)} msg/s** (runs: ${
        fl.map((f) => `${fmt(f.here)} / ${fmt(f.workers)}`).join("; ")
      } isolate / workers; ${fmt(fl[0]!.cpuUs)} µs CPU per message)`,
      "the reference",
    );
    row(
      "The relay's own encryption (lib/crypto/ece.ts)",
      `encryptWebPush with its key pool, P-256 on ${r.p256} (the relay process chose ${
        r.relayP256 || "?"
      }), HKDF and AES-GCM on node:crypto; ${m.cores} workers × 32 in flight; same runs`,
      `**${fmt(r.relayCrypto)} msg/s** (runs: ${fl.map((f) => fmt(f.relay)).join(" / ")}; ${
        fmt(fl[0]!.relayCpuUs)
      } µs CPU per message)`,
      `${fmt(r.relayCrypto / r.floor, 2)} × floor`,
    );
  }
  for (const f of r.fanOuts) {
    row(
      `Fan-out, N = ${fmt(f.n)}`,
      `one push, N subscriptions (distinct clients) of one topic; relay process → HTTPS sink (Node.js, counts only, HTTP/1.1 keep-alive); web push concurrency ${P.inFlight}; after a ${
        fmt(P.warm)
      }-delivery warm-up${f.runs ? `; median of ${f.runs.length} pushes to as many topics` : ""}`,
      `**${fmt(f.rate)} deliveries/s**${
        f.runs ? ` (runs: ${f.runs.map((x) => fmt(x)).join(" / ")})` : ""
      }, last delivery after ${fmt(f.lastMs)} ms (first after ${
        fmt(f.firstMs ?? 0, 1)
      } ms; push answered in ${fmt(f.answerMs ?? 0, 1)} ms; CPU per delivery: relay ${
        fmt(f.cpuUs)
      } µs, sink ${fmt(f.sinkCpuUs)} µs; ${f.connections} new connections)`,
      `${ratio(f.rate)} (target ≥ 0.80) ${f.rate / r.floor >= 0.8 ? "✅" : "❌"}; ${
        fmt(f.rate / r.relayCrypto, 2)
      } of the relay's own encryption`,
    );
  }
  for (const f of r.node) {
    const relay = r.fanOuts.find((x) => x.n === f.n);
    row(
      `npm web-push on Node.js ${m.node}, N = ${fmt(f.n)}`,
      `web-push@3.6.7 sendNotification, defaults (node:https global agent), ${P.inFlight} in flight, same sink, same payload`,
      `**${fmt(f.rate)} deliveries/s**, last after ${fmt(f.lastMs)} ms`,
      relay ? `relay = ${fmt(relay.rate / f.rate, 2)} × web-push; ${ratio(f.rate)}` : "",
    );
  }
  for (const { coalesce, r: i } of r.ingest) {
    row(
      `Ingest, RELAY_COALESCE_MS=${coalesce}`,
      `POST /gateway, 1 message, 1 subscriber, ${INGEST_CLIENTS} concurrent clients on loopback (Node.js node:http, HTTP/1.1 keep-alive), ${
        P.ingestMs / 1000
      } s after a warm-up; ${
        fmt(i.requests)
      } requests, ${i.deliveries} deliveries made meanwhile (warm-up included)`,
      `**${fmt(i.rate)} pushes/s**, p50 ${fmt(i.p50, 1)} ms, p99 ${fmt(i.p99, 1)} ms`,
      `p99 < 25 ms ${i.p99 < 25 ? "✅" : "❌"}`,
    );
  }
  const s = r.storage;
  if (s) {
    row(
      "KV per registration",
      `growth of the KV file (SQLite + WAL) over ${
        fmt(s.n)
      } Web Push registrations, ~170-character endpoints`,
      `**${fmt(s.bytesPerRegistration)} B**`,
      "",
    );
    row(
      "KV per subscription",
      `growth over ${fmt(s.n)} subscriptions (one topic each, 3 keys: sub, subc, subx)`,
      `**${fmt(s.bytesPerSubscription)} B**`,
      `< 1 KiB ${s.bytesPerSubscription < 1024 ? "✅" : "❌"}`,
    );
    row(
      "Relay resident memory",
      `${fmt(s.n)} subscriptions in KV (${
        fmt(s.kvBytes / MiB, 1)
      } MiB); before, peak during, and after one fan-out to all of them (${
        fmt(s.fanOut.rate)
      } deliveries/s, ${ratio(s.fanOut.rate)}, last after ${fmt(s.fanOut.lastMs / 1000, 1)} s)`,
      `**${fmt(s.rssBefore / MiB, 1)} / ${fmt(s.rssPeak / MiB, 1)} / ${
        fmt(s.rssAfter / MiB, 1)
      } MiB**`,
      `< 200 MiB ${s.rssPeak < 200 * MiB ? "✅" : "❌"}`,
    );
  }
  return lines.join("\n");
}

const HEADER = `# Benchmarks

Written by \`deno task bench\` (bench/run.ts). Do not edit by hand; see the README's Benchmarks
section for how to run it and what each figure means. One section per Deno version: a run replaces
the section of the version it runs on (\`deno task bench\` runs the pinned Deno;
\`npx -y deno@2.5.7 run -A bench/run.ts\` measures the version Deno Deploy runs).
`;

/** This run's section of BENCHMARKS.md, between markers naming its Deno version. */
function section(r: Results): string {
  const m = r.machine;
  return `<!-- bench:${m.deno} -->

## Deno ${m.deno}, ${r.date}

- **Machine:** ${m.cores} cores, ${m.cpu}, ${m.os}; 1-minute load average ${r.load.start} at the
  start and ${r.load.end} at the end (on a shared VM other work skews absolute figures, by 30 % and
  more when it is busy; ratios are measured in the same run)
- **Runtime:** Deno ${m.deno} (V8 ${m.v8}); Node.js ${m.node} for the web-push comparison and the sink
- **Relay:** its own process, started as \`deno task start\` does (\`${r.relayCommand}\`), KV in a
  local SQLite file, \`RELAY_ALLOW_PRIVATE_ENDPOINTS=1\`, the sink's CA trusted through \`DENO_CERT\`;
  logs at the default level, piped and discarded

${table(r)}

The floor is the textbook RFC 8291 pipeline on Web Crypto (a fresh P-256 key pair and one ECDH per
message, RFC 8291 §3.1; HKDF and AES-GCM through Web Crypto too), the reference the targets are
set against. The relay's own encryption does the same work on whichever P-256 implementation costs less
CPU in this runtime, and HKDF and AES-GCM synchronously on node:crypto, so it can pass that floor;
each fan-out is given as a ratio to both, measured in this same run. The sink runs on the same two
cores as the relay, as do the load generators (Node.js).

<!-- /bench:${m.deno} -->`;
}

/** BENCHMARKS.md with this run's section replacing (or joining) the one of its Deno version. */
function merged(existing: string, r: Results): string {
  const sections = new Map<string, string>();
  for (const m of existing.matchAll(/<!-- bench:(\S+) -->[\s\S]*?<!-- \/bench:\1 -->/g)) {
    sections.set(m[1]!, m[0]);
  }
  sections.set(r.machine.deno, section(r));
  const newestFirst = [...sections.keys()].sort((a, b) => {
    const [x, y] = [a, b].map((v) => v.split(".").map(Number));
    for (let i = 0; i < 3; i++) if (x![i] !== y![i]) return (y![i] ?? 0) - (x![i] ?? 0);
    return 0;
  });
  return `${HEADER}\n${newestFirst.map((v) => sections.get(v)).join("\n\n")}\n`;
}

// --- main -------------------------------------------------------------------------------------

async function main() {
  if (only?.length === 1 && only[0] === "stranger") {
    log("stranger: what one client address can store in a minute at the default limits");
    const r = await stranger();
    console.log(strangerTable(r));
    console.log(JSON.stringify(r));
    return;
  }
  const m = await machine();
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  log(`${smoke ? "smoke run" : "full run"} on Deno ${m.deno}, ${m.cores} cores, ${m.cpu}`);
  const results: Results = {
    machine: m,
    relayCommand: `deno run ${[...(await startTaskFlags()), ...relayFlags].join(" ")} main.ts`,
    load: { start: await loadAverage(), end: "" },
    date,
    floors: [],
    floor: 0,
    relayCrypto: 0,
    p256: await fastestP256Backend(),
    relayP256: "",
    fanOuts: [],
    node: [],
    ingest: [],
  };

  const sink = await startSink();
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-" });
  const vapid = await generateVapidKeys();
  const env = {
    RELAY_APPS: `${APP}:${TOKEN}`,
    RELAY_SECRET: encodeBase64Url(randomBytes(32)),
    RELAY_VAPID_PUBLIC_KEY: vapid.publicKey,
    RELAY_VAPID_PRIVATE_KEY: vapid.privateKey,
    RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
    RELAY_REGISTRATION_RATE_LIMIT: "0",
  };
  const keys = await subscriberKeys(smoke ? 4 : 32);
  let relay: RelayProc | undefined;
  try {
    const path = `${dir}/relay.sqlite3`;
    const maxN = Math.max(...P.fanout);
    const now = Date.now();
    let clients: SeededClient[] = [];
    if (want("fanout") || want("node") || want("ingest")) {
      log(`seeding ${maxN} clients`);
      const kv = await Deno.openKv(path);
      const store = createStore(kv);
      clients = await seedClients(store, maxN, { endpointBase: `${sink.url}/wpush`, keys, now });
      for (const n of P.fanout) {
        for (let i = 0; i < repeatsOf(n); i++) {
          await seedSubscriptions(
            store,
            APP,
            `fan-${n}-${i}`,
            clients.slice(0, n),
            now + 47 * HOUR,
            now,
          );
        }
      }
      await seedSubscriptions(store, APP, "warm", clients.slice(0, P.warm), now + 47 * HOUR, now);
      await seedSubscriptions(store, APP, "ingest", clients.slice(0, 1), now + 47 * HOUR, now);
      kv.close();
      relay = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags);
      results.relayP256 = /"event":"crypto"[^\n]*"p256":"(\w+)"/.exec(relay.head())?.[1] ??
        "unknown";
    }

    // The floor is measured right before and right after the measured fan-outs (the relay
    // idle meanwhile), so each ratio compares runs seconds apart: this shared VM's speed drifts
    // by tens of percent over minutes.
    const floorRun = async (i: number) => {
      if (!want("floor")) return;
      log(`crypto floor (${i}/2)`);
      results.floors.push(await floor(results.p256));
    };
    if (relay && want("fanout")) {
      log("fan-out warm-up");
      await relayFanOut(relay, sink, "warm", P.warm);
    }
    await floorRun(1);
    if (relay && want("fanout")) {
      for (const n of P.fanout) {
        log(`fan-out N=${n}`);
        // One topic per run: a second push to a topic within RELAY_COALESCE_MS would wait.
        const runs: FanOutResult[] = [];
        for (let i = 0; i < repeatsOf(n); i++) {
          runs.push(await relayFanOut(relay, sink, `fan-${n}-${i}`, n));
        }
        runs.sort((a, b) => a.rate - b.rate);
        const median = runs[Math.floor(runs.length / 2)]!;
        results.fanOuts.push(
          runs.length > 1 ? { ...median, runs: runs.map((r) => r.rate) } : median,
        );
      }
    }
    await floorRun(2);
    if (want("floor")) {
      results.floor = results.floors.reduce((a, f) => a + f.rate, 0) / results.floors.length;
      results.relayCrypto = results.floors.reduce((a, f) => a + f.relay, 0) /
        results.floors.length;
    }
    if (want("node")) {
      const payload = JSON.stringify({
        type: "update",
        topic: "fan-N",
        timestamp: new Date().toISOString(),
        priority: 50,
      });
      log("npm web-push warm-up");
      await nodeFanOut(sink, clients.slice(0, P.nodeWarm), vapid, payload);
      for (const n of P.fanout) {
        log(`npm web-push N=${n}`);
        results.node.push(await nodeFanOut(sink, clients.slice(0, n), vapid, payload));
      }
    }

    if (relay && want("ingest")) {
      log(`ingest, RELAY_COALESCE_MS=2000 (default), ${P.ingestMs} ms`);
      results.ingest.push({ coalesce: 2000, r: await ingest(relay, sink, P.ingestMs) });
      await relay.stop();
      relay = await startRelay({ ...env, RELAY_KV_PATH: path, RELAY_COALESCE_MS: "0" }, relayFlags);
      log(`ingest, RELAY_COALESCE_MS=0, ${P.ingestMs} ms`);
      results.ingest.push({ coalesce: 0, r: await ingest(relay, sink, P.ingestMs) });
    }
    await relay?.stop();
    relay = undefined;

    if (want("storage")) {
      results.storage = await storage(sink, keys, env);
      check(
        results.storage.bytesPerSubscription > 0 && results.storage.rssBefore > 0,
        "storage: no figures",
      );
    }
  } finally {
    await relay?.stop();
    await sink.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  if (!results.floor) results.floor = NaN;
  results.load.end = await loadAverage();
  console.log(table(results));
  if (failures.length > 0) {
    console.error(`bench: ${failures.length} check(s) failed`);
    Deno.exit(1);
  }
  if (!smoke && !only) {
    const file = new URL("../BENCHMARKS.md", import.meta.url);
    const existing = await Deno.readTextFile(file).catch(() => "");
    await Deno.writeTextFile(file, merged(existing, results));
    // The file is checked by `deno task check` like every other: write it formatted.
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", file.pathname] }).output();
    log("BENCHMARKS.md written");
  }
  await Deno.writeTextFile(
    `${Deno.env.get("TMPDIR") ?? "/tmp"}/relay-bench-last.json`,
    JSON.stringify(results, null, 2),
  );
}

if (import.meta.main) await main();
