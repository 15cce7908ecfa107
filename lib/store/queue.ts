/**
 * The delivery queue (`["dq", dueAt, id]`: one delivery to one client, due at `dueAt`) and the
 * dead letters (`["dead", id]`, kept for 7 days): what the relay gave up on is kept and
 * counted, never silently dropped.
 *
 * @module
 */

import type { Beat, DeadLetter, Entry, QueuedDelivery } from "../model.ts";
import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { writeBeat } from "./workers.ts";

/** How long dead letters are kept. */
export const DEAD_RETENTION_MS = 7 * 24 * 3600_000;

/** Adds the write of a queued delivery to an atomic. */
export function writeDelivery(op: Deno.AtomicOperation, d: QueuedDelivery): void {
  op.set(keys.delivery(d.dueAt, d.id), d);
}

/** Adds the write of a dead letter to an atomic. */
export function writeDeadLetter(op: Deno.AtomicOperation, d: DeadLetter): void {
  op.set(keys.deadLetter(d.id), d, { expireIn: DEAD_RETENTION_MS });
}

/** What ends a claimed delivery: nothing more, its next attempt, or its dead letter. */
export interface FollowUp {
  retry?: QueuedDelivery;
  dead?: DeadLetter;
}

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
}
