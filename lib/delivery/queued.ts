/**
 * Queued deliveries: one delivery to one client (an acknowledging push, a Web Push ingress
 * message, a retry), recorded in the queue before anything is sent and ended in one atomic
 * guarded by its claim: delivered and deleted, retried, or dead-lettered.
 *
 * @module
 */

import type { Metrics } from "../metrics.ts";
import type { Entry, QueuedDelivery, StoredPayload } from "../model.ts";
import type { Store } from "../store/mod.ts";
import type { Logger } from "../log.ts";
import type { Clock } from "../time.ts";
import { urgencyFor } from "../transports/types.ts";
import { newId } from "./ids.ts";
import type { Leases } from "./leases.ts";
import { attemptTtl } from "./retry.ts";
import type { Sender } from "./sender.ts";
import type { UpstreamDeliveries } from "./upstream.ts";

export interface EnqueueOptions {
  reason: QueuedDelivery["reason"];
  priority: number;
  /** Seconds; `RELAY_TTL` when absent. */
  ttl?: number;
  collapseKey?: string;
  /** The app whose push this delivers, for the dead letter it may become. */
  app?: string;
}

export interface QueuedOptions {
  store: Store;
  leases: Leases;
  sender: Sender;
  now: Clock;
  logger: Logger;
  metrics: Metrics;
  /** `RELAY_TTL` in seconds. */
  ttl: number;
  /** True once the engine is shutting down. */
  stopping: () => boolean;
  /** Starts sending a delivery this process holds. */
  run: (entry: Entry<QueuedDelivery>) => void;
  /** Sends the deliveries to the upstream gateway (`reason: "upstream"`). */
  upstream: UpstreamDeliveries;
  /**
   * True when a queued delivery was replaced by a newer message with the same RFC 8030 Topic
   * (Web Push ingress, §5.4); it is then dropped instead of sent.
   */
  superseded?: (d: QueuedDelivery) => Promise<boolean>;
}

/**
 * Records a new queued delivery durably. When this process takes new work, it holds the
 * delivery's lease from before the record (so no scan claims it meanwhile) and starts it at once
 * with `run`; when the record fails it holds nothing and throws.
 */
export async function recordQueued(
  o: { store: Store; leases: Leases; run: (entry: Entry<QueuedDelivery>) => void },
  d: Omit<QueuedDelivery, "lease">,
): Promise<void> {
  const { leases } = o;
  const lease = leases.forNewWork();
  const held = lease.owner !== "";
  const value: QueuedDelivery = held ? { ...d, lease } : d;
  if (held) leases.hold(queuedKey(value));
  const beat = leases.heartbeat();
  let entry: Entry<QueuedDelivery>;
  try {
    entry = await o.store.queue.put(value, held ? beat : undefined);
  } catch (err) {
    leases.unhold(queuedKey(value));
    throw err;
  }
  if (held) {
    leases.beaten(beat);
    o.run(entry);
  }
}

/** The key under which this process holds a queued delivery. */
export function queuedKey(d: QueuedDelivery): string {
  return `q:${d.dueAt}:${d.id}`;
}

export class QueuedDeliveries {
  constructor(private readonly o: QueuedOptions) {}

  /** Queues a single delivery to one client and sends it at once. */
  async enqueue(clientId: string, payload: StoredPayload, options: EnqueueOptions): Promise<void> {
    const now = this.o.now();
    const ttl = options.ttl ?? this.o.ttl;
    // RFC 8030 §5.2: TTL 0 means "now or never"; one second of lifetime lets the first attempt
    // run, and that attempt still carries TTL 0.
    const lifetimeMs = Math.max(1, ttl) * 1000;
    await recordQueued(this.o, {
      id: newId(now),
      dueAt: now,
      clientId,
      reason: options.reason,
      payload,
      priority: options.priority,
      ttl,
      ...(options.collapseKey !== undefined ? { collapseKey: options.collapseKey } : {}),
      ...(options.app !== undefined ? { app: options.app } : {}),
      attempts: 0,
      createdAt: now,
      expiresAt: now + lifetimeMs,
    });
  }

  /** Sends one claimed queued delivery and records its end in one guarded atomic. */
  async deliver(entry: Entry<QueuedDelivery>): Promise<void> {
    const { store, metrics } = this.o;
    const d = entry.value;
    const now = this.o.now();
    if (this.o.stopping()) {
      await store.queue.release(entry);
      return;
    }
    if (d.reason === "upstream") return await this.o.upstream.deliver(entry);
    const reg = await store.registrations.get(d.clientId);
    if (!reg) {
      // The client was pruned or deleted: nothing to send.
      await store.queue.finish(entry, {});
      return;
    }
    const transport = reg.target.transport;
    if (now >= d.expiresAt) {
      metrics.deliveries.inc({ transport, outcome: "dead_lettered" });
      const rest = { ...d };
      delete rest.lease;
      await store.queue.finish(entry, {
        dead: { ...rest, id: newId(now), deadAt: now, why: "expired", transport },
      });
      return;
    }
    if (await this.o.superseded?.(d)) {
      metrics.deliveries.inc({ transport, outcome: "replaced" });
      await store.queue.finish(entry, {});
      return;
    }
    const sent = await this.o.sender.send(reg, {
      payload: d.payload,
      ttl: attemptTtl(d, now),
      urgency: urgencyFor(d.priority),
      priority: d.priority,
      ...(d.collapseKey !== undefined ? { collapseKey: d.collapseKey } : {}),
    }, d.createdAt);
    const follow = await this.o.sender.followUp(reg, sent, d);
    if (!(await store.queue.finish(entry, follow))) {
      this.o.logger.log("warn", "delivery.lease_lost", { client: d.clientId });
    }
  }
}
