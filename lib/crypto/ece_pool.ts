/**
 * Web Push encryption (RFC 8291) spread over module workers, so that a fan-out uses every
 * core. Measured on Deno 2.9 and 2.5 (BENCHMARKS.md and the README): one isolate stalls
 * well below what the same pipeline reaches in one worker per core, because part of each P-256
 * operation and all the promise plumbing around it run on the isolate's own thread (on 2.5 the
 * public key export is fully synchronous), which the relay also needs for HTTP and KV.
 *
 * Workers are started only under load (`startAt` encryptions asked for within 20 ms) and stopped
 * after `idleMs` without work, so a quiet relay and a test sending one message never start
 * one. Until a worker is ready, and wherever `Worker` is missing or fails, messages are
 * encrypted inline: the pool never delays or loses a message for the workers' sake. With
 * `bulkOnly` (P-256 on libcrypto, where a message costs about as much to hand to a worker as to
 * encrypt), only messages of large fan-outs go to the workers.
 *
 * Jobs go to a worker in batches: a worker that has fewer than {@link BATCHES_IN_FLIGHT} batches
 * gets a job at once; otherwise jobs wait for its next answer and go together (at most
 * {@link BATCH_SIZE} per message). A quiet pool hands each message over alone, with no added
 * delay; under a fan-out one hand-off carries several (about 6 on average in the bench's fan-out
 * of 10,000), which saves most of the per-message cost of `postMessage` and of waking the worker
 * (README "Benchmarks").
 *
 * @module
 */

import {
  encryptWebPush,
  type EncryptWebPushInput,
  type EphemeralKeyPool,
  fastestP256Backend,
  type P256Backend,
} from "./ece.ts";

/** What the pool may do with one message. */
export interface EncryptOptions {
  /** Part of a large fan-out: worth a worker even with `bulkOnly`. */
  bulk?: boolean;
}

/** Encrypts Web Push messages; see {@link createEncryptionPool}. */
export interface Encryptor {
  /** The RFC 8291 `aes128gcm` body for one message (same contract as `encryptWebPush`). */
  encrypt(input: EncryptWebPushInput, options?: EncryptOptions): Promise<Uint8Array>;
  /** Workers ready to take jobs. */
  readonly workers: number;
  /** Stops the workers; later calls encrypt inline. */
  close(): Promise<void>;
}

export interface EncryptionPoolOptions {
  /**
   * Workers at most; 0 starts none, so every message is encrypted inline (in the isolate that
   * asks). @default one per core (at least 1). Each worker costs tens of MiB of resident
   * memory (README "Benchmarks" has the figures); `RELAY_ENCRYPTION_WORKERS` sets it.
   */
  maxWorkers?: number;
  /**
   * Encryptions that start the workers when they are asked for within 20 ms (or are in flight
   * at once). Counting arrivals, not only work in flight, matters when the P-256 operations are
   * synchronous (`node:crypto`): then inline encryptions never overlap. @default 8
   */
  startAt?: number;
  /** Workers stop after this long without work. @default 30000 */
  idleMs?: number;
  /** Sender key pairs for inline encryption. */
  keyPool?: EphemeralKeyPool;
  /**
   * Only messages marked `bulk` go to workers (and count towards `startAt`); the others are
   * encrypted inline. Measured with P-256 on libcrypto: a single message then costs the main
   * isolate about as much to hand to a worker as to encrypt (README "Benchmarks"). @default false
   */
  bulkOnly?: boolean;
  /** The workers' P-256 implementation. @default the faster here (`fastestP256Backend`) */
  p256?: P256Backend;
}

/** Jobs in one hand-off to a worker at most. */
export const BATCH_SIZE = 64;
/** Batches a worker holds at once before further jobs wait for its next answer. */
export const BATCHES_IN_FLIGHT = 2;

interface Pending {
  input: EncryptWebPushInput;
  resolve: (body: Uint8Array) => void;
  reject: (err: Error) => void;
}

/** One job as the worker gets it (lib/crypto/ece_worker.ts). */
interface Job {
  id: number;
  plaintext: Uint8Array | string;
  p256dh: Uint8Array;
  auth: Uint8Array;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  /** Jobs handed over or waiting, by id. */
  pending: Map<number, Pending>;
  /** Jobs not handed over yet (the worker has {@link BATCHES_IN_FLIGHT} batches). */
  waiting: Job[];
  /** Batches handed over and not answered yet. */
  batches: number;
}

type Result = { id: number; body: Uint8Array } | { id: number; error: string };
type Reply = { ready: true } | { results: Result[] };

