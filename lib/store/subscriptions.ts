/**
 * Subscriptions: `["sub", app, topic, clientId]` (what a fan-out reads, in client-id order),
 * with two indexes written in the same atomics, `["subc", clientId, app, topic]` (every
 * subscription of a client, for pruning) and `["subx", exp, app, topic, clientId]` (the expiry
 * sweep), a counter of `sub` records (`["stat", "subscriptions"]`) so `/metrics` reads one
 * key instead of scanning, the per-app counters of app_counts.ts, and the client's latest expiry
 * (`["rega", clientId]`, for the registration lifetime of lifetimes.ts).
 *
 * Each subscription's record is checked in the atomic that changes it, so the counters stay
 * exact when two writers race; batches stay within KV's 100 checks per atomic (the per-app
 * counters check one key per changed (client, app) pair) and its key-size budget whatever the
 * topics' lengths.
 *
 * @module
 */

import { StorageError } from "../errors.ts";
import type { Entry, Subscriber, SubscriptionValue, TransportId } from "../model.ts";
import { ActiveReads, type TopicLookUp } from "./active_reads.ts";
import { addToCounter, AppCountPlan, counterValue, readAppCounts } from "./app_counts.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv, sizedBatches, untilCommitted, utf8Length } from "./kv.ts";

/** Adds `delta` (which may be negative) to the count of `sub` records. */
function addToCount(op: Deno.AtomicOperation, delta: number): void {
  addToCounter(op, keys.subscriptionCount, delta);
}

/**
 * Subscriptions of one client and app per atomic where each is checked: KV allows 100 checks
 * per atomic, and one goes to the pair's per-app count.
 */
const CHECKED_PER_ATOMIC = 99;
/**
 * Subscriptions per atomic where each is checked and may belong to another (client, app)
 * pair, whose count is checked too.
 */
const CHECKED_PAIRS_PER_ATOMIC = 50;
/** Subscriptions listed per round when removing a client (3 or 4 mutations each). */
const LISTED_PER_ROUND = 200;
/**
 * Key bytes per atomic we allow ourselves: KV refuses more than 80 KiB of keys in one atomic,
 * and a subscription touches up to 4 keys that each repeat app, topic (up to 256 characters,
 * 1 KiB of UTF-8) and client id.
 */
const KEY_BYTES_PER_ATOMIC = 60_000;

/** Estimated key bytes of one subscription's keys (sub, subc, subx, and an old subx). */
function keyBytes(app: string, topic: string, clientId: string): number {
  return 4 * (utf8Length(app) + utf8Length(topic) + utf8Length(clientId) + 32);
}

/** Batches of checked subscription writes: `maxCount`, key bytes with a quarter of headroom. */
function checkedBatches<T>(
  items: readonly T[],
  key: (item: T) => [string, string, string],
  maxCount = CHECKED_PER_ATOMIC,
) {
  return sizedBatches(items, (i) => (keyBytes(...key(i)) * 5) / 4, KEY_BYTES_PER_ATOMIC, maxCount);
}

export class SubscriptionStore {
  private readonly activeReads: ActiveReads;

  constructor(private readonly kv: Kv) {
    this.activeReads = new ActiveReads(kv);
  }

  /**
   * Creates or refreshes (app, topic, client) with expiry `exp` for every topic (CC/CD 70025
   * §6.1.2: other subscriptions are untouched). Returns the topics that had no active
   * subscription before (new pairs).
   */
  async upsert(
    app: string,
    clientId: string,
    transport: TransportId,
    topics: string[],
    exp: number,
    now: number,
  ): Promise<string[]> {
    const expireIn = Math.max(1, exp - now) + GC_MARGIN_MS;
    const write = this.checkedWrite(app, clientId, topics, "record", (op, chunk, old, counts) => {
      const fresh: string[] = [];
      let added = 0;
      let counted = 0;
      chunk.forEach((topic, j) => {
        const e = old[j]!;
        op.check(e);
        if (e.value) op.delete(keys.subscriptionExpiry(e.value.exp, app, topic, clientId));
        else added++;
        if (!e.value?.c) counted++;
        if (!e.value || e.value.exp <= now) fresh.push(topic);
        const value: SubscriptionValue = { exp, tr: transport, c: true };
        op.set(keys.subscription(app, topic, clientId), value, { expireIn })
          .set(keys.clientSubscription(clientId, app, topic), exp, { expireIn })
          .set(keys.subscriptionExpiry(exp, app, topic, clientId), null, { expireIn });
      });
      addToCount(op, added);
      counts.add(clientId, app, counted);
      // The registration's lifetime counts from its latest subscription expiry (lifetimes.ts).
      op.max(keys.clientActiveUntil(clientId), BigInt(Math.max(0, Math.ceil(exp))));
      return fresh;
    });
    return (await write).flat();
  }

