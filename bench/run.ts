/**
 * `deno task bench`: every benchmark of the relay in one run, then BENCHMARKS.md is rewritten
 * with the table, the date, the Deno version and the machine. `--smoke` runs a tiny version
 * (seconds, for CI) that checks the same things work and writes nothing.
 *
 * Sections (see the README's Benchmarks section for what each figure means):
 * 1. Crypto floor and OpenSSL limit: the bare RFC 8291 pipeline on Web Crypto, using both
 *    cores, and the full RFC 8291 encryption on Node.js's OpenSSL, one process per core
 *    (bench/openssl_limit.ts), both right before and right after the fan-outs.
 * 2. Fan-out: one push to N subscriptions of the relay (`main.ts` as its own process) on a
 *    local HTTPS sink that only counts; deliveries/s and time to the last delivery, as a
 *    ratio to the floor and the OpenSSL limit of the same run (bench/fanout.ts).
 * 3. npm web-push on Node.js to the same sink, same N.
 * 4. Ingest (bench/ingest.ts): `POST /gateway` pushes with 32 concurrent clients on loopback,
 *    with default coalescing and with it off (single-subscriber pushes, each also a delivery);
 *    and with it off in an open loop at half the N = 10,000 fan-out's deliveries/s.
 * 5. Storage: KV bytes per registration and per subscription over 100,000 of each, and the
 *    relay's resident memory before, during and after a fan-out to all 100,000.
 * 6. Scale (`--only=scale`, many minutes, never part of the full run): 1,000,000 subscriptions
 *    seeded through the store's bulk operations, their KV bytes, the relay's resident memory
 *    around a fan-out to all of them, its rate against N = 10,000 (bench/scale.ts).
 * 7. Stranger (`--only=stranger`, run on its own, a few seconds, never part of the full run):
 *    the KV bytes one client address can make the relay store in one minute at the default
 *    limits, without any credential (README "Threat model"; bench/stranger.ts).
 *
 * `--relay-root=<dir>` runs another checkout's relay (and its own encryption) under the same
 * bench, for before/after runs in one sitting; `--out=<file>` keeps the results as JSON.
 *
 * @module
 */

import { generateVapidKeys } from "../lib/crypto/vapid.ts";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import { createStore } from "../lib/store/mod.ts";
import type { P256Backend } from "../lib/crypto/ece.ts";
import { APP, check, failures, HOUR, loadAverage, log, TOKEN } from "./_common.ts";
import { measureFloorHere, measureFloorWorkers, type Pipeline } from "./crypto_floor.ts";
import {
  cpuSeconds,
  type RelayProc,
  type Sink,
  startRelay,
  startSink,
  startTaskFlags,
} from "./_procs.ts";
import { seedClients, type SeededClient, seedSubscriptions, subscriberKeys } from "./_seed.ts";
import { type FanOutResult, nodeFanOut, relayFanOut } from "./fanout.ts";
import { ingest } from "./ingest.ts";
import { opensslLimit } from "./openssl_limit.ts";
import { type FloorResult, type Machine, merged, type Results, section, table } from "./report.ts";
import { scale, scaleSection } from "./scale.ts";
import { storage } from "./storage.ts";
import { stranger, strangerTable } from "./stranger.ts";

const smoke = Deno.args.includes("--smoke");
const only = Deno.args.find((a) => a.startsWith("--only="))?.slice(7).split(",");
/** The full run's sections; `scale` and `stranger` run only when asked for. */
const want = (section: string) =>
  only ? only.includes(section) : !["scale", "stranger"].includes(section);
/** Extra `deno run` flags for the relay, for experiments (e.g. `--relay-flags=--v8-flags=...`). */
const relayFlags = Deno.args.filter((a) => a.startsWith("--relay-flags=")).map((a) => a.slice(14));
const rootArg = Deno.args.find((a) => a.startsWith("--relay-root="))?.slice(13);
/** Another checkout whose relay is measured (before/after runs); this one by default. */
const relayRoot = rootArg ? new URL(`file://${Deno.realPathSync(rootArg)}/`) : undefined;
const outFile = Deno.args.find((a) => a.startsWith("--out="))?.slice(6);

