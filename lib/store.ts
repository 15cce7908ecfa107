/**
 * The only module that touches Deno KV. Typed key builders, one function per operation,
 * secondary indexes written in the same atomic as their primary record, and the KV limits
 * (1000 mutations, 100 checks, 800 KiB, 10 keys per getMany) respected by chunking.
 *
 * Layout:
 * - `["meta", name]`: generated secrets and keys, kept across restarts
 * - `["reg", clientId]` → Registration; `["regt", targetHash]` → clientId (one client per device)
 * - `["sub", app, topic, clientId]` → SubscriptionValue (fan-out reads this prefix)
 * - `["subc", clientId, app, topic]` → expiry (prune every subscription of a client)
 * - `["subx", expiresAt, app, topic, clientId]` → null (expiry sweep, CC/CD 70025 §6.2.1.6)
 * - `["outbox", id]` → OutboxMessage: one pushed message (or one coalesced trailing update) and
 *   its fan-out position (cursor) and lease; ids are time-ordered
 * - `["cw", app, topic]` → CoalesceWindow: the open coalescing window of a topic (§8.3)
 * - `["dq", dueAt, id]` → QueuedDelivery: one delivery to one client (acks, retries, ingress)
 * - `["dead", id]` → DeadLetter, kept for 7 days
 * - `["worker", owner]` → WorkerBeat: a process's heartbeat; its leases are valid while it beats
 * - `["ingress", id]` → the client behind a Web Push ingress id, and whether it is gone
 * - `["ingress-topic", clientId, topic]` → when the newest ingress message with that `Topic`
 *   was accepted (older undelivered ones are replaced, RFC 8030 §5.4)
 * - `["rl", subject, minute]` → registrations counted in one rate-limit window
 * - `["stat", "subscriptions"]` → Deno.KvU64: how many `["sub", ...]` records exist, kept in
 *   the same atomics that create and delete them, so `GET /metrics` reads one key instead of
 *   scanning (issue 5)
 *
 * Expiry is stored in values and checked on read: KV `expireIn` only collects garbage (it
 * lags by up to a minute locally).
 *
 * @module
 */

import { StorageError } from "./errors.ts";
import type { Target, TransportId } from "./transports/types.ts";

export interface Registration {
  clientId: string;
  target: Target;
  createdAt: number;
  /** Web Push ingress (CONTRACT §2.1), when the client asked for it. */
  ingress?: { id: string; vapidPublicKey?: string };
}

export interface SubscriptionValue {
  /** Epoch ms after which the subscription is void (CC/CD 70025 §6.2.2.1). */
  exp: number;
  tr: TransportId;
}

/**
 * A claim on outbox or queue work. Valid while `until` lies ahead and the owner's heartbeat
 * (`WorkerBeat`) is fresh; `owner: ""` is unclaimed.
 */
export interface Lease {
  owner: string;
  until: number;
}

/** A worker's heartbeat. */
export interface WorkerBeat {
  /** The worker counts as alive until then. */
  until: number;
}

/** Latest timestamp and highest priority of the updates merged for one origin. */
export interface Aggregate {
  /** RFC 3339 UTC, the latest. */
  timestamp: string;
  /** `timestamp` in epoch ms, for comparison. */
  ms: number;
  priority: number;
}

/** A coalesced trailing update (CONTRACT §1.3), fanned out once its window closes. */
export interface TrailingUpdate {
  /** Merged updates by originating `client-id` ("" for messages without one). */
  byOrigin: Record<string, Aggregate>;
  /** The client-id of the window's first message, if it had one. */
  opener?: string;
  /** What the opener gets: updates after its own first one, none of its own. */
  openerAgg?: Aggregate;
}

/** The open coalescing window of (app, topic). */
export interface CoalesceWindow {
  openedAt: number;
  /** Updates before this are merged into `trailing`. */
  until: number;
  /** `client-id` of the opening message: that client has not had an update yet. */
  opener?: string;
  /** True once the opener got an update of this window (or there is no opener). */
  openerServed: boolean;
  /** Outbox id of the trailing update, once something was merged. */
  trailing: string | null;
}

/** A pushed message waiting for (or in) fan-out. */
export interface OutboxMessage {
  id: string;
  app: string;
  topic: string;
  /** RFC 3339 UTC. */
  timestamp: string;
  priority: number;
  clientId?: string;
  createdAt: number;
  /** After this the message is not worth delivering (createdAt + TTL). */
  expiresAt: number;
  /** Last client id fanned out to; null before the first page. */
  cursor: string | null;
  lease: Lease;
  /** Deliver to this one subscriber only (a window's opener, see `CoalesceWindow`). */
  only?: string;
  /** Not to be fanned out before this time (a trailing update waits for its window). */
  notBefore?: number;
  /** Set on a trailing update: each subscriber's payload is computed from it. */
  trailing?: TrailingUpdate;
}

export type StoredPayload =
  | { kind: "json"; data: Record<string, unknown> }
  | { kind: "encrypted"; body: Uint8Array };

