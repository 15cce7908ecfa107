/**
 * The CalDAV bridge (README, "The CalDAV bridge"): a small DAV-Push application server
 * (CC/CD 70025 §4.1) in front of an existing CalDAV server. It advertises the DAV-Push
 * properties (§6.2.1), forwards clients' subscriptions to the relay (§5.3), passes clients'
 * writes upstream and pushes the collection's topic with their `Push-Client-Id` (§7.1), and
 * polls the upstream for everyone else's changes.
 *
 * With `BRIDGE_UPSTREAM` it is also a reverse proxy that gives that server WebDAV-Push
 * (README, "Push for DAVx⁵ on Radicale (or any CalDAV server)"; module `proxy_routes.ts`).
 *
 * `createBridge(deps)` takes everything from outside (config, fetch, clock, logger, the KV
 * store of WebDAV-Push registrations), so tests drive it with `app.request()` and a fake
 * upstream and relay.
 *
 * @module
 */

import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import {
  davPushProperties,
  invalidTopics,
  invalidTopicsXml,
  isUnsubscribe,
  MAX_SUBSCRIBE_BYTES,
  multistatusXml,
  parsePropfind,
  parseSubscribe,
  propfindResponse,
  PUSH,
} from "../dav/dav_push.ts";
import {
  clientIdFromHeader,
  GatewayClient,
  GatewayError,
  TopicGatewayMap,
} from "../dav/gateway_client.ts";
import { XmlError, type XmlNode } from "../dav/xml.ts";
import { canonicalPath, UpstreamError } from "./caldav.ts";
import type { BridgeCollection, BridgeConfig } from "./config.ts";
import { type Logger, silentLogger } from "./log.ts";
import { Notifier } from "./notifier.ts";
import { proxyRoutes } from "./proxy_routes.ts";
import type { PushStore } from "./push_store.ts";
import { Registrar } from "./registrar.ts";
import { RelayApi } from "./relay_api.ts";
import { RelayInfo } from "./relay_info.ts";
import { CollectionWatcher } from "./watcher.ts";

/** What {@linkcode createBridge} needs. */
export interface BridgeDeps {
  config: BridgeConfig;
  /** Used for the relay and the upstream alike; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Milliseconds since the epoch; default `Date.now`. */
  now?: () => number;
  logger?: Logger;
  /** Timeout of each upstream and relay request in milliseconds; default 10000. */
  timeoutMs?: number;
  /** How long a relay bootstrap is reused, in milliseconds; default 300000. */
  bootstrapTtlMs?: number;
  /** The WebDAV-Push registrations (`openPushStore`); required with `BRIDGE_UPSTREAM`. */
  pushStore?: PushStore;
  /** How long after a push its registrations are checked for pruning, in ms; default 5000. */
  verifyDelayMs?: number;
  /** Longest wait for the upstream's answer headers to a proxied request, in ms; default 60000. */
  proxyTimeoutMs?: number;
}

/** A running bridge: the HTTP app and its polling. */
export interface Bridge {
  /** The Hono app; serve it with `Deno.serve(bridge.app.fetch)`. */
  app: Hono;
  /** Polls every collection once, pushing what changed. Never throws. */
  pollOnce(): Promise<void>;
  /** Starts polling now and then every `BRIDGE_POLL_SECONDS`. */
  start(): void;
  /** Stops polling and waits for a poll in progress. */
  stop(): Promise<void>;
  /** One watcher per collection, in config order (for tests and diagnostics). */
  watchers: readonly CollectionWatcher[];
}

const XML = "application/xml; charset=utf-8";
const PROPFIND_LIMIT = 64 * 1024;
const WRITE_LIMIT = 16 * 1024 * 1024;
// Upstream answer headers a client of a write needs; hop-by-hop headers are not passed on.
const PASSED_BACK = [
  "content-type",
  "etag",
  "last-modified",
  "location",
  "schedule-tag",
  "www-authenticate",
  "retry-after",
  "dav",
];