const P = smoke
  ? {
    floorMs: 300,
    fanout: [50, 200],
    repeats: 2,
    warm: 20,
    nodeWarm: 20,
    ingestMs: 800,
    storageN: 300,
    scaleN: 3000,
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
    scaleN: 1_000_000,
    inFlight: 256,
  };
const INGEST_CLIENTS = 32;
/** How many times a fan-out of `n` is measured. */
const repeatsOf = (n: number) => (n <= 1000 ? P.repeats : 1);

// --- machine ----------------------------------------------------------------------------------

async function machine(): Promise<Machine> {
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

// --- 1. crypto floor --------------------------------------------------------------------------

/** Messages/s of `pipeline` in one worker per core, and CPU microseconds per message. */
async function inWorkers(pipeline: Pipeline): Promise<{ rate: number; cpuUs: number }> {
  const cpu0 = await cpuSeconds(Deno.pid);
  const t0 = performance.now();
  const rate = await measureFloorWorkers(navigator.hardwareConcurrency, 32, P.floorMs, pipeline);
  const cpu = await cpuSeconds(Deno.pid) - cpu0;
  const secs = (performance.now() - t0) / 1000;
  return { rate, cpuUs: (cpu / (rate * secs)) * 1e6 };
}

/** The relay's encryption module: this checkout's, or the measured relay's (`--relay-root`). */
const eceModule = relayRoot ? new URL("lib/crypto/ece.ts", relayRoot).href : undefined;

export async function floor(p256: P256Backend): Promise<FloorResult> {
  const here = await measureFloorHere(64, P.floorMs);
  const bare = await inWorkers({ kind: "bare" });
  const relay = await inWorkers({
    kind: "relay",
    p256,
    ...(eceModule ? { module: eceModule } : {}),
  });
  return {
    rate: Math.max(here, bare.rate),
    here,
    workers: bare.rate,
    cpuUs: bare.cpuUs,
    relay: relay.rate,
    relayCpuUs: relay.cpuUs,
  };
}

// --- main -------------------------------------------------------------------------------------

async function runScale(m: Machine, date: string) {
  const sink = await startSink();
  try {
    const vapid = await generateVapidKeys();
    const r = await scale({
      n: P.scaleN,
      sink,
      env: benchEnv(vapid),
      relayFlags,
      ...(relayRoot ? { relayRoot } : {}),
      keys: await subscriberKeys(smoke ? 4 : 32),
      warm: Math.min(P.warm, P.scaleN),
    });
    const relayCommand = `deno run ${
      [...(await startTaskFlags(relayRoot)), ...relayFlags].join(" ")
    } main.ts`;
    const text = scaleSection(r, m, date, relayCommand);
    console.log(text);
    if (outFile) await Deno.writeTextFile(outFile, JSON.stringify(r, null, 2));
    check(r.fanOut.n === P.scaleN, "scale: no figures");
    if (failures.length === 0 && !smoke && !relayRoot) await writeBenchmarks(text);
  } finally {
    await sink.stop();
  }
}

function benchEnv(vapid: { publicKey: string; privateKey: string }): Record<string, string> {
  return {
    RELAY_APPS: `${APP}:${TOKEN}`,
    RELAY_SECRET: encodeBase64Url(randomBytes(32)),
    RELAY_VAPID_PUBLIC_KEY: vapid.publicKey,
    RELAY_VAPID_PRIVATE_KEY: vapid.privateKey,
    RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
    RELAY_REGISTRATION_RATE_LIMIT: "0",
  };
}

/** BENCHMARKS.md with `text` merged in, formatted as `deno task check` wants it. */
async function writeBenchmarks(text: string): Promise<void> {
  const file = new URL("../BENCHMARKS.md", import.meta.url);
  const existing = await Deno.readTextFile(file).catch(() => "");
  await Deno.writeTextFile(file, merged(existing, text));
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", file.pathname] }).output();
  log("BENCHMARKS.md written");
}

/** The P-256 implementation of the relay under test, chosen in this process. */
async function relayP256Choice(): Promise<P256Backend> {
  const ece: typeof import("../lib/crypto/ece.ts") = await import(
    eceModule ?? "../lib/crypto/ece.ts"
  );
  return await ece.fastestP256Backend();
}

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
  if (only?.includes("scale")) {
    if (only.length > 1) throw new Error("--only=scale runs on its own");
    await runScale(m, date);
    if (failures.length > 0) Deno.exit(1);
    return;
  }
  const results: Results = {
    machine: m,
    relayCommand: `deno run ${
      [...(await startTaskFlags(relayRoot)), ...relayFlags].join(" ")
    } main.ts`,
    load: { start: await loadAverage(), end: "" },
    date,
    params: {
      floorMs: P.floorMs,
      inFlight: P.inFlight,
      warm: P.warm,
      ingestMs: P.ingestMs,
      clients: INGEST_CLIENTS,
    },
    floors: [],
    floor: 0,
    relayCrypto: 0,
    p256: await relayP256Choice(),
    relayP256: "",
    limits: [],
    limit: 0,
    fanOuts: [],
    node: [],
    ingest: [],
  };
  await measure(results);
  if (!results.floor) results.floor = NaN;
  results.load.end = await loadAverage();
  console.log(table(results));
  const out = outFile ?? `${Deno.env.get("TMPDIR") ?? "/tmp"}/relay-bench-last.json`;
  await Deno.writeTextFile(out, JSON.stringify(results, null, 2));
  if (failures.length > 0) {
    console.error(`bench: ${failures.length} check(s) failed`);
    Deno.exit(1);
  }
  if (!smoke && !only && !relayRoot) await writeBenchmarks(section(results));
}