/** One delivery to one client, waiting in the delivery queue. */
export interface QueuedDelivery {
  id: string;
  dueAt: number;
  clientId: string;
  reason: "ack" | "retry" | "trailing" | "ingress";
  payload: StoredPayload;
  priority: number;
  ttl: number;
  collapseKey?: string;
  attempts: number;
  createdAt: number;
  expiresAt: number;
  lease?: Lease;
  lastError?: string;
}

/**
 * A delivery given up on (too many attempts, past its TTL, or refused for good), kept and
 * counted rather than dropped. `clientId: ""` with `remainingAfter` marks a fan-out whose
 * message expired before it reached every subscriber (those after that cursor).
 */
export interface DeadLetter extends Omit<QueuedDelivery, "lease"> {
  deadAt: number;
  why: string;
  remainingAfter?: string | null;
}

export type Entry<T> = { key: Deno.KvKey; value: T; versionstamp: string };

const regKey = (clientId: string) => ["reg", clientId] as const;
const regTargetKey = (hash: string) => ["regt", hash] as const;
const subKey = (app: string, topic: string, clientId: string) =>
  ["sub", app, topic, clientId] as const;
const subClientKey = (clientId: string, app: string, topic: string) =>
  ["subc", clientId, app, topic] as const;
const subExpiryKey = (exp: number, app: string, topic: string, clientId: string) =>
  ["subx", exp, app, topic, clientId] as const;
const outboxKey = (id: string) => ["outbox", id] as const;
const dqKey = (dueAt: number, id: string) => ["dq", dueAt, id] as const;
const deadKey = (id: string) => ["dead", id] as const;
const windowKey = (app: string, topic: string) => ["cw", app, topic] as const;
const workerKey = (owner: string) => ["worker", owner] as const;
const SUB_COUNT_KEY = ["stat", "subscriptions"] as const;
const U64 = 1n << 64n;

/** Adds `delta` (which may be negative: KV's sum on a KvU64 wraps modulo 2^64) to the count. */
function addToSubscriptionCount(op: Deno.AtomicOperation, delta: number): void {
  if (delta === 0) return;
  const d = BigInt(delta);
  op.sum(SUB_COUNT_KEY, d > 0n ? d : U64 + d);
}

/** Subscriptions per atomic where each is checked: KV allows 100 checks per atomic. */
const CHECKED_SUBS_PER_ATOMIC = 100;
/** Attempts of a checked subscription write before it gives up (only under heavy contention). */
const CHECKED_ATTEMPTS = 10;

/** Subscriptions per atomic: 3 or 4 mutations each stays under KV's 1000. */
const SUBS_PER_ATOMIC = 200;
/**
 * Key bytes per atomic we allow ourselves: KV refuses more than 80 KiB of keys in one atomic
 * (measured, platform.md §1.1), and a subscription touches up to 4 keys that each repeat app,
 * topic (up to 256 characters, 1 KiB of UTF-8) and client id.
 */
const KEY_BYTES_PER_ATOMIC = 60_000;

const utf8Length = (s: string) => new TextEncoder().encode(s).length;

/** Estimated key bytes of one subscription's keys (sub, subc, subx, and an old subx). */
function subscriptionKeyBytes(app: string, topic: string, clientId: string): number {
  return 4 * (utf8Length(app) + utf8Length(topic) + utf8Length(clientId) + 32);
}

/**
 * Batches for atomics that check (and write) one subscription per item: at most 100 checks,
 * and key bytes with a quarter of headroom for the check of each key.
 */
function checkedSubBatches<T>(items: T[], key: (item: T) => [string, string, string]): T[][] {
  return sizedBatches(
    items,
    (i) => (subscriptionKeyBytes(...key(i)) * 5) / 4,
    KEY_BYTES_PER_ATOMIC,
    CHECKED_SUBS_PER_ATOMIC,
  );
}

/**
 * Splits items into batches that respect both a count and a byte budget, so one atomic stays
 * within KV's mutation and key-size limits whatever the topics' lengths.
 */
export function sizedBatches<T>(
  items: T[],
  cost: (item: T) => number,
  budget: number,
  maxCount: number,
): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let used = 0;
  for (const item of items) {
    const c = cost(item);
    if (current.length > 0 && (used + c > budget || current.length >= maxCount)) {
      batches.push(current);
      current = [];
      used = 0;
    }
    current.push(item);
    used += c;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}
/** KV garbage collection margin after a record's logical expiry. */
const GC_MARGIN_MS = 3600_000;
/** Subscriptions per sweep atomic: one check each, and KV allows 100 checks per atomic. */
const SWEEP_PER_ATOMIC = 100;
/** How long dead letters are kept. */
const DEAD_RETENTION_MS = 7 * 24 * 3600_000;

async function getManyChunked<T>(kv: Deno.Kv, keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
  const chunks: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
  for (let i = 0; i < keys.length; i += 10) chunks.push(kv.getMany<T[]>(keys.slice(i, i + 10)));
  return (await Promise.all(chunks)).flat();
}

