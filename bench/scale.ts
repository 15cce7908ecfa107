/**
 * `--only=scale`: the relay with 1,000,000 subscriptions in KV (README "Benchmarks"). Seeds
 * that many Web Push clients and their subscriptions to one topic through the store's bulk
 * operations (lib/store/bulk.ts: the keys and values registering and subscribing each would
 * write), measures the seeding time and the KV bytes per registration and subscription, then the
 * relay's resident memory before, during (sampled every 100 ms) and after a fan-out to all of
 * them, and its deliveries/s against a fan-out of 10,000 in the same run. It takes many minutes,
 * so neither the default run nor `--smoke` runs it.
 *
 * @module
 */

import { createStore } from "../lib/store/mod.ts";
import { APP, fmt, HOUR, loadAverage, log, MiB } from "./_common.ts";
import { cpuSeconds, type RelayProc, residentMemory, type Sink, startRelay } from "./_procs.ts";
import { bulkClients, bulkSubscriptions, kvFileBytes, seedSubscriptions } from "./_seed.ts";
import { type FanOutResult, relayFanOut } from "./fanout.ts";
import { conditions, type Machine } from "./report.ts";

export interface ScaleResult {
  n: number;
  /** Seconds to seed the registrations, then the subscriptions. */
  seedSecs: { registrations: number; subscriptions: number };
  bytesPerRegistration: number;
  bytesPerSubscription: number;
  kvBytes: number;
  /** Resident memory (bytes) before, peak during, after; and at each tenth of the fan-out. */
  rss: { before: number; peak: number; after: number; tenths: number[] };
  fanOut: FanOutResult;
  /** A fan-out to 10,000 of the same clients, right before. */
  reference: FanOutResult;
  load: { start: string; end: string };
}

export interface ScaleOptions {
  n: number;
  sink: Sink;
  env: Record<string, string>;
  relayFlags: string[];
  relayRoot?: URL;
  keys: string[];
  /** Deliveries before the measured fan-outs. */
  warm: number;
}

