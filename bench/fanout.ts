/**
 * Fan-out for the benchmarks: one push to N subscriptions of the relay (its own process) on the
 * counting sink, and the same N sent by npm web-push on Node.js.
 *
 * @module
 */

import { check, TOKEN } from "./_common.ts";
import { CERT_DIR, cpuSeconds, epochMs, type RelayProc, type Sink } from "./_procs.ts";
import type { SeededClient } from "./_seed.ts";

export interface FanOutResult {
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
  timeoutMs = 300_000,
): Promise<FanOutResult> {
  await sink.reset();
  const cpu0 = await cpuSeconds(relay.pid);
  const sinkCpu0 = await cpuSeconds(sink.pid);
  const start = epochMs();
  const res = await pushTo(relay, topic);
  const answerMs = epochMs() - start;
  const body = await res.text();
  check(res.status === 200 && body === '{"push-response":{}}', `push to ${topic}: ${body}`);
  const stats = await sink.wait(n, timeoutMs);
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
  concurrency: number,
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
    concurrency,
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
