/**
 * Delivery: fan-out of pushed messages to their subscribers, single deliveries (acks,
 * retries, trailing coalesced updates), pruning of gone clients, retries with backoff and
 * dead letters, a circuit breaker per push service, and the expiry sweep.
 *
 * Durability (CC/CD 70025 §5.4: the application server treats every unlisted topic as
 * delivered, so nothing accepted may be lost): a push is recorded in the KV outbox before it
 * is answered; fan-out advances a cursor page by page in atomics guarded by a lease, so a
 * crashed process's work is taken over when its lease runs out and only the page in flight
 * can be delivered twice. Background ticks (a timer locally, `Deno.cron` on Deploy) only pick
 * up what a crash, a retry or a restart left; new work starts at once.
 *
 * @module
 */

import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { Sealer } from "./seal.ts";
import type {
  Entry,
  Lease,
  OutboxMessage,
  QueuedDelivery,
  Registration,
  Store,
  StoredPayload,
} from "./store.ts";
import { targetHash } from "./targets.ts";
import type { Clock } from "./time.ts";
import { formatRfc3339, parseRfc3339 } from "./time.ts";
import { randomToken } from "./encoding.ts";
import {
  type DeliveryOutcome,
  type OutboundMessage,
  type Transport,
  type TransportId,
  urgencyFor,
} from "./transports/types.ts";

export interface RetryPolicy {
  /** First backoff; doubles per attempt. @default 1000 */
  baseMs: number;
  /** Backoff ceiling. @default 300000 */
  maxMs: number;
  /** Attempts (first send included) before a delivery is dead-lettered. @default 8 */
  maxAttempts: number;
}

export interface BreakerPolicy {
  /** Consecutive retryable failures of one push service that open its breaker. @default 20 */
  threshold: number;
  /** How long an open breaker short-circuits sends. @default 30000 */
  cooldownMs: number;
}

export interface DeliveryEngineOptions {
  store: Store;
  transports: Partial<Record<TransportId, Transport>>;
  sealer: Sealer;
  now: Clock;
  logger: Logger;
  metrics: Metrics;
  /** Seconds a push service keeps an undelivered message (`RELAY_TTL`). */
  ttl: number;
  /** Coalescing window per (client, topic); 0 delivers every message (`RELAY_COALESCE_MS`). */
  coalesceMs: number;
  /** Subscriptions per fan-out page. @default 500 */
  pageSize?: number;
  /** Lease on claimed work; a dead process's work is taken over after it. @default 30000 */
  leaseMs?: number;
  retry?: Partial<RetryPolicy>;
  breaker?: Partial<BreakerPolicy>;
  /** Random number in [0, 1) for jitter. @default Math.random */
  random?: () => number;
  /** Identifies this process in leases. @default a random token */
  owner?: string;
}

/** One validated push message (CC/CD 70025 §6.1.3). */
export interface PushMessage {
  topic: string;
  priority: number;
  /** RFC 3339 UTC. */
  timestamp: string;
  clientId?: string;
}

/** The device payload of an update (CONTRACT §1.3). */
export function updatePayload(
  m: { topic: string; timestamp: string; priority: number },
): Record<string, unknown> {
  return { type: "update", topic: m.topic, timestamp: m.timestamp, priority: m.priority };
}

/**
 * Compares a message's `client-id` with a subscriber's client id after percent-decoding both
 * (digest §6 item 13; RFC 3986 percent-encoding of `Push-Client-Id`, CC/CD 70025 §7.1).
 */
export function sameClient(subscriber: string, messageClientId: string | undefined): boolean {
  if (messageClientId === undefined) return false;
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return decode(subscriber) === decode(messageClientId);
}

interface Window {
  until: number;
  trailing: QueuedDelivery | null;
}

/** Time-ordered unique id: sortable by creation, unguessable suffix. */
export function newId(now: number): string {
  return `${now.toString(36).padStart(9, "0")}${randomToken(9)}`;
}

export class DeliveryEngine {
  readonly owner: string;
  private readonly store: Store;
  private readonly transports: Partial<Record<TransportId, Transport>>;
  private readonly sealer: Sealer;
  private readonly now: Clock;
  private readonly logger: Logger;
  private readonly metrics: Metrics;
  private readonly ttl: number;
  private readonly coalesceMs: number;
  private readonly pageSize: number;
  private readonly leaseMs: number;
  private readonly retryPolicy: RetryPolicy;
  private readonly breakerPolicy: BreakerPolicy;
  private readonly random: () => number;
  private readonly windows = new Map<string, Window>();
  private readonly breakers = new Map<string, { failures: number; openUntil: number }>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private readonly abort = new AbortController();
  private stopping = false;
  private ticking: Promise<void> | null = null;

