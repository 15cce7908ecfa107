/**
 * The composition root: the relay from a validated config and an open KV. Keys and secrets
 * (kept in KV when not configured), transports, the delivery engine, the domain services and
 * the HTTP app, wired here and nowhere else; this is the only module that sees both `lib/` and
 * `routes/`. `main.ts` and the tests both build the relay here, so tests run the real wiring
 * with a `:memory:` KV, a fixed clock and local servers.
 *
 * @module
 */

import type { Hono } from "hono";
import { Admin, checkAdminToken } from "./lib/admin.ts";
import type { AppConfig, Config, UpstreamConfig } from "./lib/config.ts";
import { createEphemeralKeyPool, fastestP256Backend } from "./lib/crypto/ece.ts";
import { createEncryptionPool } from "./lib/crypto/ece_pool.ts";
import { libcrypto } from "./lib/crypto/p256_ffi.ts";
import { createVapid, generateVapidKeys, type VapidKeys } from "./lib/crypto/vapid.ts";
import { DeliveryEngine, type DeliveryEngineOptions } from "./lib/delivery/engine.ts";
import { decodeBase64Url, encodeBase64Url, randomBytes, randomToken } from "./lib/encoding.ts";
import { describeError } from "./lib/errors.ts";
import { Gateway, type TransportInfo } from "./lib/gateway.ts";
import { Ingress, type IngressOptions, ingressSuperseded } from "./lib/ingress.ts";
import { consoleLogger, type Logger } from "./lib/log.ts";
import { Metrics } from "./lib/metrics.ts";
import { Registrations } from "./lib/registrations.ts";
import { createSealer } from "./lib/seal.ts";
import { createStore, type Store } from "./lib/store/mod.ts";
import { denoResolver, type Resolver } from "./lib/targets.ts";
import { type Clock, systemClock } from "./lib/time.ts";
import { createApnsTransport } from "./lib/transports/apns.ts";
import { bounded } from "./lib/transports/bounded.ts";
import { createFcmTransport, parseServiceAccount } from "./lib/transports/fcm.ts";
import type { Transport, TransportId } from "./lib/transports/types.ts";
import { createWebPushTransport } from "./lib/transports/web_push.ts";
import { Upstream, type UpstreamOptions } from "./lib/upstream.ts";
import { createApp } from "./routes/mod.ts";

export interface RelayOptions {
  config: Config;
  kv: Deno.Kv;
  now?: Clock;
  /** Outbound HTTP for Web Push and FCM. */
  fetch?: typeof fetch;
  /** HTTP/2 client for APNs (e.g. with a test CA). */
  apnsClient?: Deno.HttpClient;
  logger?: Logger;
  resolve?: Resolver;
  /** Delivery tuning (page size, lease, retry policy...). */
  delivery?: Partial<
    Omit<DeliveryEngineOptions, "store" | "transports" | "sealer" | "now" | "logger" | "metrics">
  >;
  /** Outbound request timeout per transport. @default 10000 */
  sendTimeoutMs?: number;
  /** Replaces transports (tests): a fake that records sends and answers as told. */
  transports?: Partial<Record<TransportId, Transport>>;
  /** Called once when dev mode generates the dev app's token (the only secret ever shown). */
  onDevTokenCreated?: (token: string) => void;
  /** Web Push ingress tuning (e.g. the per-resource rate limit). */
  ingress?: Partial<Pick<IngressOptions, "ratePerMinute">>;
}

export interface Relay {
  app: Hono;
  engine: DeliveryEngine;
  store: Store;
  gateway: Gateway;
  metrics: Metrics;
  admin: Admin;
  apps: AppConfig[];
  vapidPublicKey: string;
  transports: TransportInfo[];
  /** The gateway this relay relays to (`RELAY_UPSTREAM_URL`), with its status; null: none. */
  upstream: Upstream | null;
  /** One pass of the background work (`engine.tick`); a failure is logged, never thrown. */
  tick(): Promise<void>;
}