export async function scale(o: ScaleOptions): Promise<ScaleResult> {
  const load = { start: await loadAverage(), end: "" };
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-scale-" });
  const path = `${dir}/relay.sqlite3`;
  const env = { ...o.env, RELAY_KV_PATH: path };
  const now = Date.now();
  const exp = now + 47 * HOUR;
  const reference = Math.min(10_000, o.n);
  try {
    // An empty database with the relay's own meta keys, as a started relay leaves it.
    await (await startRelay(env, o.relayFlags, o.relayRoot)).stop();
    const size0 = await kvFileBytes(path);
    let kv = await Deno.openKv(path);
    let t = performance.now();
    log(`scale: seeding ${fmt(o.n)} registrations`);
    const ids = await bulkClients(createStore(kv), o.n, {
      endpointBase: `${o.sink.url}/fcm/send`,
      keys: o.keys,
      pathBytes: 105,
      now,
      progress: (done) => done % 100_000 === 0 && log(`scale: ${fmt(done)} registrations`),
    });
    const registrationSecs = (performance.now() - t) / 1000;
    kv.close();
    const size1 = await kvFileBytes(path);
    kv = await Deno.openKv(path);
    t = performance.now();
    log(`scale: seeding ${fmt(o.n)} subscriptions`);
    await bulkSubscriptions(createStore(kv), { app: APP, topic: "all", clientIds: ids, exp, now });
    const subscriptionSecs = (performance.now() - t) / 1000;
    kv.close();
    const size2 = await kvFileBytes(path);
    // The reference and warm-up topics, through the ordinary store API (these clients already
    // hold a subscription, which the bulk operation is not for).
    kv = await Deno.openKv(path);
    const some = (k: number) => ids.slice(0, k).map((clientId) => ({ clientId }));
    await seedSubscriptions(createStore(kv), APP, "warm", some(o.warm), exp, now);
    await seedSubscriptions(createStore(kv), APP, "ten-k", some(reference), exp, now);
    kv.close();
    const kvBytes = await kvFileBytes(path);

    const relay = await startRelay(env, o.relayFlags, o.relayRoot);
    try {
      log("scale: warm-up and the reference fan-out");
      await relayFanOut(relay, o.sink, "warm", o.warm);
      const ref = await relayFanOut(relay, o.sink, "ten-k", reference);
      await new Promise((r) => setTimeout(r, 2000));
      log(`scale: fan-out to all ${fmt(o.n)}`);
      const measured = await sampledFanOut(relay, o.sink, o.n);
      return {
        n: o.n,
        seedSecs: { registrations: registrationSecs, subscriptions: subscriptionSecs },
        bytesPerRegistration: (size1 - size0) / o.n,
        bytesPerSubscription: (size2 - size1) / o.n,
        kvBytes,
        rss: measured.rss,
        fanOut: measured.fanOut,
        reference: ref,
        load: { ...load, end: await loadAverage() },
      };
    } finally {
      await relay.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A fan-out to all `n` with the relay's resident memory sampled every 100 ms. */
async function sampledFanOut(relay: RelayProc, sink: Sink, n: number) {
  const before = await residentMemory(relay.pid);
  const samples: number[] = [];
  const sampler = setInterval(() => {
    residentMemory(relay.pid).then((m) => samples.push(m.rss)).catch(() => {});
  }, 100);
  const cpu0 = await cpuSeconds(relay.pid);
  let fanOut: FanOutResult;
  try {
    // Slow machines take many minutes for a million.
    fanOut = await relayFanOut(relay, sink, "all", n, 3600_000);
  } finally {
    clearInterval(sampler);
  }
  fanOut.cpuUs = ((await cpuSeconds(relay.pid) - cpu0) / n) * 1e6;
  await new Promise((r) => setTimeout(r, 3000));
  const after = await residentMemory(relay.pid);
  const tenths = Array.from(
    { length: 10 },
    (_, i) => samples[Math.max(0, Math.floor(((i + 1) * samples.length) / 10) - 1)] ?? NaN,
  );
  return {
    fanOut,
    rss: {
      before: before.rss,
      peak: Math.max(after.peak, ...samples),
      after: after.rss,
      tenths,
    },
  };
}

const RSS_TARGET = 256 * MiB;

/** The scale run's section of BENCHMARKS.md. */
export function scaleSection(
  s: ScaleResult,
  m: Machine,
  date: string,
  relayCommand: string,
): string {
  const mib = (b: number) => fmt(b / MiB, 0);
  const ratio = s.fanOut.rate / s.reference.rate;
  const rows = [
    "| Measure | Conditions | Result | vs. target |",
    "| --- | --- | --- | --- |",
    `| Seeding | ${
      fmt(s.n)
    } Web Push registrations (~170-character endpoints), then a subscription each to one topic, through the store's bulk operations (the keys and values registering and subscribing write) | **${
      fmt(s.seedSecs.registrations + s.seedSecs.subscriptions)
    } s** (registrations ${fmt(s.seedSecs.registrations)} s, subscriptions ${
      fmt(s.seedSecs.subscriptions)
    } s; ${fmt(s.n / (s.seedSecs.registrations + s.seedSecs.subscriptions))} clients/s) | |`,
    `| KV per registration / subscription | growth of the KV file (SQLite + WAL) over each phase | **${
      fmt(s.bytesPerRegistration)
    } B / ${fmt(s.bytesPerSubscription)} B** (${
      fmt(s.kvBytes / MiB)
    } MiB in all) | subscription < 1 KiB ${s.bytesPerSubscription < 1024 ? "✅" : "❌"} |`,
    `| Fan-out, N = ${
      fmt(s.n)
    } | one push to all of them, relay process → HTTPS sink, after a warm-up | **${
      fmt(s.fanOut.rate)
    } deliveries/s**, last after ${fmt(s.fanOut.lastMs / 1000, 1)} s (relay CPU ${
      fmt(s.fanOut.cpuUs)
    } µs per delivery) | ${fmt(ratio, 2)} of N = ${fmt(s.reference.n)} (target ≥ 0.90) ${
      ratio >= 0.9 ? "✅" : "❌"
    } |`,
    `| Fan-out, N = ${fmt(s.reference.n)} | the same clients, same relay, right before | **${
      fmt(s.reference.rate)
    } deliveries/s** (relay CPU ${fmt(s.reference.cpuUs)} µs per delivery) | the reference |`,
    `| Relay resident memory | before, peak during, after the fan-out to all (and at each tenth of it, MiB: ${
      s.rss.tenths.map(mib).join(" ")
    }) | **${mib(s.rss.before)} / ${mib(s.rss.peak)} / ${mib(s.rss.after)} MiB** | < 256 MiB ${
      Math.max(s.rss.before, s.rss.peak, s.rss.after) < RSS_TARGET ? "✅" : "❌"
    } |`,
  ];
  return `<!-- bench-scale:${m.deno} -->

## Deno ${m.deno}, ${fmt(s.n)} subscriptions (\`--only=scale\`), ${date}

${conditions(m, s.load)}
- **Relay:** its own process, started as \`deno task start\` does (\`${relayCommand}\`), KV in a
  local SQLite file

${rows.join("\n")}

<!-- /bench-scale:${m.deno} -->`;
}