  /** Removes (app, topic, client) for every topic (CC/CD 70025 §5.2.2 unsubscribe). */
  async remove(app: string, clientId: string, topics: string[]): Promise<number> {
    const batches = await this.checkedWrite(
      app,
      clientId,
      topics,
      "remove",
      (op, chunk, old, counts) => {
        let n = 0;
        chunk.forEach((topic, j) => {
          const e = old[j]!;
          if (!e.value) return;
          n++;
          if (e.value.c) counts.add(clientId, app, -1);
          // Checked, so that a racing removal does not count the same subscription twice.
          op.check(e).delete(keys.subscription(app, topic, clientId))
            .delete(keys.clientSubscription(clientId, app, topic))
            .delete(keys.subscriptionExpiry(e.value.exp, app, topic, clientId));
        });
        if (n === 0) return null;
        addToCount(op, -n);
        return n;
      },
    );
    return batches.reduce((sum, n) => sum + n, 0);
  }

  /**
   * Read-modify-write of one client's subscriptions to `topics`, in checked batches. `plan`
   * adds a batch's mutations to `op` and returns what to report once it commits (null: nothing
   * to write); a batch whose checks failed is read and planned again.
   */
  private async checkedWrite<R>(
    app: string,
    clientId: string,
    topics: string[],
    what: "record" | "remove",
    plan: (
      op: Deno.AtomicOperation,
      chunk: string[],
      existing: Deno.KvEntryMaybe<SubscriptionValue>[],
      counts: AppCountPlan,
    ) => R | null,
  ): Promise<R[]> {
    const results: R[] = [];
    for (const chunk of checkedBatches(topics, (t) => [app, t, clientId])) {
      const result = await untilCommitted(async () => {
        const [existing, counts] = await Promise.all([
          this.kv.getMany<SubscriptionValue>(chunk.map((t) => keys.subscription(app, t, clientId))),
          AppCountPlan.read(this.kv, [[clientId, app]]),
        ]);
        const op = this.kv.atomic();
        const planned = plan(op, chunk, existing, counts);
        if (planned === null) return { planned };
        counts.apply(op);
        return (await this.kv.commit(op)) ? { planned } : undefined;
      }, () => {
        throw new StorageError(`Cannot ${what} the subscriptions: too much contention`);
      });
      if (result.planned !== null) results.push(result.planned);
    }
    return results;
  }

  /**
   * Removes every subscription of a client, in checked atomics, and returns the (app, topic)
   * pairs it removed. A racing removal of the same client never counts one twice.
   */
  async removeAllOf(clientId: string): Promise<{ app: string; topic: string }[]> {
    const removed: { app: string; topic: string }[] = [];
    while (true) {
      const batch = await this.kv.listAll<number>(
        { prefix: keys.clientSubscriptions(clientId) },
        LISTED_PER_ROUND,
      ) as Entry<number>[];
      if (batch.length === 0) break;
      const chunks = checkedBatches(
        batch,
        (e) => [appOf(e), topicOf(e), clientId],
        CHECKED_PAIRS_PER_ATOMIC,
      );
      for (const chunk of chunks) {
        // The `subc` check covers the `sub` records read here: both change in one atomic.
        const [subs, counts] = await Promise.all([
          this.kv.getMany<SubscriptionValue>(
            chunk.map((e) => keys.subscription(appOf(e), topicOf(e), clientId)),
          ),
          AppCountPlan.read(this.kv, chunk.map((e) => [clientId, appOf(e)])),
        ]);
        const op = this.kv.atomic();
        chunk.forEach((e, j) => {
          const [app, topic] = [appOf(e), topicOf(e)];
          // When the check fails, the next round of the loop lists what is left.
          op.check(e).delete(e.key).delete(keys.subscription(app, topic, clientId))
            .delete(keys.subscriptionExpiry(e.value, app, topic, clientId));
          if (subs[j]?.value?.c) counts.add(clientId, app, -1);
        });
        addToCount(op, -chunk.length);
        counts.apply(op);
        if (await this.kv.commit(op)) {
          for (const e of chunk) removed.push({ app: appOf(e), topic: topicOf(e) });
        }
      }
    }
    return removed;
  }

