// The ingest load generator for the benchmarks (bench/ingest.ts), on Node.js so that every Deno
// version under test is measured by the same client (a Deno client on the same cores adds its
// own runtime's costs to the latencies it reports). Reads a job as JSON on stdin:
//   {"url": "http://127.0.0.1:<port>/gateway", "token": "...", "clients": 32,
//    "warmupMs": 1000, "ms": 10000, "mode": "closed" | "open", "rate": 1000}
// Closed loop: `clients` loops of POST /gateway (one message each, HTTP/1.1 keep-alive, one
// socket per loop), `warmupMs` unrecorded, then `ms` recorded. Open loop: the same warm-up,
// then one POST every 1/`rate` s for `ms`, whether or not earlier ones were answered (sockets
// as needed); each latency counts from the time its request was due, so a queue that grows
// shows in full (no coordinated omission). Prints
// {"latencies": [ms, ...], "errors": n, "secs": s, "total": good answers including the
// warm-up, "maxInFlight": n}.
import { Buffer } from "node:buffer";
import http from "node:http";
import process from "node:process";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const open = job.mode === "open";
const agent = new http.Agent({ keepAlive: true, maxSockets: open ? 4000 : job.clients });
const url = new URL(job.url);
let total = 0;
let inFlight = 0;
let maxInFlight = 0;

function post() {
  const body = JSON.stringify({
    push: { messages: [{ topic: "ingest", timestamp: new Date().toISOString() }] },
  });
  inFlight++;
  maxInFlight = Math.max(maxInFlight, inFlight);
  return new Promise((resolve) => {
    const done = (ok) => {
      inFlight--;
      if (ok) total++;
      resolve(ok);
    };
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
        done(res.statusCode === 200 && text === '{"push-response":{}}');
      });
    });
    req.on("error", () => done(false));
    req.end(body);
  });
}

async function closedLoop(ms, latencies) {
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

async function openLoop(ms, latencies) {
  let errors = 0;
  const t0 = performance.now();
  const n = Math.floor((ms / 1000) * job.rate);
  const answers = [];
  let i = 0;
  await new Promise((sent) => {
    const tick = () => {
      // Everything due by now goes out (timers are coarser than the interval).
      while (i < n && t0 + (i * 1000) / job.rate <= performance.now()) {
        const due = t0 + (i * 1000) / job.rate;
        i++;
        answers.push(
          post().then((ok) => {
            latencies.push(performance.now() - due);
            if (!ok) errors++;
          }),
        );
      }
      if (i < n) setTimeout(tick, Math.max(0, t0 + (i * 1000) / job.rate - performance.now()));
      else sent();
    };
    tick();
  });
  const secs = (performance.now() - t0) / 1000;
  await Promise.all(answers);
  return { errors, secs };
}

await closedLoop(job.warmupMs); // JIT, connections
await new Promise((r) => setTimeout(r, 500));
maxInFlight = 0;
const latencies = [];
const { errors, secs } = open
  ? await openLoop(job.ms, latencies)
  : await closedLoop(job.ms, latencies);
agent.destroy();
process.stdout.write(JSON.stringify({ latencies, errors, secs, total, maxInFlight }));
