/**
 * The crypto floor: the bare RFC 8291 `aes128gcm` pipeline on Web Crypto, with nothing of the
 * relay around it: a fresh sender key pair and its export, the subscriber key import, ECDH,
 * three HKDF derivations and one AES-GCM record, per message. No Web Push relay on this
 * runtime can deliver faster than this, whatever it does around the crypto.
 *
 * Run as a module worker too (see {@link measureFloorWorkers}): one worker per core, each
 * with messages in flight, is how the pipeline uses every core.
 *
 * @module
 */

import type { P256Backend } from "../lib/crypto/ece.ts";
import { concat, utf8 } from "../lib/encoding.ts";

/**
 * What to time: `bare` is the floor (the textbook pipeline on Web Crypto, below); `relay` is the
 * relay's own `encryptWebPush` (with its key pool, except on libcrypto) and the given P-256
 * implementation, from `module` (another checkout's lib/crypto/ece.ts for A/B runs) or this one.
 */
export type Pipeline = { kind: "bare" } | { kind: "relay"; p256: P256Backend; module?: string };

const P256: EcKeyImportParams = { name: "ECDH", namedCurve: "P-256" };
const KEY_INFO = utf8("WebPush: info\0");
const CEK_INFO = utf8("Content-Encoding: aes128gcm\0");
const NONCE_INFO = utf8("Content-Encoding: nonce\0");

/** A subscriber: its 65-byte `p256dh` point and 16-byte `auth` secret. */
export interface Subscriber {
  p256dh: Uint8Array;
  auth: Uint8Array;
}

/** A fresh subscriber key (as a browser would create one). */
export async function makeSubscriber(): Promise<Subscriber> {
  const pair = await crypto.subtle.generateKey(P256, true, ["deriveBits"]) as CryptoKeyPair;
  return {
    p256dh: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)),
    auth: crypto.getRandomValues(new Uint8Array(16)),
  };
}

async function hkdf(salt: Uint8Array, ikm: Uint8Array, info: Uint8Array, bytes: number) {
  const key = await crypto.subtle.importKey("raw", ikm as BufferSource, "HKDF", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: salt as BufferSource, info: info as BufferSource },
    key,
    bytes * 8,
  );
  return new Uint8Array(bits);
}

/** One RFC 8291 message, the textbook way; returns the whole `aes128gcm` body. */
export async function encryptBare(to: Subscriber, plaintext: Uint8Array): Promise<Uint8Array> {
  const pair = await crypto.subtle.generateKey(P256, false, ["deriveBits"]) as CryptoKeyPair;
  const asPublic = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const uaKey = await crypto.subtle.importKey("raw", to.p256dh as BufferSource, P256, false, []);
  const secret = new Uint8Array(
    await crypto.subtle.deriveBits({ name: "ECDH", public: uaKey }, pair.privateKey, 256),
  );
  const ikm = await hkdf(to.auth, secret, concat(KEY_INFO, to.p256dh, asPublic), 32);
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const cek = await hkdf(salt, ikm, CEK_INFO, 16);
  const nonce = await hkdf(salt, ikm, NONCE_INFO, 12);
  const aes = await crypto.subtle.importKey("raw", cek as BufferSource, "AES-GCM", false, [
    "encrypt",
  ]);
  const record = concat(plaintext, new Uint8Array([2]));
  const ciphertext = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonce as BufferSource },
      aes,
      record as BufferSource,
    ),
  );
  const header = new Uint8Array(21);
  header.set(salt);
  new DataView(header.buffer).setUint32(16, 4096);
  header[20] = 65;
  return concat(header, asPublic, ciphertext);
}

/** Runs `op` with `inFlight` concurrent loops for `ms` milliseconds; returns operations/s. */
export async function rate(
  op: () => Promise<unknown>,
  inFlight: number,
  ms: number,
): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (performance.now() < end) {
      await op();
      n++;
    }
  }));
  return n / ((performance.now() - start) / 1000);
}

/** The update payload of the gateway protocol (README), as the benchmarks send it. */
export const BENCH_PAYLOAD = utf8(
  JSON.stringify({
    type: "update",
    topic: "q9Xc1vLrT0mJ2aBd",
    timestamp: "2026-11-24T09:15:02Z",
    priority: 50,
  }),
);

/** `pipeline` in this isolate with `inFlight` messages in flight; returns messages/s. */
export async function measureFloorHere(
  inFlight: number,
  ms: number,
  pipeline: Pipeline = { kind: "bare" },
): Promise<number> {
  const to = await makeSubscriber();
  if (pipeline.kind === "bare") {
    await rate(() => encryptBare(to, BENCH_PAYLOAD), inFlight, Math.min(300, ms)); // warm-up
    return await rate(() => encryptBare(to, BENCH_PAYLOAD), inFlight, ms);
  }
  const ece: typeof import("../lib/crypto/ece.ts") = await import(
    pipeline.module ?? "../lib/crypto/ece.ts"
  );
  const p256 = pipeline.p256;
  // As the relay runs it: libcrypto's key pairs are made when needed, the others come pooled.
  const keyPool = p256 === "ffi" ? undefined : ece.createEphemeralKeyPool({ size: 16, p256 });
  try {
    const input = { plaintext: BENCH_PAYLOAD, uaPublic: to.p256dh, authSecret: to.auth };
    const op = () => ece.encryptWebPush(input, keyPool ? { keyPool } : { p256 });
    await rate(op, inFlight, Math.min(300, ms));
    return await rate(op, inFlight, ms);
  } finally {
    await keyPool?.close();
  }
}

/**
 * `pipeline` in `workers` module workers at once (one per core), `inFlight` messages in
 * flight in each; returns the sum of their rates.
 */
export async function measureFloorWorkers(
  workers: number,
  inFlight: number,
  ms: number,
  pipeline: Pipeline = { kind: "bare" },
): Promise<number> {
  const url = new URL("./floor_worker.ts", import.meta.url);
  const ws = Array.from({ length: workers }, () => new Worker(url, { type: "module" }));
  try {
    const answer = (w: Worker) =>
      new Promise<number>((resolve, reject) => {
        w.onmessage = (e: MessageEvent<number>) => resolve(e.data);
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`floor worker failed: ${e.message}`));
        };
      });
    // Each worker says it is ready (its module has loaded) before the timed run starts.
    await Promise.all(ws.map(answer));
    const rates = await Promise.all(ws.map((w) => {
      const r = answer(w);
      w.postMessage({ inFlight, ms, pipeline });
      return r;
    }));
    return rates.reduce((a, b) => a + b, 0);
  } finally {
    for (const w of ws) w.terminate();
  }
}
