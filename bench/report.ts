/**
 * The benchmarks' report: the table of one run (bench/run.ts), its section of BENCHMARKS.md
 * (one per Deno version, and one per version for `--only=scale`), and the file with a new
 * section merged in.
 *
 * @module
 */

import type { P256Backend } from "../lib/crypto/ece.ts";
import { fmt, MiB } from "./_common.ts";
import type { FanOutResult } from "./fanout.ts";
import type { IngestResult } from "./ingest.ts";
import type { OpensslLimit } from "./openssl_limit.ts";

export interface Machine {
  cores: number;
  cpu: string;
  os: string;
  deno: string;
  v8: string;
  node: string;
}

export interface FloorResult {
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

export interface StorageResult {
  n: number;
  bytesPerRegistration: number;
  bytesPerSubscription: number;
  kvBytes: number;
  rssBefore: number;
  rssPeak: number;
  rssAfter: number;
  fanOut: FanOutResult;
}

export interface Results {
  machine: Machine;
  /** How the relay process was started. */
  relayCommand: string;
  /** 1-minute load average (Linux) when the run started and ended: other work on the machine. */
  load: { start: string; end: string };
  date: string;
  params: { floorMs: number; inFlight: number; warm: number; ingestMs: number; clients: number };
  floors: FloorResult[];
  floor: number;
  /** The relay's own encryption in workers, averaged over the floor runs. */
  relayCrypto: number;
  /** The P-256 implementation this process chose (used for `relayCrypto`). */
  p256: P256Backend;
  /** The one the relay process chose (its `crypto` log line). */
  relayP256: string;
  /** The OpenSSL limit, measured with the floor (right before and right after the fan-outs). */
  limits: OpensslLimit[];
  limit: number;
  fanOuts: FanOutResult[];
  node: FanOutResult[];
  ingest: { coalesce: number; r: IngestResult }[];
  storage?: StorageResult;
}

/** Targets of the fan-out (README "Benchmarks"): of the floor, of the OpenSSL limit, CPU. */
const FLOOR_TARGET = 0.8;
const LIMIT_TARGET = 0.5;
const CPU_TARGET_US = 350;
const P99_TARGET_MS = 25;
const PUSH_TARGET = 0.8;

const mark = (ok: boolean) => (ok ? "✅" : "❌");

export function table(r: Results): string {
  const m = r.machine;
  const p = r.params;
  const lines: string[] = [];
  const row = (...cells: string[]) => lines.push(`| ${cells.join(" | ")} |`);
  const ofFloor = (x: number) => `${fmt(x / r.floor, 2)} of floor`;
  const ofLimit = (x: number) => `${fmt(x / r.limit, 2)} of the OpenSSL limit`;
  row("Measure", "Conditions", "Result", "vs. target");
  row("---", "---", "---", "---");
  if (r.limits.length > 0) {
    row(
      "OpenSSL limit (Node.js, one process per core)",
      `the full RFC 8291 encryption per message (createECDH key pair and ECDH, 3 × HKDF, AES-GCM) in ${m.cores} Node.js processes at once; ${r.limits.length} runs of ${
        p.floorMs / 1000
      } s, with the floor`,
      `**${fmt(r.limit)} msg/s** (runs: ${
        r.limits.map((l) => l.processes.map((x) => fmt(x)).join(" + ")).join("; ")
      }; ${fmt(r.limits[0]!.cpuUs)} µs CPU per message)`,
      "what this machine's OpenSSL allows",
    );
  }
  const fl = r.floors;
  if (fl.length > 0) {
    row(
      "Crypto floor (bare RFC 8291 on Web Crypto)",
      `key pair + export, ECDH, 3 × HKDF, AES-GCM per message; best of one isolate × 64 in flight and ${m.cores} workers × 32 in flight; ${fl.length} runs of ${
        p.floorMs / 1000
      } s (right before and right after the fan-outs)`,
      `**${fmt(r.floor)} msg/s** (runs: ${
        fl.map((f) => `${fmt(f.here)} / ${fmt(f.workers)}`).join("; ")
      } isolate / workers; ${fmt(fl[0]!.cpuUs)} µs CPU per message)`,
      `the reference of the targets; ${ofLimit(r.floor)}`,
    );
    const onLibcrypto = r.p256 === "ffi";
    row(
      "The relay's own encryption (lib/crypto/ece.ts)",
      `encryptWebPush${
        onLibcrypto ? "" : " with its key pool"
      }, P-256 on ${r.p256} (the relay process chose ${r.relayP256 || "?"}), HKDF and AES-GCM on ${
        onLibcrypto ? "libcrypto" : "node:crypto"
      }; ${m.cores} workers × 32 in flight; same runs`,
      `**${fmt(r.relayCrypto)} msg/s** (runs: ${fl.map((f) => fmt(f.relay)).join(" / ")}; ${
        fmt(fl[0]!.relayCpuUs)
      } µs CPU per message)`,
      `${fmt(r.relayCrypto / r.floor, 2)} × floor; ${ofLimit(r.relayCrypto)}`,
    );
  }
  for (const f of r.fanOuts) {
    row(
      `Fan-out, N = ${fmt(f.n)}`,
      `one push, N subscriptions (distinct clients) of one topic; relay process → HTTPS sink (Node.js, counts only, HTTP/1.1 keep-alive); web push concurrency ${p.inFlight}; after a ${
        fmt(p.warm)
      }-delivery warm-up${f.runs ? `; median of ${f.runs.length} pushes to as many topics` : ""}`,
      `**${fmt(f.rate)} deliveries/s**${
        f.runs ? ` (runs: ${f.runs.map((x) => fmt(x)).join(" / ")})` : ""
      }, last delivery after ${fmt(f.lastMs)} ms (first after ${
        fmt(f.firstMs ?? 0, 1)
      } ms; push answered in ${fmt(f.answerMs ?? 0, 1)} ms; CPU per delivery: relay ${
        fmt(f.cpuUs)
      } µs, sink ${fmt(f.sinkCpuUs)} µs; ${f.connections} new connections)`,
      fanOutTargets(r, f),
    );
  }
  for (const f of r.node) {
    const relay = r.fanOuts.find((x) => x.n === f.n);
    row(
      `npm web-push on Node.js ${m.node}, N = ${fmt(f.n)}`,
      `web-push@3.6.7 sendNotification, defaults (node:https global agent), ${p.inFlight} in flight, same sink, same payload`,
      `**${fmt(f.rate)} deliveries/s**, last after ${fmt(f.lastMs)} ms`,
      `${relay ? `relay = ${fmt(relay.rate / f.rate, 2)} × web-push; ` : ""}${ofFloor(f.rate)}${
        r.limit ? `; ${ofLimit(f.rate)}` : ""
      }`,
    );
  }
  for (const { coalesce, r: i } of r.ingest) ingestRow(r, row, coalesce, i);
  storageRows(r, row);
  return lines.join("\n");
}

function fanOutTargets(r: Results, f: FanOutResult): string {
  const parts = [
    `${fmt(f.rate / r.floor, 2)} of floor (target ≥ ${fmt(FLOOR_TARGET, 2)}) ${
      mark(f.rate / r.floor >= FLOOR_TARGET)
    }`,
    `${fmt(f.rate / r.relayCrypto, 2)} of the relay's own encryption`,
  ];
  if (r.limit) {
    parts.push(
      `${fmt(f.rate / r.limit, 2)} of the OpenSSL limit (target ≥ ${fmt(LIMIT_TARGET, 2)}) ${
        mark(f.rate / r.limit >= LIMIT_TARGET)
      }`,
    );
  }
  parts.push(
    `relay CPU ${fmt(f.cpuUs)} µs (target ≤ ${CPU_TARGET_US}) ${mark(f.cpuUs <= CPU_TARGET_US)}`,
  );
  return parts.join("; ");
}

function ingestRow(
  r: Results,
  row: (...cells: string[]) => void,
  coalesce: number,
  i: IngestResult,
) {
  const p = r.params;
  const fan = r.fanOuts.find((f) => f.n === 10_000) ?? r.fanOuts.at(-1);
  const cpu = `relay CPU ${fmt(i.cpuUs)} µs per push${coalesce === 0 ? " and its delivery" : ""}`;
  if (i.mode === "open") {
    const half = i.of === "closed"
      ? "half the closed loop's pushes/s above: a load the relay sustains"
      : `half the N = ${fmt(fan?.n ?? 0)} fan-out's deliveries/s of this run`;
    row(
      `Single-subscriber pushes, RELAY_COALESCE_MS=${coalesce}, open loop`,
      `POST /gateway, 1 message, 1 subscriber, due at ${fmt(i.offered ?? 0)}/s (${half}) for ${
        p.ingestMs / 1000
      } s whether answered or not; latency from when each push was due; ${
        fmt(i.requests)
      } requests, at most ${fmt(i.maxInFlight ?? 0)} waiting at once`,
      `**p50 ${fmt(i.p50, 1)} ms, p99 ${fmt(i.p99, 1)} ms** (${cpu})`,
      i.of === "closed"
        ? `(not a target: the latency without overload)`
        : `p99 < ${P99_TARGET_MS} ms ${mark(i.p99 < P99_TARGET_MS)}`,
    );
    return;
  }
  const target = coalesce === 0 && fan
    ? `${fmt(i.rate / fan.rate, 2)} of the fan-out's deliveries/s (target ≥ ${
      fmt(PUSH_TARGET, 2)
    }) ${mark(i.rate / fan.rate >= PUSH_TARGET)}${
      r.limit ? `; ${fmt(i.rate / r.limit, 2)} of the OpenSSL limit` : ""
    }`
    : `p99 < ${P99_TARGET_MS} ms ${mark(i.p99 < P99_TARGET_MS)}`;
  row(
    coalesce === 0
      ? `Single-subscriber pushes, RELAY_COALESCE_MS=0, closed loop`
      : `Ingest, RELAY_COALESCE_MS=${coalesce}`,
    `POST /gateway, 1 message, 1 subscriber, ${p.clients} concurrent clients on loopback (Node.js node:http, HTTP/1.1 keep-alive), ${
      p.ingestMs / 1000
    } s after a warm-up; ${
      fmt(i.requests)
    } requests, ${i.deliveries} deliveries made meanwhile (warm-up included)`,
    `**${fmt(i.rate)} pushes/s**, p50 ${fmt(i.p50, 1)} ms, p99 ${fmt(i.p99, 1)} ms (${cpu})`,
    target,
  );
}

function storageRows(r: Results, row: (...cells: string[]) => void) {
  const s = r.storage;
  if (!s) return;
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
    `< 1 KiB ${mark(s.bytesPerSubscription < 1024)}`,
  );
  row(
    "Relay resident memory",
    `${fmt(s.n)} subscriptions in KV (${
      fmt(s.kvBytes / MiB, 1)
    } MiB); before, peak during, and after one fan-out to all of them (${
      fmt(s.fanOut.rate)
    } deliveries/s, ${fmt(s.fanOut.rate / r.floor, 2)} of floor${
      r.limit ? `, ${fmt(s.fanOut.rate / r.limit, 2)} of the OpenSSL limit` : ""
    }, last after ${fmt(s.fanOut.lastMs / 1000, 1)} s)`,
    `**${fmt(s.rssBefore / MiB, 1)} / ${fmt(s.rssPeak / MiB, 1)} / ${
      fmt(s.rssAfter / MiB, 1)
    } MiB**`,
    `< 200 MiB ${mark(s.rssPeak < 200 * MiB)}`,
  );
}

