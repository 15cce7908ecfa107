/**
 * Ingest for the benchmarks (bench/run.ts): `POST /gateway` pushes of one message to a topic
 * with one subscriber, from the Node.js load generator (bench/ingest_client.mjs), in a closed
 * loop (32 application servers, each sending its next push when the last was answered) or an
 * open loop (pushes due at a fixed rate, answered or not, each latency counted from when it was
 * due). Relay CPU per push counts until every push's delivery reached the sink when coalescing
 * is off (each push is then also a delivery).
 *
 * @module
 */

import { cpuSeconds, type RelayProc, type Sink } from "./_procs.ts";

export interface IngestResult {
  mode: "closed" | "open";
  /** Pushes answered per second in the recorded phase. */
  rate: number;
  /** Open loop: the rate pushes were due at. */
  offered?: number;
  p50: number;
  p99: number;
  requests: number;
  errors: number;
  /** Deliveries the sink counted (warm-up included), and malformed ones. */
  deliveries: number;
  bad: number;
  /** Relay CPU microseconds per push, warm-up included (and its delivery, when awaited). */
  cpuUs: number;
  /** Open loop: the most requests waiting for an answer at once. */
  maxInFlight?: number;
  /** Open loop: whose rate `offered` is half of (the fan-out's, or the closed loop's). */
  of?: "fan-out" | "closed";
}

export interface IngestJob {
  url: string;
  token: string;
  clients: number;
  ms: number;
  mode: "closed" | "open";
  /** Open loop: pushes per second. */
  rate?: number;
  /** Wait until every push's delivery arrived (coalescing off: one each). */
  awaitDeliveries: boolean;
}

export async function ingest(relay: RelayProc, sink: Sink, job: IngestJob): Promise<IngestResult> {
  await sink.reset();
  const cpu0 = await cpuSeconds(relay.pid);
  const child = new Deno.Command("node", {
    args: [new URL("ingest_client.mjs", import.meta.url).pathname],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(
    new TextEncoder().encode(JSON.stringify({
      url: job.url,
      token: job.token,
      clients: job.clients,
      warmupMs: Math.min(1000, job.ms / 4),
      ms: job.ms,
      mode: job.mode,
      rate: job.rate,
    })),
  );
  await writer.close();
  const out = await child.output();
  if (!out.success) {
    throw new Error(`ingest client failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const r = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    latencies: number[];
    errors: number;
    secs: number;
    total: number;
    maxInFlight: number;
  };
  const stats = job.awaitDeliveries
    ? await sink.wait(r.total, 120_000)
    : (await new Promise((res) => setTimeout(res, 300)), await sink.stats());
  const cpu = await cpuSeconds(relay.pid) - cpu0;
  const latencies = r.latencies.sort((a, b) => a - b);
  const q = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
  return {
    mode: job.mode,
    rate: latencies.length / r.secs,
    ...(job.mode === "open" ? { offered: job.rate!, maxInFlight: r.maxInFlight } : {}),
    p50: q(0.5),
    p99: q(0.99),
    requests: latencies.length,
    errors: r.errors,
    deliveries: stats.count,
    bad: stats.bad,
    cpuUs: (cpu / Math.max(1, r.total)) * 1e6,
  };
}
