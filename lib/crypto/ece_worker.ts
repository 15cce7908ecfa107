/**
 * Module worker behind {@link ./ece_pool.ts}: encrypts Web Push messages (RFC 8291) off the
 * main thread. Waits for `{p256}` (the P-256 implementation the main isolate chose, see
 * `fastestP256Backend`), posts `{ready: true}`, then answers each batch `{jobs}` of jobs `{id,
 * plaintext, p256dh, auth}` with one message `{results}`, a result `{id, body}` (the bodies'
 * buffers are transferred) or `{id, error}` per job, in the jobs' order. On libcrypto it
 * loads and checks the library itself and makes each key pair when it needs it (synchronous and
 * cheap there); on the other implementations it keeps a small pool of fresh sender key pairs.
 * Holds no key material beyond one message at a time.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import {
  createEphemeralKeyPool,
  encryptWebPush,
  type EncryptWebPushOptions,
  fastestP256Backend,
  type P256Backend,
} from "./ece.ts";
import { libcrypto } from "./p256_ffi.ts";

interface Job {
  id: number;
  plaintext: Uint8Array | string;
  p256dh: Uint8Array;
  auth: Uint8Array;
}

let how: EncryptWebPushOptions | undefined;

/** The main isolate's choice, unless libcrypto does not load here (then this isolate's own). */
async function backendHere(asked: P256Backend): Promise<P256Backend> {
  return asked === "ffi" && !libcrypto().ok ? await fastestP256Backend() : asked;
}

self.onmessage = async (e: MessageEvent<{ jobs: Job[] } | { p256: P256Backend }>) => {
  if ("p256" in e.data) {
    const p256 = await backendHere(e.data.p256);
    how ??= p256 === "ffi" ? { p256 } : { keyPool: createEphemeralKeyPool({ size: 16, p256 }) };
    self.postMessage({ ready: true });
    return;
  }
  const results = await Promise.all(e.data.jobs.map(encryptOne));
  const transfer: ArrayBuffer[] = [];
  for (const r of results) if ("body" in r) transfer.push(r.body.buffer as ArrayBuffer);
  self.postMessage({ results }, transfer);
};

async function encryptOne(
  { id, plaintext, p256dh, auth }: Job,
): Promise<{ id: number; body: Uint8Array } | { id: number; error: string }> {
  try {
    const body = await encryptWebPush(
      { plaintext, uaPublic: p256dh, authSecret: auth },
      how ?? {},
    );
    return { id, body };
  } catch (err) {
    // Only the library's own shape and size messages; they hold no key material.
    return { id, error: err instanceof Error ? err.message : String(err) };
  }
}
