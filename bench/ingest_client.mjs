// The ingest load generator for the benchmarks (bench/run.ts), on Node.js so that every Deno
// version under test is measured by the same client (a Deno client on the same cores adds its
// own runtime's costs to the latencies it reports). Reads a job as JSON on stdin:
//   {"url": "http://127.0.0.1:<port>/gateway", "token": "...", "clients": 32,
//    "warmupMs": 1000, "ms": 10000}
// runs `clients` loops of POST /gateway (one message each, HTTP/1.1 keep-alive, one socket per
// loop) for `warmupMs` unrecorded and then `ms` recorded, and prints
// {"latencies": [ms, ...], "errors": n, "secs": s}.
import { Buffer } from "node:buffer";
import http from "node:http";
import process from "node:process";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const agent = new http.Agent({ keepAlive: true, maxSockets: job.clients });
const url = new URL(job.url);

function post() {
  const body = JSON.stringify({
    push: { messages: [{ topic: "ingest", timestamp: new Date().toISOString() }] },
  });
  return new Promise((resolve) => {
    const req = http.request({
      agent,
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: "POST",
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        authorization: `Bearer ${job.token}`,
      },
    }, (res) => {
      const parts = [];
      res.on("data", (c) => parts.push(c));
      res.on("end", () => {
        const text = Buffer.concat(parts).toString("utf8");
        resolve(res.statusCode === 200 && text === '{"push-response":{}}');
      });
    });
    req.on("error", () => resolve(false));
    req.end(body);
  });
}

async function run(ms, latencies) {
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(Array.from({ length: job.clients }, async () => {
    while (performance.now() < end) {
      const t = performance.now();
      const ok = await post();
      latencies?.push(performance.now() - t);
      if (!ok) errors++;
    }
  }));
  return { errors, secs: (performance.now() - t0) / 1000 };
}

await run(job.warmupMs); // JIT, connections
await new Promise((r) => setTimeout(r, 500));
const latencies = [];
const { errors, secs } = await run(job.ms, latencies);
agent.destroy();
process.stdout.write(JSON.stringify({ latencies, errors, secs }));
