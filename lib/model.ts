/**
 * The records every part of the relay shares: what a device registered, what an application
 * server subscribed and pushed, and the durable delivery work (outbox messages, queued
 * deliveries, dead letters) with their leases. Plain data, as stored in Deno KV; the store
 * (lib/store/) reads and writes them, delivery (lib/delivery/) works on them.
 *
 * @module
 */

import type { Target, TransportId } from "./transports/types.ts";

export type { Target, TransportId };

/**
 * What a device's update payloads look like (README "The client API"): the relay's JSON
 * (`cc-dav-push`, the default), or the WebDAV-Push `push-message` XML (draft-bitfire-webdav-push
 * §Push Message) for a Web Push subscription a WebDAV-Push client gave to the bridge.
 */
export type PayloadFormat = "cc-dav-push" | "webdav-push";

/** A device as registered through `POST /registrations` (README "The client API"). */
export interface Registration {
  clientId: string;
  target: Target;
  createdAt: number;
  /** The Web Push ingress push resource, when the client asked for one. */
  ingress?: { id: string; vapidPublicKey?: string };
  /** Set only for `webdav-push`; absent means `cc-dav-push`. */
  payload?: "webdav-push";
}

/** One (app, topic, client) subscription. */
export interface SubscriptionValue {
  /** Epoch ms after which the subscription is void (CC/CD 70025 §6.2.2.1). */
  exp: number;
  tr: TransportId;
  /**
   * Counted in its app's subscription and registration counters. Records written before
   * those counters existed lack it: they are counted once they are refreshed, and never
   * subtracted.
   */
  c?: true;
}

/** A subscriber of a topic, as a fan-out reads it. */
export interface Subscriber {
  clientId: string;
  value: SubscriptionValue;
}

/**
 * The clients a message is not delivered to (CC/CD 70025 §7.1): one `client-id`, or several
 * (README "The gateway protocol": an array of at most 100, always two or more distinct ids
 * once validated; one id is kept as a string).
 */
export type ClientIds = string | string[];

/** One validated push message (CC/CD 70025 §6.1.3). */
export interface PushMessage {
  topic: string;
  priority: number;
  /** RFC 3339 UTC. */
  timestamp: string;
  clientId?: ClientIds;
  /** The collection's sync-token, carried into `webdav-push` payloads (never empty). */
  syncToken?: string;
}

/**
 * A claim on outbox or queue work. Valid while `until` lies ahead and the owner's heartbeat
 * (`WorkerBeat`) is fresh; `owner: ""` is unclaimed.
 */
export interface Lease {
  owner: string;
  until: number;
}

/** No one holds the work: anyone may claim it. */
export const FREE_LEASE: Lease = { owner: "", until: 0 };

/** A worker's heartbeat. */
export interface WorkerBeat {
  /** The worker counts as alive until then. */
  until: number;
}

/** A heartbeat to write, with the owner it belongs to. */
export interface Beat {
  owner: string;
  value: WorkerBeat;
}

/** Latest timestamp and highest priority of the updates merged for one origin. */
export interface Aggregate {
  /** RFC 3339 UTC, the latest. */
  timestamp: string;
  /** `timestamp` in epoch ms, for comparison. */
  ms: number;
  priority: number;
}

/** The merged updates of messages that excluded several clients at once. */
export interface GroupAggregate extends Aggregate {
  /** The excluded client-ids, sorted and distinct. */
  ids: string[];
}

/**
 * Openers that got an update of the window at once (at the same message), and what they get
 * from the trailing update: the updates merged after that one which did not exclude them.
 */
export interface ServedOpeners {
  ids: string[];
  agg?: Aggregate;
}

/** A coalesced trailing update (CC/CD 70025 §8.3), fanned out once its window closes. */
export interface TrailingUpdate {
  /** Merged updates by the one originating `client-id` ("" for messages without one). */
  byOrigin: Record<string, Aggregate>;
  /** Merged updates of messages with several client-ids, by their sorted ids as JSON. */
  byGroup?: Record<string, GroupAggregate>;
  /** Openers already served, each group with its own merge (see {@linkcode ServedOpeners}). */
  served?: ServedOpeners[];
  /** Records written before `served` existed: the one opener, and what it gets. */
  opener?: string;
  openerAgg?: Aggregate;
}