/** Keys and secrets: from the config when set, else generated once and kept in KV. */
async function loadSecrets(store: Store, config: Config, onDevTokenCreated?: (t: string) => void) {
  const secret = config.secret ??
    decodeBase64Url(
      (await store.meta.getOrCreate("secret", () => encodeBase64Url(randomBytes(32)))).value,
    );
  // First writer wins: two processes starting together on one fresh KV agree on one key pair.
  const vapid: VapidKeys = config.vapid ??
    (await store.meta.getOrCreate<VapidKeys>("vapid", generateVapidKeys)).value;
  let apps = config.apps;
  if (!apps) {
    const dev = await store.meta.getOrCreate("dev-token", () => randomToken(24));
    if (dev.created) onDevTokenCreated?.(dev.value);
    apps = [{ id: "dev", token: dev.value }];
  }
  return { secret, vapid, apps };
}

export async function createRelay(options: RelayOptions): Promise<Relay> {
  const { config, kv } = options;
  const now = options.now ?? systemClock;
  const logger = options.logger ?? consoleLogger();
  const doFetch = options.fetch ?? fetch;
  // Web Push goes out on the relay's own HTTP/1.1 client unless a fetch is injected or an
  // outbound proxy is configured (fetch honours HTTPS_PROXY and friends; that client does not).
  const webPushFetch = options.fetch ?? (config.outboundProxy ? fetch : undefined);
  const store = createStore(kv, { now, registrationIdleMs: config.refreshInterval * 1000 });
  // Two processes opening one fresh SQLite file at once can meet "database is locked" on their
  // first writes; the store retries those (lib/store/kv.ts).
  const { secret, vapid, apps } = await loadSecrets(store, config, options.onDevTokenCreated);
  checkAdminToken(config.adminToken, apps);
  const startedAt = now();
  const sealer = await createSealer(secret);
  const timeoutMs = options.sendTimeoutMs ?? 10_000;

  const transports: Partial<Record<TransportId, Transport>> = {};
  const infos: TransportInfo[] = [];
  const uri = (id: TransportId) => `${config.publicUrl}/transports/${id}`;

  // P-256 runs on OpenSSL's libcrypto through FFI where it loads and passes its self-test, else
  // on node:crypto or Web Crypto, whichever costs less CPU in this runtime, measured once now
  // (while nothing else runs) rather than during the first fan-out (README "Benchmarks").
  const p256 = await fastestP256Backend();
  const ffi = libcrypto();
  logger.log("info", "crypto", {
    p256,
    ...(ffi.ok ? { libcrypto: ffi.lib.version } : { ffi: ffi.reason }),
  });
  // libcrypto's key pairs are made when needed (synchronous and cheap): no pool ahead.
  const keyPool = p256 === "ffi" ? undefined : createEphemeralKeyPool({ p256 });
  const vapidSigner = await createVapid({ ...vapid, subject: config.vapidSubject, now });
  transports["web-push"] = bounded(
    createWebPushTransport({
      vapid: vapidSigner,
      now,
      ...(webPushFetch ? { fetch: webPushFetch } : {}),
      // A fan-out encrypts in workers so that every core works (BENCHMARKS.md), at most
      // RELAY_ENCRYPTION_WORKERS of them (0: in this isolate only; each costs tens of MiB). On
      // libcrypto only large fan-outs do: a single message costs about as much to hand over.
      encryptor: createEncryptionPool({
        ...(keyPool ? { keyPool } : {}),
        p256,
        maxWorkers: config.encryptionWorkers,
        bulkOnly: p256 === "ffi",
      }),
      // The endpoint policy at every connection, not only at registration.
      endpointPolicy: {
        allowPrivate: config.allowPrivateEndpoints,
        resolve: options.resolve ?? denoResolver,
      },
    }),
    { concurrency: 256, timeoutMs },
  );
  infos.push({
    id: "web-push",
    uri: uri("web-push"),
    data: { "vapid-public-key": vapid.publicKey },
  });

  if (config.fcm) {
    const serviceAccount = parseServiceAccount(config.fcm.serviceAccountJson);
    transports.fcm = bounded(
      createFcmTransport({
        serviceAccount,
        apiUrl: config.fcm.apiUrl,
        fetch: doFetch,
        now,
        logger,
      }),
      { concurrency: 64, timeoutMs },
    );
    infos.push({ id: "fcm", uri: uri("fcm"), data: { "project-id": serviceAccount.projectId } });
  }
  if (config.apns) {
    transports.apns = bounded(
      createApnsTransport({
        key: config.apns.key,
        keyId: config.apns.keyId,
        teamId: config.apns.teamId,
        topic: config.apns.topic,
        productionUrl: config.apns.apiUrl,
        sandboxUrl: config.apns.sandboxUrl,
        ...(options.apnsClient ? { client: options.apnsClient } : {}),
        now,
        logger,
      }),
      { concurrency: 64, timeoutMs },
    );
    infos.push({ id: "apns", uri: uri("apns"), data: { topic: config.apns.topic } });
  }

  const upstream = config.upstream
    ? await createUpstream(store, config.upstream, {
      ownUris: infos.map((t) => t.uri),
      fetch: doFetch,
      now,
      logger,
      timeoutMs,
    })
    : null;
  // Upstream deliveries are counted under the transport label "upstream".
  const metrics = new Metrics([...infos.map((t) => t.id), ...(upstream ? ["upstream"] : [])]);
  const engine = new DeliveryEngine({
    store,
    transports: { ...transports, ...options.transports },
    sealer,
    now,
    logger,
    metrics,
    ttl: config.ttl,
    coalesceMs: config.coalesceMs,
    leaseMs: config.leaseMs,
    // Web Push ingress: an undelivered message replaced by a newer one with its Topic.
    superseded: (d) => ingressSuperseded(store, d),
    // The upstream's push requests go through the delivery queue; every tick refreshes its
    // bootstrap when that is due (main.ts ticks at start, so it is fetched at start too).
    ...(upstream
      ? { upstream, periodic: (signal: AbortSignal) => upstream.refreshIfDue(signal) }
      : {}),
    ...options.delivery,
  });
  const pathApps = apps.filter((a) => a.token === null).map((a) => a.id);
  const appLabel = (app: string) => {
    const i = pathApps.indexOf(app);
    return i < 0 ? app : `<path-app-${i + 1}>`;
  };
  const gateway = new Gateway({
    config,
    transports: infos,
    store,
    sealer,
    engine,
    now,
    logger,
    appLabel,
    upstream,
  });
  const registrations = new Registrations({
    store,
    sealer,
    transports: infos,
    refreshInterval: config.refreshInterval,
    publicUrl: config.publicUrl,
    allowPrivateEndpoints: config.allowPrivateEndpoints,
    resolve: options.resolve ?? denoResolver,
    now,
    logger,
  });
  const ingress = new Ingress({
    store,
    engine,
    publicUrl: config.publicUrl,
    now,
    logger,
    ...options.ingress,
  });
  const tick = () =>
    engine.tick().catch((err) => logger.log("error", "tick.error", { error: describeError(err) }));
  const admin = new Admin({
    store,
    metrics,
    breakers: engine.breakers,
    apps,
    appLabel,
    transports: infos.map((t) => t.id),
    now,
    ttl: config.ttl,
    startedAt,
    // The relaying client's reachability (README "Relaying to another gateway").
    ...(upstream ? { upstream: () => upstream.status() } : {}),
    wake: () => void tick(),
  });
  const app = createApp({
    config,
    apps,
    transports: infos,
    gateway,
    registrations,
    ingress,
    hit: (subject, window) => store.limits.hit(subject, window),
    status: {
      ping: () => store.meta.ping(),
      subscriptionCount: () => store.subscriptions.count(),
    },
    logger,
    metrics,
    now,
    admin: { token: config.adminToken, admin },
  });
  return {
    app,
    engine,
    store,
    gateway,
    metrics,
    admin,
    apps,
    vapidPublicKey: vapid.publicKey,
    transports: infos,
    upstream,
    tick,
  };
}

/**
 * The upstream gateway (README "Relaying to another gateway"): this relay's name in `Via`,
 * generated once and kept in KV, and the upstream's bootstrap as last stored.
 */
async function createUpstream(
  store: Store,
  config: UpstreamConfig,
  o: Pick<UpstreamOptions, "ownUris" | "fetch" | "now" | "logger" | "timeoutMs">,
): Promise<Upstream> {
  const relayId = (await store.meta.getOrCreate("relay-id", () => `relay-${randomToken(9)}`))
    .value;
  const upstream = new Upstream({ ...o, config, relayId, store });
  await upstream.load();
  return upstream;
}
