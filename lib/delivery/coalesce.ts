/**
 * Coalescing (CC/CD 70025 §8.3 MAY; README "Delivery guarantees"), as pure functions: how the
 * messages of one topic become outbox records, given the topic's open window.
 *
 * The first update of a topic goes out at once and opens a window of `coalesceMs`; updates
 * inside it are merged into one trailing update per window, fanned out when the window closes,
 * which gives each subscriber the latest timestamp and the highest priority of the merged
 * updates it did not originate itself (§7.1), and the latest message's sync-token. A message's
 * `client-id` may name several clients (README "The gateway protocol"); each of them counts as
 * an originator of that message. A window's openers (the clients the opening message excluded,
 * so they got nothing) each get the next update not excluding them at once. Different topics
 * are never merged, and every subscriber's payload is computed on its own, so nothing is merged
 * across clients. What a record cannot track within its size budget is sent at once instead:
 * sending is always allowed, merging only may be.
 *
 * @module
 */

import {
  type Aggregate,
  type ClientIds,
  type CoalesceWindow,
  type Entry,
  FREE_LEASE,
  type Lease,
  type OutboxMessage,
  type PushMessage,
  type ServedOpeners,
  type TrailingUpdate,
} from "../model.ts";
import { parseRfc3339 } from "../time.ts";
import { clientIdList, sameClient } from "./payload.ts";

/** Distinct origins one trailing update tracks; a message from one more is sent at once. */
export const MAX_ORIGINS = 16;
/** Estimated bytes of the origins' client-ids one trailing update keeps at most. */
export const MAX_ORIGIN_BYTES = 12 * 1024;
/**
 * Estimated bytes of the openers a window tracks at most; a message excluding more opens no
 * window (it and the next message go out at once).
 */
export const MAX_OPENER_BYTES = 6 * 1024;
/**
 * An upper bound of a trailing update and its window beyond their messages' strings, within
 * KV's 64 KiB per value: origins (their ids twice for groups), openers, a sync-token of 1024
 * characters (at most 4 UTF-8 bytes each) and the fixed fields.
 */
export const TRAILING_BYTES = 2 * MAX_ORIGIN_BYTES + 2 * MAX_OPENER_BYTES + MAX_ORIGINS * 200 +
  8192;

/** Estimated stored size of client-ids (two bytes per UTF-16 unit, plus framing). */
export function idBytes(ids: readonly string[]): number {
  return ids.reduce((n, id) => n + 2 * id.length + 8, 0);
}

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
    ...(m.syncToken !== undefined ? { syncToken: m.syncToken } : {}),
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

/** The timestamp and priority part of an aggregate (a group's also lists its ids). */
function plain(a: Aggregate): Aggregate {
  return { timestamp: a.timestamp, ms: a.ms, priority: a.priority };
}

/**
 * What one subscriber gets from a trailing update: the merge of every update it did not
 * originate itself (§7.1), and, for an opener served during the window, only of those after
 * the one it got at once; null when there is none.
 */
export function trailingFor(t: TrailingUpdate, clientId: string): Aggregate | null {
  for (const g of t.served ?? []) {
    if (sameClient(clientId, g.ids)) return g.agg ?? null;
  }
  if (t.opener !== undefined && sameClient(clientId, t.opener)) return t.openerAgg ?? null;
  let agg: Aggregate | undefined;
  for (const [origin, a] of Object.entries(t.byOrigin)) {
    if (origin !== "" && sameClient(clientId, origin)) continue;
    agg = agg ? mergeAggregate(agg, a) : a;
  }
  for (const g of Object.values(t.byGroup ?? {})) {
    if (sameClient(clientId, g.ids)) continue;
    agg = agg ? mergeAggregate(agg, g) : plain(g);
  }
  return agg ?? null;
}

