// What users would otherwise run: npm web-push's sendNotification on Node.js, for the
// benchmarks (bench/run.ts). Reads a job as JSON on stdin:
//   {"endpoints": [...], "p256dh": [...], "auth": "...", "payload": "...",
//    "vapid": {"publicKey", "privateKey", "subject"}, "concurrency": 256}
// sends one notification per endpoint (key i % p256dh.length) with at most `concurrency` in
// flight, through web-push's defaults (node:https, the global agent), and prints
// {"start": <epoch ms>, "end": <epoch ms>, "ok": n, "failed": n}.
import { Buffer } from "node:buffer";
import process from "node:process";
import webpush from "web-push";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const now = () => performance.timeOrigin + performance.now();

webpush.setVapidDetails(job.vapid.subject, job.vapid.publicKey, job.vapid.privateKey);
const n = job.endpoints.length;
let next = 0;
let ok = 0;
let failed = 0;
let firstError;
const start = now();
async function worker() {
  while (next < n) {
    const i = next++;
    const subscription = {
      endpoint: job.endpoints[i],
      keys: { p256dh: job.p256dh[i % job.p256dh.length], auth: job.auth },
    };
    try {
      await webpush.sendNotification(subscription, job.payload, { TTL: 86400, urgency: "normal" });
      ok++;
    } catch (err) {
      failed++;
      firstError ??= String(err?.body ?? err?.message ?? err);
    }
  }
}
await Promise.all(Array.from({ length: Math.min(job.concurrency, n) }, worker));
const end = now();
console.log(JSON.stringify({ start, end, ok, failed, firstError }));
