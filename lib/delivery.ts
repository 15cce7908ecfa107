/**
 * Delivery: fan-out of pushed messages to their subscribers, single deliveries (acks,
 * retries, ingress), coalescing, pruning of gone clients, retries with backoff and dead
 * letters, a circuit breaker per push service, and the expiry sweep.
 *
 * Durability (CC/CD 70025 §5.4: the application server treats every unlisted topic as
 * delivered, so nothing accepted may be lost):
 * - A push is answered only after its messages are in the KV outbox: one record per message
 *   (not per subscriber) holding a fan-out cursor and a lease.
 * - Fan-out walks the topic's subscribers in key order with a bounded number of sends in
 *   flight and commits the cursor (plus the retries and dead letters of the subscribers up to
 *   it) every `commitEvery` finished subscribers, in an atomic checked against the versionstamp
 *   of its own last write. A process that lost its lease fails that check and stops.
 * - A lease is valid while its owner's heartbeat (`["worker", owner]`, renewed every
 *   `leaseMs / 3`) is fresh, so a live process is never overtaken however slow its push
 *   services are, and a dead one's work is taken over `leaseMs` after its last beat. Takeover
 *   claims check the outbox record and the dead owner's heartbeat in one atomic, so two
 *   processes never work on one message at once. After a crash only what was in flight
 *   since the last cursor commit can go out twice.
 * - Background ticks (a timer locally, `Deno.cron` on Deploy) only pick up what a crash, a
 *   retry, a closed coalescing window or a restart left; new work starts at once.
 *
 * @module
 */

import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { Sealer } from "./seal.ts";
import type {
  Aggregate,
  CoalesceWindow,
  DeadLetter,
  Entry,
  Lease,
  OutboxMessage,
  QueuedDelivery,
  Registration,
  Store,
  StoredPayload,
  SubscriptionValue,
  WorkerBeat,
} from "./store.ts";
import { sizedBatches } from "./store.ts";
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
  /** Coalescing window per client and topic; 0 delivers every message (`RELAY_COALESCE_MS`). */
  coalesceMs: number;
  /** Subscriptions read per KV list call during fan-out. @default 500 */
  pageSize?: number;
  /** Sends in flight per fan-out. @default 64 */
  sendConcurrency?: number;
  /** Fan-out progress is committed every this many finished subscribers. @default 100 */
  commitEvery?: number;
  /**
   * A worker that has not renewed its heartbeat for this long counts as dead and its work is
   * taken over; the heartbeat is renewed every third of it (`RELAY_LEASE_MS`). @default 15000
   */
  leaseMs?: number;
  /** Subscriptions the expiry sweep removes per tick at most. @default 1000 */
  sweepLimit?: number;
  retry?: Partial<RetryPolicy>;
  breaker?: Partial<BreakerPolicy>;
  /** Random number in [0, 1) for jitter. @default Math.random */
  random?: () => number;
  /** Identifies this process in leases. @default a random token */
  owner?: string;
  /**
   * Web Push ingress (issue 7, RFC 8030 §5.4): true when a queued delivery was replaced by a
   * newer message with the same Topic; it is then dropped instead of sent.
   */
  superseded?: (d: QueuedDelivery) => Promise<boolean>;
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

