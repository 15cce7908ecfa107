/**
 * The relay's storage: the only code that touches Deno KV. One store per entity, each built on
 * the same {@linkcode Kv} wrapper (busy retries, `StorageError`) and the key builders of
 * keys.ts, which also document the layout.
 *
 * @module
 */

import { type Clock, systemClock } from "../time.ts";
import { BulkStore } from "./bulk.ts";
import { IngressStore } from "./ingress.ts";
import { Kv } from "./kv.ts";
import { LifetimeSweep } from "./lifetimes.ts";
import { LimitStore } from "./limits.ts";
import { MetaStore } from "./meta.ts";
import { OutboxStore } from "./outbox.ts";
import { QueueStore } from "./queue.ts";
import { RegistrationStore } from "./registrations.ts";
import { SubscriptionStore } from "./subscriptions.ts";
import { UpstreamStore } from "./upstream.ts";
import { WorkerStore } from "./workers.ts";

export { type Advance, type OutboxWrite, type WindowWrite } from "./outbox.ts";
export { type FollowUp } from "./queue.ts";
export { type IngressMarker } from "./ingress.ts";
export {
  type BootstrapCheck,
  type MapEntry,
  type StoredBootstrap,
  type StoredPushUrl,
} from "./upstream.ts";
export { isBusy, Kv, sizedBatches } from "./kv.ts";
export { keys } from "./keys.ts";

export interface Store {
  readonly kv: Kv;
  readonly meta: MetaStore;
  readonly registrations: RegistrationStore;
  readonly subscriptions: SubscriptionStore;
  readonly outbox: OutboxStore;
  readonly queue: QueueStore;
  readonly workers: WorkerStore;
  readonly limits: LimitStore;
  readonly ingress: IngressStore;
  readonly upstream: UpstreamStore;
  readonly lifetimes: LifetimeSweep;
  /** Seeding many new clients at once (benchmarks). */
  readonly bulk: BulkStore;
}

export interface StoreOptions {
  /** @default the system clock */
  now?: Clock;
  /**
   * A registration without an active subscription for this long is removed (README "The client
   * API": one refresh-interval). @default 604800000, the default `RELAY_REFRESH_INTERVAL`
   */
  registrationIdleMs?: number;
}

/** The stores of one KV database. */
export function createStore(db: Deno.Kv, options: StoreOptions = {}): Store {
  const kv = new Kv(db);
  const subscriptions = new SubscriptionStore(kv);
  const idleMs = options.registrationIdleMs ?? 604_800_000;
  if (!Number.isInteger(idleMs) || idleMs < 1) {
    throw new RangeError(`Cannot create the store: registrationIdleMs must be >= 1, got ${idleMs}`);
  }
  const registrations = new RegistrationStore(kv, subscriptions, {
    now: options.now ?? systemClock,
    idleMs,
  });
  return {
    kv,
    meta: new MetaStore(kv),
    registrations,
    subscriptions,
    outbox: new OutboxStore(kv),
    queue: new QueueStore(kv),
    workers: new WorkerStore(kv),
    limits: new LimitStore(kv),
    ingress: new IngressStore(kv),
    upstream: new UpstreamStore(kv),
    lifetimes: new LifetimeSweep(kv, registrations, { idleMs }),
    bulk: new BulkStore(kv, { idleMs }),
  };
}