/** Creates an encryption pool. Call `close()` when the relay stops (and in tests). */
export function createEncryptionPool(options: EncryptionPoolOptions = {}): Encryptor {
  const maxWorkers = options.maxWorkers ??
    Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1);
  if (!Number.isInteger(maxWorkers) || maxWorkers < 0) {
    throw new RangeError(
      `Cannot create the encryption pool: maxWorkers must be an integer of 0 or more, got ${maxWorkers}`,
    );
  }
  const startAt = Math.max(1, options.startAt ?? 8);
  const idleMs = options.idleMs ?? 30_000;
  const keyPool = options.keyPool;
  const slots: Slot[] = [];
  let nextId = 1;
  let inline = 0;
  // No workers at all: every message inline, as where `Worker` is missing.
  let broken = maxWorkers === 0 || typeof Worker !== "function";
  let closed = false;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let burstStart = -Infinity;
  let burst = 0;

  /** Counts one request; true once `startAt` arrived within 20 ms or are in flight. */
  const underLoad = (): boolean => {
    const t = performance.now();
    if (t - burstStart > 20) {
      burstStart = t;
      burst = 0;
    }
    burst++;
    return burst >= startAt || inline + 1 >= startAt;
  };

  const inlineOptions = keyPool ? { keyPool } : options.p256 ? { p256: options.p256 } : {};
  const encryptInline = async (input: EncryptWebPushInput): Promise<Uint8Array> => {
    inline++;
    try {
      return await encryptWebPush(input, inlineOptions);
    } finally {
      inline--;
    }
  };

  function stopAll(): void {
    clearTimeout(idleTimer);
    idleTimer = undefined;
    for (const slot of slots.splice(0)) {
      slot.worker.terminate();
      // Jobs a stopped worker still held are encrypted inline instead.
      for (const p of slot.pending.values()) encryptInline(p.input).then(p.resolve, p.reject);
    }
  }

  function armIdle(): void {
    if (idleTimer !== undefined || slots.length === 0) return;
    idleTimer = setTimeout(() => {
      idleTimer = undefined;
      if (slots.some((s) => s.pending.size > 0)) armIdle();
      else stopAll();
    }, idleMs);
    // An idle pool must not keep the process (or a test) alive.
    Deno.unrefTimer(idleTimer);
  }

  /** Hands a worker the jobs waiting for it, {@link BATCH_SIZE} at most, in one message. */
  function handOver(slot: Slot): void {
    const jobs = slot.waiting.length <= BATCH_SIZE
      ? slot.waiting.splice(0)
      : slot.waiting.splice(0, BATCH_SIZE);
    slot.batches++;
    slot.worker.postMessage({ jobs });
  }

  function start(): void {
    while (slots.length < maxWorkers) {
      let worker: Worker;
      try {
        worker = new Worker(new URL("./ece_worker.ts", import.meta.url), { type: "module" });
      } catch {
        broken = true; // no workers here (e.g. a platform without them): inline from now on
        return;
      }
      const slot: Slot = { worker, ready: false, pending: new Map(), waiting: [], batches: 0 };
      // The worker waits for the P-256 implementation this isolate measured as the faster.
      void Promise.resolve(options.p256 ?? fastestP256Backend()).then((p256) => {
        if (slots.includes(slot)) worker.postMessage({ p256 });
      });
      worker.onmessage = (e: MessageEvent<Reply>) => {
        const msg = e.data;
        if ("ready" in msg) {
          slot.ready = true;
          return;
        }
        slot.batches--;
        // The next batch first, so the worker is busy again while these are settled.
        if (slot.waiting.length > 0) handOver(slot);
        for (const r of msg.results) {
          const p = slot.pending.get(r.id);
          if (!p) continue;
          slot.pending.delete(r.id);
          if ("body" in r) p.resolve(r.body);
          else p.reject(new TypeError(r.error));
        }
        if (slots.every((s) => s.pending.size === 0)) armIdle();
      };
      worker.onerror = (e) => {
        e.preventDefault();
        broken = true;
        stopAll();
      };
      slots.push(slot);
    }
    armIdle();
  }

  return {
    encrypt(input, how = {}) {
      if (closed || broken || (options.bulkOnly && !how.bulk)) return encryptInline(input);
      let best: Slot | undefined;
      for (const s of slots) {
        if (s.ready && (!best || s.pending.size < best.pending.size)) best = s;
      }
      if (!best) {
        if (slots.length === 0 && underLoad()) start();
        return encryptInline(input);
      }
      clearTimeout(idleTimer);
      idleTimer = undefined;
      const id = nextId++;
      const slot = best;
      return new Promise<Uint8Array>((resolve, reject) => {
        slot.pending.set(id, { input, resolve, reject });
        slot.waiting.push({
          id,
          plaintext: input.plaintext,
          p256dh: input.uaPublic,
          auth: input.authSecret,
        });
        if (slot.batches < BATCHES_IN_FLIGHT) handOver(slot);
      });
    },
    get workers() {
      return slots.filter((s) => s.ready).length;
    },
    async close() {
      closed = true;
      stopAll();
      // The pool owns the key pool it was given: its refill stops too.
      await options.keyPool?.close();
    },
  };
}
