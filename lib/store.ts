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
 * - `["outbox", id]` → OutboxMessage: one pushed message and its fan-out position
 * - `["dq", dueAt, id]` → QueuedDelivery: one delivery to one client (acks, retries, trailing
 *   coalesced updates); `["dead", id]` → dead letters
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

export interface Lease {
  owner: string;
  until: number;
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
  /** For coalesced trailing deliveries: `${app}\u0000${topic}\u0000${clientId}`. */
  coalesceKey?: string;
  lease?: Lease;
  lastError?: string;
}

export interface DeadLetter extends QueuedDelivery {
  deadAt: number;
  why: string;
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

/** Subscriptions per atomic: 3 or 4 mutations each stays under KV's 1000. */
const SUBS_PER_ATOMIC = 200;
/** KV garbage collection margin after a record's logical expiry. */
const GC_MARGIN_MS = 3600_000;

async function getManyChunked<T>(kv: Deno.Kv, keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
  const chunks: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
  for (let i = 0; i < keys.length; i += 10) chunks.push(kv.getMany<T[]>(keys.slice(i, i + 10)));
  return (await Promise.all(chunks)).flat();
}

async function commit(op: Deno.AtomicOperation): Promise<boolean> {
  const res = await op.commit();
  return res.ok;
}

/** The relay's storage API. Every method converts KV failures into `StorageError`. */
export class Store {
  constructor(readonly kv: Deno.Kv) {
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
  async getOrCreateMeta<T>(name: string, create: () => T): Promise<{ value: T; created: boolean }> {
    const key = ["meta", name];
    const existing = await this.kv.get<T>(key);
    if (existing.versionstamp !== null) return { value: existing.value as T, created: false };
    const value = create();
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
      const op = this.kv.atomic();
      for (const e of batch) {
        const app = e.key[2] as string;
        const topic = e.key[3] as string;
        op.delete(e.key).delete(subKey(app, topic, clientId)).delete(
          subExpiryKey(e.value, app, topic, clientId),
        );
        removed.push({ app, topic });
      }
      await op.commit();
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
    const created: string[] = [];
    const expireIn = Math.max(1, exp - now) + GC_MARGIN_MS;
    for (let i = 0; i < topics.length; i += SUBS_PER_ATOMIC) {
      const chunk = topics.slice(i, i + SUBS_PER_ATOMIC);
      const existing = await getManyChunked<SubscriptionValue>(
        this.kv,
        chunk.map((t) => subKey(app, t, clientId)),
      );
      const op = this.kv.atomic();
      chunk.forEach((topic, j) => {
        const old = existing[j]?.value;
        if (old) op.delete(subExpiryKey(old.exp, app, topic, clientId));
        if (!old || old.exp <= now) created.push(topic);
        const value: SubscriptionValue = { exp, tr: transport };
        op.set(subKey(app, topic, clientId), value, { expireIn })
          .set(subClientKey(clientId, app, topic), exp, { expireIn })
          .set(subExpiryKey(exp, app, topic, clientId), null, { expireIn });
      });
      await op.commit();
    }
    return created;
  }

  /** Removes (app, topic, client) for every topic (CC/CD 70025 §5.2.2 unsubscribe). */
  async removeSubscriptions(app: string, clientId: string, topics: string[]): Promise<number> {
    let removed = 0;
    for (let i = 0; i < topics.length; i += SUBS_PER_ATOMIC) {
      const chunk = topics.slice(i, i + SUBS_PER_ATOMIC);
      const existing = await getManyChunked<SubscriptionValue>(
        this.kv,
        chunk.map((t) => subKey(app, t, clientId)),
      );
      const op = this.kv.atomic();
      chunk.forEach((topic, j) => {
        const old = existing[j]?.value;
        if (!old) return;
        removed++;
        op.delete(subKey(app, topic, clientId)).delete(subClientKey(clientId, app, topic)).delete(
          subExpiryKey(old.exp, app, topic, clientId),
        );
      });
      await op.commit();
    }
    return removed;
  }

  /** True when (app, topic) has at least one unexpired subscription. */
  async hasActiveSubscriber(app: string, topic: string, now: number): Promise<boolean> {
    for await (
      const e of this.kv.list<SubscriptionValue>({ prefix: ["sub", app, topic] }, {
        batchSize: 100,
      })
    ) {
      if (e.value.exp > now) return true;
    }
    return false;
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
   * Removes up to `limit` subscriptions whose expiry has passed (CC/CD 70025 §6.2.1.6 MUST).
   * Idempotent; a refreshed subscription keeps its record and only loses the stale index entry.
   */
  async sweepExpired(now: number, limit: number): Promise<number> {
    const due: Entry<null>[] = [];
    for await (
      const e of this.kv.list<null>({ start: ["subx"], end: ["subx", now + 1] }, { limit })
    ) due.push(e as Entry<null>);
    let removed = 0;
    for (let i = 0; i < due.length; i += SUBS_PER_ATOMIC) {
      const chunk = due.slice(i, i + SUBS_PER_ATOMIC);
      const current = await getManyChunked<SubscriptionValue>(
        this.kv,
        chunk.map((e) => subKey(e.key[2] as string, e.key[3] as string, e.key[4] as string)),
      );
      const op = this.kv.atomic();
      chunk.forEach((e, j) => {
        const [, exp, app, topic, clientId] = e.key as [string, number, string, string, string];
        op.delete(e.key);
        const sub = current[j];
        if (sub?.value && sub.value.exp === exp) {
          op.check(sub as Deno.KvEntry<SubscriptionValue>).delete(sub.key).delete(
            subClientKey(clientId, app, topic),
          );
          removed++;
        }
      });
      if (!(await commit(op))) i -= SUBS_PER_ATOMIC; // refreshed meanwhile: read again
    }
    return removed;
  }

  // --- outbox -------------------------------------------------------------------------------

  /** Records pushed messages in one atomic: durable before the push is answered. */
  async putOutbox(messages: OutboxMessage[]): Promise<void> {
    if (messages.length === 0) return;
    const op = this.kv.atomic();
    for (const m of messages) op.set(outboxKey(m.id), m);
    const res = await op.commit();
    if (!res.ok) throw new StorageError("Cannot record the push: atomic commit failed");
  }

  async getOutbox(id: string): Promise<Entry<OutboxMessage> | null> {
    const e = await this.kv.get<OutboxMessage>(outboxKey(id));
    return e.versionstamp === null ? null : (e as Entry<OutboxMessage>);
  }

  async listOutbox(limit: number): Promise<Entry<OutboxMessage>[]> {
    const out: Entry<OutboxMessage>[] = [];
    for await (const e of this.kv.list<OutboxMessage>({ prefix: ["outbox"] }, { limit })) {
      out.push(e as Entry<OutboxMessage>);
    }
    return out;
  }

  /** Takes over an outbox message if it is unchanged since read. */
  async claimOutbox(
    entry: Entry<OutboxMessage>,
    lease: Lease,
  ): Promise<Entry<OutboxMessage> | null> {
    const value = { ...entry.value, lease };
    const res = await this.kv.atomic().check(entry).set(entry.key, value).commit();
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  /**
   * Advances a fan-out: new cursor and lease, plus the page's queued deliveries (retries,
   * trailing updates), in one atomic guarded by the lease's versionstamp. `done` deletes the
   * message instead. Returns null when another process took the message over.
   */
  async advanceOutbox(
    entry: Entry<OutboxMessage>,
    update: { cursor: string | null; lease: Lease; done: boolean },
    deliveries: QueuedDelivery[],
  ): Promise<Entry<OutboxMessage> | null> {
    const op = this.kv.atomic().check(entry);
    const value = { ...entry.value, cursor: update.cursor, lease: update.lease };
    if (update.done) op.delete(entry.key);
    else op.set(entry.key, value);
    for (const d of deliveries) op.set(dqKey(d.dueAt, d.id), d);
    const res = await op.commit();
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  // --- delivery queue -----------------------------------------------------------------------

  async enqueueDeliveries(deliveries: QueuedDelivery[]): Promise<void> {
    for (let i = 0; i < deliveries.length; i += 500) {
      const op = this.kv.atomic();
      for (const d of deliveries.slice(i, i + 500)) op.set(dqKey(d.dueAt, d.id), d);
      await op.commit();
    }
  }

  /** Replaces a queued delivery's value in place (coalescing merges into a trailing update). */
  async updateDelivery(d: QueuedDelivery): Promise<void> {
    await this.kv.set(dqKey(d.dueAt, d.id), d);
  }

  async getDelivery(dueAt: number, id: string): Promise<Entry<QueuedDelivery> | null> {
    const e = await this.kv.get<QueuedDelivery>(dqKey(dueAt, id));
    return e.versionstamp === null ? null : (e as Entry<QueuedDelivery>);
  }

  /** Deliveries due at or before `now` (leased ones included; the caller checks leases). */
  async listDueDeliveries(now: number, limit: number): Promise<Entry<QueuedDelivery>[]> {
    const out: Entry<QueuedDelivery>[] = [];
    for await (
      const e of this.kv.list<QueuedDelivery>({ start: ["dq"], end: ["dq", now + 1] }, { limit })
    ) out.push(e as Entry<QueuedDelivery>);
    return out;
  }

  async countDeliveries(): Promise<number> {
    let n = 0;
    for await (const _ of this.kv.list({ prefix: ["dq"] })) n++;
    return n;
  }

  async claimDelivery(
    entry: Entry<QueuedDelivery>,
    lease: Lease,
  ): Promise<Entry<QueuedDelivery> | null> {
    const value = { ...entry.value, lease };
    const res = await this.kv.atomic().check(entry).set(entry.key, value).commit();
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  /** Ends a claimed delivery: deletes it, and optionally queues its next attempt or dead letter. */
  async finishDelivery(
    entry: Entry<QueuedDelivery>,
    next: { retry?: QueuedDelivery; dead?: DeadLetter },
  ): Promise<boolean> {
    const op = this.kv.atomic().check(entry).delete(entry.key);
    if (next.retry) op.set(dqKey(next.retry.dueAt, next.retry.id), next.retry);
    if (next.dead) op.set(["dead", next.dead.id], next.dead);
    return await commit(op);
  }

  /** Records a dead letter for a delivery that was never queued (first attempt of a fan-out). */
  async finishDeliveryDead(dead: DeadLetter): Promise<void> {
    await this.kv.set(["dead", dead.id], dead);
  }

  async listDeadLetters(limit = 1000): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for await (const e of this.kv.list<DeadLetter>({ prefix: ["dead"] }, { limit })) {
      out.push(e.value);
    }
    return out;
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
}