/** Every section of the full run (or those `--only` names), into `results`. */
async function measure(results: Results) {
  const sink = await startSink();
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-" });
  const vapid = await generateVapidKeys();
  const env = benchEnv(vapid);
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
      relay = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags, relayRoot);
      results.relayP256 = /"event":"crypto"[^\n]*"p256":"(\w+)"/.exec(relay.head())?.[1] ??
        "unknown";
    }

    // The floor and the OpenSSL limit are measured right before and right after the measured
    // fan-outs (the relay idle meanwhile), so each ratio compares runs seconds apart: this
    // shared VM's speed drifts by tens of percent over minutes.
    const floorRun = async (i: number) => {
      if (!want("floor")) return;
      log(`crypto floor and OpenSSL limit (${i}/2)`);
      results.floors.push(await floor(results.p256));
      results.limits.push(await opensslLimit(P.floorMs));
    };
    if (relay && want("fanout")) {
      log("fan-out warm-up");
      await relayFanOut(relay, sink, "warm", P.warm);
    }
    await floorRun(1);
    if (relay && want("fanout")) await fanOuts(relay, sink, results);
    await floorRun(2);
    if (want("floor")) {
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      results.floor = mean(results.floors.map((f) => f.rate));
      results.relayCrypto = mean(results.floors.map((f) => f.relay));
      results.limit = mean(results.limits.map((l) => l.rate));
    }
    if (want("node")) await nodeRuns(sink, clients, vapid, results);
    if (relay && want("ingest")) {
      await relay.stop();
      relay = await ingestRuns(sink, env, path, results);
    }
    await relay?.stop();
    relay = undefined;

    if (want("storage")) {
      results.storage = await storage(sink, keys, env, { n: P.storageN, relayFlags, relayRoot });
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
}