  constructor(options: DeliveryEngineOptions) {
    this.store = options.store;
    this.transports = options.transports;
    this.sealer = options.sealer;
    this.now = options.now;
    this.logger = options.logger;
    this.metrics = options.metrics;
    this.ttl = options.ttl;
    this.coalesceMs = options.coalesceMs;
    this.pageSize = options.pageSize ?? 500;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.retryPolicy = { baseMs: 1000, maxMs: 300_000, maxAttempts: 8, ...options.retry };
    this.breakerPolicy = { threshold: 20, cooldownMs: 30_000, ...options.breaker };
    this.random = options.random ?? Math.random;
    this.owner = options.owner ?? randomToken(8);
  }

  /** Resolves when no fan-out, delivery or tick of this process is running. */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** True once shutdown began. */
  get isStopping(): boolean {
    return this.stopping;
  }

  private lease(): Lease {
    return { owner: this.owner, until: this.now() + this.leaseMs };
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    p.finally(() => this.inFlight.delete(p)).catch(() => {});
    return p;
  }

  /**
   * Records messages durably in the outbox (one atomic), then starts their fan-out at once
   * without waiting for it. Resolves when the record is durable.
   */
  async accept(app: string, messages: PushMessage[]): Promise<void> {
    const now = this.now();
    const lease = this.lease();
    const records: OutboxMessage[] = messages.map((m) => ({
      id: newId(now),
      app,
      topic: m.topic,
      timestamp: m.timestamp,
      priority: m.priority,
      ...(m.clientId !== undefined ? { clientId: m.clientId } : {}),
      createdAt: now,
      expiresAt: now + this.ttl * 1000,
      cursor: null,
      lease,
    }));
    await this.store.putOutbox(records);
    this.metrics.pushesReceived.inc({}, messages.length);
    for (const r of records) {
      this.track(this.runFanOut(r.id));
    }
  }

  /** Queues a single delivery to one client (an acknowledging push) and sends it at once. */
  async enqueueDirect(
    clientId: string,
    payload: StoredPayload,
    options: {
      reason: QueuedDelivery["reason"];
      priority: number;
      ttl?: number;
      collapseKey?: string;
    },
  ): Promise<void> {
    const now = this.now();
    const ttl = options.ttl ?? this.ttl;
    const d: QueuedDelivery = {
      id: newId(now),
      dueAt: now,
      clientId,
      reason: options.reason,
      payload,
      priority: options.priority,
      ttl,
      ...(options.collapseKey !== undefined ? { collapseKey: options.collapseKey } : {}),
      attempts: 0,
      createdAt: now,
      expiresAt: now + ttl * 1000,
      lease: this.lease(),
    };
    await this.store.enqueueDeliveries([d]);
    this.track(this.runQueued(d.dueAt, d.id));
  }

  private async runFanOut(id: string): Promise<void> {
    const entry = await this.store.getOutbox(id);
    if (!entry || entry.value.lease.owner !== this.owner) return;
    await this.fanOut(entry);
  }

  private async runQueued(dueAt: number, id: string): Promise<void> {
    const entry = await this.store.getDelivery(dueAt, id);
    if (!entry || entry.value.lease?.owner !== this.owner) return;
    await this.deliverQueued(entry);
  }

  /** Fans one outbox message out, page by page, while this process holds its lease. */
  private async fanOut(start: Entry<OutboxMessage>): Promise<void> {
    let entry = start;
    const m = entry.value;
    const collapseKey = await this.sealer.topicHash(m.app, m.topic);
    try {
      while (true) {
        const now = this.now();
        if (now >= m.expiresAt) {
          this.logger.log("warn", "fanout.expired", { message: m.id });
          await this.store.advanceOutbox(entry, {
            cursor: entry.value.cursor,
            lease: this.lease(),
            done: true,
          }, []);
          return;
        }
        if (this.stopping) {
          // Release the message so another process (or the next start) takes it over at once.
          await this.store.advanceOutbox(
            entry,
            { cursor: entry.value.cursor, lease: { owner: "", until: 0 }, done: false },
            [],
          );
          return;
        }
        const page = await this.store.listSubscribers(
          m.app,
          m.topic,
          entry.value.cursor,
          this.pageSize,
        );
        const queued = await this.deliverPage(m, collapseKey, page, now);
        const done = page.length < this.pageSize;
        const cursor = page.at(-1)?.clientId ?? entry.value.cursor;
        const next = await this.store.advanceOutbox(
          entry,
          { cursor, lease: this.lease(), done },
          queued,
        );
        if (!next) {
          this.logger.log("warn", "fanout.lease_lost", { message: m.id });
          return;
        }
        if (done) return;
        entry = next;
      }
    } catch (err) {
      // The lease runs out and the tick takes the message over: nothing is lost.
      this.logger.log("error", "fanout.error", { message: m.id, error: String(err) });
    }
  }

