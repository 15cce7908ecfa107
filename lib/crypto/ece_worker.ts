/**
 * Module worker behind {@link ./ece_pool.ts}: encrypts Web Push messages (RFC 8291) off the
 * main thread, with its own pool of fresh sender key pairs. Waits for `{p256}` (the P-256
 * implementation the main isolate measured as the faster, see `fastestP256Backend`), posts
 * `{ready: true}`, then answers each job `{id, plaintext, p256dh, auth}` with `{id, body}` (the
 * body's buffer is transferred) or `{id, error}`. Holds no key material beyond one message at
 * a time.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import {
  createEphemeralKeyPool,
  encryptWebPush,
  type EphemeralKeyPool,
  type P256Backend,
} from "./ece.ts";

interface Job {
  id: number;
  plaintext: Uint8Array | string;
  p256dh: Uint8Array;
  auth: Uint8Array;
}

let keyPool: EphemeralKeyPool | undefined;

self.onmessage = async (e: MessageEvent<Job | { p256: P256Backend }>) => {
  if ("p256" in e.data) {
    keyPool ??= createEphemeralKeyPool({ size: 16, p256: e.data.p256 });
    self.postMessage({ ready: true });
    return;
  }
  const { id, plaintext, p256dh, auth } = e.data;
  try {
    const body = await encryptWebPush(
      { plaintext, uaPublic: p256dh, authSecret: auth },
      keyPool ? { keyPool } : {},
    );
    self.postMessage({ id, body }, [body.buffer as ArrayBuffer]);
  } catch (err) {
    // Only the library's own shape and size messages; they hold no key material.
    self.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
};
