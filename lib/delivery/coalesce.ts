/**
 * Coalescing (CC/CD 70025 §8.3 MAY; README "Delivery guarantees"), as pure functions: how the
 * messages of one topic become outbox records, given the topic's open window.
 *
 * The first update of a topic goes out at once and opens a window of `coalesceMs`; updates
 * inside it are merged into one trailing update per window, fanned out when the window closes,
 * which gives each subscriber the latest timestamp and the highest priority of the merged
 * updates it did not originate itself (§7.1). A window's opener (the client whose change opened
 * it, so it got nothing) gets the next update of someone else at once. Different topics are
 * never merged, and every subscriber's payload is computed on its own, so nothing is merged
 * across clients.
 *
 * @module
 */

import {
  type Aggregate,
  type CoalesceWindow,
  type Entry,
  FREE_LEASE,
  type Lease,
  type OutboxMessage,
  type PushMessage,
  type TrailingUpdate,
} from "../model.ts";
import { parseRfc3339 } from "../time.ts";
import { sameClient } from "./payload.ts";

/**
 * Distinct origins one trailing update tracks; a message from one more is sent at once. With
 * client-ids of up to 256 characters this keeps a trailing record well under KV's 64 KiB.
 */
export const MAX_ORIGINS = 16;

/** How new records are made: their time, lifetime, lease and ids. */
export interface RecordContext {
  now: number;
  ttlMs: number;
  lease: Lease;
  newId: () => string;
}

/** A new outbox record for message `m` of `app`, unstarted (no cursor), held by `ctx.lease`. */
export function outboxRecord(app: string, m: PushMessage, ctx: RecordContext): OutboxMessage {
  return {
    id: ctx.newId(),
    app,
    topic: m.topic,
    timestamp: m.timestamp,
    priority: m.priority,
    ...(m.clientId !== undefined ? { clientId: m.clientId } : {}),
    createdAt: ctx.now,
    expiresAt: ctx.now + ctx.ttlMs,
    cursor: null,
    lease: ctx.lease,
  };
}

/** Merges one update into an aggregate: the latest timestamp, the highest priority. */
export function mergeAggregate(
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
export function trailingFor(t: TrailingUpdate, clientId: string): Aggregate | null {
  if (t.opener !== undefined && sameClient(clientId, t.opener)) return t.openerAgg ?? null;
  let agg: Aggregate | undefined;
  for (const [origin, a] of Object.entries(t.byOrigin)) {
    if (origin !== "" && sameClient(clientId, origin)) continue;
    agg = agg ? mergeAggregate(agg, a) : a;
  }
  return agg ?? null;
}

/** What one topic's messages become. */
export interface TopicPlan {
  /** New outbox messages to fan out at once (held by the context's lease). */
  immediate: OutboxMessage[];
  /** The window's trailing update, new or merged into, if anything was merged. */
  trailing: { value: OutboxMessage; versionstamp?: string | null } | null;
  window: CoalesceWindow;
  merged: number;
}

/** The input of {@linkcode planTopic}: a topic's messages and its window as last read. */
export interface TopicInput {
  app: string;
  topic: string;
  messages: PushMessage[];
  window: CoalesceWindow | null;
  trailing: Entry<OutboxMessage> | null;
}

/** Plans one topic's messages against its window (see the module documentation). */
export function planTopic(
  input: TopicInput,
  ctx: RecordContext & { coalesceMs: number },
): TopicPlan {
  const { now } = ctx;
  const immediate: OutboxMessage[] = [];
  const record = (m: PushMessage) => outboxRecord(input.app, m, ctx);
  let w = openWindow(input.window, now);
  let trailing = w?.trailing ? unstartedTrailing(input.trailing, w.trailing) : null;
  if (w?.trailing && !trailing) w = null; // its trailing update already went out: a new window
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
    const byOrigin = trailing ? trailing.value.trailing!.byOrigin : undefined;
    if (byOrigin && !(origin in byOrigin) && Object.keys(byOrigin).length >= MAX_ORIGINS) {
      immediate.push(record(m));
      continue;
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
      trailing = { value: newTrailing(record(m), w) };
      w.trailing = trailing.value.id;
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

/** The window if it is still open, as a copy to change. */
function openWindow(window: CoalesceWindow | null, now: number): CoalesceWindow | null {
  return window && window.until > now ? { ...window } : null;
}

/** The window's trailing update, as a copy to merge into, if it has not started yet. */
function unstartedTrailing(
  t: Entry<OutboxMessage> | null,
  id: string,
): TopicPlan["trailing"] {
  if (!t || t.value.id !== id || t.value.lease.owner !== "" || t.value.cursor !== null) {
    return null;
  }
  return { value: structuredClone(t.value), versionstamp: t.versionstamp };
}

/** A trailing update built from a record: unleased, due when the window closes. */
function newTrailing(base: OutboxMessage, w: CoalesceWindow): OutboxMessage {
  const value: OutboxMessage = {
    ...base,
    lease: FREE_LEASE,
    notBefore: w.until,
    trailing: { byOrigin: {}, ...(w.opener !== undefined ? { opener: w.opener } : {}) },
  };
  delete value.clientId;
  return value;
}