function decodeClientId(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Compares a message's `client-id` with a subscriber's client id after percent-decoding both
 * (digest §6 item 13; RFC 3986 percent-encoding of `Push-Client-Id`, CC/CD 70025 §7.1).
 */
export function sameClient(subscriber: string, messageClientId: string | undefined): boolean {
  if (messageClientId === undefined) return false;
  return decodeClientId(subscriber) === decodeClientId(messageClientId);
}

/**
 * The RFC 8030 §5.2 `TTL` of one attempt: a first attempt carries the full value it was
 * given (`RELAY_TTL`, or the TTL an ingress message arrived with), so a push service keeps the
 * message as long as configured. A retry carries what is left of the message's lifetime in
 * whole seconds, rounded down, so a push service never keeps it past that lifetime.
 */
export function attemptTtl(
  d: { ttl: number; expiresAt: number; attempts: number },
  now: number,
): number {
  if (d.attempts === 0) return d.ttl;
  return Math.min(d.ttl, Math.max(0, Math.floor((d.expiresAt - now) / 1000)));
}

/** Time-ordered unique id: sortable by creation, unguessable suffix. */
export function newId(now: number): string {
  return `${now.toString(36).padStart(9, "0")}${randomToken(9)}`;
}

/** A new outbox record for message `m` of `app`, unstarted (no cursor), held by `lease`. */
function outboxRecord(
  app: string,
  m: PushMessage,
  now: number,
  ttlMs: number,
  lease: Lease,
): OutboxMessage {
  return {
    id: newId(now),
    app,
    topic: m.topic,
    timestamp: m.timestamp,
    priority: m.priority,
    ...(m.clientId !== undefined ? { clientId: m.clientId } : {}),
    createdAt: now,
    expiresAt: now + ttlMs,
    cursor: null,
    lease,
  };
}

/** Merges one update into an aggregate: the latest timestamp, the highest priority. */
function mergeAggregate(
  agg: Aggregate | undefined,
  m: { timestamp: string; priority: number },
): Aggregate {
  const ms = parseRfc3339(m.timestamp) ?? 0;
  if (!agg) return { timestamp: m.timestamp, ms, priority: m.priority };
  const later = ms > agg.ms;
  return {
    timestamp: later ? m.timestamp : agg.timestamp,
    ms: later ? ms : agg.ms,
    priority: Math.max(agg.priority, m.priority),
  };
}

/**
 * What one subscriber gets from a trailing update: the merge of every update it did not
 * originate itself (§7.1), or null when there is none.
 */
function trailingFor(
  t: NonNullable<OutboxMessage["trailing"]>,
  clientId: string,
): Aggregate | null {
  if (t.opener !== undefined && sameClient(clientId, t.opener)) return t.openerAgg ?? null;
  let agg: Aggregate | undefined;
  for (const [origin, a] of Object.entries(t.byOrigin)) {
    if (origin !== "" && sameClient(clientId, origin)) continue;
    agg = agg ? mergeAggregate(agg, a) : a;
  }
  return agg ?? null;
}

/**
 * Distinct origins one trailing update tracks; a message from one more is sent at once. With
 * client-ids of up to 256 characters this keeps a trailing record well under KV's 64 KiB.
 */
const MAX_ORIGINS = 16;
/** Topics per accept atomic with coalescing (≤ 2 checks each; KV allows 100). */
const TOPICS_PER_ATOMIC = 20;
/** Messages gathered into one group commit of pushes at most (one request is never split). */
const GROUP_COMMIT_MESSAGES = 1000;
/** Records per accept atomic (KV: 1000 mutations). */
const RECORDS_PER_ATOMIC = 400;
/** Estimated bytes per accept atomic (KV: 800 KiB). */
const BYTES_PER_ATOMIC = 500_000;
/** Estimated size of a trailing update and its window beyond their strings. */
const TRAILING_BYTES = MAX_ORIGINS * 1200 + 4096;
const encoder = new TextEncoder();
/** About the serialised size of a value in KV (its JSON in UTF-8, plus its key). */
function sizeOf(value: unknown): number {
  return encoder.encode(JSON.stringify(value)).length + 128;
}

/** Rough serialised size of an outbox record for `m` (UTF-8 strings plus the fixed fields). */
function recordBytes(m: { topic: string; clientId?: string }): number {
  return 300 + encoder.encode(m.topic).length * 2 +
    (m.clientId === undefined ? 0 : encoder.encode(m.clientId).length * 2);
}

/** Subscribers whose results go into one cursor commit at most (≤ 1 write each). */
const MAX_COMMIT = 250;
/** Upper bound on one claim without progress, even for a live worker. */
const HOLD_MS = 600_000;
/** A fan-out also commits its progress when this long passed since the last commit. */
const COMMIT_INTERVAL_MS = 250;
/** Outbox messages one scan claims at most (each fans out with its own sends in flight). */
const MAX_CLAIMS_PER_SCAN = 64;
/** Due queued deliveries one scan reads at most. */
const DUE_PER_SCAN = 500;
const FREE: Lease = { owner: "", until: 0 };

interface TopicPlan {
  /** New outbox messages to fan out at once (leased to this process). */
  immediate: OutboxMessage[];
  /** The window's trailing update, new or merged into, if anything was merged. */
  trailing: { value: OutboxMessage; versionstamp?: string | null } | null;
  window: CoalesceWindow;
  merged: number;
}

/**
 * CONTRACT §1.3 coalescing (CC/CD 70025 §8.3 MAY), per topic: the first update of a topic
 * goes out at once and opens a window of `coalesceMs`; updates inside it are merged into one
 * trailing update per window, fanned out when the window closes, which gives each subscriber
 * the latest timestamp and the highest priority of the merged updates it did not originate
 * itself. A window's opener (the client whose change opened it, so it got nothing) gets the
 * next update of someone else at once. Different topics are never merged, and every
 * subscriber's payload is computed on its own, so nothing is merged across clients.
 */
function planTopic(
  input: {
    app: string;
    topic: string;
    messages: PushMessage[];
    window: CoalesceWindow | null;
    trailing: Entry<OutboxMessage> | null;
  },
  ctx: { now: number; coalesceMs: number; ttlMs: number; lease: Lease },
): TopicPlan {
  const { now } = ctx;
  const immediate: OutboxMessage[] = [];
  const record = (m: PushMessage) => outboxRecord(input.app, m, now, ctx.ttlMs, ctx.lease);
  let w: CoalesceWindow | null = input.window && input.window.until > now
    ? { ...input.window }
    : null;
  let trailing: TopicPlan["trailing"] = null;
  if (w?.trailing) {
    const t = input.trailing;
    if (t && t.value.id === w.trailing && t.value.lease.owner === "" && t.value.cursor === null) {
      trailing = {
        value: structuredClone(t.value),
        versionstamp: t.versionstamp,
      };
    } else {
      w = null; // its trailing update already went out (or is going out): a new window
    }
  }
  let merged = 0;
  for (const m of input.messages) {
    if (!w) {
      immediate.push(record(m));
      w = {
        openedAt: now,
        until: now + ctx.coalesceMs,
        ...(m.clientId !== undefined ? { opener: m.clientId } : {}),
        openerServed: m.clientId === undefined,
        trailing: null,
      };
      trailing = null;
      continue;
    }
    const origin = m.clientId ?? "";
    if (trailing && !(origin in trailing.value.trailing!.byOrigin)) {
      if (Object.keys(trailing.value.trailing!.byOrigin).length >= MAX_ORIGINS) {
        immediate.push(record(m));
        continue;
      }
    }
    let servedOpenerNow = false;
    if (w.opener !== undefined && !w.openerServed && !sameClient(w.opener, m.clientId)) {
      // The opener has had no update in this window: this one is its first, so it goes out
      // to the opener at once (and is merged for everyone else).
      immediate.push({ ...record(m), only: w.opener });
      w.openerServed = true;
      servedOpenerNow = true;
    }
    if (!trailing) {
      const id = newId(now);
      trailing = {
        value: {
          ...record(m),
          id,
          lease: FREE,
          notBefore: w.until,
          trailing: {
            byOrigin: {},
            ...(w.opener !== undefined ? { opener: w.opener } : {}),
          },
        },
      };
      delete trailing.value.clientId;
      w.trailing = id;
    }
    const t = trailing.value.trailing!;
    t.byOrigin[origin] = mergeAggregate(t.byOrigin[origin], m);
    if (
      w.opener !== undefined && w.openerServed && !servedOpenerNow &&
      !sameClient(w.opener, m.clientId)
    ) {
      t.openerAgg = mergeAggregate(t.openerAgg, m);
    }
    const all = Object.values(t.byOrigin).reduce(
      (a, b) => mergeAggregate(a, b),
      undefined as Aggregate | undefined,
    )!;
    trailing.value.timestamp = all.timestamp;
    trailing.value.priority = all.priority;
    merged++;
  }
  return { immediate, trailing, window: w!, merged };
}

/** Outbox records and coalescing windows as `Store.recordOutbox` writes them. */
type OutboxWrite = Parameters<Store["recordOutbox"]>[0]["outbox"];
type WindowWrite = NonNullable<Parameters<Store["recordOutbox"]>[0]["windows"]>;

interface FanOutItem {
  clientId: string;
  state: "pending" | "done";
  retry: QueuedDelivery | null;
  dead: DeadLetter | null;
}

/** A counting semaphore for the sends of one fan-out. */
class Semaphore {
  private free: number;
  private readonly waiters: (() => void)[] = [];
  constructor(n: number) {
    this.free = Math.max(1, n);
  }
  acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
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
  private readonly sendConcurrency: number;
  private readonly commitEvery: number;
  private readonly leaseMs: number;
  private readonly holdMs: number;
  private readonly sweepLimit: number;
  private readonly retryPolicy: RetryPolicy;
  private readonly breakerPolicy: BreakerPolicy;
  private readonly random: () => number;
  private readonly superseded: DeliveryEngineOptions["superseded"];
  private readonly breakers = new Map<string, { failures: number; openUntil: number }>();
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Work this process holds: `o:<outbox id>` and `q:<dq key>`. */
  private readonly active = new Set<string>();
  /** Pushes waiting for the next group commit (see `drainAccepts`). */
  private readonly accepting: {
    app: string;
    messages: PushMessage[];
    resolve: () => void;
    reject: (err: unknown) => void;
  }[] = [];
  private draining = false;
  private readonly abort = new AbortController();
  private stopping = false;
  private scanning: Promise<{ work: Promise<void>[]; more: boolean }> | null = null;
  private wakeTimer: ReturnType<typeof setTimeout> | undefined;
  private wakeAt = Infinity;
  private beatTimer: ReturnType<typeof setInterval> | undefined;
  /** Until when this process's last written heartbeat keeps its leases valid. */
  private beatUntil = 0;

  constructor(options: DeliveryEngineOptions) {
    this.store = options.store;
    this.transports = options.transports;
    this.sealer = options.sealer;
    this.now = options.now;
    this.logger = options.logger;
    this.metrics = options.metrics;
    this.ttl = options.ttl;
    this.coalesceMs = options.coalesceMs;
    this.pageSize = Math.min(1000, Math.max(1, options.pageSize ?? 500));
    this.sendConcurrency = Math.max(1, options.sendConcurrency ?? 64);
    this.commitEvery = Math.min(MAX_COMMIT, Math.max(1, options.commitEvery ?? 100));
    this.leaseMs = Math.max(300, options.leaseMs ?? 15_000);
    this.holdMs = Math.max(this.leaseMs, HOLD_MS);
    this.sweepLimit = options.sweepLimit ?? 1000;
    this.retryPolicy = { baseMs: 1000, maxMs: 300_000, maxAttempts: 8, ...options.retry };
    this.breakerPolicy = { threshold: 20, cooldownMs: 30_000, ...options.breaker };
    this.random = options.random ?? Math.random;
    this.owner = options.owner ?? randomToken(8);
    this.superseded = options.superseded;
  }

  /** Resolves when no fan-out, delivery or tick of this process is running. */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** True once shutdown began. */
  get isStopping(): boolean {
    return this.stopping;
  }

  /** A lease held by this process. */
  private claim(): Lease {
    return { owner: this.owner, until: this.now() + this.holdMs };
  }

  /** The lease for new work: this process's, or none once it is shutting down. */
  private newLease(): Lease {
    return this.stopping ? FREE : this.claim();
  }

  private heartbeat(): { owner: string; value: WorkerBeat } {
    return { owner: this.owner, value: { until: this.now() + this.leaseMs } };
  }

  /** Notes a heartbeat that was written. */
  private beaten(b: { value: WorkerBeat }): void {
    this.beatUntil = Math.max(this.beatUntil, b.value.until);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    p.finally(() => this.inFlight.delete(p)).catch(() => {});
    return p;
  }

  /** Marks work as held by this process and keeps the heartbeat going while any is held. */
  private hold(key: string): void {
    this.active.add(key);
    if (this.beatTimer === undefined && !this.stopping) {
      this.beatTimer = setInterval(() => {
        if (this.active.size === 0) {
          clearInterval(this.beatTimer);
          this.beatTimer = undefined;
          return;
        }
        const b = this.heartbeat();
        this.store.beat(b.owner, b.value).then(
          () => this.beaten(b),
          (err) => this.logger.log("error", "heartbeat.error", { error: describeError(err) }),
        );
      }, Math.max(100, Math.floor(this.leaseMs / 3)));
    }
  }

  private unhold(key: string): void {
    this.active.delete(key);
  }

  /**
   * Records messages durably in the outbox, then starts their fan-out at once without waiting
   * for it. Resolves when the record is durable; throws (and the push fails) otherwise.
   */
  accept(app: string, messages: PushMessage[]): Promise<void> {
    if (messages.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.accepting.push({ app, messages, resolve, reject });
      if (!this.draining) void this.drainAccepts();
    });
  }

  /**
   * Group commit (issue 5): pushes that arrive while a record is being written are recorded
   * together in the next atomic(s), one KV commit (and one fsync) for many requests instead
   * of one each, and same-topic pushes no longer race each other's coalescing window checks.
   * Each request still resolves only once its own messages are durable, and fails with the
   * commit that carried them. Merging requests is what one request with several messages
   * already does: the coalescing plan treats the messages of a topic in arrival order.
   */
  private async drainAccepts(): Promise<void> {
    this.draining = true;
    try {
      while (this.accepting.length > 0) {
        let n = 0;
        let take = 0;
        while (take < this.accepting.length && (take === 0 || n < GROUP_COMMIT_MESSAGES)) {
          n += this.accepting[take]!.messages.length;
          take++;
        }
        const batch = this.accepting.splice(0, take);
        const byApp = new Map<string, typeof batch>();
        for (const req of batch) {
          const list = byApp.get(req.app);
          if (list) list.push(req);
          else byApp.set(req.app, [req]);
        }
        await Promise.all([...byApp].map(async ([app, reqs]) => {
          try {
            await this.acceptNow(app, reqs.flatMap((r) => r.messages));
            for (const r of reqs) r.resolve();
          } catch (err) {
            for (const r of reqs) r.reject(err);
          }
        }));
      }
    } finally {
      this.draining = false;
    }
  }

  private async acceptNow(app: string, messages: PushMessage[]): Promise<void> {
    if (this.coalesceMs <= 0) {
      await this.acceptPlain(app, messages);
    } else {
      const byTopic = new Map<string, PushMessage[]>();
      for (const m of messages) {
        const list = byTopic.get(m.topic);
        if (list) list.push(m);
        else byTopic.set(m.topic, [m]);
      }
      const size = (t: string) =>
        TRAILING_BYTES + byTopic.get(t)!.reduce((n, m) => n + recordBytes(m), 0);
      for (
        const chunk of sizedBatches([...byTopic.keys()], size, BYTES_PER_ATOMIC, TOPICS_PER_ATOMIC)
      ) {
        await this.acceptCoalesced(app, chunk, byTopic);
      }
    }
    this.metrics.pushesReceived.inc({}, messages.length);
  }

  /** Records messages without coalescing (`commitRecords` splits them into atomics). */
  private async acceptPlain(app: string, messages: PushMessage[]): Promise<void> {
    const now = this.now();
    const lease = this.newLease();
    const records = messages.map((m) => outboxRecord(app, m, now, this.ttl * 1000, lease));
    await this.commitRecords(records, []);
  }

  /**
   * Writes new outbox records (and window changes) and starts the leased ones. The windows,
   * the trailing updates and the first records go in one checked atomic; records that do not
   * fit (a request with very many messages for one topic) follow in further atomics, which need
   * no check (fresh ids). Returns false, having written nothing, when a check failed.
   */
  private async commitRecords(
    records: OutboxMessage[],
    extra: OutboxWrite,
    windows: WindowWrite = [],
  ): Promise<boolean> {
    let budget = BYTES_PER_ATOMIC - extra.reduce((n, o) => n + sizeOf(o.value), 0) -
      windows.reduce((n, w) => n + sizeOf(w), 0);
    let slots = RECORDS_PER_ATOMIC - extra.length - windows.length;
    let i = 0;
    for (; i < records.length && slots > 0; i++, slots--) {
      const n = sizeOf(records[i]);
      if (n > budget) break;
      budget -= n;
    }
    if (!(await this.commitRun(records.slice(0, i), extra, windows))) return false;
    for (
      const run of sizedBatches(records.slice(i), sizeOf, BYTES_PER_ATOMIC, RECORDS_PER_ATOMIC)
    ) {
      await this.commitRun(run, [], []);
    }
    return true;
  }

  private async commitRun(
    records: OutboxMessage[],
    extra: OutboxWrite,
    windows: WindowWrite,
  ): Promise<boolean> {
    const mine = records.filter((r) => r.lease.owner === this.owner);
    for (const r of mine) this.hold(`o:${r.id}`);
    let versionstamp: string | null;
    const beat = this.heartbeat();
    try {
      versionstamp = await this.store.recordOutbox({
        outbox: [...records.map((value) => ({ value })), ...extra],
        windows,
        ...(mine.length > 0 ? { beat } : {}),
      });
    } catch (err) {
      for (const r of mine) this.unhold(`o:${r.id}`);
      throw err;
    }
    if (versionstamp === null) {
      for (const r of mine) this.unhold(`o:${r.id}`);
      return false;
    }
    if (mine.length > 0) this.beaten(beat);
    for (const r of mine) {
      this.fanOut({ key: ["outbox", r.id], value: r, versionstamp });
    }
    return true;
  }

  private async acceptCoalesced(
    app: string,
    topics: string[],
    byTopic: Map<string, PushMessage[]>,
  ): Promise<void> {
    for (let attempt = 0;; attempt++) {
      if (attempt >= 8) {
        // Hot contention on these windows: deliver every message rather than fail the push.
        await this.acceptPlain(app, topics.flatMap((t) => byTopic.get(t)!));
        return;
      }
      const now = this.now();
      const lease = this.newLease();
      const windows = await this.store.getWindows(app, topics);
      const trailingIds = [...windows.values()].flatMap((w) =>
        w.value?.trailing && w.value.until > now ? [w.value.trailing] : []
      );
      const trailing = await this.store.getOutboxMany(trailingIds);
      const records: OutboxMessage[] = [];
      const extra: OutboxWrite = [];
      const windowWrites: WindowWrite = [];
      let merged = 0;
      let wakeAt = Infinity;
      for (const topic of topics) {
        const w = windows.get(topic)!;
        const plan = planTopic({
          app,
          topic,
          messages: byTopic.get(topic)!,
          window: w.value,
          trailing: w.value?.trailing ? trailing.get(w.value.trailing) ?? null : null,
        }, { now, coalesceMs: this.coalesceMs, ttlMs: this.ttl * 1000, lease });
        records.push(...plan.immediate);
        if (plan.trailing) {
          extra.push(plan.trailing);
          wakeAt = Math.min(wakeAt, plan.trailing.value.notBefore ?? now);
        }
        windowWrites.push({ app, topic, value: plan.window, versionstamp: w.versionstamp });
        merged += plan.merged;
      }
      if (await this.commitRecords(records, extra, windowWrites)) {
        if (merged > 0) {
          this.metrics.deliveries.inc({ transport: "any", outcome: "coalesced" }, merged);
        }
        if (wakeAt < Infinity) this.scheduleAt(wakeAt);
        return;
      }
      // Another push changed one of these windows meanwhile: read them again.
      await new Promise((r) => setTimeout(r, Math.floor(this.random() * 5 * (attempt + 1))));
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
    // RFC 8030 §5.2: TTL 0 means "now or never"; one second of lifetime lets the first attempt
    // run, and that attempt still carries TTL 0.
    const lifetimeMs = Math.max(1, ttl) * 1000;
    const lease = this.newLease();
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
      expiresAt: now + lifetimeMs,
      ...(lease.owner !== "" ? { lease } : {}),
    };
    const key = `q:${d.dueAt}:${d.id}`;
    if (lease.owner !== "") this.hold(key);
    let entry: Entry<QueuedDelivery>;
    const beat = this.heartbeat();
    try {
      entry = await this.store.putDelivery(d, lease.owner !== "" ? beat : undefined);
    } catch (err) {
      this.unhold(key);
      throw err;
    }
    if (lease.owner !== "") this.beaten(beat);
    if (lease.owner !== "") this.runQueued(entry);
  }

  /** Holds `key` while `work` runs, logs its failure as `event`, and tracks it for `idle()`. */
  private holdWhile(
    key: string,
    work: () => Promise<void>,
    event: string,
    fields: Record<string, unknown> = {},
  ): Promise<void> {
    this.hold(key);
    return this.track(
      work().catch((err) => {
        this.logger.log("error", event, { ...fields, error: describeError(err) });
      }).finally(() => this.unhold(key)),
    );
  }

  private fanOut(entry: Entry<OutboxMessage>): Promise<void> {
    return this.holdWhile(`o:${entry.value.id}`, () => this.fanOutInner(entry), "fanout.error", {
      message: entry.value.id,
    });
  }

  private runQueued(entry: Entry<QueuedDelivery>): Promise<void> {
    const key = `q:${entry.value.dueAt}:${entry.value.id}`;
    return this.holdWhile(key, () => this.deliverQueued(entry), "delivery.error");
  }

  /**
   * Fans one outbox message out. Sends run `sendConcurrency` at a time; progress is committed
   * in order (the cursor only passes subscribers whose send finished) with their retries and
   * dead letters. Ends by deleting the message, or by releasing it when shutting down.
   */
  private async fanOutInner(start: Entry<OutboxMessage>): Promise<void> {
    let entry = start;
    const m = entry.value;
    const collapseKey = await this.sealer.topicHash(m.app, m.topic);
    // Every subscriber of a plain message gets the same payload: one object, so a transport
    // serialises it once per message (issue 5), not once per subscriber.
    const shared: StoredPayload | null = m.trailing ? null : {
      kind: "json",
      data: updatePayload({ topic: m.topic, timestamp: m.timestamp, priority: m.priority }),
    };
    const pending: FanOutItem[] = [];
    const sem = new Semaphore(this.sendConcurrency);
    const running = new Set<Promise<void>>();
    let lost = false;
    let broken = false;
    let listed = false;
    let expired = false;
    let chain: Promise<void> = Promise.resolve();
    let lastCommit = performance.now();

    /**
     * Commits finished subscribers at the head of `pending`, renewing the heartbeat in the same
     * atomic; `force` ignores the cadence, `touch` commits even without progress (to prove the
     * lease is still ours).
     */
    const flush = (force: boolean, done = false, touch = false): Promise<void> => {
      chain = chain.then(async () => {
        while (!lost) {
          let n = 0;
          while (n < pending.length && n < MAX_COMMIT && pending[n]!.state === "done") n++;
          const last = done && n === pending.length;
          if (n === 0 && !last && !touch) return;
          touch = false;
          if (
            !force && n < this.commitEvery && performance.now() - lastCommit < COMMIT_INTERVAL_MS
          ) {
            return;
          }
          const batch = pending.slice(0, n);
          const beat = this.heartbeat();
          const next = await this.store.advanceOutbox(
            entry,
            {
              cursor: batch.at(-1)?.clientId ?? entry.value.cursor,
              lease: this.claim(),
              done: last,
            },
            batch.flatMap((i) => i.retry ? [i.retry] : []),
            batch.flatMap((i) => i.dead ? [i.dead] : []),
            beat,
          );
          if (!next) {
            lost = true;
            this.logger.log("warn", "fanout.lease_lost", { message: m.id });
            return;
          }
          this.beaten(beat);
          entry = next;
          pending.splice(0, n);
          lastCommit = performance.now();
          if (last || !force) return;
        }
      }).catch((err) => {
        broken = true;
        this.logger.log("error", "fanout.commit_error", {
          message: m.id,
          error: describeError(err),
        });
      });
      return chain;
    };

    type Page = {
      page: { clientId: string; value: SubscriptionValue }[];
      regs: Map<string, Registration>;
      /** Whether there may be more after this page. */
      more: boolean;
    };
    const readPage = async (after: string | null, limit: number): Promise<Page> => {
      let page: Page["page"];
      if (m.only !== undefined) {
        const one = after === null
          ? await this.store.getSubscriber(m.app, m.topic, decodeClientId(m.only))
          : null;
        page = one ? [one] : [];
      } else {
        page = await this.store.listSubscribers(m.app, m.topic, after, limit);
      }
      // One getMany per 10 subscribers instead of one get each (issue 5: batch KV reads).
      const regs = page.length > 0
        ? await this.store.getRegistrations(page.map((s) => s.clientId))
        : new Map<string, Registration>();
      return { page, regs, more: m.only === undefined && page.length >= limit };
    };
    // Issue 5: the next page is read while this one is sent, so the sends in flight never
    // drain while KV is read (a stall of tens of milliseconds per page before). The first
    // page only fills the sends in flight, so they start after one small read rather than a
    // whole page's (first delivery after ~10-20 ms instead of ~30 ms at N = 1,000).
    let next: Promise<Page> | null = readPage(
      entry.value.cursor,
      Math.min(this.pageSize, this.sendConcurrency),
    );
    pull: while (next) {
      if (this.stopping || lost || broken) break;
      if (this.now() >= m.expiresAt) {
        expired = true;
        break;
      }
      const { page, regs, more }: Page = await next;
      // Pages grow to pageSize: reading a whole page after the first would stall the sends.
      next = more
        ? readPage(page.at(-1)!.clientId, Math.min(this.pageSize, 2 * page.length))
        : null;
      // Not awaited when the loop ends early; its failure then concerns nobody.
      next?.catch(() => {});
      for (const s of page) {
        await sem.acquire();
        if (!this.stopping && !lost && !broken && this.now() >= this.beatUntil) {
          // Our heartbeat has run out (a stall, or storage trouble): another process may have
          // taken this message over. Prove the lease is still ours before sending more.
          await flush(true, false, true);
        }
        if (this.stopping || lost || broken) {
          sem.release();
          break pull;
        }
        const item: FanOutItem = {
          clientId: s.clientId,
          state: "pending",
          retry: null,
          dead: null,
        };
        pending.push(item);
        const p: Promise<void> = this.deliverOne(
          m,
          collapseKey,
          s,
          item,
          regs.get(s.clientId) ?? null,
          shared,
        ).then(
          () => {
            item.state = "done";
          },
          (err) => {
            broken = true;
            this.logger.log("error", "fanout.send_error", {
              message: m.id,
              error: describeError(err),
            });
          },
        ).finally(() => {
          sem.release();
          running.delete(p);
          void flush(false);
        });
        running.add(p);
      }
      if (!more) listed = true;
    }
    while (running.size > 0) await Promise.allSettled([...running]);
    const finished = listed && !broken && !lost;
    await flush(true, finished);
    if (lost || finished) return;
    if (expired && !broken) {
      // CC/CD 70025 §5.4: never silently dropped. The message outlived its TTL before it
      // reached everyone: keep a dead letter for the rest and end the fan-out.
      const now = this.now();
      this.metrics.deliveries.inc({ transport: "any", outcome: "dead_lettered" });
      this.logger.log("warn", "fanout.expired", { message: m.id });
      const dead: DeadLetter = {
        id: newId(now),
        dueAt: now,
        clientId: "",
        reason: "retry",
        payload: { kind: "json", data: updatePayload(m) },
        priority: m.priority,
        ttl: 0,
        attempts: 0,
        createdAt: m.createdAt,
        expiresAt: m.expiresAt,
        deadAt: now,
        why: "message expired before its fan-out finished",
        remainingAfter: entry.value.cursor,
      };
      await this.store.advanceOutbox(
        entry,
        { cursor: entry.value.cursor, lease: FREE, done: true },
        [],
        [
          dead,
        ],
      );
      return;
    }
    // Shutting down or a storage error: give the rest back so another process (or the next
    // tick) takes it over at once.
    await this.store.advanceOutbox(entry, { cursor: entry.value.cursor, lease: FREE, done: false })
      .catch((err) =>
        this.logger.log("error", "fanout.release_error", {
          message: m.id,
          error: describeError(err),
        })
      );
  }

  /** The first attempt for one subscriber of a fan-out; its follow-up goes into `item`. */
  private async deliverOne(
    m: OutboxMessage,
    collapseKey: string,
    s: { clientId: string; value: SubscriptionValue },
    item: FanOutItem,
    prefetched: Registration | null,
    shared: StoredPayload | null,
  ): Promise<void> {
    const now = this.now();
    // CC/CD 70025 §6.2.2.1: a subscription is void after its expiry.
    if (s.value.exp <= now) return;
    let fields: { timestamp: string; priority: number };
    if (m.trailing) {
      const agg = trailingFor(m.trailing, s.clientId);
      if (!agg) return;
      fields = { timestamp: agg.timestamp, priority: agg.priority };
    } else {
      // §7.1: no update for the client that made the change.
      if (sameClient(s.clientId, m.clientId)) return;
      fields = { timestamp: m.timestamp, priority: m.priority };
    }
    // Read with its page; read again only when it was missing then.
    const reg = prefetched ?? await this.store.getRegistration(s.clientId);
    if (!reg) {
      // Subscriptions whose registration is gone (a race with pruning): clean them up.
      await this.store.removeClient(s.clientId, null);
      return;
    }
    const payload: StoredPayload = shared ?? {
      kind: "json",
      data: updatePayload({ topic: m.topic, ...fields }),
    };
    const sent = await this.send(reg, {
      payload,
      // A fan-out send is always its message's first attempt for this subscriber.
      ttl: this.ttl,
      urgency: urgencyFor(fields.priority),
      priority: fields.priority,
      collapseKey,
    }, m.createdAt);
    const follow = await this.handleOutcome(reg, sent, {
      payload,
      priority: fields.priority,
      collapseKey,
      createdAt: m.createdAt,
      expiresAt: m.expiresAt,
      attempts: 0,
      reason: "retry",
    });
    item.retry = follow.retry ?? null;
    item.dead = follow.dead ?? null;
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

  /**
   * One attempt through the registration's transport, with the per-service breaker.
   * `attempted` is false when the breaker short-circuited the send (not counted as an attempt).
   */
  private async send(
    reg: Registration,
    message: OutboundMessage,
    acceptedAt: number,
  ): Promise<{ outcome: DeliveryOutcome; attempted: boolean }> {
    const transport = this.transports[reg.target.transport];
    const tid = reg.target.transport;
    if (!transport) {
      return {
        outcome: { kind: "failed", reason: `transport ${tid} is not configured` },
        attempted: true,
      };
    }
    const bkey = this.breakerKey(reg);
    const breaker = this.breakers.get(bkey);
    const now = this.now();
    if (breaker && breaker.openUntil > now) {
      this.metrics.deliveries.inc({ transport: tid, outcome: "short_circuited" });
      return {
        outcome: { kind: "retry", reason: "circuit open", retryAfterMs: breaker.openUntil - now },
        attempted: false,
      };
    }
    let outcome: DeliveryOutcome;
    try {
      outcome = await transport.send(reg.target, message, this.abort.signal);
    } catch (err) {
      outcome = { kind: "retry", reason: `transport error: ${(err as Error).name}` };
    }
    if (outcome.kind === "retry") {
      // Local causes (our own shutdown, our own queue limit) say nothing about the service.
      if (outcome.reason !== "aborted" && outcome.reason !== "saturated") {
        const b = breaker ?? { failures: 0, openUntil: 0 };
        b.failures++;
        if (b.failures >= this.breakerPolicy.threshold) {
          b.openUntil = this.now() + this.breakerPolicy.cooldownMs;
          if (b.failures === this.breakerPolicy.threshold) {
            this.logger.log("warn", "breaker.open", { service: tid, failures: b.failures });
          }
        }
        this.breakers.set(bkey, b);
      }
    } else if (breaker) {
      this.breakers.delete(bkey);
      if (breaker.failures >= this.breakerPolicy.threshold) {
        this.logger.log("info", "breaker.closed", { service: tid });
      }
    }
    const status = "status" in outcome ? outcome.status : undefined;
    this.logger.log(outcome.kind === "delivered" ? "debug" : "warn", "delivery", {
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
    return { outcome, attempted: true };
  }

  /** Backoff before attempt `attempts + 1`: exponential with equal jitter. */
  backoffMs(attempts: number): number {
    const exp = Math.min(
      this.retryPolicy.maxMs,
      this.retryPolicy.baseMs * 2 ** Math.max(0, attempts - 1),
    );
    // "Equal jitter": half fixed, half random, so the retries of one fan-out spread out.
    return exp / 2 + this.random() * (exp / 2);
  }

  /**
   * Prunes on `gone`; plans a retry, or a dead letter once the attempts or the TTL run out,
   * on `retry`; dead-letters `failed`. `d.attempts` counts the attempts before this one.
   */
  private async handleOutcome(
    reg: Registration,
    sent: { outcome: DeliveryOutcome; attempted: boolean },
    d: Omit<QueuedDelivery, "id" | "dueAt" | "clientId" | "ttl"> & { ttl?: number },
  ): Promise<{ retry?: QueuedDelivery; dead?: DeadLetter }> {
    const { outcome } = sent;
    const tid = reg.target.transport;
    const attempts = d.attempts + (sent.attempted ? 1 : 0);
    const now = this.now();
    const base = { ...d, clientId: reg.clientId, attempts };
    delete (base as Partial<QueuedDelivery>).lease;
    const dead = (why: string, lastError: string): { dead: DeadLetter } => {
      this.metrics.deliveries.inc({ transport: tid, outcome: "dead_lettered" });
      this.logger.log("warn", "delivery.dead_lettered", {
        client: reg.clientId,
        transport: tid,
        attempts,
        why,
      });
      return {
        dead: { ...base, id: newId(now), dueAt: now, ttl: 0, deadAt: now, why, lastError },
      };
    };
    switch (outcome.kind) {
      case "delivered":
        return {};
      case "gone": {
        // CONTRACT §1.3: the push service says the device is gone: remove every subscription
        // of the client and revoke its registration. Its topics then show in no-subscribers.
        this.metrics.deliveries.inc({ transport: tid, outcome: "pruned" });
        await this.store.removeClient(reg.clientId, await targetHash(reg.target));
        this.logger.log("info", "client.pruned", {
          client: reg.clientId,
          transport: tid,
          status: outcome.status,
        });
        return {};
      }
      case "failed":
        this.metrics.deliveries.inc({ transport: tid, outcome: "failed" });
        return dead("refused", outcome.reason);
      case "retry":
        break;
    }
    if (attempts >= this.retryPolicy.maxAttempts) return dead("too many attempts", outcome.reason);
    let delay = Math.max(this.backoffMs(attempts), outcome.retryAfterMs ?? 0);
    if (!sent.attempted) {
      // The breaker is open: come back when it half-opens, spread over a few seconds.
      delay = (outcome.retryAfterMs ?? 0) + this.random() * Math.min(5000, delay);
    }
    if (now + delay >= d.expiresAt) return dead("expired", outcome.reason);
    this.metrics.deliveries.inc({ transport: tid, outcome: "retried" });
    const dueAt = Math.ceil(now + delay);
    this.scheduleAt(dueAt);
    return {
      retry: {
        ...base,
        id: newId(now),
        dueAt,
        ttl: d.ttl ?? this.ttl,
        lastError: outcome.reason,
      },
    };
  }

  /** Sends one claimed queued delivery and records its end in one guarded atomic. */
  private async deliverQueued(entry: Entry<QueuedDelivery>): Promise<void> {
    const d = entry.value;
    const now = this.now();
    if (this.stopping) {
      await this.store.releaseDelivery(entry);
      return;
    }
    const reg = await this.store.getRegistration(d.clientId);
    if (!reg) {
      // The client was pruned or deleted: nothing to send.
      await this.store.finishDelivery(entry, {});
      return;
    }
    if (now >= d.expiresAt) {
      this.metrics.deliveries.inc({ transport: reg.target.transport, outcome: "dead_lettered" });
      const rest = { ...d };
      delete rest.lease;
      await this.store.finishDelivery(entry, {
        dead: { ...rest, id: newId(now), deadAt: now, why: "expired" },
      });
      return;
    }
    if (await this.superseded?.(d)) {
      // Issue 7 hook: replaced by a newer ingress message with the same Topic (RFC 8030 §5.4).
      this.metrics.deliveries.inc({ transport: reg.target.transport, outcome: "replaced" });
      await this.store.finishDelivery(entry, {});
      return;
    }
    const sent = await this.send(reg, {
      payload: d.payload,
      ttl: attemptTtl(d, now),
      urgency: urgencyFor(d.priority),
      priority: d.priority,
      ...(d.collapseKey !== undefined ? { collapseKey: d.collapseKey } : {}),
    }, d.createdAt);
    const follow = await this.handleOutcome(reg, sent, d);
    if (!(await this.store.finishDelivery(entry, follow))) {
      this.logger.log("warn", "delivery.lease_lost", { client: d.clientId });
    }
  }

  /** Wakes the engine (a tick) at `at`; one timer for the earliest wake-up. */
  private scheduleAt(at: number): void {
    if (this.stopping || at >= this.wakeAt) return;
    clearTimeout(this.wakeTimer);
    this.wakeAt = at;
    const delay = Math.max(0, at - this.now()) + 5;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      this.wakeAt = Infinity;
      this.tick().catch((err) =>
        this.logger.log("error", "tick.error", { error: describeError(err) })
      );
    }, Math.min(delay, 2 ** 31 - 1));
  }

  /**
   * One background pass: claims outbox messages that nobody alive holds (a crashed or stopped
   * process's, or trailing updates whose window closed), sends due queued deliveries, and
   * sweeps expired subscriptions. Resolves when the work it claimed is done; scans again at
   * once (up to 20 rounds) while a scan found more than it may claim at a time. Overlapping
   * calls share one scan.
   */
  async tick(): Promise<void> {
    for (let round = 0; round < 20 && !this.stopping; round++) {
      if (!this.scanning) {
        this.scanning = this.track(this.scan()).finally(() => {
          this.scanning = null;
        });
      }
      const { work, more } = await this.scanning;
      await Promise.allSettled(work);
      if (!more) return;
    }
  }

  private async scan(): Promise<{ work: Promise<void>[]; more: boolean }> {
    const now = this.now();
    const work: Promise<void>[] = [];
    const outbox = (await this.store.listOutbox(1000)).filter((e) =>
      (e.value.notBefore ?? 0) <= now
    );
    const due = await this.store.listDueDeliveries(now, DUE_PER_SCAN);
    const owners = new Set<string>();
    for (const e of [...outbox, ...due]) {
      const l = e.value.lease;
      if (l && l.owner !== "" && l.owner !== this.owner && l.until > now) owners.add(l.owner);
    }
    const workers = owners.size > 0
      ? await this.store.getWorkers([...owners])
      : new Map<string, Deno.KvEntryMaybe<WorkerBeat>>();
    /** Whether a lease can be taken, and which heartbeat the claim must check. */
    const claimable = (
      lease: Lease | undefined,
      key: string,
    ): { ok: boolean; holder?: Deno.KvEntryMaybe<WorkerBeat> } => {
      if (lease?.owner === this.owner && this.active.has(key)) return { ok: false };
      if (!lease || lease.owner === "" || lease.owner === this.owner || lease.until <= now) {
        return { ok: true };
      }
      const w = workers.get(lease.owner);
      if (w?.value && w.value.until > now) return { ok: false };
      return { ok: true, ...(w ? { holder: w } : {}) };
    };
    let beaten = false;
    const beatOnce = async () => {
      if (beaten) return;
      beaten = true;
      const b = this.heartbeat();
      await this.store.beat(b.owner, b.value);
      this.beaten(b);
    };
    let more = false;
    for (const e of outbox) {
      if (this.stopping) break;
      if (work.length >= MAX_CLAIMS_PER_SCAN) {
        more = true;
        break;
      }
      const c = claimable(e.value.lease, `o:${e.value.id}`);
      if (!c.ok) continue;
      await beatOnce();
      const claimed = await this.store.claimOutbox(e, this.claim(), c.holder);
      if (!claimed) continue;
      if (e.value.lease.owner !== "" && e.value.lease.owner !== this.owner) {
        this.logger.log("info", "fanout.takeover", { message: e.value.id });
      }
      work.push(this.fanOut(claimed));
    }
    for (const e of due) {
      if (this.stopping) break;
      const c = claimable(e.value.lease, `q:${e.value.dueAt}:${e.value.id}`);
      if (!c.ok) continue;
      await beatOnce();
      const claimed = await this.store.claimDelivery(e, this.claim(), c.holder);
      if (claimed) work.push(this.runQueued(claimed));
    }
    // CC/CD 70025 §6.2.1.6 MUST: subscriptions not refreshed in time are removed; bounded
    // per run, the next tick goes on.
    if (due.length >= DUE_PER_SCAN) more = true;
    const swept = await this.store.sweepExpired(now, this.sweepLimit);
    if (swept > 0) this.logger.log("info", "sweep", { removed: swept });
    return { work, more };
  }

  /**
   * Stops taking work, lets claimed work finish (fan-outs stop starting sends, commit what
   * finished and release the rest), aborts outbound requests still running 1 s before
   * `timeoutMs`, and finally removes this process's heartbeat so that anything it still holds
   * can be taken over at once.
   */
  async shutdown(timeoutMs = 5000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    const settled = (ms: number) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      return Promise.race([
        this.idle().then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), Math.max(0, ms)))),
      ]).finally(() => clearTimeout(timer));
    };
    // Wall-clock budget (monotonic), not the injected domain clock.
    const started = performance.now();
    if (!(await settled(timeoutMs - 1000))) {
      this.abort.abort();
      await settled(timeoutMs - (performance.now() - started) - 200);
    }
    clearInterval(this.beatTimer);
    this.beatTimer = undefined;
    for (const transport of Object.values(this.transports)) transport?.close?.();
    try {
      await this.store.deleteWorker(this.owner);
    } catch {
      // Storage gone: the heartbeat runs out by itself after leaseMs.
    }
  }

  /** Formats a timestamp for payloads. */
  static timestamp(ms: number): string {
    return formatRfc3339(ms);
  }
}
