/**
 * Per-app counters, written in the same atomics as the subscription records (subscriptions.ts)
 * so that the admin status reads two keys per app instead of scanning:
 *
 * - `["stat", "app-subscriptions", app]`: the app's counted subscriptions (a `Deno.KvU64`);
 * - `["stat", "app-clients", app]`: its registrations, i.e. the clients that hold at least one
 *   counted subscription of the app (a `Deno.KvU64`);
 * - `["stat", "client-app", clientId, app]`: how many counted subscriptions of the app one
 *   client holds (a number; absent at 0).
 *
 * Exact when writers race: every atomic that changes a client's counted subscriptions of an app
 * checks and rewrites that pair's count, so of two writers of one pair one fails its check and
 * reads again; the app's client counter moves only when a pair's count leaves or reaches 0.
 * A subscription is counted once its record carries `c` (model.ts `SubscriptionValue`).
 *
 * @module
 */

import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";

const U64 = 1n << 64n;

/** Adds `delta` (which may be negative: KV's sum on a KvU64 wraps modulo 2^64) to a counter. */
export function addToCounter(op: Deno.AtomicOperation, key: Deno.KvKey, delta: number): void {
  if (delta === 0) return;
  const d = BigInt(delta);
  op.sum(key, d > 0n ? d : U64 + d);
}

/**
 * A counter's value. A wrapped (negative) count could only come from records KV's expiry
 * collected before the sweep saw them; it reads as 0 rather than 2^64 - n.
 */
export function counterValue(entry: Deno.KvEntryMaybe<Deno.KvU64>): number {
  const v = entry.value?.value ?? 0n;
  return v >= U64 / 2n ? 0 : Number(v);
}

const pairKey = (clientId: string, app: string) => `${clientId}\u0000${app}`;

/** The per-app changes of one atomic, planned against the pair counts it read. */
export class AppCountPlan {
  private readonly deltas = new Map<string, { clientId: string; app: string; delta: number }>();

  private constructor(private readonly read: Map<string, Deno.KvEntryMaybe<number>>) {}

  /** Reads the counts of the (client, app) pairs an atomic may change. */
  static async read(kv: Kv, pairs: Iterable<[clientId: string, app: string]>) {
    const unique = new Map<string, [string, string]>();
    for (const [clientId, app] of pairs) unique.set(pairKey(clientId, app), [clientId, app]);
    const entries = await kv.getMany<number>(
      [...unique.values()].map(([clientId, app]) => keys.clientAppCount(clientId, app)),
    );
    const read = new Map<string, Deno.KvEntryMaybe<number>>();
    [...unique.keys()].forEach((k, i) => read.set(k, entries[i]!));
    return new AppCountPlan(read);
  }

  /** `delta` counted subscriptions of (client, app) appear (positive) or go (negative). */
  add(clientId: string, app: string, delta: number): void {
    const k = pairKey(clientId, app);
    if (!this.read.has(k)) throw new RangeError(`Cannot count (client, app) pairs not read first`);
    const d = this.deltas.get(k) ?? { clientId, app, delta: 0 };
    d.delta += delta;
    this.deltas.set(k, d);
  }

  /** Adds the checked pair writes and the app counters' sums to `op`. */
  apply(op: Deno.AtomicOperation): void {
    const subscriptions = new Map<string, number>();
    const clients = new Map<string, number>();
    for (const [k, { clientId, app, delta }] of this.deltas) {
      if (delta === 0) continue;
      const entry = this.read.get(k)!;
      const before = entry.value ?? 0;
      const after = Math.max(0, before + delta);
      op.check(entry);
      const key = keys.clientAppCount(clientId, app);
      if (after > 0) op.set(key, after);
      else op.delete(key);
      subscriptions.set(app, (subscriptions.get(app) ?? 0) + delta);
      const moved = before === 0 && after > 0 ? 1 : before > 0 && after === 0 ? -1 : 0;
      clients.set(app, (clients.get(app) ?? 0) + moved);
    }
    for (const [app, d] of subscriptions) addToCounter(op, keys.appSubscriptionCount(app), d);
    for (const [app, d] of clients) addToCounter(op, keys.appClientCount(app), d);
  }
}

/** Counted subscriptions and registrations (clients holding one) of each app. */
export async function readAppCounts(
  kv: Kv,
  apps: readonly string[],
): Promise<Map<string, { subscriptions: number; registrations: number }>> {
  const entries = await kv.getMany<Deno.KvU64>(
    apps.flatMap((app) => [keys.appSubscriptionCount(app), keys.appClientCount(app)]),
  );
  const out = new Map<string, { subscriptions: number; registrations: number }>();
  apps.forEach((app, i) => {
    out.set(app, {
      subscriptions: counterValue(entries[2 * i]!),
      registrations: counterValue(entries[2 * i + 1]!),
    });
  });
  return out;
}
