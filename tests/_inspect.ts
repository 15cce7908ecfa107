/**
 * Reads of the relay's KV that only tests need: what is queued, dead-lettered or pending, and
 * a client's subscriptions. Built on the store's own KV wrapper and key builders, so they
 * follow the layout documented in lib/store/keys.ts.
 */

import type { DeadLetter, QueuedDelivery } from "../lib/model.ts";
import { keys, type Store } from "../lib/store/mod.ts";

/** Every queued delivery, due or not. */
export async function listDeliveries(store: Store, limit = 10_000): Promise<QueuedDelivery[]> {
  const entries = await store.kv.listAll<QueuedDelivery>({ prefix: keys.deliveriesAll }, limit);
  return entries.map((e) => e.value);
}

/** Dead letters, oldest first. */
export async function listDeadLetters(store: Store, limit = 1000): Promise<DeadLetter[]> {
  const entries = await store.kv.listAll<DeadLetter>({ prefix: keys.deadLettersAll }, limit);
  return entries.map((e) => e.value);
}

/** Every subscription of a client. */
export async function listClientSubscriptions(
  store: Store,
  clientId: string,
): Promise<{ app: string; topic: string; exp: number }[]> {
  const out: { app: string; topic: string; exp: number }[] = [];
  for await (const e of store.kv.list<number>({ prefix: keys.clientSubscriptions(clientId) })) {
    out.push({ app: e.key[2] as string, topic: e.key[3] as string, exp: e.value });
  }
  return out;
}

/** Outbox messages and queued deliveries still waiting. */
export async function pendingWork(store: Store): Promise<{ outbox: number; queued: number }> {
  return { outbox: await store.outbox.count(), queued: await store.queue.count() };
}