  private async deliverPage(
    m: OutboxMessage,
    collapseKey: string,
    page: { clientId: string; value: { exp: number } }[],
    now: number,
  ): Promise<QueuedDelivery[]> {
    // CC/CD 70025 §6.2.2.1: a subscription is void after its expiry; §7.1: skip the
    // originating client.
    const active = page.filter((s) => s.value.exp > now && !sameClient(s.clientId, m.clientId));
    if (active.length === 0) return [];
    const regs = await this.store.getRegistrations(active.map((s) => s.clientId));
    const queued: QueuedDelivery[] = [];
    const fields = { timestamp: m.timestamp, priority: m.priority };
    await Promise.all(active.map(async (s) => {
      const reg = regs.get(s.clientId);
      if (!reg) {
        // Subscriptions whose registration is gone (a race with pruning): clean them up.
        await this.store.removeClient(s.clientId, null);
        return;
      }
      const merge = this.coalesce(m.app, m.topic, s.clientId, fields, collapseKey, now);
      if (merge) {
        queued.push(merge);
        return;
      }
      const payload: StoredPayload = { kind: "json", data: updatePayload(m) };
      const outcome = await this.send(reg, {
        payload,
        ttl: Math.max(0, Math.floor((m.expiresAt - now) / 1000)),
        urgency: urgencyFor(m.priority),
        priority: m.priority,
        collapseKey,
      }, m.createdAt);
      const follow = await this.handleOutcome(reg, outcome, {
        payload,
        priority: m.priority,
        collapseKey,
        createdAt: m.createdAt,
        expiresAt: m.expiresAt,
        attempts: 1,
        reason: "retry",
      });
      if (follow.retry) queued.push(follow.retry);
      if (follow.dead) await this.store.finishDeliveryDead(follow.dead);
    }));
    return queued;
  }

  /**
   * CONTRACT §1.3 coalescing (CC/CD 70025 §8.3 MAY): the first update for (client, topic)
   * goes out at once and opens a window; updates inside it merge into one trailing delivery
   * with the latest timestamp and the highest priority. Returns the trailing delivery to store
   * (new or merged), or null to send now.
   */
  private coalesce(
    app: string,
    topic: string,
    clientId: string,
    fields: { timestamp: string; priority: number },
    collapseKey: string,
    now: number,
  ): QueuedDelivery | null {
    if (this.coalesceMs <= 0) return null;
    const key = `${app}\u0000${topic}\u0000${clientId}`;
    const w = this.windows.get(key);
    if (!w || w.until <= now) {
      this.windows.set(key, { until: now + this.coalesceMs, trailing: null });
      return null;
    }
    this.metrics.deliveries.inc({ transport: "any", outcome: "coalesced" });
    if (w.trailing) {
      const data = (w.trailing.payload as { kind: "json"; data: Record<string, unknown> }).data;
      const later =
        (parseRfc3339(fields.timestamp) ?? 0) > (parseRfc3339(String(data.timestamp)) ?? 0);
      const priority = Math.max(Number(data.priority), fields.priority);
      const merged: QueuedDelivery = {
        ...w.trailing,
        payload: {
          kind: "json",
          data: { ...data, timestamp: later ? fields.timestamp : data.timestamp, priority },
        },
        priority,
      };
      delete merged.lease;
      w.trailing = merged;
      return merged;
    }
    const trailing: QueuedDelivery = {
      id: newId(now),
      dueAt: w.until,
      clientId,
      reason: "trailing",
      payload: { kind: "json", data: updatePayload({ topic, ...fields }) },
      priority: fields.priority,
      ttl: this.ttl,
      collapseKey,
      attempts: 0,
      createdAt: now,
      expiresAt: now + this.ttl * 1000,
      coalesceKey: key,
    };
    w.trailing = trailing;
    this.scheduleAt(w.until);
    return trailing;
  }