async function commit(op: Deno.AtomicOperation): Promise<boolean> {
  const res = await op.commit();
  return res.ok;
}

interface ActiveWaiter {
  now: number;
  resolve: (active: boolean) => void;
  reject: (err: unknown) => void;
}

/**
 * The local SQLite backend answers "database is locked" (SQLITE_BUSY) when another process on
 * the same file holds the write lock for longer than KV's own short wait, which happens with two
 * relay processes on one file on a loaded machine. SQLite guarantees the statement did not take
 * effect, so trying again is safe, even for atomics with `sum` mutations. Without this, a fan-out
 * whose cursor commit failed gave its page back and the next holder sent that page again
 * (issue 4: the duplicates seen under load with neither a retry nor a takeover).
 */
const BUSY = /database is (locked|busy)/i;
/** Attempts per KV call; with the backoff below a call waits up to about 3 s in total. */
const BUSY_ATTEMPTS = 12;

export function isBusy(err: unknown): boolean {
  return err instanceof Error && BUSY.test(err.message);
}

function busyPause(attempt: number): Promise<void> {
  const ms = Math.min(500, 5 * 2 ** attempt) * (0.5 + Math.random() / 2);
  return new Promise((r) => setTimeout(r, ms));
}

async function retryBusy<T>(call: () => Promise<T>): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await call();
    } catch (err) {
      if (!isBusy(err) || attempt + 1 >= BUSY_ATTEMPTS) throw err;
      await busyPause(attempt);
    }
  }
}

/**
 * `kv` with every read, write and atomic commit retried on SQLITE_BUSY (see `BUSY`). A list
 * that fails part way resumes after the last entry it yielded.
 */
export function retryingKv(kv: Deno.Kv): Deno.Kv {
  const list = <T>(selector: Deno.KvListSelector, options: Deno.KvListOptions = {}) =>
    (async function* () {
      let cursor = options.cursor;
      let left = options.limit;
      for (let attempt = 0;; attempt++) {
        if (left !== undefined && left <= 0) return;
        const it = kv.list<T>(selector, {
          ...options,
          ...(cursor !== undefined ? { cursor } : {}),
          ...(left !== undefined ? { limit: left } : {}),
        });
        try {
          for await (const e of it) {
            yield e;
            cursor = it.cursor;
            if (left !== undefined) left--;
          }
          return;
        } catch (err) {
          if (!isBusy(err) || attempt + 1 >= BUSY_ATTEMPTS) throw err;
          await busyPause(attempt);
        }
      }
    })();
  return new Proxy(kv, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      switch (prop) {
        case "get":
        case "getMany":
        case "set":
        case "delete":
          return (...args: unknown[]) => retryBusy(() => value.apply(target, args));
        case "list":
          return list;
        case "atomic":
          return () => {
            const op = target.atomic();
            const commit = op.commit.bind(op);
            op.commit = () => retryBusy(commit);
            return op;
          };
        default:
          return typeof value === "function" ? value.bind(target) : value;
      }
    },
  });
}

/** The relay's storage API. Every method converts KV failures into `StorageError`. */
export class Store {
  /** Callers waiting for the next shared read of a topic (see `hasActiveSubscriber`). */
  private readonly activeReads = new Map<string, ActiveWaiter[]>();
  readonly kv: Deno.Kv;
  constructor(kv: Deno.Kv) {
    this.kv = retryingKv(kv);
    // Wrap every method so a closed or failing KV surfaces as StorageError (CONTRACT §3: 503).
    for (const name of Object.getOwnPropertyNames(Store.prototype)) {
      if (name === "constructor") continue;
      // deno-lint-ignore no-explicit-any
      const self = this as any;
      const fn = self[name];
      if (typeof fn !== "function") continue;
      self[name] = async (...args: unknown[]) => {
        try {
          return await fn.apply(this, args);
        } catch (err) {
          if (err instanceof StorageError) throw err;
          throw new StorageError(`Storage operation ${name} failed`, { cause: err });
        }
      };
    }
  }

  // --- meta -------------------------------------------------------------------------------

  /** Returns the stored value, or stores `create()` if absent (first writer wins). */
  async getOrCreateMeta<T>(
    name: string,
    create: () => T | Promise<T>,
  ): Promise<{ value: T; created: boolean }> {
    const key = ["meta", name];
    const existing = await this.kv.get<T>(key);
    if (existing.versionstamp !== null) return { value: existing.value as T, created: false };
    const value = await create();
    const res = await this.kv.atomic().check({ key, versionstamp: null }).set(key, value).commit();
    if (res.ok) return { value, created: true };
    const winner = await this.kv.get<T>(key);
    return { value: winner.value as T, created: false };
  }

  async ping(): Promise<void> {
    await this.kv.get(["meta", "ping"]);
  }

  // --- registrations ------------------------------------------------------------------------

  async getRegistration(clientId: string): Promise<Registration | null> {
    return (await this.kv.get<Registration>(regKey(clientId))).value;
  }

