/**
 * A pool of fresh RFC 8291 sender key pairs, generated ahead so a delivery does not wait for one.
 *
 * @module
 */

import { type EphemeralKeyPair, generateEphemeralKeyPair, type P256Backend } from "./p256.ts";

/** Pre-generated sender key pairs; see {@link createEphemeralKeyPool}. */
export interface EphemeralKeyPool {
  /** Removes and returns a key pair, generating one inline when the pool is empty. */
  take(): Promise<EphemeralKeyPair>;
  /** Fills the pool to capacity and resolves when it is full (or closed). */
  fill(): Promise<void>;
  /** Key pairs ready right now. */
  readonly available: number;
  /** The P-256 implementation its key pairs come from (undefined: the fastest here). */
  readonly p256?: P256Backend | undefined;
  /** Stops refilling and waits for work in flight; `take()` still works afterwards. */
  close(): Promise<void>;
}

export interface EphemeralKeyPoolOptions {
  /** How many key pairs to keep ready. Default 32. */
  size?: number;
  /** The P-256 implementation. @default the faster here ({@link fastestP256Backend}) */
  p256?: P256Backend;
}

/**
 * A small pool of fresh ECDH key pairs whose public points are already exported, refilled in
 * the background after `take()`. A key pair leaves the pool once and is never handed out again
 * (RFC 8291 §3.1). The refill yields to the event loop between key pairs so that deliveries in
 * flight go first; call `close()` before shutdown (and in tests, for the op sanitizer).
 */
export function createEphemeralKeyPool(options: EphemeralKeyPoolOptions = {}): EphemeralKeyPool {
  const size = options.size ?? 32;
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`Cannot create key pool: size must be a positive integer, got ${size}`);
  }
  const ready: EphemeralKeyPair[] = [];
  let refilling: Promise<void> | undefined;
  let closed = false;

  const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

  async function refillLoop(): Promise<void> {
    while (!closed && ready.length < size) {
      const pair = await generateEphemeralKeyPair(options.p256);
      if (closed) return pair.dispose?.();
      ready.push(pair);
      if (ready.length < size) await yieldToEventLoop();
    }
  }

  function startRefill(): Promise<void> {
    if (closed || ready.length >= size) return refilling ?? Promise.resolve();
    // `.finally` runs in a later microtask, so the assignment below always happens first.
    refilling ??= refillLoop().finally(() => {
      refilling = undefined;
    });
    return refilling;
  }

  return {
    take() {
      const pair = ready.shift();
      if (ready.length < size) void startRefill().catch(() => {});
      return pair ? Promise.resolve(pair) : generateEphemeralKeyPair(options.p256);
    },
    fill() {
      return startRefill();
    },
    get available() {
      return ready.length;
    },
    get p256() {
      return options.p256;
    },
    async close() {
      closed = true;
      await refilling?.catch(() => {});
      for (const pair of ready.splice(0)) pair.dispose?.();
    },
  };
}