  private breakerKey(reg: Registration): string {
    if (reg.target.transport === "web-push") {
      try {
        return `web-push ${new URL(reg.target.endpoint).origin}`;
      } catch {
        return "web-push";
      }
    }
    return reg.target.transport;
  }

  /** One attempt through the registration's transport, with the per-service breaker. */
  private async send(
    reg: Registration,
    message: OutboundMessage,
    acceptedAt: number,
  ): Promise<DeliveryOutcome> {
    const transport = this.transports[reg.target.transport];
    const tid = reg.target.transport;
    if (!transport) {
      return { kind: "failed", reason: `transport ${tid} is not configured` };
    }
    const bkey = this.breakerKey(reg);
    const breaker = this.breakers.get(bkey);
    const now = this.now();
    let outcome: DeliveryOutcome;
    if (breaker && breaker.openUntil > now) {
      outcome = { kind: "retry", reason: "circuit open", retryAfterMs: breaker.openUntil - now };
    } else {
      try {
        outcome = await transport.send(reg.target, message, this.abort.signal);
      } catch (err) {
        outcome = { kind: "retry", reason: `transport error: ${(err as Error).name}` };
      }
      if (outcome.kind === "retry") {
        const b = breaker ?? { failures: 0, openUntil: 0 };
        b.failures++;
        if (b.failures >= this.breakerPolicy.threshold) {
          b.openUntil = this.now() + this.breakerPolicy.cooldownMs;
          this.logger.log("warn", "breaker.open", { service: tid, failures: b.failures });
        }
        this.breakers.set(bkey, b);
      } else if (breaker) {
        this.breakers.delete(bkey);
      }
    }
    const status = "status" in outcome ? outcome.status : undefined;
    this.logger.log(outcome.kind === "delivered" ? "info" : "warn", "delivery", {
      transport: tid,
      outcome: outcome.kind,
      ...(status !== undefined ? { status } : {}),
      ...(outcome.kind !== "delivered" ? { reason: outcome.reason } : {}),
      client: reg.clientId,
    });
    if (outcome.kind === "delivered") {
      this.metrics.deliveries.inc({ transport: tid, outcome: "delivered" });
      this.metrics.deliveryLatency.observe(Math.max(0, this.now() - acceptedAt) / 1000, {
        transport: tid,
      });
    }
    return outcome;
  }

  /** Prunes on `gone`, plans a retry or a dead letter on `retry`, counts the rest. */
  private async handleOutcome(
    reg: Registration,
    outcome: DeliveryOutcome,
    d: Omit<QueuedDelivery, "id" | "dueAt" | "clientId" | "ttl">,
  ): Promise<{ retry?: QueuedDelivery; dead?: QueuedDelivery & { deadAt: number; why: string } }> {
    const tid = reg.target.transport;
    if (outcome.kind === "gone") {
      // CONTRACT §1.3: the push service says the device is gone: remove every subscription
      // of the client and revoke its registration.
      this.metrics.deliveries.inc({ transport: tid, outcome: "pruned" });
      await this.store.removeClient(reg.clientId, await targetHash(reg.target));
      this.logger.log("info", "client.pruned", {
        client: reg.clientId,
        transport: tid,
        status: outcome.status,
      });
      return {};
    }
    if (outcome.kind === "failed") {
      this.metrics.deliveries.inc({ transport: tid, outcome: "failed" });
      return {};
    }
    if (outcome.kind !== "retry") return {};
    const now = this.now();
    const exp = Math.min(this.retryPolicy.maxMs, this.retryPolicy.baseMs * 2 ** (d.attempts - 1));
    // "Equal jitter": half fixed, half random, so retries of one fan-out spread out.
    const backoff = exp / 2 + this.random() * (exp / 2);
    const delay = Math.max(backoff, outcome.retryAfterMs ?? 0);
    const base = { ...d, clientId: reg.clientId, lastError: outcome.reason };
    delete (base as Partial<QueuedDelivery>).lease;
    if (d.attempts >= this.retryPolicy.maxAttempts || now + delay >= d.expiresAt) {
      this.metrics.deliveries.inc({ transport: tid, outcome: "dead_lettered" });
      this.logger.log("warn", "delivery.dead_lettered", {
        client: reg.clientId,
        transport: tid,
        attempts: d.attempts,
      });
      return {
        dead: {
          ...base,
          id: newId(now),
          dueAt: now,
          ttl: 0,
          deadAt: now,
          why: d.attempts >= this.retryPolicy.maxAttempts ? "too many attempts" : "expired",
        },
      };
    }
    this.metrics.deliveries.inc({ transport: tid, outcome: "retried" });
    const dueAt = Math.ceil(now + delay);
    this.scheduleAt(dueAt);
    return {
      retry: {
        ...base,
        id: newId(now),
        dueAt,
        ttl: this.ttl,
        reason: d.reason === "ack" || d.reason === "trailing" ? d.reason : d.reason,
      },
    };
  }

