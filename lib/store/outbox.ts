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
import { deadLetterMutation, deliveryMutation } from "./queue.ts";
import { beatMutation } from "./workers.ts";

/**
 * Retries and dead letters an advance may carry and still be committed with other callers'
 * writes (`Kv.commitGrouped`); larger ones (the progress of big fan-outs) go alone.
 */
const GROUPED_FOLLOW_UPS = 8;

/**
 * How long the final commit of a small fan-out (the message's deletion, with its retries) may
 * wait for a commit that cannot wait, such as the next push's record, to go with it. A crash
 * meanwhile sends the message again, as after any fan-out step that was not yet committed.
 */
export const END_LINGER_MS = 10;

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
   * Records outbox messages and coalescing windows atomically, durable before a push is
   * answered, in a group commit with other callers' writes (`Kv.commitGrouped`: new pushes and
   * the ends of finished fan-outs share one KV commit). `beat` refreshes the writer's heartbeat
   * in the same atomic. Returns the commit's versionstamp, or null when a check failed
   * (another process changed a window meanwhile).
   */
  async record(write: {
    outbox: OutboxWrite[];
    windows?: WindowWrite[];
    beat?: Beat;
  }): Promise<string | null> {
    const checks: Deno.AtomicCheck[] = [];
    const mutations: Deno.KvMutation[] = [];
    for (const o of write.outbox) {
      const key = keys.outbox(o.value.id);
      if (o.versionstamp !== undefined) checks.push({ key, versionstamp: o.versionstamp });
      mutations.push({ type: "set", key, value: o.value });
    }
    for (const w of write.windows ?? []) {
      const key = keys.window(w.app, w.topic);
      checks.push({ key, versionstamp: w.versionstamp });
      mutations.push({
        type: "set",
        key,
        value: w.value,
        expireIn: Math.max(1, w.value.until - w.value.openedAt) + GC_MARGIN_MS,
      });
    }
    if (write.beat) mutations.push(beatMutation(write.beat));
    const res = await this.kv.commitGrouped({ checks, mutations });
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
   * KV's limits (at most 250 deliveries and dead letters: 1000 mutations, 800 KiB). A small
   * step (the end of a small fan-out, say) shares a group commit with other callers' writes.
   */
  async advance(entry: Entry<OutboxMessage>, step: Advance): Promise<Entry<OutboxMessage> | null> {
    const value = { ...entry.value, cursor: step.cursor, lease: step.lease };
    const mutations: Deno.KvMutation[] = [
      step.done ? { type: "delete", key: entry.key } : { type: "set", key: entry.key, value },
    ];
    if (step.beat) mutations.push(beatMutation(step.beat));
    for (const d of step.deliveries ?? []) mutations.push(deliveryMutation(d));
    for (const d of step.dead ?? []) mutations.push(deadLetterMutation(d));
    const part = { checks: [{ key: entry.key, versionstamp: entry.versionstamp }], mutations };
    const res = mutations.length <= 2 + GROUPED_FOLLOW_UPS
      ? await this.kv.commitGrouped(part, step.done ? { lingerMs: END_LINGER_MS } : {})
      : await this.kv.commitWith(this.kv.atomic().check(...part.checks).mutate(...mutations));
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
