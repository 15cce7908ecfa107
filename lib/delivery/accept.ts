/**
 * Accepting pushes: messages are recorded in the KV outbox before the push is answered
 * (CC/CD 70025 §5.4), and fan out at once.
 *
 * Group commit: pushes that arrive while a record is being written are recorded together in
 * the next atomic(s), one KV commit (and one fsync) for many requests instead of one each, and
 * same-topic pushes no longer race each other's coalescing-window checks. Each request still
 * resolves only once its own messages are durable, and fails with the commit that carried
 * them. Merging requests is what one request with several messages already does: the
 * coalescing plan treats the messages of a topic in arrival order. The record commits
 * themselves go through `Kv.commitGrouped`, so they share KV commits with the ends of other
 * fan-outs too.
 *
 * A push hands over what its look-up listed of a small topic's subscribers, and the fan-out
 * starts from that list instead of reading it again.
 *
 * @module
 */

import type { Metrics } from "../metrics.ts";
import type { Entry, OutboxMessage, PushMessage, Subscriber } from "../model.ts";
import { keys, sizedBatches, type Store } from "../store/mod.ts";
import type { OutboxWrite, WindowWrite } from "../store/outbox.ts";
import { untilCommitted } from "../store/kv.ts";
import type { Clock } from "../time.ts";
import {
  idBytes,
  outboxRecord,
  planTopic,
  type RecordContext,
  TRAILING_BYTES,
} from "./coalesce.ts";
import { newId } from "./ids.ts";
import type { Leases } from "./leases.ts";
import { clientIdList } from "./payload.ts";

/** Topics per accept atomic with coalescing (≤ 2 checks each; KV allows 100). */
const TOPICS_PER_ATOMIC = 20;
/** Messages gathered into one group commit of pushes at most (one request is never split). */
const GROUP_COMMIT_MESSAGES = 1000;
/** Records per accept atomic (KV: 1000 mutations). */
const RECORDS_PER_ATOMIC = 400;
/** Estimated bytes per accept atomic (KV: 800 KiB). */
const BYTES_PER_ATOMIC = 500_000;
/** Attempts of a coalesced accept before it records every message plainly instead. */
const COALESCE_ATTEMPTS = 8;

const encoder = new TextEncoder();

/** About the serialised size of a value in KV (its JSON in UTF-8, plus its key). */
function sizeOf(value: unknown): number {
  return encoder.encode(JSON.stringify(value)).length + 128;
}

/** Rough serialised size of an outbox record for `m` (UTF-8 strings plus the fixed fields). */
function recordBytes(m: PushMessage): number {
  return 300 + encoder.encode(m.topic).length * 2 + idBytes(clientIdList(m.clientId)) +
    (m.syncToken === undefined ? 0 : encoder.encode(m.syncToken).length * 2);
}

export interface AccepterOptions {
  store: Store;
  leases: Leases;
  metrics: Metrics;
  now: Clock;
  random: () => number;
  /** `RELAY_TTL` in seconds. */
  ttl: number;
  /** `RELAY_COALESCE_MS`; 0 records every message plainly. */
  coalesceMs: number;
  /**
   * Starts the fan-out of a message this process holds; `listed` is its topic's whole
   * subscriber list as the push's look-up read it, when the topic is small.
   */
  fanOut: (entry: Entry<OutboxMessage>, listed?: readonly Subscriber[]) => void;
  /** Wakes the engine at `at` (a trailing update becomes due). */
  wakeAt: (at: number) => void;
}

/** Small topics' subscriber lists by topic, as a push's look-up read them. */
export type Listed = ReadonlyMap<string, readonly Subscriber[]>;

interface Pending {
  app: string;
  messages: PushMessage[];
  listed: Listed | undefined;
  resolve: () => void;
  reject: (err: unknown) => void;
}

const NOTHING_LISTED: Listed = new Map();

/** The lists of several requests: a later request's list of a topic is the later read. */
function mergeListed(reqs: Pending[]): Listed {
  if (reqs.length === 1) return reqs[0]!.listed ?? NOTHING_LISTED;
  const out = new Map<string, readonly Subscriber[]>();
  for (const r of reqs) for (const [t, list] of r.listed ?? []) out.set(t, list);
  return out;
}

export class Accepter {
  private readonly queue: Pending[] = [];
  private draining = false;

  constructor(private readonly o: AccepterOptions) {}