  /** Sends one claimed queued delivery and records its end in one guarded atomic. */
  private async deliverQueued(entry: Entry<QueuedDelivery>): Promise<void> {
    const d = entry.value;
    const now = this.now();
    if (d.coalesceKey) {
      const w = this.windows.get(d.coalesceKey);
      if (w?.trailing?.id === d.id) w.trailing = null;
    }
    const reg = await this.store.getRegistration(d.clientId);
    if (!reg || now >= d.expiresAt) {
      // The client was pruned or deleted, or the message outlived its TTL: nothing to send.
      if (reg) {
        this.metrics.deliveries.inc({ transport: reg.target.transport, outcome: "dead_lettered" });
        await this.store.finishDelivery(entry, { dead: { ...d, deadAt: now, why: "expired" } });
      } else {
        await this.store.finishDelivery(entry, {});
      }
      return;
    }
    const outcome = await this.send(reg, {
      payload: d.payload,
      ttl: Math.max(0, Math.floor((d.expiresAt - now) / 1000)),
      urgency: urgencyFor(d.priority),
      priority: d.priority,
      ...(d.collapseKey !== undefined ? { collapseKey: d.collapseKey } : {}),
    }, d.createdAt);
    const follow = await this.handleOutcome(reg, outcome, { ...d, attempts: d.attempts + 1 });
    const ok = await this.store.finishDelivery(entry, follow);
    if (!ok) {
      // Changed meanwhile (a coalescing merge rewrote it): it stays queued for the next tick.
      this.logger.log("info", "delivery.requeued", { client: d.clientId });
    }
  }

  private scheduleAt(at: number): void {
    if (this.stopping) return;
    const delay = Math.max(0, at - this.now()) + 5;
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.tick().catch((err) => this.logger.log("error", "tick.error", { error: String(err) }));
    }, delay);
    this.timers.add(t);
  }

  /**
   * One background pass: takes over outbox messages whose lease ran out, sends due queued
   * deliveries, and sweeps expired subscriptions. Concurrent calls share one pass.
   */
  tick(): Promise<void> {
    if (this.stopping) return Promise.resolve();
    if (!this.ticking) {
      this.ticking = this.track(this.tickOnce()).finally(() => {
        this.ticking = null;
      });
    }
    return this.ticking;
  }

  private async tickOnce(): Promise<void> {
    const now = this.now();
    for (const [k, w] of this.windows) if (w.until <= now && !w.trailing) this.windows.delete(k);

    const work: Promise<void>[] = [];
    for (const e of await this.store.listOutbox(200)) {
      if (e.value.lease.until > now) continue;
      const claimed = await this.store.claimOutbox(e, this.lease());
      if (claimed) work.push(this.fanOut(claimed));
    }
    for (const e of await this.store.listDueDeliveries(now, 500)) {
      if (e.value.lease && e.value.lease.until > now) continue;
      const claimed = await this.store.claimDelivery(e, this.lease());
      if (claimed) work.push(this.deliverQueued(claimed));
    }
    const swept = await this.store.sweepExpired(now, 1000);
    if (swept > 0) this.logger.log("info", "sweep", { removed: swept });
    await Promise.all(work);
  }

  /**
   * Stops taking work, lets claimed work finish or release its lease, and aborts outbound
   * requests still running after `timeoutMs` (their deliveries are queued for retry).
   */
  async shutdown(timeoutMs = 5000): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const all = Promise.allSettled([...this.inFlight]);
    const abortAt = setTimeout(() => this.abort.abort(), Math.max(0, timeoutMs - 1500));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([all, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(abortAt);
    clearTimeout(timer);
  }

  /** Formats a timestamp for payloads. */
  static timestamp(ms: number): string {
    return formatRfc3339(ms);
  }
}
