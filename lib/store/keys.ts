/**
 * Every Deno KV key the relay writes, built here and nowhere else. The layout:
 *
 * | key | value | written by |
 * |---|---|---|
 * | `["meta", name]` | generated secrets and keys, kept across restarts (`relay-id`: this relay's name in `Via`; `probe`: the start-up round trip on Deno Deploy) | meta.ts, preflight.ts |
 * | `["reg", clientId]` | `Registration` | registrations.ts |
 * | `["regt", targetHash]` | clientId: one client per device (FCM/APNs token; Web Push endpoint and keys; older Web Push entries: the endpoint alone) | registrations.ts |
 * | `["regl", clientId]` | `RegistrationLife`: when the registration was made or renewed, and when the lifetime sweep looks at it next | registrations.ts, lifetimes.ts |
 * | `["regx", checkAt, clientId]` | null: the lifetime sweep's index, one entry per registration | registrations.ts, lifetimes.ts |
 * | `["rega", clientId]` | `Deno.KvU64`: the latest expiry any subscription of the client was given (a `max` in the atomics that write subscriptions) | subscriptions.ts |
 * | `["sub", app, topic, clientId]` | `SubscriptionValue`, with the per-app counters' mark (fan-out reads this prefix) | subscriptions.ts |
 * | `["subc", clientId, app, topic]` | expiry: every subscription of a client | subscriptions.ts |
 * | `["subx", expiresAt, app, topic, clientId]` | null: the expiry sweep (CC/CD 70025 §6.2.1.6) | subscriptions.ts |
 * | `["stat", "subscriptions"]` | `Deno.KvU64`: how many `sub` records exist, kept in the atomics that write them | subscriptions.ts |
 * | `["stat", "app-subscriptions", app]` | `Deno.KvU64`: the app's counted `sub` records (same atomics) | app_counts.ts |
 * | `["stat", "app-clients", app]` | `Deno.KvU64`: clients with at least one counted subscription of the app | app_counts.ts |
 * | `["stat", "client-app", clientId, app]` | `ClientAppCount`: a client's counted subscriptions of an app, checked by every atomic that changes them | app_counts.ts |
 * | `["outbox", id]` | `OutboxMessage`: one pushed message (or trailing update), its fan-out cursor and lease; ids are time-ordered | outbox.ts |
 * | `["cw", app, topic]` | `CoalesceWindow`: the open coalescing window of a topic (CC/CD 70025 §8.3) | outbox.ts |
 * | `["dq", dueAt, id]` | `QueuedDelivery`: one delivery to one client (acks, retries, ingress), or one push request to the upstream gateway (`reason: "upstream"`) | queue.ts, outbox.ts |
 * | `["dead", id]` | `DeadLetter`, kept for 7 days | queue.ts, outbox.ts |
 * | `["worker", owner]` | `WorkerBeat`: a process's heartbeat; its leases are valid while it beats | workers.ts |
 * | `["ingress", id]` | the client behind a Web Push ingress id, and whether it is gone | registrations.ts |
 * | `["ingx", deleteAt, id]` | null: when the marker of a gone push resource is deleted (`410`, then `404`) | registrations.ts, lifetimes.ts |
 * | `["ingress-topic", clientId, topic]` | when the newest ingress message with that RFC 8030 `Topic` was accepted | ingress.ts |
 * | `["rl", subject, minute]` | hits counted in one rate-limit window | limits.ts |
 * | `["upstream", "bootstrap"]` | `StoredBootstrap`: the upstream gateway's transports as last fetched, and from which URL | upstream.ts |
 * | `["upstream", "check"]` | `BootstrapCheck`: when the last bootstrap fetch ran and whether it got an answer | upstream.ts |
 * | `["upstream", "push-url"]` | `StoredPushUrl`: the push-url the upstream answered its last subscribe with | upstream.ts |
 * | `["upmap", app, topic, subscriberKey]` | `MapEntry`: the topic-to-gateway map (CC/CD 70025 §4.2), one entry per subscriber the upstream holds for this app's topic | upstream.ts |
 *
 * Expiry is stored in values and checked on read: KV's `expireIn` only collects garbage (it
 * lags by up to a minute locally).
 *
 * @module
 */

export const keys = {
  meta: (name: string) => ["meta", name],

  registration: (clientId: string) => ["reg", clientId],
  registrationByTarget: (targetHash: string) => ["regt", targetHash],
  registrationLife: (clientId: string) => ["regl", clientId],
  /** All registration records, for the one-off scheduling of older registrations. */
  registrationsAll: ["reg"],
  lifetimeCheck: (checkAt: number, clientId: string) => ["regx", checkAt, clientId],
  /** Every lifetime check due at or before `now`. */
  lifetimeChecksDue: (now: number) => ({ start: ["regx"], end: ["regx", now + 1] }),
  clientActiveUntil: (clientId: string) => ["rega", clientId],

  subscription: (app: string, topic: string, clientId: string) => ["sub", app, topic, clientId],
  /** Prefix of every subscription of (app, topic), in client-id order. */
  topicSubscriptions: (app: string, topic: string) => ["sub", app, topic],
  clientSubscription: (
    clientId: string,
    app: string,
    topic: string,
  ) => ["subc", clientId, app, topic],
  /** Prefix of every subscription of a client. */
  clientSubscriptions: (clientId: string) => ["subc", clientId],
  subscriptionExpiry: (
    exp: number,
    app: string,
    topic: string,
    clientId: string,
  ) => ["subx", exp, app, topic, clientId],
  /** The first `subx` key, and the first after every expiry at or before `now`. */
  expiriesUntil: (now: number) => ({ start: ["subx"], end: ["subx", now + 1] }),
  subscriptionCount: ["stat", "subscriptions"],
  appSubscriptionCount: (app: string) => ["stat", "app-subscriptions", app],
  appClientCount: (app: string) => ["stat", "app-clients", app],
  clientAppCount: (clientId: string, app: string) => ["stat", "client-app", clientId, app],

  outbox: (id: string) => ["outbox", id],
  outboxAll: ["outbox"],
  window: (app: string, topic: string) => ["cw", app, topic],

  delivery: (dueAt: number, id: string) => ["dq", dueAt, id],
  deliveriesAll: ["dq"],
  /** Every queued delivery due at or before `now`. */
  deliveriesDue: (now: number) => ({ start: ["dq"], end: ["dq", now + 1] }),
  deadLetter: (id: string) => ["dead", id],
  deadLettersAll: ["dead"],

  worker: (owner: string) => ["worker", owner],

  ingress: (id: string) => ["ingress", id],
  ingressTopic: (clientId: string, topic: string) => ["ingress-topic", clientId, topic],
  /** Prefix of every ingress Topic entry of a client. */
  ingressTopics: (clientId: string) => ["ingress-topic", clientId],
  ingressExpiry: (deleteAt: number, id: string) => ["ingx", deleteAt, id],
  /** Every gone push-resource marker due for deletion at or before `now`. */
  ingressExpiriesDue: (now: number) => ({ start: ["ingx"], end: ["ingx", now + 1] }),

  rateLimit: (subject: string, window: number) => ["rl", subject, window],

  upstreamBootstrap: ["upstream", "bootstrap"],
  upstreamCheck: ["upstream", "check"],
  upstreamPushUrl: ["upstream", "push-url"],
  upstreamMapEntry: (
    app: string,
    topic: string,
    subscriberKey: string,
  ) => ["upmap", app, topic, subscriberKey],
  /** Prefix of the map entries of (app, topic). */
  upstreamMapTopic: (app: string, topic: string) => ["upmap", app, topic],
  upstreamMapAll: ["upmap"],
} as const;