  async getRegistrations(clientIds: string[]): Promise<Map<string, Registration>> {
    const entries = await getManyChunked<Registration>(this.kv, clientIds.map((c) => regKey(c)));
    const out = new Map<string, Registration>();
    for (const e of entries) if (e.value) out.set(e.value.clientId, e.value);
    return out;
  }

  /** The client id already registered for this device (same endpoint or token), if any. */
  async findClientByTarget(targetHash: string): Promise<string | null> {
    return (await this.kv.get<string>(regTargetKey(targetHash))).value;
  }

  /** Creates or replaces a registration and its device index in one atomic. */
  async putRegistration(reg: Registration, targetHash: string): Promise<void> {
    const op = this.kv.atomic().set(regKey(reg.clientId), reg).set(
      regTargetKey(targetHash),
      reg.clientId,
    );
    if (reg.ingress) op.set(["ingress", reg.ingress.id], { clientId: reg.clientId, gone: false });
    await op.commit();
  }

  /**
   * Removes a client: every subscription in bounded atomics, then the registration and its
   * device index. Returns the (app, topic) pairs it removed. Idempotent.
   */
  async removeClient(
    clientId: string,
    targetHash: string | null,
  ): Promise<{ app: string; topic: string }[]> {
    const removed: { app: string; topic: string }[] = [];
    while (true) {
      const batch: Entry<number>[] = [];
      for await (
        const e of this.kv.list<number>({ prefix: ["subc", clientId] }, { limit: SUBS_PER_ATOMIC })
      ) batch.push(e as Entry<number>);
      if (batch.length === 0) break;
      const batches = checkedSubBatches(
        batch,
        (e) => [e.key[2] as string, e.key[3] as string, clientId],
      );
      for (const chunk of batches) {
        const op = this.kv.atomic();
        for (const e of chunk) {
          const app = e.key[2] as string;
          const topic = e.key[3] as string;
          // Checked: a racing removal of the same client must not count these twice. When the
          // check fails, the next round of the loop lists what is left.
          op.check(e).delete(e.key).delete(subKey(app, topic, clientId)).delete(
            subExpiryKey(e.value, app, topic, clientId),
          );
        }
        addToSubscriptionCount(op, -chunk.length);
        if (await commit(op)) {
          for (const e of chunk) {
            removed.push({ app: e.key[2] as string, topic: e.key[3] as string });
          }
        }
      }
    }
    const reg = await this.kv.get<Registration>(regKey(clientId));
    const op = this.kv.atomic().delete(regKey(clientId));
    if (targetHash) {
      const idx = await this.kv.get<string>(regTargetKey(targetHash));
      if (idx.value === clientId) op.check(idx).delete(regTargetKey(targetHash));
    }
    if (reg.value?.ingress) {
      // CONTRACT §2.1: a removed registration's ingress URL answers 410 from then on.
      op.set(["ingress", reg.value.ingress.id], { clientId, gone: true });
    }
    await op.commit();
    return removed;
  }

  async getIngress(id: string): Promise<{ clientId: string; gone: boolean } | null> {
    return (await this.kv.get<{ clientId: string; gone: boolean }>(["ingress", id])).value;
  }

  // --- subscriptions ------------------------------------------------------------------------

  /**
   * Creates or refreshes (app, topic, client) with expiry `exp` for every topic (CC/CD 70025
   * §6.1.2: other subscriptions are untouched). Returns the topics that had no active
   * subscription before (new pairs).
   */
  async upsertSubscriptions(
    app: string,
    clientId: string,
    transport: TransportId,
    topics: string[],
    exp: number,
    now: number,
  ): Promise<string[]> {
    const expireIn = Math.max(1, exp - now) + GC_MARGIN_MS;
    const batches = await this.checkedSubscriptionBatches(
      app,
      clientId,
      topics,
      "record",
      (op, chunk, existing) => {
        const fresh: string[] = [];
        let added = 0;
        chunk.forEach((topic, j) => {
          const e = existing[j]!;
          const old = e.value;
          op.check(e);
          if (old) op.delete(subExpiryKey(old.exp, app, topic, clientId));
          else added++;
          if (!old || old.exp <= now) fresh.push(topic);
          const value: SubscriptionValue = { exp, tr: transport };
          op.set(subKey(app, topic, clientId), value, { expireIn })
            .set(subClientKey(clientId, app, topic), exp, { expireIn })
            .set(subExpiryKey(exp, app, topic, clientId), null, { expireIn });
        });
        addToSubscriptionCount(op, added);
        return fresh;
      },
    );
    return batches.flat();
  }

