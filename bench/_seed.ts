/**
 * Fills a relay's KV file with Web Push registrations and subscriptions through the relay's
 * own storage API (`registrations.put`, `subscriptions.upsert`: what
 * `POST /registrations` and a `push-subscribe` write), without the HTTP round trips and the
 * acknowledging pushes, so that large N are quick to set up.
 *
 * @module
 */

import { encodeBase64Url, randomBytes, randomToken } from "../lib/encoding.ts";
import type { Registration } from "../lib/model.ts";
import type { Store } from "../lib/store/mod.ts";
import { targetHash } from "../lib/targets.ts";
import type { WebPushTarget } from "../lib/transports/types.ts";
import { makeSubscriber } from "./crypto_floor.ts";

export interface SeededClient {
  clientId: string;
  target: WebPushTarget;
}

/** A pool of subscriber public keys (`p256dh`), shared round-robin by seeded clients. */
export async function subscriberKeys(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(encodeBase64Url((await makeSubscriber()).p256dh));
  return out;
}

/** Runs `fn(i)` for i in [0, n) with `concurrency` calls in flight. */
export async function pool(
  n: number,
  concurrency: number,
  fn: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, async () => {
    while (next < n) await fn(next++);
  }));
}

/**
 * Registers `n` Web Push clients whose endpoints are `${endpointBase}/<random>`; the random
 * part has `pathBytes` bytes (an FCM endpoint has about 150 characters after its origin).
 */
export async function seedClients(
  store: Store,
  n: number,
  options: { endpointBase: string; keys: string[]; pathBytes?: number; now: number },
): Promise<SeededClient[]> {
  const clients: SeededClient[] = new Array(n);
  await pool(n, 64, async (i) => {
    const target: WebPushTarget = {
      transport: "web-push",
      endpoint: `${options.endpointBase}/${randomToken(options.pathBytes ?? 16)}`,
      p256dh: options.keys[i % options.keys.length]!,
      auth: encodeBase64Url(randomBytes(16)),
    };
    const reg: Registration = { clientId: randomToken(16), target, createdAt: options.now };
    await store.registrations.put(reg, await targetHash(target));
    clients[i] = { clientId: reg.clientId, target };
  });
  return clients;
}

/** Subscribes every client to `topic` of `app` until `exp` (epoch ms). */
export async function seedSubscriptions(
  store: Store,
  app: string,
  topic: string,
  clients: readonly { clientId: string }[],
  exp: number,
  now: number,
): Promise<void> {
  await pool(clients.length, 64, async (i) => {
    await store.subscriptions.upsert(app, clients[i]!.clientId, "web-push", [topic], exp, now);
  });
}

/** Bytes a KV database takes on disk: the SQLite file and its WAL and shared-memory files. */
export async function kvFileBytes(path: string): Promise<number> {
  let total = 0;
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      total += (await Deno.stat(path + suffix)).size;
    } catch { /* absent */ }
  }
  return total;
}

/**
 * Seeds `n` new Web Push clients through the store's bulk operations (lib/store/bulk.ts: the
 * keys and values registering each would write), `chunk` at a time with `parallel` chunks in
 * flight; returns their client ids in order.
 */
export async function bulkClients(
  store: Store,
  n: number,
  options: {
    endpointBase: string;
    keys: string[];
    pathBytes?: number;
    now: number;
    chunk?: number;
    parallel?: number;
    progress?: (done: number) => void;
  },
): Promise<string[]> {
  const chunk = options.chunk ?? 10_000;
  const ids: string[] = new Array(n);
  let done = 0;
  await pool(Math.ceil(n / chunk), options.parallel ?? 4, async (c) => {
    const from = c * chunk;
    const to = Math.min(n, from + chunk);
    const items = await Promise.all(Array.from({ length: to - from }, async (_, k) => {
      const target: WebPushTarget = {
        transport: "web-push",
        endpoint: `${options.endpointBase}/${randomToken(options.pathBytes ?? 16)}`,
        p256dh: options.keys[(from + k) % options.keys.length]!,
        auth: encodeBase64Url(randomBytes(16)),
      };
      const reg: Registration = { clientId: randomToken(16), target, createdAt: options.now };
      ids[from + k] = reg.clientId;
      return { reg, targetHash: await targetHash(target) };
    }));
    await store.bulk.registrations(items);
    done += items.length;
    options.progress?.(done);
  });
  return ids;
}

/** Subscribes new clients to `topic` through the store's bulk operation, in chunks. */
export async function bulkSubscriptions(
  store: Store,
  options: { app: string; topic: string; clientIds: string[]; exp: number; now: number },
  parallel = 4,
): Promise<void> {
  const chunk = 10_000;
  const { clientIds } = options;
  await pool(Math.ceil(clientIds.length / chunk), parallel, async (c) => {
    await store.bulk.subscriptions({
      ...options,
      clientIds: clientIds.slice(c * chunk, (c + 1) * chunk),
      transport: "web-push",
    });
  });
}