/** Builds the bridge. Nothing runs until `start()` or a request. */
export function createBridge(deps: BridgeDeps): Bridge {
  const { config } = deps;
  const fetchFn = deps.fetch ?? globalThis.fetch.bind(globalThis);
  const now = deps.now ?? Date.now;
  const logger = deps.logger ?? silentLogger;
  const timeoutMs = deps.timeoutMs ?? 10_000;
  const bootstrapTtlMs = deps.bootstrapTtlMs ?? 300_000;

  const topicMap = new TopicGatewayMap();
  const gateway = new GatewayClient({
    url: `${config.relayUrl}/gateway`,
    token: config.relayToken,
    fetch: fetchFn,
    timeoutMs,
    topicMap,
  });
  const topics = new Set(config.collections.map((c) => c.topic));
  const watchers = config.collections.map((c) =>
    new CollectionWatcher({
      url: c.url,
      authorization: c.pollAuthorization,
      fetch: fetchFn,
      timeoutMs,
    })
  );
  const failing = new Set<number>();

  // ----- relay

  const relayInfo = new RelayInfo({ gateway, now, logger, ttlMs: bootstrapTtlMs });
  const relayTransports = () => relayInfo.transports();
  const webPush = () => relayInfo.webPush();

  const registrar = config.upstream === undefined ? undefined : new Registrar({
    store: deps.pushStore ?? missingStore(),
    relay: new RelayApi({ url: config.relayUrl, fetch: fetchFn, timeoutMs }),
    gateway,
    webPush,
    publicUrl: () => config.publicUrl,
    now,
    logger,
    verifyDelayMs: deps.verifyDelayMs ?? 5000,
  });
  const notifier = new Notifier({
    gateway,
    now,
    logger,
    // A push reaches the relay's push services now: those that answer 404/410 get pruned.
    onPushed: (c) => registrar?.verifyLater(c),
  });
  const background = new Set<Promise<void>>();
  const track = (p: Promise<void>) => {
    background.add(p);
    p.finally(() => background.delete(p));
  };

  // ----- polling

  async function pollCollection(c: BridgeCollection, w: CollectionWatcher): Promise<void> {
    try {
      const r = await w.poll();
      if (failing.delete(c.index)) {
        logger.log("info", "upstream-recovered", { collection: c.index, upstream: c.url });
      }
      if (r.baseline) {
        logger.log("info", "watching", { collection: c.index, upstream: c.url, mode: w.mode });
      } else if (r.foreign.length > 0 || r.unknown) {
        logger.log("info", "change-detected", {
          collection: c.index,
          changes: r.foreign.length,
          "own-writes": r.own,
        });
        // Someone else's change: no client-id, everyone is told (§7.1 is only for the writer).
        await notifier.push(c, { syncToken: w.syncToken });
        return;
      }
    } catch (err) {
      // The upstream is down or misbehaving: log once per outage, retry on the next poll.
      const level = failing.has(c.index) ? "debug" : "warn";
      failing.add(c.index);
      logger.log(level, "poll-failed", {
        collection: c.index,
        upstream: c.url,
        status: err instanceof UpstreamError ? err.status : undefined,
        error: (err as Error).message,
      });
    }
    await notifier.retry(c);
  }

  async function pollOnce(): Promise<void> {
    await Promise.all(config.collections.map((c, i) => pollCollection(c, watchers[i]!)));
    await registrar?.sweep();
  }

  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> | undefined;
  let stopped = true;
  function schedule(delayMs: number) {
    timer = setTimeout(() => {
      running = pollOnce().finally(() => {
        running = undefined;
        if (!stopped) schedule(config.pollSeconds * 1000);
      });
    }, delayMs);
  }

  // ----- HTTP

  const app = new Hono();

  app.onError((err, c) => {
    if (err instanceof HTTPException) return err.getResponse();
    if (err instanceof XmlError) return c.text(err.message, err.status);
    logger.log("error", "internal-error", { path: c.req.path, error: (err as Error).message });
    return c.text("Internal error", 500);
  });

  app.get(
    "/collections",
    (c) => c.json(config.collections.map((col) => ({ path: col.path, upstream: col.url }))),
  );

  function collectionOf(n: string): BridgeCollection | undefined {
    return /^\d+$/.test(n) ? config.collections[Number(n)] : undefined;
  }

  const tooLarge = (limit: number) => (c: Context) =>
    c.text(`Body is larger than ${limit} bytes`, 413);

  // CC/CD 70025 §5.2.3.1, §6.2.1: discovery.
  const propfind = async (c: Context) => {
    const col = collectionOf(c.req.param("n") ?? "");
    if (!col) return c.text("Not found", 404);
    const body = new Uint8Array(await c.req.arrayBuffer());
    const request = parsePropfind(body, { maxBytes: PROPFIND_LIMIT });
    const list = await relayTransports();
    const props: Map<string, XmlNode | number> = davPushProperties({
      subscribeUrl: `${config.publicUrl}/subscribe`,
      transports: list ?? [],
      topic: col.topic,
    });
    // The relay is unreachable and nothing is cached: the transport set is unknown for now.
    if (list === undefined) props.set(PUSH.supportedTransportSet, 503);
    const xml = multistatusXml([propfindResponse(col.path, request, props)]);
    return c.body(xml, 207, { "content-type": XML });
  };
  const propfindLimit = bodyLimit({ maxSize: PROPFIND_LIMIT, onError: tooLarge(PROPFIND_LIMIT) });
  app.on("PROPFIND", "/collections/:n/", propfindLimit, propfind);
  app.on("PROPFIND", "/collections/:n", propfindLimit, propfind);

  // CC/CD 70025 §5.2.3.2, §6.2.2: subscribe; forwarded per §5.3.
  app.post(
    "/subscribe",
    bodyLimit({ maxSize: MAX_SUBSCRIBE_BYTES, onError: tooLarge(MAX_SUBSCRIBE_BYTES) }),
    async (c) => {
      const body = new Uint8Array(await c.req.arrayBuffer());
      const sub = parseSubscribe(body, { maxBytes: MAX_SUBSCRIBE_BYTES });
      // §5.2.3.2 MUST: one invalid topic fails the whole request, and nothing is forwarded.
      const refused = invalidTopics(sub.topics, (t) => topics.has(t));
      if (refused.length > 0) {
        logger.log("info", "subscribe-refused", { "invalid-topics": refused.length });
        return c.body(invalidTopicsXml(refused), 403, { "content-type": XML });
      }
      const unsubscribe = isUnsubscribe(sub, new Date(now()));
      try {
        // §5.2.2: a past expires is forwarded too; the relay unsubscribes.
        await gateway.subscribe(sub);
      } catch (err) {
        if (err instanceof GatewayError && (err.status === 400 || err.status === 403)) {
          // The relay refused the client's own data: the client should hear why.
          logger.log("info", "subscribe-rejected", { status: err.status, code: err.code });
          return err.body !== undefined
            ? c.json(err.body, err.status)
            : c.text(err.message, err.status);
        }
        // 401 (our token), 5xx, unreachable: the bridge's problem, not the client's.
        logger.log("warn", "subscribe-failed", {
          status: err instanceof GatewayError ? err.status : undefined,
          error: (err as Error).message,
        });
        return c.text("The push relay is unavailable", 502);
      }
      logger.log("info", "subscribe-forwarded", { topics: sub.topics.length, unsubscribe });
      return c.body(null, 200);
    },
  );

  // README, "The CalDAV bridge": writes pass through with the client's own credentials; the
  // collection's topic is pushed at once with the writer's Push-Client-Id (§7.1 SHOULD).
  const write = async (c: Context) => {
    const col = collectionOf(c.req.param("n") ?? "");
    if (!col) return c.text("Not found", 404);
    // The raw (still percent-encoded) last segment, exactly as the client sent it.
    const raw = new URL(c.req.url).pathname.split("/").at(-1) ?? "";
    let decoded: string;
    try {
      decoded = decodeURIComponent(raw);
    } catch {
      return c.text(`Resource name is badly percent-encoded: ${JSON.stringify(raw)}`, 400);
    }
    if (decoded === "" || decoded === "." || decoded === ".." || /[/\\]/.test(decoded)) {
      return c.text(`Resource name must be one path segment, got ${JSON.stringify(raw)}`, 400);
    }
    const target = col.url + raw;
    const method = c.req.method;
    const headers = new Headers();
    for (const h of ["content-type", "if-match", "if-none-match", "authorization"]) {
      const v = c.req.header(h);
      if (v !== undefined) headers.set(h, v);
    }
    const body = method === "PUT" ? await c.req.arrayBuffer() : undefined;
    const watcher = watchers[col.index]!;
    const result = await watcher.exclusive(async () => {
      let res: Response;
      try {
        res = await fetchFn(target, {
          method,
          headers,
          body: body ?? null,
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (err) {
        logger.log("warn", "write-failed", {
          collection: col.index,
          upstream: col.url,
          error: (err as Error).message,
        });
        return undefined;
      }
      const payload = await res.arrayBuffer();
      if (res.ok) {
        watcher.recordWrite(
          canonicalPath(target, target),
          res.headers.get("etag"),
          method === "DELETE",
        );
      }
      return { res, payload };
    });
    if (!result) return c.text("The CalDAV server is unreachable", 502);
    const { res, payload } = result;
    logger.log("info", "write-forwarded", {
      collection: col.index,
      method,
      status: res.status,
    });
    if (res.ok) {
      const writer = clientIdFromHeader(c.req.header("push-client-id"));
      await notifier.push(col, { exclude: writer === undefined ? [] : [writer] });
    }
    const out = new Headers();
    for (const h of PASSED_BACK) {
      const v = res.headers.get(h);
      if (v !== null) out.set(h, v);
    }
    const empty = res.status === 204 || res.status === 205 || res.status === 304;
    return new Response(empty ? null : payload, { status: res.status, headers: out });
  };
  const writeLimit = bodyLimit({ maxSize: WRITE_LIMIT, onError: tooLarge(WRITE_LIMIT) });
  app.put("/collections/:n/:name", writeLimit, write);
  app.delete("/collections/:n/:name", write);

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  if (config.upstream !== undefined) {
    proxyRoutes(app, {
      config: config as BridgeConfig & { upstream: string },
      fetch: fetchFn,
      timeoutMs,
      proxyTimeoutMs: deps.proxyTimeoutMs ?? 60_000,
      watchers,
      notifier,
      registrar: registrar!,
      webPush,
      now,
      logger,
      track,
    });
  }

  return {
    app,
    pollOnce,
    watchers,
    start() {
      if (!stopped) return;
      stopped = false;
      schedule(0);
    },
    async stop() {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      await running;
      await Promise.allSettled([...background]);
      await registrar?.close();
    },
  };
}

function missingStore(): never {
  throw new TypeError("BRIDGE_UPSTREAM needs a push store: pass pushStore (openPushStore)");
}