  /** Removes (app, topic, client) for every topic (CC/CD 70025 §5.2.2 unsubscribe). */
  async removeSubscriptions(app: string, clientId: string, topics: string[]): Promise<number> {
    const batches = await this.checkedSubscriptionBatches(
      app,
      clientId,
      topics,
      "remove",
      (op, chunk, existing) => {
        let n = 0;
        chunk.forEach((topic, j) => {
          const e = existing[j]!;
          const old = e.value;
          if (!old) return;
          n++;
          // Checked, so that a racing removal does not count the same subscription twice.
          op.check(e).delete(subKey(app, topic, clientId)).delete(
            subClientKey(clientId, app, topic),
          ).delete(subExpiryKey(old.exp, app, topic, clientId));
        });
        if (n === 0) return null;
        addToSubscriptionCount(op, -n);
        return n;
      },
    );
    return batches.reduce((sum, n) => sum + n, 0);
  }

  /**
   * Read-modify-write of one client's subscriptions to `topics`, in batches within KV's limits
   * (each subscription's record is checked, so the subscription count stays exact when two
   * writers race: five keys per subscription, at most 100 checks per atomic). `plan` adds a
   * batch's mutations to `op` and returns what to report once it commits (null: nothing to
   * write); a batch whose checks failed is read and planned again.
   */
  private async checkedSubscriptionBatches<R>(
    app: string,
    clientId: string,
    topics: string[],
    what: "record" | "remove",
    plan: (
      op: Deno.AtomicOperation,
      chunk: string[],
      existing: Deno.KvEntryMaybe<SubscriptionValue>[],
    ) => R | null,
  ): Promise<R[]> {
    const results: R[] = [];
    const batches = checkedSubBatches(topics, (t) => [app, t, clientId]);
    for (const chunk of batches) {
      for (let attempt = 1;; attempt++) {
        const existing = await getManyChunked<SubscriptionValue>(
          this.kv,
          chunk.map((t) => subKey(app, t, clientId)),
        );
        const op = this.kv.atomic();
        const result = plan(op, chunk, existing);
        if (result === null) break;
        if (await commit(op)) {
          results.push(result);
          break;
        }
        if (attempt >= CHECKED_ATTEMPTS) {
          throw new StorageError(`Cannot ${what} the subscriptions: too much contention`);
        }
      }
    }
    return results;
  }

  /**
   * How many subscriptions are stored (active ones, plus expired ones the sweep has not
   * reached yet): one read of a counter kept in the same atomics as the records, never a scan.
   */
  async countSubscriptions(): Promise<number> {
    const e = await this.kv.get<Deno.KvU64>(SUB_COUNT_KEY);
    const v = e.value?.value ?? 0n;
    // A wrapped (negative) count could only come from records KV's expiry collected before the
    // sweep saw them; report 0 rather than 2^64 - n.
    return v >= U64 / 2n ? 0 : Number(v);
  }

  /** True when (app, topic) has at least one unexpired subscription. */
  hasActiveSubscriber(app: string, topic: string, now: number): Promise<boolean> {
    // Concurrent calls for one topic share a read that starts after all of them were made (so
    // none sees older data than a read of its own would) instead of one read each: under load
    // every KV read waits for the commit in progress (issue 5, measured in BENCHMARKS.md).
    const key = `${app}\u0000${topic}`;
    return new Promise<boolean>((resolve, reject) => {
      const waiter = { now, resolve, reject };
      const running = this.activeReads.get(key);
      if (running) running.push(waiter);
      else {
        this.activeReads.set(key, []);
        void this.readActive(key, app, topic, [waiter]);
      }
    });
  }

  private async readActive(key: string, app: string, topic: string, batch: ActiveWaiter[]) {
    try {
      const latest = Math.max(...batch.map((w) => w.now));
      let maxExp = -Infinity;
      for await (
        const e of this.kv.list<SubscriptionValue>({ prefix: ["sub", app, topic] }, {
          batchSize: 100,
        })
      ) {
        maxExp = Math.max(maxExp, e.value.exp);
        if (maxExp > latest) break;
      }
      for (const w of batch) w.resolve(maxExp > w.now);
    } catch (err) {
      for (const w of batch) w.reject(err);
    }
    const next = this.activeReads.get(key) ?? [];
    if (next.length === 0) this.activeReads.delete(key);
    else {
      this.activeReads.set(key, []);
      void this.readActive(key, app, topic, next);
    }
  }

  /** One page of a topic's subscribers in client-id order, after `after`. Includes expired ones. */
  async listSubscribers(
    app: string,
    topic: string,
    after: string | null,
    limit: number,
  ): Promise<{ clientId: string; value: SubscriptionValue }[]> {
    const prefix = ["sub", app, topic];
    const selector: Deno.KvListSelector = after === null
      ? { prefix }
      : { prefix, start: [...prefix, `${after}\u0000`] };
    const out: { clientId: string; value: SubscriptionValue }[] = [];
    for await (const e of this.kv.list<SubscriptionValue>(selector, { limit, batchSize: limit })) {
      out.push({ clientId: e.key[3] as string, value: e.value });
    }
    return out;
  }