/** The open coalescing window of (app, topic). */
export interface CoalesceWindow {
  openedAt: number;
  /** Updates before this are merged into `trailing`. */
  until: number;
  /** The clients the opening message excluded that have not had an update yet. */
  opener?: ClientIds;
  /** True once every opener got an update of this window (or there is no opener). */
  openerServed: boolean;
  /** Outbox id of the trailing update, once something was merged. */
  trailing: string | null;
}

/** A pushed message waiting for (or in) fan-out. */
export interface OutboxMessage {
  id: string;
  app: string;
  topic: string;
  /** RFC 3339 UTC. */
  timestamp: string;
  priority: number;
  clientId?: ClientIds;
  /** The sync-token for `webdav-push` payloads; a trailing update's is its latest message's. */
  syncToken?: string;
  createdAt: number;
  /** After this the message is not worth delivering (createdAt + TTL). */
  expiresAt: number;
  /** Last client id fanned out to; null before the first page. */
  cursor: string | null;
  lease: Lease;
  /** Deliver to these subscribers only (a window's openers, see `CoalesceWindow`). */
  only?: ClientIds;
  /** Not to be fanned out before this time (a trailing update waits for its window). */
  notBefore?: number;
  /** Set on a trailing update: each subscriber's payload is computed from it. */
  trailing?: TrailingUpdate;
}

/**
 * What a queued delivery sends: a relay payload (JSON, or the WebDAV-Push XML text), or an
 * already-encrypted ingress body.
 */
export type StoredPayload =
  | { kind: "json"; data: Record<string, unknown> }
  | { kind: "text"; text: string }
  | { kind: "encrypted"; body: Uint8Array };

/** One entry of an HTTP `Via` list (RFC 9110 §7.6.3), comments left out. */
export interface ViaHop {
  /** `received-protocol`, e.g. `1.1` or `HTTP/1.1`. */
  protocol: string;
  /** `received-by`: a host (with port) or a pseudonym such as a relay's id. */
  receivedBy: string;
}

/**
 * Where a queued delivery to the upstream gateway comes from (README "Relaying to another
 * gateway"): the app whose push it carries (its topic-to-gateway map learns from the answer)
 * and the push's incoming `Via` list, which the forwarded request extends.
 */
export interface UpstreamOrigin {
  app: string;
  via: ViaHop[];
}

/**
 * One delivery waiting in the delivery queue: to one client, or (`reason: "upstream"`, with
 * `clientId: ""` and `upstream` set) one push request to the upstream gateway whose payload is
 * the JSON body to send.
 */
export interface QueuedDelivery {
  id: string;
  dueAt: number;
  clientId: string;
  reason: "ack" | "retry" | "trailing" | "ingress" | "upstream";
  payload: StoredPayload;
  priority: number;
  /** The TTL a first attempt carries (RFC 8030 §5.2). */
  ttl: number;
  collapseKey?: string;
  attempts: number;
  createdAt: number;
  expiresAt: number;
  lease?: Lease;
  lastError?: string;
  /** Set on a delivery to the upstream gateway. */
  upstream?: UpstreamOrigin;
  /** The push service's status on the last attempt, when it answered one. */
  lastStatus?: number;
  /** The app whose push this delivers (absent for ingress messages and older records). */
  app?: string;
  /** The keyed hash of the DAV topic it is about (absent for acks, ingress and older records). */
  topicHash?: string;
}

/**
 * A delivery given up on (too many attempts, past its TTL, or refused for good), kept and
 * counted rather than dropped. `clientId: ""` with `remainingAfter` marks a fan-out whose
 * message expired before it reached every subscriber (those after that cursor); `message`
 * then holds what a retry needs to resume it. Records written before `transport`, `app`,
 * `topicHash`, `lastStatus` and `message` existed lack them and are listed all the same.
 */
export interface DeadLetter extends Omit<QueuedDelivery, "lease"> {
  deadAt: number;
  why: string;
  /** The transport of the client it was for (absent for a fan-out's rest). */
  transport?: TransportId;
  remainingAfter?: string | null;
  /** A fan-out's rest: the message to resume after `remainingAfter`. */
  message?: FanOutRest;
}

/** What an outbox message is, without its progress: enough to resume its fan-out. */
export type FanOutRest = Omit<
  OutboxMessage,
  "id" | "cursor" | "lease" | "createdAt" | "expiresAt" | "notBefore"
>;

/** A KV entry that exists: its key, value and versionstamp. */
export type Entry<T> = { key: Deno.KvKey; value: T; versionstamp: string };
