/**
 * The fan-out of one outbox message to its topic's subscribers (README "Delivery guarantees").
 *
 * It walks the subscribers in key order, reading the next page while the current one is sent,
 * with `sendConcurrency` sends in flight; a push's fan-out to a small topic starts from the
 * list the push's look-up read. Progress is committed in order (the cursor only passes
 * subscribers whose send finished) with their retries and dead letters, every `commitEvery`
 * finished subscribers, and also every 250 ms until every subscriber is listed (the final
 * commit follows soon then), in an atomic checked against the versionstamp of its own last
 * write: a process that lost its lease fails that check and stops. It ends by deleting the
 * message, or by giving the rest back when it stops early.
 *
 * One explicit state says how far it got; a worse state always wins (a lost lease over a
 * storage error over everything else).
 *
 * @module
 */

import { describeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import {
  type DeadLetter,
  type Entry,
  FREE_LEASE,
  type OutboxMessage,
  type QueuedDelivery,
  type Registration,
  type StoredPayload,
  type Subscriber,
} from "../model.ts";
import { Semaphore } from "../async/semaphore.ts";
import type { Sealer } from "../seal.ts";
import type { Store } from "../store/mod.ts";
import type { Clock } from "../time.ts";
import { type OutboundMessage, urgencyFor } from "../transports/types.ts";
import { trailingFor } from "./coalesce.ts";
import { newId } from "./ids.ts";
import type { Leases } from "./leases.ts";
import {
  clientIdList,
  decodeClientId,
  payloadFormat,
  sameClient,
  updatePayload,
  webdavPushMessage,
} from "./payload.ts";
import type { Sender } from "./sender.ts";

/** Subscribers whose results go into one cursor commit at most (≤ 1 write each). */
const MAX_COMMIT = 250;
/**
 * A fan-out still listing its subscribers also commits its progress when this long passed since
 * the last commit.
 */
const COMMIT_INTERVAL_MS = 250;
/**
 * A fan-out to more than this many subscribers marks its messages `bulk`: Web Push may encrypt
 * them in the encryption workers (lib/crypto/ece_pool.ts).
 */
const BULK_SUBSCRIBERS = 8;

export interface FanOutOptions {
  store: Store;
  leases: Leases;
  sender: Sender;
  sealer: Sealer;
  now: Clock;
  logger: Logger;
  metrics: Metrics;
  /** True once the engine is shutting down. */
  stopping: () => boolean;
  /** `RELAY_TTL` in seconds: what each first attempt carries. */
  ttl: number;
  /** Subscriptions read per KV list call at most. */
  pageSize: number;
  /** Sends in flight. */
  sendConcurrency: number;
  /** Progress is committed every this many finished subscribers. */
  commitEvery: number;
}

/**
 * How far a fan-out got, from best to worst: still sending; every subscriber listed; the
 * message outlived its TTL; the process is stopping; a storage or send error; the lease lost.
 */
type State = "sending" | "listed" | "expired" | "stopped" | "broken" | "lost";
const RANK: Record<State, number> = {
  sending: 0,
  listed: 1,
  expired: 2,
  stopped: 3,
  broken: 4,
  lost: 5,
};

/** A message's payloads shared by its subscribers, per format (see `sharedPayloads`). */
interface SharedPayloads {
  /** Null for a trailing update, whose JSON is each subscriber's own. */
  json: StoredPayload | null;
  text: StoredPayload;
}

/** One outbound message per payload object, shared by the subscribers that get it. */
type SharedMessages = WeakMap<StoredPayload, OutboundMessage>;

interface Item {
  clientId: string;
  done: boolean;
  retry: QueuedDelivery | null;
  dead: DeadLetter | null;
}

interface Page {
  subscribers: readonly Subscriber[];
  registrations: Map<string, Registration>;
  /** Whether there may be more after this page. */
  more: boolean;
}

/** What one flush does: `force` ignores the cadence, `done` ends the fan-out when it can,
 * `touch` commits even without progress (to prove the lease is still ours). */
interface Flush {
  force?: boolean;
  done?: boolean;
  touch?: boolean;
}

export class FanOut {
  private entry: Entry<OutboxMessage>;
  private readonly m: OutboxMessage;
  private state: State = "sending";
  private readonly pending: Item[] = [];
  private chain: Promise<void> = Promise.resolve();
  /** A plain flush is queued and has not started: it will see what finishes until then. */
  private flushQueued = false;
  private lastCommit = performance.now();
  /** Whether its messages are `bulk` (decided by the first page). */
  private bulk = false;
  private readonly messages: SharedMessages = new WeakMap();

  /**
   * `listed`: the topic's whole subscriber list, read after the push arrived (the push's
   * look-up); its pages come from that list unless the fan-out already started or is for a
   * window's openers only (`only`), which it reads itself.
   */
  constructor(
    private readonly o: FanOutOptions,
    start: Entry<OutboxMessage>,
    private readonly listed?: readonly Subscriber[],
  ) {
    this.entry = start;
    this.m = start.value;
    if (start.value.cursor !== null || start.value.only !== undefined) this.listed = undefined;
  }

  private settle(state: State): void {
    if (RANK[state] > RANK[this.state]) this.state = state;
  }

  /** True while no state ended the sending. */
  private get sending(): boolean {
    if (this.state === "sending" && this.o.stopping()) this.settle("stopped");
    return this.state === "sending";
  }

  async run(): Promise<void> {
    const collapseKey = await this.o.sealer.topicHash(this.m.app, this.m.topic);
    await this.sendAll(collapseKey);
    const finished = this.state === "listed";
    await this.flush({ force: true, done: finished });
    if (this.state === "lost" || finished) return;
    if (this.state === "expired") return await this.deadLetterTheRest(collapseKey);
    await this.giveBack();
  }

  /** Sends to every subscriber, page by page, until the list ends or a state stops it. */
  private async sendAll(collapseKey: string): Promise<void> {
    const shared = this.sharedPayloads();
    const sem = new Semaphore(this.o.sendConcurrency);
    const running = new Set<Promise<void>>();
    // The first page only fills the sends in flight, so they start after one small read;
    // pages then double up to pageSize.
    let next: Promise<Page> | null = this.readPage(
      this.entry.value.cursor,
      Math.min(this.o.pageSize, this.o.sendConcurrency),
    );
    // Not awaited when the fan-out stops before its first page; its failure then concerns nobody.
    next.catch(() => {});
    let first = true;
    pull: while (next && this.sending) {
      if (this.o.now() >= this.m.expiresAt) {
        this.settle("expired");
        break;
      }
      const page: Page = await next;
      // The first page tells a small fan-out from a large one.
      if (first) this.bulk = page.more || page.subscribers.length > BULK_SUBSCRIBERS;
      first = false;
      const last = page.subscribers.at(-1)?.clientId ?? null;
      next = page.more
        ? this.readPage(last, Math.min(this.o.pageSize, 2 * page.subscribers.length))
        : null;
      // Not awaited when the loop ends early; its failure then concerns nobody.
      next?.catch(() => {});
      for (const s of page.subscribers) {
        await sem.acquire();
        if (this.sending && this.o.leases.lapsed()) {
          // Our heartbeat has run out (a stall, or storage trouble): another process may have
          // taken this message over. Prove the lease is still ours before sending more.
          await this.flush({ force: true, touch: true });
        }
        if (!this.sending) {
          sem.release();
          break pull;
        }
        const item: Item = { clientId: s.clientId, done: false, retry: null, dead: null };
        this.pending.push(item);
        const reg = page.registrations.get(s.clientId) ?? null;
        const p: Promise<void> = this.deliver(item, s, reg, collapseKey, shared).then(
          () => {
            item.done = true;
          },
          (err) => {
            this.settle("broken");
            this.o.logger.log("error", "fanout.send_error", {
              message: this.m.id,
              error: describeError(err),
            });
          },
        ).finally(() => {
          sem.release();
          running.delete(p);
          void this.flush();
        });
        running.add(p);
      }
      if (!page.more) this.settle("listed");
    }
    while (running.size > 0) await Promise.allSettled([...running]);
  }

  /**
   * The payloads every subscriber of this message gets in its registration's format: one
   * object each, so a transport serialises it once per message, not once per subscriber. A
   * trailing update's JSON differs per subscriber (computed in `deliver`); its WebDAV-Push XML
   * does not (the topic, and the latest sync-token).
   */
  private sharedPayloads(): SharedPayloads {
    const m = this.m;
    let text: StoredPayload | undefined;
    return {
      json: m.trailing ? null : { kind: "json", data: updatePayload(m) },
      // Built once, when the first WebDAV-Push subscriber needs it (most messages have none).
      get text() {
        return text ??= { kind: "text", text: webdavPushMessage(m.topic, m.syncToken) };
      },
    };
  }

  private async readPage(after: string | null, limit: number): Promise<Page> {
    const { store } = this.o;
    let subscribers: readonly Subscriber[];
    if (this.listed) {
      // The look-up's list, in pages as a KV listing would give them (client-id order).
      const from = after === null ? 0 : this.listed.findIndex((s) => s.clientId > after);
      const page = from < 0 ? [] : this.listed.slice(from, from + limit);
      const registrations = page.length > 0
        ? await store.registrations.getMany(page.map((s) => s.clientId))
        : new Map<string, Registration>();
      return {
        subscribers: page,
        registrations,
        more: from >= 0 && from + limit < this.listed.length,
      };
    }
    if (this.m.only !== undefined) {
      // A window's openers, at most a few: all of them on the first page.
      const ids = after === null ? clientIdList(this.m.only) : [];
      const found = await Promise.all(
        ids.map((id) => store.subscriptions.get(this.m.app, this.m.topic, decodeClientId(id))),
      );
      subscribers = found.filter((s): s is Subscriber => s !== null);
    } else {
      subscribers = await store.subscriptions.page(this.m.app, this.m.topic, after, limit);
    }
    // One getMany per 10 subscribers instead of one get each.
    const registrations = subscribers.length > 0
      ? await store.registrations.getMany(subscribers.map((s) => s.clientId))
      : new Map<string, Registration>();
    return {
      subscribers,
      registrations,
      more: this.m.only === undefined && subscribers.length >= limit,
    };
  }

  /** The first attempt for one subscriber; its follow-up goes into `item`. */
  private async deliver(
    item: Item,
    s: Subscriber,
    prefetched: Registration | null,
    collapseKey: string,
    shared: SharedPayloads,
  ): Promise<void> {
    const m = this.m;
    // CC/CD 70025 §6.2.2.1: a subscription is void after its expiry.
    if (s.value.exp <= this.o.now()) return;
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
    const reg = prefetched ?? await this.o.store.registrations.get(s.clientId);
    if (!reg) {
      // Subscriptions whose registration is gone (a race with pruning): clean them up.
      await this.o.store.registrations.remove(s.clientId);
      return;
    }
    // README "The client API": the update in the format the registration asked for.
    const payload: StoredPayload = payloadFormat(reg) === "webdav-push"
      ? shared.text
      : shared.json ?? { kind: "json", data: updatePayload({ topic: m.topic, ...fields }) };
    const sent = await this.o.sender.send(
      reg,
      this.outbound(payload, fields.priority, collapseKey),
      m.createdAt,
    );
    const follow = await this.o.sender.followUp(reg, sent, {
      payload,
      priority: fields.priority,
      collapseKey,
      createdAt: m.createdAt,
      expiresAt: m.expiresAt,
      attempts: 0,
      reason: "retry",
      app: m.app,
      topicHash: collapseKey,
    });
    item.retry = follow.retry ?? null;
    item.dead = follow.dead ?? null;
  }

  /**
   * The message for `payload`: one object per shared payload (a transport then prepares its
   * request once per message), or a subscriber's own for its own payload.
   */
  private outbound(
    payload: StoredPayload,
    priority: number,
    collapseKey: string,
  ): OutboundMessage {
    let message = this.messages.get(payload);
    if (!message || message.priority !== priority) {
      message = {
        payload,
        // A fan-out send is always its message's first attempt for this subscriber.
        ttl: this.o.ttl,
        urgency: urgencyFor(priority),
        priority,
        collapseKey,
        ...(this.bulk ? { bulk: true } : {}),
      };
      this.messages.set(payload, message);
    }
    return message;
  }

  /**
   * Commits the finished subscribers at the head of `pending`, one commit at a time. A plain
   * flush (one per finished send) is queued only when none is waiting to start already.
   */
  private flush(options: Flush = {}): Promise<void> {
    const plain = !options.force && !options.done && !options.touch;
    if (plain) {
      if (this.flushQueued) return this.chain;
      this.flushQueued = true;
    }
    this.chain = this.chain.then(() => {
      if (plain) this.flushQueued = false;
      return this.commit(options);
    }).catch((err) => {
      this.settle("broken");
      this.o.logger.log("error", "fanout.commit_error", {
        message: this.m.id,
        error: describeError(err),
      });
    });
    return this.chain;
  }

  private async commit({ force = false, done = false, touch = false }: Flush): Promise<void> {
    while (this.state !== "lost") {
      let n = 0;
      while (n < this.pending.length && n < MAX_COMMIT && this.pending[n]!.done) n++;
      const last = done && n === this.pending.length;
      if (n === 0 && !last && !touch) return;
      touch = false;
      // Once every subscriber is listed the final commit follows soon: no progress commits on
      // the clock then, only every `commitEvery` (which bounds what a crash sends again).
      const due = this.state === "sending" &&
        performance.now() - this.lastCommit >= COMMIT_INTERVAL_MS;
      if (!force && n < this.o.commitEvery && !due) return;
      const batch = this.pending.slice(0, n);
      const beat = this.o.leases.heartbeat();
      const next = await this.o.store.outbox.advance(this.entry, {
        cursor: batch.at(-1)?.clientId ?? this.entry.value.cursor,
        lease: this.o.leases.claim(),
        done: last,
        deliveries: batch.flatMap((i) => i.retry ? [i.retry] : []),
        dead: batch.flatMap((i) => i.dead ? [i.dead] : []),
        beat,
      });
      if (!next) {
        this.settle("lost");
        this.o.logger.log("warn", "fanout.lease_lost", { message: this.m.id });
        return;
      }
      this.o.leases.beaten(beat);
      this.entry = next;
      this.pending.splice(0, n);
      this.lastCommit = performance.now();
      if (last || !force) return;
    }
  }

  /**
   * CC/CD 70025 §5.4: never silently dropped. The message outlived its TTL before it reached
   * everyone: keep a dead letter for the rest and end the fan-out.
   */
  private async deadLetterTheRest(topicHash: string): Promise<void> {
    const now = this.o.now();
    const m = this.m;
    const {
      id: _id,
      cursor: _c,
      lease: _l,
      createdAt: _ca,
      expiresAt: _e,
      notBefore: _n,
      ...rest
    } = m;
    this.o.metrics.deliveries.inc({ transport: "any", outcome: "dead_lettered" });
    this.o.logger.log("warn", "fanout.expired", { message: m.id });
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
      remainingAfter: this.entry.value.cursor,
      app: m.app,
      topicHash,
      message: rest,
    };
    await this.o.store.outbox.advance(this.entry, {
      cursor: this.entry.value.cursor,
      lease: FREE_LEASE,
      done: true,
      dead: [dead],
    });
  }

  /**
   * Stopping, or a storage error: give the rest back so another process (or the next tick)
   * takes it over at once.
   */
  private async giveBack(): Promise<void> {
    await this.o.store.outbox.advance(this.entry, {
      cursor: this.entry.value.cursor,
      lease: FREE_LEASE,
      done: false,
    }).catch((err) =>
      this.o.logger.log("error", "fanout.release_error", {
        message: this.m.id,
        error: describeError(err),
      })
    );
  }
}
