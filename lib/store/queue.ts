/**
 * The delivery queue (`["dq", dueAt, id]`: one delivery to one client, due at `dueAt`) and the
 * dead letters (`["dead", id]`, kept for 7 days): what the relay gave up on is kept and
 * counted, never silently dropped; the admin API lists, deletes and requeues them.
 *
 * @module
 */

import type { Beat, DeadLetter, Entry, OutboxMessage, QueuedDelivery } from "../model.ts";
import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { writeBeat } from "./workers.ts";

/** How long dead letters are kept. */
export const DEAD_RETENTION_MS = 7 * 24 * 3600_000;

/** The write of a queued delivery. */
export function deliveryMutation(d: QueuedDelivery): Deno.KvMutation {
  return { type: "set", key: keys.delivery(d.dueAt, d.id), value: d };
}

/** The write of a dead letter. */
export function deadLetterMutation(d: DeadLetter): Deno.KvMutation {
  return { type: "set", key: keys.deadLetter(d.id), value: d, expireIn: DEAD_RETENTION_MS };
}

/** Adds the write of a queued delivery to an atomic. */
export function writeDelivery(op: Deno.AtomicOperation, d: QueuedDelivery): void {
  op.mutate(deliveryMutation(d));
}

/** Adds the write of a dead letter to an atomic. */
export function writeDeadLetter(op: Deno.AtomicOperation, d: DeadLetter): void {
  op.mutate(deadLetterMutation(d));
}

/** What ends a claimed delivery: nothing more, its next attempt, or its dead letter. */
export interface FollowUp {
  retry?: QueuedDelivery;
  dead?: DeadLetter;
}

/** A page of dead letters, newest first. */
export interface DeadLetterPage {
  entries: Entry<DeadLetter>[];
  /** The id to continue before (exclusive); null when the list ended. */
  next: string | null;
}

/** What a requeued dead letter becomes: a queued delivery, or an outbox message to resume. */
export type Requeue = { delivery: QueuedDelivery } | { outbox: OutboxMessage };

export class QueueStore {
  constructor(private readonly kv: Kv) {}

  /** Queues one delivery (and renews `beat`); returns its entry, for the process sending it. */
  async put(d: QueuedDelivery, beat?: Beat): Promise<Entry<QueuedDelivery>> {
    const key = keys.delivery(d.dueAt, d.id);
    const op = this.kv.atomic();
    writeDelivery(op, d);
    if (beat) writeBeat(op, beat);
    const res = await this.kv.commitWith(op);
    return { key, value: d, versionstamp: res.versionstamp };
  }

  /** Deliveries due at or before `now` (leased ones included; the caller checks leases). */
  async listDue(now: number, limit: number): Promise<Entry<QueuedDelivery>[]> {
    return await this.kv.listAll<QueuedDelivery>(keys.deliveriesDue(now), limit);
  }

  /** Ends a claimed delivery: deletes it, and queues its next attempt or its dead letter. */
  async finish(entry: Entry<QueuedDelivery>, next: FollowUp): Promise<boolean> {
    const op = this.kv.atomic().check(entry).delete(entry.key);
    if (next.retry) writeDelivery(op, next.retry);
    if (next.dead) writeDeadLetter(op, next.dead);
    return await this.kv.commit(op);
  }

  /** Gives a claimed delivery back unchanged (shutdown): anyone may take it at once. */
  async release(entry: Entry<QueuedDelivery>): Promise<boolean> {
    const value = { ...entry.value };
    delete value.lease;
    return await this.kv.commit(this.kv.atomic().check(entry).set(entry.key, value));
  }

  /** How many deliveries are queued, due or not (a scan: status, not a hot path). */
  count(): Promise<number> {
    return this.kv.count({ prefix: keys.deliveriesAll });
  }

  /** How many dead letters are kept (a scan: status, not a hot path). */
  countDead(): Promise<number> {
    return this.kv.count({ prefix: keys.deadLettersAll });
  }

  /**
   * Dead letters newest first (ids are time-ordered), before the id `before` when given:
   * up to `limit` that `match`, reading at most `scanLimit` records. `next` is where the next
   * page starts, also when the scan stopped before `limit` matched.
   */
  async deadLetters(options: {
    before?: string;
    limit: number;
    scanLimit: number;
    match: (d: DeadLetter) => boolean;
  }): Promise<DeadLetterPage> {
    const { limit, scanLimit, match } = options;
    const selector: Deno.KvListSelector = options.before === undefined
      ? { prefix: keys.deadLettersAll }
      : { prefix: keys.deadLettersAll, end: keys.deadLetter(options.before) };
    const entries: Entry<DeadLetter>[] = [];
    let scanned = 0;
    const list = this.kv.list<DeadLetter>(selector, {
      reverse: true,
      limit: scanLimit,
      batchSize: Math.min(scanLimit, 500),
    });
    for await (const e of list) {
      scanned++;
      const id = e.key[1] as string;
      if (match(e.value)) {
        // One more match than the page holds: there is a next page, starting after the last.
        if (entries.length === limit) return { entries, next: entries.at(-1)!.key[1] as string };
        entries.push(e);
      }
      if (scanned === scanLimit) return { entries, next: id };
    }
    return { entries, next: null };
  }

  async getDead(id: string): Promise<Entry<DeadLetter> | null> {
    const e = await this.kv.get<DeadLetter>(keys.deadLetter(id));
    return e.versionstamp === null ? null : (e as Entry<DeadLetter>);
  }

  /** Deletes a dead letter; false when it is gone (or changed) meanwhile. */
  async deleteDead(entry: Entry<DeadLetter>): Promise<boolean> {
    return await this.kv.commit(this.kv.atomic().check(entry).delete(entry.key));
  }

  /**
   * Replaces a dead letter by new work in one atomic: false when the dead letter is gone (or
   * changed) meanwhile, so two retries of one dead letter never queue it twice.
   */
  async requeueDead(entry: Entry<DeadLetter>, next: Requeue): Promise<boolean> {
    const op = this.kv.atomic().check(entry).delete(entry.key);
    if ("delivery" in next) writeDelivery(op, next.delivery);
    else {op.check({ key: keys.outbox(next.outbox.id), versionstamp: null })
        .set(keys.outbox(next.outbox.id), next.outbox);}
    return await this.kv.commit(op);
  }
}
