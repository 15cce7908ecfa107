/**
 * The relay's storage: the only code that touches Deno KV. One store per entity, each built on
 * the same {@linkcode Kv} wrapper (busy retries, `StorageError`) and the key builders of
 * keys.ts, which also document the layout.
 *
 * @module
 */

import { IngressStore } from "./ingress.ts";
import { Kv } from "./kv.ts";
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
}

/** The stores of one KV database. */
export function createStore(db: Deno.Kv): Store {
  const kv = new Kv(db);
  const subscriptions = new SubscriptionStore(kv);
  return {
    kv,
    meta: new MetaStore(kv),
    registrations: new RegistrationStore(kv, subscriptions),
    subscriptions,
    outbox: new OutboxStore(kv),
    queue: new QueueStore(kv),
    workers: new WorkerStore(kv),
    limits: new LimitStore(kv),
    ingress: new IngressStore(kv),
    upstream: new UpstreamStore(kv),
  };
}
