/**
 * Bulk seeding (the benchmarks' 1,000,000 subscriptions, README "Benchmarks"): new clients'
 * registrations and their subscriptions to one topic, many per atomic and without reading
 * first. The keys and values are exactly those `RegistrationStore.put` and
 * `SubscriptionStore.upsert` write for a client that holds nothing yet (tests/store_bulk_test.ts
 * compares the two), counters included, so a relay cannot tell seeded data from registered data.
 * Only for clients that are new to the store: nothing is checked, so an existing registration
 * or subscription would be overwritten and counted twice.
 *
 * @module
 */

import type { Registration, SubscriptionValue, TransportId } from "../model.ts";
import { addToCounter } from "./app_counts.ts";
import type { IngressMarker } from "./ingress.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv, sizedBatches, utf8Length } from "./kv.ts";
import type { RegistrationLife } from "./registrations.ts";

/** Mutations per atomic we allow ourselves (KV: 1000). */
const MUTATIONS_PER_ATOMIC = 900;
/** Estimated bytes per atomic (KV: 800 KiB of keys and values, 80 KiB of keys). */
const BYTES_PER_ATOMIC = 400_000;
const KEY_BYTES_PER_ATOMIC = 60_000;

/** A new client's registration and its device-index hash (lib/targets.ts `targetHash`). */
export interface NewRegistration {
  reg: Registration;
  targetHash: string;
}

export class BulkStore {
  constructor(private readonly kv: Kv, private readonly o: { idleMs: number }) {}

  /**
   * Writes new clients' registrations as `RegistrationStore.put` does (record, device index,
   * lifetime and its sweep entry, push-resource marker), their lifetime counting from
   * `createdAt`.
   */
  async registrations(items: readonly NewRegistration[]): Promise<void> {
    const cost = ({ reg, targetHash }: NewRegistration) =>
      JSON.stringify(reg).length + 4 * utf8Length(reg.clientId) + targetHash.length + 256;
    const perAtomic = Math.floor(MUTATIONS_PER_ATOMIC / 5);
    for (const batch of sizedBatches(items, cost, BYTES_PER_ATOMIC, perAtomic)) {
      const op = this.kv.atomic();
      for (const { reg, targetHash } of batch) {
        const life: RegistrationLife = {
          renewedAt: reg.createdAt,
          checkAt: reg.createdAt + this.o.idleMs,
        };
        op.set(keys.registration(reg.clientId), reg)
          .set(keys.registrationByTarget(targetHash), reg.clientId)
          .set(keys.registrationLife(reg.clientId), life)
          .set(keys.lifetimeCheck(life.checkAt, reg.clientId), null);
        if (reg.ingress) {
          const marker: IngressMarker = { clientId: reg.clientId, gone: false };
          op.set(keys.ingress(reg.ingress.id), marker);
        }
      }
      await this.commit(op, "registrations");
    }
  }

  /**
   * Subscribes new clients (no subscription of `app` yet) to `topic` until `exp`, as
   * `SubscriptionStore.upsert` does: the record and its two indexes, the client's latest
   * expiry, and the subscription, per-app and per-client counters.
   */
  async subscriptions(options: {
    app: string;
    topic: string;
    clientIds: readonly string[];
    transport: TransportId;
    exp: number;
    now: number;
  }): Promise<void> {
    const { app, topic, transport, exp, now } = options;
    const expireIn = Math.max(1, exp - now) + GC_MARGIN_MS;
    const value: SubscriptionValue = { exp, tr: transport, c: true };
    const keyCost = (id: string) => 5 * (utf8Length(app) + utf8Length(topic) + utf8Length(id) + 32);
    const perAtomic = Math.floor((MUTATIONS_PER_ATOMIC - 3) / 5);
    for (const batch of sizedBatches(options.clientIds, keyCost, KEY_BYTES_PER_ATOMIC, perAtomic)) {
      const op = this.kv.atomic();
      for (const clientId of batch) {
        op.set(keys.subscription(app, topic, clientId), value, { expireIn })
          .set(keys.clientSubscription(clientId, app, topic), exp, { expireIn })
          .set(keys.subscriptionExpiry(exp, app, topic, clientId), null, { expireIn })
          .set(keys.clientAppCount(clientId, app), 1)
          .max(keys.clientActiveUntil(clientId), BigInt(Math.max(0, Math.ceil(exp))));
      }
      addToCounter(op, keys.subscriptionCount, batch.length);
      addToCounter(op, keys.appSubscriptionCount(app), batch.length);
      addToCounter(op, keys.appClientCount(app), batch.length);
      await this.commit(op, "subscriptions");
    }
  }

  private async commit(op: Deno.AtomicOperation, what: string): Promise<void> {
    if (!(await this.kv.commit(op))) throw new Error(`Cannot seed ${what}: the commit failed`);
  }
}
