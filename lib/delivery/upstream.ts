/**
 * Deliveries to the upstream gateway (README "Relaying to another gateway"). The messages of
 * one push whose topics the topic-to-gateway map routes upstream become queued deliveries
 * (`reason: "upstream"`, payload: the JSON body of one upstream push request) in the same
 * delivery queue as every other delivery: recorded before the push is answered, sent at once,
 * and then claimed, held by heartbeat, taken over, released at shutdown and dead-lettered like
 * any queued delivery (README "Delivery guarantees").
 *
 * Each attempt is one push request. Network failures, timeouts, `401`, `408`, `429` and `5xx`
 * are retried with backoff, never sooner than the upstream's `Retry-After`, until the message's
 * TTL runs out; other refusals (a `508` loop among them) are dead letters at once. Topics the
 * upstream lists in `no-subscribers` leave the topic-to-gateway map, so this relay's next push
 * lists them too (CC/CD 70025 §4.2).
 *
 * @module
 */

import type { DeadLetter, Entry, PushMessage, QueuedDelivery, ViaHop } from "../model.ts";
import { sizedBatches, utf8Length } from "../store/kv.ts";
import type { DeliveryOutcome } from "../transports/types.ts";
import { newId } from "./ids.ts";
import type { Leases } from "./leases.ts";
import { recordQueued } from "./queued.ts";
import { nextStep } from "./retry.ts";
import type { AttemptContext } from "./sender.ts";

/** The transport label of upstream deliveries in metrics and logs, and their breaker key. */
export const UPSTREAM = "upstream";

/** What one push request to the upstream gave. */
export interface UpstreamPushResult {
  /** `delivered` for a `2xx`; `retry` or `failed` as the module documentation says. */
  outcome: DeliveryOutcome;
  /** The topics its answer listed in `no-subscribers` (only on `delivered`). */
  noSubscribers: string[];
}

/** Makes push requests to the upstream gateway (lib/upstream.ts). */
export interface UpstreamPusher {
  /**
   * One push request with `body`, carrying `via` with this relay appended. Never throws for
   * answers or network errors: those become outcomes.
   */
  push(
    body: Record<string, unknown>,
    via: ViaHop[],
    signal: AbortSignal,
  ): Promise<UpstreamPushResult>;
}

/** Upstream deliveries are retried until their TTL: `retry.maxAttempts` does not apply. */
export interface UpstreamDeliveriesOptions extends AttemptContext {
  leases: Leases;
  /** Null when no upstream is configured (deliveries left by an earlier configuration). */
  pusher: UpstreamPusher | null;
  /** Starts sending a delivery this process holds. */
  run: (entry: Entry<QueuedDelivery>) => void;
}

/** JSON bytes of messages per upstream request: a record stays well within KV's 64 KiB. */
const BATCH_BYTES = 48_000;
/** Messages per upstream request at most (CC/CD 70025 gateways take 1000 per push). */
const BATCH_MESSAGES = 1000;

/**
 * A message as the push body carries it (CC/CD 70025 §6.1.3): each field under its kebab-case
 * name (`clientId` is `client-id`), so every field a message has is relayed, self-suppression
 * included.
 */
export function wireMessage(m: PushMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    if (v !== undefined) out[k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)] = v;
  }
  return out;
}

type FollowUp = { retry?: QueuedDelivery; dead?: DeadLetter };

/** How messages are relayed. */
export interface RelayOptions {
  /** The push's incoming `Via` list; the forwarded request appends this relay. */
  via: ViaHop[];
  /** How many of them count as received pushes (those not also delivered here). @default all */
  received?: number;
}

export class UpstreamDeliveries {
  constructor(private readonly o: UpstreamDeliveriesOptions) {}

  /**
   * Records the messages as upstream deliveries (one per batch) and starts sending them.
   * Resolves once every batch is durable; throws (and the push fails) otherwise.
   */
  async accept(app: string, messages: PushMessage[], options: RelayOptions): Promise<void> {
    if (messages.length === 0) return;
    const { via } = options;
    const now = this.o.now();
    const wire = messages.map(wireMessage);
    const batches = sizedBatches(
      wire,
      (m) => utf8Length(JSON.stringify(m)) + 1,
      BATCH_BYTES,
      BATCH_MESSAGES,
    );
    for (const batch of batches) {
      await recordQueued(this.o, {
        id: newId(now),
        dueAt: now,
        clientId: "",
        reason: "upstream",
        payload: { kind: "json", data: { push: { messages: batch } } },
        priority: Math.max(...batch.map((m) => m.priority as number)),
        ttl: this.o.ttl,
        attempts: 0,
        createdAt: now,
        expiresAt: now + Math.max(1, this.o.ttl) * 1000,
        upstream: { app, via },
      });
    }
    this.o.metrics.pushesReceived.inc({}, options.received ?? messages.length);
  }

