// The OpenSSL limit for the benchmarks (bench/openssl_limit.ts): the full RFC 8291 encryption of
// one message, as fast as Node.js runs it on OpenSSL, in this one process (one per core is the
// machine's limit). Per message: a fresh P-256 key pair and the ECDH (createECDH, the cheapest
// node:crypto API), three HKDF (HMAC-SHA-256 extract and expand), one AES-128-GCM record.
//   node bench/openssl_limit.mjs <ms>
// prints {"rate": messages/s, "cpuUs": CPU µs per message, "n": messages}.
import crypto from "node:crypto";
import process from "node:process";

const ms = Number(process.argv[2] ?? 3000);
const ua = crypto.createECDH("prime256v1");
const uaPublic = ua.generateKeys();
const auth = crypto.randomBytes(16);
const plaintext = Buffer.from(
  JSON.stringify({
    type: "update",
    topic: "q9Xc1vLrT0mJ2aBd",
    timestamp: new Date().toISOString(),
    priority: 50,
  }),
);
const KEY_INFO = Buffer.from("WebPush: info\0");
const CEK_INFO = Buffer.from("Content-Encoding: aes128gcm\0\x01");
const NONCE_INFO = Buffer.from("Content-Encoding: nonce\0\x01");
const ONE = Buffer.from([1]);
const DELIMITER = Buffer.from([2]);

const hmac = (key, ...data) => {
  const h = crypto.createHmac("sha256", key);
  for (const d of data) h.update(d);
  return h.digest();
};

function encrypt() {
  // RFC 8291 §3.1: a new key pair for every message; §3.3 ECDH; §3.4 and RFC 8188 §2.2/§2.3.
  const sender = crypto.createECDH("prime256v1");
  const asPublic = sender.generateKeys();
  const secret = sender.computeSecret(uaPublic);
  const salt = crypto.randomBytes(16);
  const ikm = hmac(hmac(auth, secret), KEY_INFO, uaPublic, asPublic, ONE);
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, CEK_INFO).subarray(0, 16);
  const nonce = hmac(prk, NONCE_INFO).subarray(0, 12);
  const cipher = crypto.createCipheriv("aes-128-gcm", cek, nonce);
  const head = Buffer.alloc(86);
  salt.copy(head);
  head.writeUInt32BE(4096, 16);
  head[20] = 65;
  asPublic.copy(head, 21);
  return Buffer.concat([
    head,
    cipher.update(plaintext),
    cipher.update(DELIMITER),
    cipher.final(),
    cipher.getAuthTag(),
  ]);
}

for (let i = 0; i < 300; i++) encrypt();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let n = 0;
while (performance.now() - t0 < ms) {
  for (let i = 0; i < 50; i++) encrypt();
  n += 50;
}
const secs = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
process.stdout.write(JSON.stringify({ n, rate: n / secs, cpuUs: (cpu.user + cpu.system) / n }));