const HEADER = `# Benchmarks

Written by \`deno task bench\` (bench/run.ts). Do not edit by hand; see the README's Benchmarks
section for how to run it and what each figure means. One section per Deno version: a run replaces
the section of the version it runs on (\`deno task bench\` runs the pinned Deno;
\`npx -y deno@2.5.7 run -A bench/run.ts\` measures the version Deno Deploy runs). The scale run
(\`--only=scale\`, 1,000,000 subscriptions, many minutes) has a section of its own per version.
`;

/** The machine and load lines every section starts with. */
export function conditions(m: Machine, load: { start: string; end: string }): string {
  return `- **Machine:** ${m.cores} cores, ${m.cpu}, ${m.os}; 1-minute load average ${load.start} at the
  start and ${load.end} at the end (on a shared VM other work skews absolute figures, by 30 % and
  more when it is busy; ratios are measured in the same run)
- **Runtime:** Deno ${m.deno} (V8 ${m.v8}); Node.js ${m.node} for the OpenSSL limit, the web-push
  comparison, the load generator and the sink`;
}

/** This run's section of BENCHMARKS.md, between markers naming its Deno version. */
export function section(r: Results): string {
  const m = r.machine;
  return `<!-- bench:${m.deno} -->

## Deno ${m.deno}, ${r.date}

${conditions(m, r.load)}
- **Relay:** its own process, started as \`deno task start\` does (\`${r.relayCommand}\`), KV in a
  local SQLite file, \`RELAY_ALLOW_PRIVATE_ENDPOINTS=1\`, the sink's CA trusted through \`DENO_CERT\`;
  logs at the default level, piped and discarded

${table(r)}

The OpenSSL limit is the full RFC 8291 encryption (a fresh P-256 key pair and one ECDH per message,
RFC 8291 §3.1, 3 × HKDF, AES-GCM) on Node.js's OpenSSL with every core: what this machine allows.
The floor is the textbook RFC 8291 pipeline on Web Crypto (HKDF and AES-GCM through Web Crypto
too). The relay's own encryption does the same work on the cheapest P-256 implementation here
(OpenSSL's libcrypto through FFI when it loads). Each fan-out and push figure is given as a ratio to
these, measured in this same run. The sink runs on the same two cores as the relay, as do the load
generators (Node.js).

<!-- /bench:${m.deno} -->`;
}

const MARKERS = /<!-- (bench(?:-scale)?):(\S+) -->[\s\S]*?<!-- \/\1:\2 -->/g;

/** BENCHMARKS.md with `text` (a section with its markers) replacing or joining its like. */
export function merged(existing: string, text: string): string {
  const sections = new Map<string, { kind: string; version: string; text: string }>();
  for (const m of [...existing.matchAll(MARKERS), ...text.matchAll(MARKERS)]) {
    sections.set(`${m[1]}:${m[2]}`, { kind: m[1]!, version: m[2]!, text: m[0] });
  }
  const order = [...sections.values()].sort((a, b) => {
    const [x, y] = [a.version, b.version].map((v) => v.split(".").map(Number));
    for (let i = 0; i < 3; i++) if (x![i] !== y![i]) return (y![i] ?? 0) - (x![i] ?? 0);
    return a.kind.localeCompare(b.kind);
  });
  return `${HEADER}\n${order.map((s) => s.text).join("\n\n")}\n`;
}
