/**
 * The admin service (README "Admin API and page"), on plain values: the relay's status (per
 * app, per transport, queue depth, circuit breakers, the upstream), and the dead letters,
 * listed without secrets, retried and deleted. routes/admin.ts is its HTTP side.
 *
 * A dead letter is shown by id, app, transport, client id, topic hash, attempts, last status,
 * reason and times: never the topic, payload, endpoint, device token or keys. Records written
 * before those fields existed are listed with what they have (null for the rest).
 *
 * @module
 */

import { type AppConfig, ConfigError } from "./config.ts";
import { newId } from "./delivery/ids.ts";
import { decodeBase64Url, encodeBase64Url, fromUtf8, timingSafeEqual, utf8 } from "./encoding.ts";
import { RelayError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { type DeadLetter, FREE_LEASE, type QueuedDelivery, type TransportId } from "./model.ts";
import type { Store } from "./store/mod.ts";
import type { Requeue } from "./store/queue.ts";
import { type Clock, formatRfc3339 } from "./time.ts";
import type { UpstreamStatus } from "./upstream.ts";

export interface AdminOptions {
  store: Store;
  metrics: Metrics;
  /** The delivery engine's circuit breakers. */
  breakers: { open(now: number): { key: string; forMs: number }[] };
  apps: readonly AppConfig[];
  /** How an app is shown: its id, or a label for a path-secret app (whose id is a secret). */
  appLabel: (app: string) => string;
  /** The configured transports. */
  transports: readonly TransportId[];
  now: Clock;
  /** `RELAY_TTL` in seconds: the lifetime a retried dead letter gets. */
  ttl: number;
  /** When this process started (epoch ms): the delivery counts are since then. */
  startedAt: number;
  /** The upstream's state when relaying is on; null or absent when it is off. */
  upstream?: (() => Promise<UpstreamStatus>) | undefined;
  /** Starts a background pass at once, so that a retried dead letter goes out now. */
  wake: () => void;
}

/** Delivery outcomes, as `relay_deliveries_total` counts them (README "Metrics"). */
export const OUTCOMES = [
  "delivered",
  "pruned",
  "retried",
  "dead_lettered",
  "failed",
  "replaced",
  "short_circuited",
  "coalesced",
] as const;

/** Dead letters a list request reads at most, however few of them match its filters. */
const SCAN_LIMIT = 1000;

/** A dead letter as the admin API shows it. */
export interface DeadLetterView {
  id: string;
  app: string | null;
  transport: TransportId | null;
  "client-id": string | null;
  "topic-hash": string | null;
  /** `fan-out`: the subscribers a fan-out had not reached when its message expired. */
  kind: "fan-out" | QueuedDelivery["reason"];
  attempts: number;
  "last-status": number | null;
  reason: string;
  "last-error": string | null;
  "created-at": string;
  "dead-at": string;
  "expires-at": string;
  retryable: boolean;
}

export interface DeadLetterQuery {
  app?: string;
  transport?: TransportId;
  limit: number;
  cursor?: string;
}

/** How a retry ended. */
export type RetryResult =
  | { kind: "queued"; id: string }
  | { kind: "unknown" }
  | { kind: "not-retryable"; message: string };

/**
 * Refuses an admin token equal to an app's token: app tokens are never admin credentials.
 *
 * @throws {ConfigError} naming `RELAY_ADMIN_TOKEN`
 */
export function checkAdminToken(token: string | null, apps: readonly AppConfig[]): void {
  if (token === null) return;
  if (apps.some((a) => a.token !== null && timingSafeEqual(a.token, token))) {
    throw new ConfigError("RELAY_ADMIN_TOKEN", "must differ from every app token");
  }
}

const ID = /^[0-9A-Za-z_-]{1,64}$/;
const CURSOR_PREFIX = "dl1:";

function encodeCursor(id: string): string {
  return encodeBase64Url(utf8(CURSOR_PREFIX + id));
}

function decodeCursor(cursor: string): string {
  let text = "";
  try {
    text = fromUtf8(decodeBase64Url(cursor));
  } catch { /* reported below */ }
  const id = text.startsWith(CURSOR_PREFIX) ? text.slice(CURSOR_PREFIX.length) : "";
  if (!ID.test(id)) {
    throw new RelayError(400, "invalid-cursor", "cursor is not one this relay gave");
  }
  return id;
}

/** Whether a dead letter is the rest of a fan-out (see `DeadLetter`). */
const isFanOutRest = (d: DeadLetter) => d.clientId === "" && d.remainingAfter !== undefined;

export class Admin {
  constructor(private readonly o: AdminOptions) {}

  /** The status: one counter read per app, three queue scans, and in-process figures. */
  async status(): Promise<Record<string, unknown>> {
    const { store, metrics } = this.o;
    const now = this.o.now();
    const ids = this.o.apps.map((a) => a.id);
    const [counts, subscriptions, outbox, queued, dead] = await Promise.all([
      store.subscriptions.appCounts(ids),
      store.subscriptions.count(),
      store.outbox.count(),
      store.queue.count(),
      store.queue.countDead(),
    ]);
    const deliveries = (transport: string) =>
      Object.fromEntries(
        OUTCOMES.map((o) => [o, metrics.deliveries.get({ transport, outcome: o })]),
      );
    return {
      "generated-at": formatRfc3339(now),
      "started-at": formatRfc3339(this.o.startedAt),
      subscriptions,
      apps: ids.map((id) => ({
        app: this.o.appLabel(id),
        subscriptions: counts.get(id)?.subscriptions ?? 0,
        registrations: counts.get(id)?.registrations ?? 0,
      })),
      // "any": what concerns no single transport (merged updates, an expired fan-out's rest).
      transports: [...this.o.transports, "any"].map((t) => ({
        transport: t,
        deliveries: deliveries(t),
      })),
      queue: { outbox, queued, "dead-letters": dead },
      breakers: this.o.breakers.open(now).map((b) => ({ service: b.key, "open-for-ms": b.forMs })),
      upstream: (await this.o.upstream?.()) ?? null,
    };
  }

  /** Dead letters, newest first, filtered by app label and transport, one page at a time. */
  async deadLetters(
    q: DeadLetterQuery,
  ): Promise<{ "dead-letters": DeadLetterView[]; "next-cursor": string | null }> {
    const before = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const page = await this.o.store.queue.deadLetters({
      ...(before !== undefined ? { before } : {}),
      limit: q.limit,
      scanLimit: SCAN_LIMIT,
      match: (d) =>
        (q.app === undefined || (d.app !== undefined && this.o.appLabel(d.app) === q.app)) &&
        (q.transport === undefined || d.transport === q.transport),
    });
    return {
      "dead-letters": page.entries.map((e) => this.view(e.key[1] as string, e.value)),
      "next-cursor": page.next === null ? null : encodeCursor(page.next),
    };
  }

  private view(id: string, d: DeadLetter): DeadLetterView {
    const fanOut = isFanOutRest(d);
    // Older records kept the topic hash only as the collapse key of fan-out retries; an
    // ingress message's collapse key is its RFC 8030 Topic, which is not ours to show.
    const topicHash = d.topicHash ?? (d.reason === "retry" ? d.collapseKey : undefined) ?? null;
    return {
      id,
      app: d.app === undefined ? null : this.o.appLabel(d.app),
      transport: d.transport ?? null,
      "client-id": fanOut || d.clientId === "" ? null : d.clientId,
      "topic-hash": topicHash,
      kind: fanOut ? "fan-out" : d.reason,
      attempts: d.attempts,
      "last-status": d.lastStatus ?? null,
      reason: d.why,
      "last-error": d.lastError?.slice(0, 200) ?? null,
      "created-at": formatRfc3339(d.createdAt),
      "dead-at": formatRfc3339(d.deadAt),
      "expires-at": formatRfc3339(d.expiresAt),
      retryable: !fanOut || (d.message !== undefined && d.app !== undefined),
    };
  }

  /**
   * Queues a dead letter again, as new work: attempts start at 0 and its lifetime is
   * `RELAY_TTL` from now. A single delivery becomes a queued delivery to its client; a
   * fan-out's rest becomes an outbox message that resumes after the subscriber where the
   * fan-out stopped, reaching the subscribers of the topic after that one.
   */
  async retry(id: string): Promise<RetryResult> {
    const entry = ID.test(id) ? await this.o.store.queue.getDead(id) : null;
    if (!entry) return { kind: "unknown" };
    const d = entry.value;
    const now = this.o.now();
    const expiresAt = now + Math.max(1, this.o.ttl) * 1000;
    const newIdNow = newId(now);
    let next: Requeue;
    if (isFanOutRest(d)) {
      if (d.message === undefined || d.app === undefined) {
        return {
          kind: "not-retryable",
          message: "This dead letter was recorded without what a retry needs",
        };
      }
      next = {
        outbox: {
          ...d.message,
          id: newIdNow,
          createdAt: now,
          expiresAt,
          cursor: d.remainingAfter ?? null,
          lease: FREE_LEASE,
        },
      };
    } else {
      const {
        deadAt: _d,
        why: _w,
        transport: _t,
        remainingAfter: _r,
        message: _m,
        lastError: _e,
        lastStatus: _s,
        ...rest
      } = d;
      next = {
        delivery: {
          ...rest,
          id: newIdNow,
          dueAt: now,
          ttl: this.o.ttl,
          attempts: 0,
          createdAt: now,
          expiresAt,
        },
      };
    }
    if (!(await this.o.store.queue.requeueDead(entry, next))) return { kind: "unknown" };
    this.o.wake();
    return { kind: "queued", id: newIdNow };
  }

  /** Deletes a dead letter; false when there is none with that id. */
  async remove(id: string): Promise<boolean> {
    const entry = ID.test(id) ? await this.o.store.queue.getDead(id) : null;
    return entry !== null && await this.o.store.queue.deleteDead(entry);
  }
}