  /**
   * Records messages durably, then starts their fan-out. Resolves once they are durable.
   * `listed`: small topics' subscriber lists, read after the request arrived.
   */
  accept(app: string, messages: PushMessage[], listed?: Listed): Promise<void> {
    if (messages.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ app, messages, listed, resolve, reject });
      if (!this.draining) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const byApp = new Map<string, Pending[]>();
        for (const req of this.takeBatch()) {
          const list = byApp.get(req.app);
          if (list) list.push(req);
          else byApp.set(req.app, [req]);
        }
        await Promise.all([...byApp].map(async ([app, reqs]) => {
          try {
            await this.record(app, reqs.flatMap((r) => r.messages), mergeListed(reqs));
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

  /** The next requests to commit together: up to 1000 messages, at least one request. */
  private takeBatch(): Pending[] {
    let n = 0;
    let take = 0;
    while (take < this.queue.length && (take === 0 || n < GROUP_COMMIT_MESSAGES)) {
      n += this.queue[take]!.messages.length;
      take++;
    }
    return this.queue.splice(0, take);
  }

  private async record(app: string, messages: PushMessage[], listed: Listed): Promise<void> {
    if (this.o.coalesceMs <= 0) {
      await this.recordPlain(app, messages, listed);
    } else {
      const byTopic = new Map<string, PushMessage[]>();
      for (const m of messages) {
        const list = byTopic.get(m.topic);
        if (list) list.push(m);
        else byTopic.set(m.topic, [m]);
      }
      const size = (t: string) =>
        TRAILING_BYTES + byTopic.get(t)!.reduce((n, m) => n + recordBytes(m), 0);
      const topics = [...byTopic.keys()];
      for (const chunk of sizedBatches(topics, size, BYTES_PER_ATOMIC, TOPICS_PER_ATOMIC)) {
        await this.recordCoalesced(app, chunk, byTopic, listed);
      }
    }
    this.o.metrics.pushesReceived.inc({}, messages.length);
  }

  private context(): RecordContext {
    const now = this.o.now();
    return {
      now,
      ttlMs: this.o.ttl * 1000,
      lease: this.o.leases.forNewWork(),
      newId: () => newId(now),
    };
  }

  /** Records messages without coalescing. */
  private async recordPlain(app: string, messages: PushMessage[], listed: Listed): Promise<void> {
    const ctx = this.context();
    await this.commitRecords(messages.map((m) => outboxRecord(app, m, ctx)), { extra: [] }, listed);
  }

  private async recordCoalesced(
    app: string,
    topics: string[],
    byTopic: Map<string, PushMessage[]>,
    listed: Listed,
  ): Promise<void> {
    await untilCommitted(async (attempt) => {
      if (attempt > 0) {
        // Another push changed one of these windows meanwhile: read them again.
        await new Promise((r) => setTimeout(r, Math.floor(this.o.random() * 5 * attempt)));
      }
      const ctx = { ...this.context(), coalesceMs: this.o.coalesceMs };
      const windows = await this.o.store.outbox.windows(app, topics);
      const trailingIds = [...windows.values()].flatMap((w) =>
        w.value?.trailing && w.value.until > ctx.now ? [w.value.trailing] : []
      );
      const trailing = await this.o.store.outbox.getMany(trailingIds);
      const records: OutboxMessage[] = [];
      const extra: OutboxWrite[] = [];
      const windowWrites: WindowWrite[] = [];
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
        }, ctx);
        records.push(...plan.immediate);
        if (plan.trailing) {
          extra.push(plan.trailing);
          wakeAt = Math.min(wakeAt, plan.trailing.value.notBefore ?? ctx.now);
        }
        windowWrites.push({ app, topic, value: plan.window, versionstamp: w.versionstamp });
        merged += plan.merged;
      }
      const checked = { extra, windows: windowWrites };
      if (!(await this.commitRecords(records, checked, listed))) return undefined;
      if (merged > 0) {
        this.o.metrics.deliveries.inc({ transport: "any", outcome: "coalesced" }, merged);
      }
      if (wakeAt < Infinity) this.o.wakeAt(wakeAt);
      return true;
    }, async () => {
      // Hot contention on these windows: deliver every message rather than fail the push.
      await this.recordPlain(app, topics.flatMap((t) => byTopic.get(t)!), listed);
      return true;
    }, COALESCE_ATTEMPTS);
  }

  /**
   * Writes new outbox records (and window changes) and starts the leased ones. The windows,
   * the trailing updates and the first records go in one checked atomic; records that do not
   * fit (a request with very many messages for one topic) follow in further atomics, which need
   * no check (fresh ids). Returns false, having written nothing, when a check failed.
   */
  private async commitRecords(
    records: OutboxMessage[],
    checked: { extra: OutboxWrite[]; windows?: WindowWrite[] },
    listed: Listed,
  ): Promise<boolean> {
    const windows = checked.windows ?? [];
    let budget = BYTES_PER_ATOMIC - checked.extra.reduce((n, o) => n + sizeOf(o.value), 0) -
      windows.reduce((n, w) => n + sizeOf(w), 0);
    let slots = RECORDS_PER_ATOMIC - checked.extra.length - windows.length;
    let i = 0;
    for (; i < records.length && slots > 0; i++, slots--) {
      const n = sizeOf(records[i]);
      if (n > budget) break;
      budget -= n;
    }
    if (!(await this.commitRun(records.slice(0, i), checked.extra, windows, listed))) return false;
    const rest = records.slice(i);
    for (const run of sizedBatches(rest, sizeOf, BYTES_PER_ATOMIC, RECORDS_PER_ATOMIC)) {
      await this.commitRun(run, [], [], listed);
    }
    return true;
  }

  private async commitRun(
    records: OutboxMessage[],
    extra: OutboxWrite[],
    windows: WindowWrite[],
    listed: Listed,
  ): Promise<boolean> {
    const { leases } = this.o;
    const mine = records.filter((r) => r.lease.owner === leases.owner);
    for (const r of mine) leases.hold(`o:${r.id}`);
    const beat = leases.heartbeat();
    let versionstamp: string | null;
    try {
      versionstamp = await this.o.store.outbox.record({
        outbox: [...records.map((value) => ({ value })), ...extra],
        windows,
        ...(mine.length > 0 ? { beat } : {}),
      });
    } catch (err) {
      for (const r of mine) leases.unhold(`o:${r.id}`);
      throw err;
    }
    if (versionstamp === null) {
      for (const r of mine) leases.unhold(`o:${r.id}`);
      return false;
    }
    if (mine.length > 0) leases.beaten(beat);
    for (const r of mine) {
      this.o.fanOut({ key: keys.outbox(r.id), value: r, versionstamp }, listed.get(r.topic));
    }
    return true;
  }
}