/** What one topic's messages become. */
export interface TopicPlan {
  /** New outbox messages to fan out at once (held by the context's lease). */
  immediate: OutboxMessage[];
  /** The window's trailing update, new or merged into, if anything was merged. */
  trailing: { value: OutboxMessage; versionstamp?: string | null } | null;
  /** The window to write: an already closed one when no message could open one. */
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

/** One id as a string, several as an array. */
function asClientIds(ids: string[]): ClientIds {
  return ids.length === 1 ? ids[0]! : ids;
}

/** Where a message's updates are merged: by its one origin ("" for none), or as a group. */
function originOf(m: PushMessage): { key: string; group: string[] | null } {
  const ids = clientIdList(m.clientId);
  if (ids.length <= 1) return { key: ids[0] ?? "", group: null };
  const sorted = [...ids].sort();
  return { key: JSON.stringify(sorted), group: sorted };
}

/** Whether a trailing update can merge one more message of `origin` within its budget. */
function fits(t: TrailingUpdate | undefined, origin: ReturnType<typeof originOf>): boolean {
  const byGroup = t?.byGroup ?? {};
  if (origin.group ? origin.key in byGroup : t !== undefined && origin.key in t.byOrigin) {
    return true;
  }
  const singles = Object.keys(t?.byOrigin ?? {});
  if (singles.length + Object.keys(byGroup).length >= MAX_ORIGINS) return false;
  const bytes = idBytes(singles) +
    2 * Object.values(byGroup).reduce((n, g) => n + idBytes(g.ids), 0) +
    (origin.group ? 2 * idBytes(origin.group) : idBytes([origin.key]));
  return bytes <= MAX_ORIGIN_BYTES;
}

/**
 * Adds an update to the merges of the openers served before it; members it excludes keep
 * their merge as it was, so a group splits in two.
 */
function addToServed(
  served: ServedOpeners[] | undefined,
  m: PushMessage,
): ServedOpeners[] | undefined {
  if (!served) return undefined;
  return served.flatMap((g) => {
    const told = g.ids.filter((id) => !sameClient(id, m.clientId));
    const own = g.ids.filter((id) => sameClient(id, m.clientId));
    const out: ServedOpeners[] = [];
    if (told.length > 0) out.push({ ids: told, agg: mergeAggregate(g.agg, m) });
    if (own.length > 0) out.push({ ids: own, ...(g.agg ? { agg: g.agg } : {}) });
    return out;
  });
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
  let trailing = w?.trailing ? unstartedTrailing(input.trailing, w) : null;
  if (w?.trailing && !trailing) w = null; // its trailing update already went out: a new window
  let merged = 0;
  for (const m of input.messages) {
    if (!w) {
      immediate.push(record(m));
      trailing = null;
      // Openers past the budget cannot be tracked: no window, so the next update goes out at
      // once (to them among everyone).
      if (idBytes(clientIdList(m.clientId)) <= MAX_OPENER_BYTES) w = newWindow(m, ctx);
      continue;
    }
    const origin = originOf(m);
    if (!fits(trailing?.value.trailing, origin)) {
      immediate.push(record(m));
      continue;
    }
    const servedNow = serveOpeners(w, m);
    if (servedNow.length > 0) {
      // These openers have had no update in this window: this one is their first, so it goes
      // out to them at once (and is merged for everyone else).
      const first = record(m);
      delete first.clientId;
      immediate.push({ ...first, only: asClientIds(servedNow) });
    }
    if (!trailing) {
      trailing = { value: newTrailing(record(m), w) };
      w.trailing = trailing.value.id;
    }
    mergeInto(trailing.value, m, origin, servedNow);
    merged++;
  }
  const closed: CoalesceWindow = { openedAt: now, until: now, openerServed: true, trailing: null };
  return { immediate, trailing, window: w ?? closed, merged };
}

/** A window opened by `m`: its excluded clients are the openers, not served yet. */
function newWindow(m: PushMessage, ctx: { now: number; coalesceMs: number }): CoalesceWindow {
  return {
    openedAt: ctx.now,
    until: ctx.now + ctx.coalesceMs,
    ...(m.clientId !== undefined ? { opener: m.clientId } : {}),
    openerServed: m.clientId === undefined,
    trailing: null,
  };
}

/** The openers `m` serves (those it does not exclude); the rest keep waiting in `w`. */
function serveOpeners(w: CoalesceWindow, m: PushMessage): string[] {
  if (w.openerServed || w.opener === undefined) return [];
  const waiting = clientIdList(w.opener);
  const served = waiting.filter((id) => !sameClient(id, m.clientId));
  if (served.length === 0) return [];
  const left = waiting.filter((id) => sameClient(id, m.clientId));
  if (left.length === 0) {
    delete w.opener;
    w.openerServed = true;
  } else w.opener = asClientIds(left);
  return served;
}

/** Merges `m` into a trailing update: its origin, the served openers, the totals. */
function mergeInto(
  value: OutboxMessage,
  m: PushMessage,
  origin: ReturnType<typeof originOf>,
  servedNow: string[],
): void {
  const t = value.trailing!;
  const served = addToServed(t.served, m);
  if (served) t.served = served;
  if (servedNow.length > 0) (t.served ??= []).push({ ids: servedNow });
  if (origin.group) {
    const groups = t.byGroup ??= {};
    const before = groups[origin.key];
    groups[origin.key] = { ...mergeAggregate(before, m), ids: origin.group };
  } else {
    t.byOrigin[origin.key] = mergeAggregate(t.byOrigin[origin.key], m);
  }
  let all: Aggregate | undefined;
  for (const a of [...Object.values(t.byOrigin), ...Object.values(t.byGroup ?? {})]) {
    all = mergeAggregate(all, a);
  }
  value.timestamp = all!.timestamp;
  value.priority = all!.priority;
  // The latest message's token names the collection's state after every merged change; an
  // older one would be stale, so a latest message without one leaves none.
  if (m.syncToken !== undefined) value.syncToken = m.syncToken;
  else delete value.syncToken;
}

/** The window if it is still open, as a copy to change. */
function openWindow(window: CoalesceWindow | null, now: number): CoalesceWindow | null {
  return window && window.until > now ? { ...window } : null;
}

/**
 * The window's trailing update, as a copy to merge into, if it has not started yet. A record
 * written before `served` existed is read into that form.
 */
function unstartedTrailing(
  t: Entry<OutboxMessage> | null,
  w: CoalesceWindow,
): TopicPlan["trailing"] {
  if (
    !t || t.value.id !== w.trailing || t.value.lease.owner !== "" || t.value.cursor !== null
  ) {
    return null;
  }
  const value = structuredClone(t.value);
  const tu = value.trailing!;
  if (tu.opener !== undefined) {
    if (w.openerServed) {
      (tu.served ??= []).push({ ids: [tu.opener], ...(tu.openerAgg ? { agg: tu.openerAgg } : {}) });
    }
    delete tu.opener;
    delete tu.openerAgg;
  }
  return { value, versionstamp: t.versionstamp };
}

/** A trailing update built from a record: unleased, due when the window closes. */
function newTrailing(base: OutboxMessage, w: CoalesceWindow): OutboxMessage {
  const value: OutboxMessage = {
    ...base,
    lease: FREE_LEASE,
    notBefore: w.until,
    trailing: { byOrigin: {} },
  };
  delete value.clientId;
  return value;
}