  /** Every subscription of a client (for tests and diagnostics). */
  async listClientSubscriptions(
    clientId: string,
  ): Promise<{ app: string; topic: string; exp: number }[]> {
    const out: { app: string; topic: string; exp: number }[] = [];
    for await (const e of this.kv.list<number>({ prefix: ["subc", clientId] })) {
      out.push({ app: e.key[2] as string, topic: e.key[3] as string, exp: e.value });
    }
    return out;
  }

  /**
   * Removes up to `limit` subscriptions whose expiry has passed (CC/CD 70025 §6.2.1.6 MUST),
   * in atomics of at most 100 subscriptions (one check and three deletes each: within KV's
   * 100 checks and 1000 mutations). Idempotent; a subscription refreshed meanwhile keeps its
   * record and only loses the stale index entry. Returns how many subscriptions it removed.
   */
  async sweepExpired(now: number, limit: number): Promise<number> {
    const due: Entry<null>[] = [];
    for await (
      const e of this.kv.list<null>({ start: ["subx"], end: ["subx", now + 1] }, {
        limit,
        batchSize: Math.min(limit, 1000),
      })
    ) due.push(e as Entry<null>);
    let removed = 0;
    for (let i = 0; i < due.length; i += SWEEP_PER_ATOMIC) {
      const chunk = due.slice(i, i + SWEEP_PER_ATOMIC);
      // A refresh racing with the sweep fails the check: read again, a bounded number of times
      // (what is left is the next run's).
      for (let attempt = 0; attempt < 3; attempt++) {
        const current = await getManyChunked<SubscriptionValue>(
          this.kv,
          chunk.map((e) => subKey(e.key[2] as string, e.key[3] as string, e.key[4] as string)),
        );
        const op = this.kv.atomic();
        let n = 0;
        chunk.forEach((e, j) => {
          const [, exp, app, topic, clientId] = e.key as [string, number, string, string, string];
          op.delete(e.key);
          const sub = current[j];
          if (sub?.value && sub.value.exp === exp) {
            op.check(sub as Deno.KvEntry<SubscriptionValue>).delete(sub.key).delete(
              subClientKey(clientId, app, topic),
            );
            n++;
          }
        });
        addToSubscriptionCount(op, -n);
        if (await commit(op)) {
          removed += n;
          break;
        }
      }
    }
    return removed;
  }

  // --- outbox -------------------------------------------------------------------------------

  /**
   * Records outbox messages and coalescing windows in one atomic, durable before a push is
   * answered (CC/CD 70025 §5.4). `versionstamp` on an outbox write or a window is checked
   * (null: must not exist; undefined on an outbox write: a fresh id, not checked). `beat`
   * refreshes the writer's heartbeat in the same atomic. Returns the commit's versionstamp,
   * or null when a check failed (another process changed a window meanwhile).
   */
  async recordOutbox(write: {
    outbox: { value: OutboxMessage; versionstamp?: string | null }[];
    windows?: { app: string; topic: string; value: CoalesceWindow; versionstamp: string | null }[];
    beat?: { owner: string; value: WorkerBeat };
  }): Promise<string | null> {
    const op = this.kv.atomic();
    for (const o of write.outbox) {
      if (o.versionstamp !== undefined) {
        op.check({ key: outboxKey(o.value.id), versionstamp: o.versionstamp });
      }
      op.set(outboxKey(o.value.id), o.value);
    }
    for (const w of write.windows ?? []) {
      const key = windowKey(w.app, w.topic);
      op.check({ key, versionstamp: w.versionstamp });
      op.set(key, w.value, {
        expireIn: Math.max(1, w.value.until - w.value.openedAt) + GC_MARGIN_MS,
      });
    }
    if (write.beat) {
      op.set(workerKey(write.beat.owner), write.beat.value, { expireIn: GC_MARGIN_MS });
    }
    const res = await op.commit();
    return res.ok ? res.versionstamp : null;
  }

  async getOutbox(id: string): Promise<Entry<OutboxMessage> | null> {
    const e = await this.kv.get<OutboxMessage>(outboxKey(id));
    return e.versionstamp === null ? null : (e as Entry<OutboxMessage>);
  }

  /** Outbox messages by id (missing ones are absent from the map). */
  async getOutboxMany(ids: string[]): Promise<Map<string, Entry<OutboxMessage>>> {
    const entries = await getManyChunked<OutboxMessage>(this.kv, ids.map((id) => outboxKey(id)));
    const out = new Map<string, Entry<OutboxMessage>>();
    for (const e of entries) if (e.value) out.set(e.value.id, e as Entry<OutboxMessage>);
    return out;
  }

  /** The oldest outbox messages (ids are time-ordered), leased or not. */
  async listOutbox(limit: number): Promise<Entry<OutboxMessage>[]> {
    const out: Entry<OutboxMessage>[] = [];
    for await (
      const e of this.kv.list<OutboxMessage>({ prefix: ["outbox"] }, {
        limit,
        batchSize: Math.min(limit, 1000),
      })
    ) out.push(e as Entry<OutboxMessage>);
    return out;
  }