async function fanOuts(relay: RelayProc, sink: Sink, results: Results) {
  for (const n of P.fanout) {
    log(`fan-out N=${n}`);
    // One topic per run: a second push to a topic within RELAY_COALESCE_MS would wait.
    const runs: FanOutResult[] = [];
    for (let i = 0; i < repeatsOf(n); i++) {
      runs.push(await relayFanOut(relay, sink, `fan-${n}-${i}`, n));
    }
    runs.sort((a, b) => a.rate - b.rate);
    const median = runs[Math.floor(runs.length / 2)]!;
    results.fanOuts.push(runs.length > 1 ? { ...median, runs: runs.map((r) => r.rate) } : median);
  }
}

async function nodeRuns(
  sink: Sink,
  clients: SeededClient[],
  vapid: { publicKey: string; privateKey: string },
  results: Results,
) {
  const payload = JSON.stringify({
    type: "update",
    topic: "fan-N",
    timestamp: new Date().toISOString(),
    priority: 50,
  });
  log("npm web-push warm-up");
  await nodeFanOut(sink, clients.slice(0, P.nodeWarm), vapid, payload, P.inFlight);
  for (const n of P.fanout) {
    log(`npm web-push N=${n}`);
    results.node.push(await nodeFanOut(sink, clients.slice(0, n), vapid, payload, P.inFlight));
  }
}

/**
 * Ingest with default coalescing, then with it off (a relay started anew): a closed loop, and
 * an open loop at half the largest fan-out's deliveries/s measured above.
 */
async function ingestRuns(
  sink: Sink,
  env: Record<string, string>,
  path: string,
  results: Results,
): Promise<RelayProc> {
  const job = { token: TOKEN, clients: INGEST_CLIENTS, ms: P.ingestMs };
  let relay = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags, relayRoot);
  log(`ingest, RELAY_COALESCE_MS=2000 (default), ${P.ingestMs} ms`);
  const url = () => `${relay.url}/gateway`;
  const coalesced = await ingest(relay, sink, {
    ...job,
    url: url(),
    mode: "closed",
    awaitDeliveries: false,
  });
  results.ingest.push({ coalesce: 2000, r: coalesced });
  await relay.stop();
  relay = await startRelay(
    { ...env, RELAY_KV_PATH: path, RELAY_COALESCE_MS: "0" },
    relayFlags,
    relayRoot,
  );
  log(`single-subscriber pushes, RELAY_COALESCE_MS=0, closed loop, ${P.ingestMs} ms`);
  const closed = await ingest(relay, sink, {
    ...job,
    url: url(),
    mode: "closed",
    awaitDeliveries: true,
  });
  results.ingest.push({ coalesce: 0, r: closed });
  const fan = results.fanOuts.at(-1);
  const rate = Math.round((fan?.rate ?? closed.rate) / 2);
  log(`single-subscriber pushes, RELAY_COALESCE_MS=0, open loop at ${rate}/s, ${P.ingestMs} ms`);
  const open = await ingest(relay, sink, {
    ...job,
    url: url(),
    mode: "open",
    rate,
    awaitDeliveries: true,
  });
  // Without a fan-out in this run (`--only=ingest`), half the closed loop's rate.
  results.ingest.push({ coalesce: 0, r: { ...open, of: fan ? "fan-out" : "closed" } });
  // The same at a rate the relay sustains (half its closed loop's): latency without overload.
  const sustained = Math.round(closed.rate / 2);
  log(`single-subscriber pushes, open loop at ${sustained}/s (half the closed loop's)`);
  const calm = await ingest(relay, sink, {
    ...job,
    url: url(),
    mode: "open",
    rate: sustained,
    awaitDeliveries: true,
  });
  results.ingest.push({ coalesce: 0, r: { ...calm, of: "closed" } });
  for (const { r } of results.ingest) {
    check(r.errors === 0, `ingest: ${r.errors} failed requests`);
    check(r.bad === 0, `ingest: ${r.bad} malformed deliveries`);
  }
  return relay;
}

if (import.meta.main) await main();