  /** Makes one attempt of a claimed upstream delivery and records its end in one guarded atomic. */
  async deliver(entry: Entry<QueuedDelivery>): Promise<void> {
    const d = entry.value;
    const now = this.o.now();
    let follow: FollowUp;
    if (!this.o.pusher || !d.upstream || d.payload.kind !== "json") {
      this.o.metrics.deliveries.inc({ transport: UPSTREAM, outcome: "failed" });
      follow = this.dead(d, now, "refused", "no upstream gateway is configured");
    } else if (now >= d.expiresAt) {
      follow = this.dead(d, now, "expired", d.lastError ?? "expired before it was sent");
    } else {
      follow = await this.attempt(d, this.o.pusher, d.upstream.app, d.payload.data);
    }
    if (!(await this.o.store.queue.finish(entry, follow))) {
      this.o.logger.log("warn", "delivery.lease_lost", { transport: UPSTREAM });
    }
  }

  private async attempt(
    d: QueuedDelivery,
    pusher: UpstreamPusher,
    app: string,
    body: Record<string, unknown>,
  ): Promise<FollowUp> {
    const { breakers, metrics } = this.o;
    const startedAt = this.o.now();
    const openFor = breakers.openFor(UPSTREAM, startedAt);
    let outcome: DeliveryOutcome;
    if (openFor > 0) {
      metrics.deliveries.inc({ transport: UPSTREAM, outcome: "short_circuited" });
      outcome = { kind: "retry", reason: "circuit open", retryAfterMs: openFor };
    } else {
      const result = await pusher.push(body, d.upstream?.via ?? [], this.o.signal);
      outcome = result.outcome;
      // Our own shutdown aborted it: that says nothing about the upstream.
      if (!this.o.signal.aborted) breakers.record(UPSTREAM, UPSTREAM, outcome, this.o.now());
      this.log(outcome, d);
      if (outcome.kind === "delivered") {
        metrics.deliveries.inc({ transport: UPSTREAM, outcome: "delivered" });
        metrics.deliveryLatency.observe(Math.max(0, this.o.now() - d.createdAt) / 1000, {
          transport: UPSTREAM,
        });
        if (result.noSubscribers.length > 0) {
          // CC/CD 70025 §4.2: the map follows what the upstream reports.
          const removed = await this.o.store.upstream.drop(app, result.noSubscribers, startedAt);
          this.o.logger.log("info", "upstream.no_subscribers", {
            topics: result.noSubscribers.length,
            removed,
          });
        }
      }
    }
    return this.followUp(d, outcome, openFor <= 0);
  }

  private followUp(d: QueuedDelivery, outcome: DeliveryOutcome, attempted: boolean): FollowUp {
    const attempts = d.attempts + (attempted ? 1 : 0);
    const now = this.o.now();
    const step = nextStep({
      outcome,
      attempted,
      attempts,
      now,
      expiresAt: d.expiresAt,
      // Retried while the upstream is down, however long, until the TTL says otherwise.
      policy: { ...this.o.retry, maxAttempts: Infinity },
      random: this.o.random,
    });
    switch (step.kind) {
      case "done":
        return {};
      case "prune":
        // The upstream prunes its own devices; a relay answer never names one.
        return this.dead({ ...d, attempts }, now, "refused", "unexpected answer");
      case "retry": {
        this.o.metrics.deliveries.inc({ transport: UPSTREAM, outcome: "retried" });
        const { lease: _lease, ...rest } = d;
        return {
          retry: {
            ...rest,
            id: newId(now),
            dueAt: step.dueAt,
            attempts,
            lastError: step.lastError,
          },
        };
      }
      case "dead":
        if (step.why === "refused") {
          this.o.metrics.deliveries.inc({ transport: UPSTREAM, outcome: "failed" });
        }
        return this.dead({ ...d, attempts }, now, step.why, step.lastError);
    }
  }

  /** The dead letter of `d`, counted and logged: never dropped silently (CC/CD 70025 §5.4). */
  private dead(
    d: QueuedDelivery,
    now: number,
    why: DeadLetter["why"],
    lastError: string,
  ): FollowUp {
    this.o.metrics.deliveries.inc({ transport: UPSTREAM, outcome: "dead_lettered" });
    this.o.logger.log("warn", "delivery.dead_lettered", {
      transport: UPSTREAM,
      attempts: d.attempts,
      why,
    });
    const { lease: _lease, ...rest } = d;
    return {
      dead: { ...rest, id: newId(now), dueAt: now, ttl: 0, deadAt: now, why, lastError },
    };
  }

  private log(outcome: DeliveryOutcome, d: QueuedDelivery): void {
    const status = "status" in outcome ? outcome.status : undefined;
    this.o.logger.log(outcome.kind === "delivered" ? "debug" : "warn", "delivery", {
      transport: UPSTREAM,
      outcome: outcome.kind,
      ...(status !== undefined ? { status } : {}),
      ...(outcome.kind !== "delivered" ? { reason: outcome.reason } : {}),
      attempt: d.attempts + 1,
    });
  }
}