  /**
   * Takes over an outbox message if it is unchanged since read and, when `holder` is given,
   * the previous holder's heartbeat is unchanged too (it did not come back meanwhile).
   */
  claimOutbox(
    entry: Entry<OutboxMessage>,
    lease: Lease,
    holder?: Deno.KvEntryMaybe<WorkerBeat>,
  ): Promise<Entry<OutboxMessage> | null> {
    return this.claim(entry, lease, holder);
  }

  /**
   * Advances a fan-out: new cursor and lease, plus the queued deliveries (retries) and dead
   * letters of the subscribers up to that cursor, in one atomic guarded by the versionstamp
   * of the holder's last write. `done` deletes the message instead. Returns null when another
   * process took the message over (then nothing is written). `beat` renews the holder's
   * heartbeat in the same atomic. The engine passes at most 250 deliveries and dead letters per call (KV: 1000
   * mutations, 800 KiB).
   */
  async advanceOutbox(
    entry: Entry<OutboxMessage>,
    update: { cursor: string | null; lease: Lease; done: boolean },
    deliveries: QueuedDelivery[] = [],
    dead: DeadLetter[] = [],
    beat?: { owner: string; value: WorkerBeat },
  ): Promise<Entry<OutboxMessage> | null> {
    const op = this.kv.atomic().check(entry);
    const value = { ...entry.value, cursor: update.cursor, lease: update.lease };
    if (update.done) op.delete(entry.key);
    else op.set(entry.key, value);
    if (beat) op.set(workerKey(beat.owner), beat.value, { expireIn: GC_MARGIN_MS });
    for (const d of deliveries) op.set(dqKey(d.dueAt, d.id), d);
    for (const d of dead) op.set(deadKey(d.id), d, { expireIn: DEAD_RETENTION_MS });
    const res = await op.commit();
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  /** One subscription of a topic, for a fan-out restricted to one client. */
  async getSubscriber(
    app: string,
    topic: string,
    clientId: string,
  ): Promise<{ clientId: string; value: SubscriptionValue } | null> {
    const e = await this.kv.get<SubscriptionValue>(subKey(app, topic, clientId));
    return e.value ? { clientId, value: e.value } : null;
  }

  // --- coalescing windows -------------------------------------------------------------------

  /** The coalescing windows of an app's topics (entries with a null versionstamp when absent). */
  async getWindows(
    app: string,
    topics: string[],
  ): Promise<Map<string, Deno.KvEntryMaybe<CoalesceWindow>>> {
    const entries = await getManyChunked<CoalesceWindow>(
      this.kv,
      topics.map((t) => windowKey(app, t)),
    );
    const out = new Map<string, Deno.KvEntryMaybe<CoalesceWindow>>();
    topics.forEach((t, i) => out.set(t, entries[i]!));
    return out;
  }

  // --- workers (lease holders) --------------------------------------------------------------

  /** Writes a worker's heartbeat: its leases stay valid while `until` lies ahead. */
  async beat(owner: string, value: WorkerBeat): Promise<void> {
    await this.kv.set(workerKey(owner), value, { expireIn: GC_MARGIN_MS });
  }

  /** Heartbeats of the given workers (entries with a null versionstamp when absent). */
  async getWorkers(owners: string[]): Promise<Map<string, Deno.KvEntryMaybe<WorkerBeat>>> {
    const entries = await getManyChunked<WorkerBeat>(this.kv, owners.map((o) => workerKey(o)));
    const out = new Map<string, Deno.KvEntryMaybe<WorkerBeat>>();
    owners.forEach((o, i) => out.set(o, entries[i]!));
    return out;
  }

  /** Removes a worker's heartbeat: whatever it still holds can be taken over at once. */
  async deleteWorker(owner: string): Promise<void> {
    await this.kv.delete(workerKey(owner));
  }

  // --- delivery queue -----------------------------------------------------------------------

  /** Queues one delivery; returns its entry (for the process that goes on to send it). */
  async putDelivery(d: QueuedDelivery, beat?: { owner: string; value: WorkerBeat }): Promise<
    Entry<QueuedDelivery>
  > {
    const key = dqKey(d.dueAt, d.id);
    const op = this.kv.atomic().set(key, d);
    if (beat) op.set(workerKey(beat.owner), beat.value, { expireIn: GC_MARGIN_MS });
    const res = await op.commit();
    if (!res.ok) throw new StorageError("Cannot queue the delivery: atomic commit failed");
    return { key, value: d, versionstamp: res.versionstamp };
  }

  async getDelivery(dueAt: number, id: string): Promise<Entry<QueuedDelivery> | null> {
    const e = await this.kv.get<QueuedDelivery>(dqKey(dueAt, id));
    return e.versionstamp === null ? null : (e as Entry<QueuedDelivery>);
  }

  /** Deliveries due at or before `now` (leased ones included; the caller checks leases). */
  async listDueDeliveries(now: number, limit: number): Promise<Entry<QueuedDelivery>[]> {
    const out: Entry<QueuedDelivery>[] = [];
    for await (
      const e of this.kv.list<QueuedDelivery>({ start: ["dq"], end: ["dq", now + 1] }, {
        limit,
        batchSize: Math.min(limit, 1000),
      })
    ) out.push(e as Entry<QueuedDelivery>);
    return out;
  }

  /** Every queued delivery, due or not (tests and diagnostics). */
  async listDeliveries(limit = 10_000): Promise<QueuedDelivery[]> {
    const out: QueuedDelivery[] = [];
    for await (const e of this.kv.list<QueuedDelivery>({ prefix: ["dq"] }, { limit })) {
      out.push(e.value);
    }
    return out;
  }

  async countDeliveries(): Promise<number> {
    let n = 0;
    for await (const _ of this.kv.list({ prefix: ["dq"] })) n++;
    return n;
  }

  claimDelivery(
    entry: Entry<QueuedDelivery>,
    lease: Lease,
    holder?: Deno.KvEntryMaybe<WorkerBeat>,
  ): Promise<Entry<QueuedDelivery> | null> {
    return this.claim(entry, lease, holder);
  }

  /** Sets a new lease on a record if it, and the previous holder's heartbeat, are unchanged. */
  private async claim<T extends { lease?: Lease }>(
    entry: Entry<T>,
    lease: Lease,
    holder?: Deno.KvEntryMaybe<WorkerBeat>,
  ): Promise<Entry<T> | null> {
    const value = { ...entry.value, lease };
    const op = this.kv.atomic().check(entry);
    if (holder) op.check(holder);
    const res = await op.set(entry.key, value).commit();
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  /** Ends a claimed delivery: deletes it, and optionally queues its next attempt or dead letter. */
  async finishDelivery(
    entry: Entry<QueuedDelivery>,
    next: { retry?: QueuedDelivery; dead?: DeadLetter },
  ): Promise<boolean> {
    const op = this.kv.atomic().check(entry).delete(entry.key);
    if (next.retry) op.set(dqKey(next.retry.dueAt, next.retry.id), next.retry);
    if (next.dead) op.set(deadKey(next.dead.id), next.dead, { expireIn: DEAD_RETENTION_MS });
    return await commit(op);
  }

  /** Gives a claimed delivery back unchanged (shutdown): anyone may take it at once. */
  async releaseDelivery(entry: Entry<QueuedDelivery>): Promise<boolean> {
    const value = { ...entry.value };
    delete value.lease;
    return await commit(this.kv.atomic().check(entry).set(entry.key, value));
  }

  /** Dead letters, oldest first (kept for `DEAD_RETENTION_MS`). */
  async listDeadLetters(limit = 1000): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for await (const e of this.kv.list<DeadLetter>({ prefix: ["dead"] }, { limit })) {
      out.push(e.value);
    }
    return out;
  }

  /** Outbox messages and queued deliveries still waiting (tests, health, diagnostics). */
  async pendingWork(): Promise<{ outbox: number; queued: number }> {
    let outbox = 0;
    for await (const _ of this.kv.list({ prefix: ["outbox"] })) outbox++;
    return { outbox, queued: await this.countDeliveries() };
  }

  // --- rate limiting ------------------------------------------------------------------------

  /** Counts one hit for `subject` in the fixed window `window`; returns the window's count. */
  async hit(subject: string, window: number): Promise<number> {
    const key = ["rl", subject, window];
    for (let attempt = 0; attempt < 20; attempt++) {
      const e = await this.kv.get<number>(key);
      const count = (e.value ?? 0) + 1;
      // A fresh key per window, collected by KV a little after the window ends.
      const res = await this.kv.atomic().check(e).set(key, count, { expireIn: 120_000 }).commit();
      if (res.ok) return count;
    }
    return Number.MAX_SAFE_INTEGER; // hot contention on one address: treat as over the limit
  }

  // --- ingress ------------------------------------------------------------------------------
  // `["ingress-topic", clientId, topic]` → epoch ms at which the newest Web Push ingress message
  // with that RFC 8030 Topic was accepted for the client (CONTRACT §2.1). A queued ingress
  // delivery with the same Topic accepted before it is replaced (RFC 8030 §5.4).

  /** Records `at` as the newest acceptance for (client, topic); never moves backwards. */
  async markIngressTopic(
    clientId: string,
    topic: string,
    at: number,
    lifetimeMs: number,
  ): Promise<void> {
    const key = ["ingress-topic", clientId, topic];
    for (let attempt = 0; attempt < 10; attempt++) {
      const e = await this.kv.get<number>(key);
      if (e.value !== null && e.value >= at) return;
      const res = await this.kv.atomic().check(e).set(key, at, {
        expireIn: lifetimeMs + GC_MARGIN_MS,
      }).commit();
      if (res.ok) return;
    }
  }

  /** When the newest ingress message with this Topic was accepted for the client, if ever. */
  async getIngressTopic(clientId: string, topic: string): Promise<number | null> {
    return (await this.kv.get<number>(["ingress-topic", clientId, topic])).value;
  }
}
