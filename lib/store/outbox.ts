/**
 * The outbox: one record per pushed message (`["outbox", id]`, ids time-ordered) holding its
 * fan-out cursor and lease, and the coalescing windows (`["cw", app, topic]`). A push is
 * answered only once its messages are here (CC/CD 70025 §5.4: unlisted topics count as
 * delivered, so nothing accepted may be lost).
 *
 * @module
 */

import type {
  Beat,
  CoalesceWindow,
  DeadLetter,
  Entry,
  Lease,
  OutboxMessage,
  QueuedDelivery,
} from "../model.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv } from "./kv.ts";
import { writeDeadLetter, writeDelivery } from "./queue.ts";
import { writeBeat } from "./workers.ts";

/** An outbox record to write; `versionstamp` is checked when given (null: must not exist). */
export interface OutboxWrite {
  value: OutboxMessage;
  versionstamp?: string | null;
}

/** A coalescing window to write, checked against the versionstamp it was read with. */
export interface WindowWrite {
  app: string;
  topic: string;
  value: CoalesceWindow;
  versionstamp: string | null;
}

/** One step of a fan-out, written in one atomic guarded by the holder's last write. */
export interface Advance {
  /** The last subscriber done; the record keeps its cursor when none is. */
  cursor: string | null;
  lease: Lease;
  /** Deletes the message: its fan-out is over. */
  done: boolean;
  /** Retries of the subscribers up to the cursor. */
  deliveries?: QueuedDelivery[];
  /** Dead letters of the subscribers up to the cursor. */
  dead?: DeadLetter[];
  /** Renews the holder's heartbeat in the same atomic. */
  beat?: Beat;
}

export class OutboxStore {
  constructor(private readonly kv: Kv) {}

  /**
   * Records outbox messages and coalescing windows in one atomic, durable before a push is
   * answered. `beat` refreshes the writer's heartbeat in the same atomic. Returns the commit's
   * versionstamp, or null when a check failed (another process changed a window meanwhile).
   */
  async record(write: {
    outbox: OutboxWrite[];
    windows?: WindowWrite[];
    beat?: Beat;
  }): Promise<string | null> {
    const op = this.kv.atomic();
    for (const o of write.outbox) {
      const key = keys.outbox(o.value.id);
      if (o.versionstamp !== undefined) op.check({ key, versionstamp: o.versionstamp });
      op.set(key, o.value);
    }
    for (const w of write.windows ?? []) {
      const key = keys.window(w.app, w.topic);
      op.check({ key, versionstamp: w.versionstamp });
      op.set(key, w.value, {
        expireIn: Math.max(1, w.value.until - w.value.openedAt) + GC_MARGIN_MS,
      });
    }
    if (write.beat) writeBeat(op, write.beat);
    const res = await this.kv.commitWith(op);
    return res.ok ? res.versionstamp : null;
  }

  async get(id: string): Promise<Entry<OutboxMessage> | null> {
    const e = await this.kv.get<OutboxMessage>(keys.outbox(id));
    return e.versionstamp === null ? null : (e as Entry<OutboxMessage>);
  }

  /** Outbox messages by id (missing ones are absent from the map). */
  async getMany(ids: string[]): Promise<Map<string, Entry<OutboxMessage>>> {
    const entries = await this.kv.getMany<OutboxMessage>(ids.map((id) => keys.outbox(id)));
    const out = new Map<string, Entry<OutboxMessage>>();
    for (const e of entries) if (e.value) out.set(e.value.id, e as Entry<OutboxMessage>);
    return out;
  }

  /** The oldest outbox messages (ids are time-ordered), leased or not. */
  async list(limit: number): Promise<Entry<OutboxMessage>[]> {
    return await this.kv.listAll<OutboxMessage>({ prefix: keys.outboxAll }, limit);
  }

  /** How many messages are in the outbox (a scan: status, not a hot path). */
  count(): Promise<number> {
    return this.kv.count({ prefix: keys.outboxAll });
  }

  /**
   * Advances a fan-out: new cursor and lease, plus the queued deliveries and dead letters of
   * the subscribers up to that cursor, in one atomic guarded by the versionstamp of the
   * holder's last write; `done` deletes the message instead. Returns null when another
   * process took the message over (then nothing is written). Callers keep each call within
   * KV's limits (at most 250 deliveries and dead letters: 1000 mutations, 800 KiB).
   */
  async advance(entry: Entry<OutboxMessage>, step: Advance): Promise<Entry<OutboxMessage> | null> {
    const op = this.kv.atomic().check(entry);
    const value = { ...entry.value, cursor: step.cursor, lease: step.lease };
    if (step.done) op.delete(entry.key);
    else op.set(entry.key, value);
    if (step.beat) writeBeat(op, step.beat);
    for (const d of step.deliveries ?? []) writeDelivery(op, d);
    for (const d of step.dead ?? []) writeDeadLetter(op, d);
    const res = await this.kv.commitWith(op);
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }

  /** The coalescing windows of an app's topics (entries with a null versionstamp when absent). */
  async windows(
    app: string,
    topics: string[],
  ): Promise<Map<string, Deno.KvEntryMaybe<CoalesceWindow>>> {
    const entries = await this.kv.getMany<CoalesceWindow>(topics.map((t) => keys.window(app, t)));
    const out = new Map<string, Deno.KvEntryMaybe<CoalesceWindow>>();
    topics.forEach((t, i) => out.set(t, entries[i]!));
    return out;
  }
}