  /**
   * How many subscriptions are stored (active ones, plus expired ones the sweep has not
   * reached yet): one read of a counter kept in the same atomics as the records, never a scan.
   */
  async count(): Promise<number> {
    return counterValue(await this.kv.get<Deno.KvU64>(keys.subscriptionCount));
  }

  /**
   * Each app's counted subscriptions (expired ones included until the sweep removes them) and
   * registrations (clients holding at least one): two counter reads per app, never a scan.
   */
  appCounts(
    apps: readonly string[],
  ): Promise<Map<string, { subscriptions: number; registrations: number }>> {
    return readAppCounts(this.kv, apps);
  }

  /**
   * True when (app, topic) has at least one unexpired subscription; concurrent calls for one
   * topic share a read (active_reads.ts).
   */
  async hasActiveSubscriber(app: string, topic: string, now: number): Promise<boolean> {
    return (await this.activeReads.lookUp(app, topic, now)).active;
  }

  /**
   * {@link hasActiveSubscriber}, with the topic's whole subscriber list when it is small
   * (active_reads.ts), for the push's fan-out.
   */
  lookUp(app: string, topic: string, now: number): Promise<TopicLookUp> {
    return this.activeReads.lookUp(app, topic, now);
  }

  /** One page of a topic's subscribers in client-id order, after `after`. Includes expired ones. */
  async page(
    app: string,
    topic: string,
    after: string | null,
    limit: number,
  ): Promise<Subscriber[]> {
    const prefix = keys.topicSubscriptions(app, topic);
    const selector: Deno.KvListSelector = after === null
      ? { prefix }
      : { prefix, start: [...prefix, `${after}\u0000`] };
    const out: Subscriber[] = [];
    for await (const e of this.kv.list<SubscriptionValue>(selector, { limit, batchSize: limit })) {
      out.push({ clientId: e.key[3] as string, value: e.value });
    }
    return out;
  }

  /** One subscription of a topic, for a fan-out restricted to one client. */
  async get(app: string, topic: string, clientId: string): Promise<Subscriber | null> {
    const e = await this.kv.get<SubscriptionValue>(keys.subscription(app, topic, clientId));
    return e.value ? { clientId, value: e.value } : null;
  }

  /**
   * Removes up to `limit` subscriptions whose expiry has passed (CC/CD 70025 §6.2.1.6 MUST),
   * in atomics of at most 100 subscriptions (one check and three deletes each). Idempotent; a
   * subscription refreshed meanwhile keeps its record and only loses the stale index entry.
   * Returns how many subscriptions it removed; what contention leaves is the next run's.
   */
  async sweepExpired(now: number, limit: number): Promise<number> {
    const due = await this.kv.listAll<null>(keys.expiriesUntil(now), limit);
    let removed = 0;
    for (let i = 0; i < due.length; i += CHECKED_PAIRS_PER_ATOMIC) {
      const chunk = due.slice(i, i + CHECKED_PAIRS_PER_ATOMIC).map((e) => {
        const [, exp, app, topic, clientId] = e.key as [string, number, string, string, string];
        return { key: e.key, exp, app, topic, clientId };
      });
      removed += await untilCommitted(async () => {
        const current = await this.kv.getMany<SubscriptionValue>(
          chunk.map((x) => keys.subscription(x.app, x.topic, x.clientId)),
        );
        const gone = chunk.filter((x, j) => current[j]?.value?.exp === x.exp);
        const counts = await AppCountPlan.read(this.kv, gone.map((x) => [x.clientId, x.app]));
        const op = this.kv.atomic();
        let n = 0;
        chunk.forEach((x, j) => {
          op.delete(x.key);
          const sub = current[j];
          if (sub?.value && sub.value.exp === x.exp) {
            op.check(sub).delete(sub.key).delete(
              keys.clientSubscription(x.clientId, x.app, x.topic),
            );
            if (sub.value.c) counts.add(x.clientId, x.app, -1);
            n++;
          }
        });
        addToCount(op, -n);
        counts.apply(op);
        return (await this.kv.commit(op)) ? n : undefined;
      }, () => 0);
    }
    return removed;
  }
}

const appOf = (e: Entry<number>) => e.key[2] as string;
const topicOf = (e: Entry<number>) => e.key[3] as string;
