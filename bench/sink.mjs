// A push service that only counts, for the benchmarks (bench/run.ts). Node.js, so that the
// relay under test and the npm web-push comparison both talk to the very same server.
//
//   node bench/sink.mjs [--tls <cert dir>]
//
// Serves HTTPS (leaf.pem / leaf.key from the cert dir, HTTP/1.1 with keep-alive) or plain HTTP
// on 127.0.0.1, answers every POST with 201 and counts it. A second, plain HTTP port is the
// control API: GET /stats, GET /wait?n=<count>&timeoutMs=<ms> (answers once `n` deliveries
// arrived), POST /reset. It prints one JSON line {"port": ..., "control": ...} when ready.
//
// Each delivery is checked for the headers a Web Push service needs (RFC 8030 TTL, RFC 8188
// Content-Encoding aes128gcm, RFC 8292 vapid Authorization) and a body of at least 103 bytes
// (86-byte aes128gcm header, 1 byte of record, 16-byte tag); the rest count as `bad`.
import http from "node:http";
import https from "node:https";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";

const args = process.argv.slice(2);
const tlsDir = args.includes("--tls") ? args[args.indexOf("--tls") + 1] : undefined;

const now = () => performance.timeOrigin + performance.now();
let stats;
let waiters = [];
function reset() {
  stats = { count: 0, bad: 0, bytes: 0, first: 0, last: 0, connections: 0 };
  for (const w of waiters) w.finish();
  waiters = [];
}
reset();

function onPush(req, res) {
  if (req.method !== "POST") {
    res.writeHead(405).end();
    return;
  }
  let size = 0;
  req.on("data", (chunk) => (size += chunk.length));
  req.on("end", () => {
    const t = now();
    const ok = req.headers["ttl"] !== undefined &&
      req.headers["content-encoding"] === "aes128gcm" &&
      /^vapid t=[\w-]+\.[\w-]+\.[\w-]+, ?k=[\w-]+$/.test(req.headers["authorization"] ?? "") &&
      size >= 103;
    if (ok) {
      stats.count++;
      stats.bytes += size;
      if (stats.first === 0) stats.first = t;
      stats.last = t;
    } else {
      stats.bad++;
    }
    res.writeHead(201, { "content-length": "0" }).end();
    if (waiters.length > 0) {
      waiters = waiters.filter((w) => !(stats.count >= w.n && (w.finish(), true)));
    }
  });
}

const tlsOptions = () => ({
  cert: fs.readFileSync(path.join(tlsDir, "leaf.pem")),
  key: fs.readFileSync(path.join(tlsDir, "leaf.key")),
});
const server = tlsDir
  ? https.createServer({
    ...tlsOptions(),
    keepAliveTimeout: 60_000,
  }, onPush)
  : http.createServer({ keepAliveTimeout: 60_000 }, onPush);
server.on(tlsDir ? "secureConnection" : "connection", () => stats.connections++);
server.maxHeadersCount = 100;
server.headersTimeout = 60_000;
server.requestTimeout = 0;

const control = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://control");
  const send = () =>
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(stats));
  if (url.pathname === "/stats") return send();
  if (url.pathname === "/reset" && req.method === "POST") {
    reset();
    return send();
  }
  if (url.pathname === "/wait") {
    const n = Number(url.searchParams.get("n"));
    if (stats.count >= n) return send();
    const w = { n, finish: () => (clearTimeout(w.timer), send()) };
    w.timer = setTimeout(() => {
      waiters = waiters.filter((x) => x !== w);
      send();
    }, Number(url.searchParams.get("timeoutMs") ?? 120_000));
    waiters.push(w);
    return;
  }
  res.writeHead(404).end();
});

server.listen(0, "127.0.0.1", () => {
  control.listen(0, "127.0.0.1", () => {
    console.log(JSON.stringify({ port: server.address().port, control: control.address().port }));
  });
});
process.on("SIGTERM", () => process.exit(0));
