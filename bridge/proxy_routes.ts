/**
 * The bridge as a WebDAV-Push proxy (README, "Push for DAVx⁵ on Radicale (or any CalDAV
 * server)"; draft-bitfire-webdav-push): every path that is not the bridge's own goes to
 * `BRIDGE_UPSTREAM` (module `proxy.ts`), and on the watched collections the bridge adds
 * WebDAV-Push: discovery (`DAV: webdav-push`, the `P:` properties in `PROPFIND` answers),
 * `push-register`, `DELETE` of registration URLs, and pushes for writes through it.
 *
 * @module
 */

import type { Context, Hono } from "hono";
import { clientIdFromHeader } from "../dav/gateway_client.ts";
import {
  MAX_PUSH_REGISTER_BYTES,
  parsePushDontNotify,
  parsePushRegister,
  pushErrorXml,
  pushPropertyFragments,
  requestedPushProperties,
  WEBDAV_PUSH_NS,
  WP,
} from "../dav/webdav_push.ts";
import { formatHttpDate } from "../dav/webdav_push.ts";
import { parseXml, type XmlElement, XmlError } from "../dav/xml.ts";
import { canonicalPath, collectionState } from "./caldav.ts";
import type { BridgeCollection, BridgeConfig } from "./config.ts";
import type { Logger } from "./log.ts";
import type { Notifier } from "./notifier.ts";
import {
  clientResponse,
  forward,
  isXml,
  type ProxyOptions,
  readUpTo,
  rejoin,
  upstreamBody,
} from "./proxy.ts";
import type { Registrar } from "./registrar.ts";
import type { RelayWebPush } from "./relay_info.ts";
import type { RewriteOptions } from "./rewrite.ts";
import type { CollectionWatcher } from "./watcher.ts";

export interface ProxyDeps {
  config: BridgeConfig & { upstream: string };
  fetch: typeof fetch;
  /** Per request the bridge makes itself (the read check), in ms. */
  timeoutMs: number;
  /** Longest wait for the upstream's answer headers to a proxied request, in ms. */
  proxyTimeoutMs: number;
  watchers: readonly CollectionWatcher[];
  notifier: Notifier;
  registrar: Registrar;
  webPush: () => Promise<RelayWebPush | undefined>;
  now: () => number;
  logger: Logger;
  /** Keeps a background task (a push after a write) until the bridge stops. */
  track: (p: Promise<void>) => void;
}

const XML = "application/xml; charset=utf-8";
const WRITES = new Set(["PUT", "DELETE", "MOVE", "COPY", "PROPPATCH"]);
const OWN = /^\/(?:collections(?:\/|$)|subscribe$|push-subscriptions(?:\/|$)|healthz$)/;

function isXmlBody(req: Request): boolean {
  const t = req.headers.get("content-type");
  return (t ?? "").split(";")[0]!.trim() === "" || isXml(t);
}

/** Adds the proxy to `app`: `DELETE /push-subscriptions/{id}`, then every other path. */
export function proxyRoutes(app: Hono, deps: ProxyDeps): void {
  const { config, logger, registrar } = deps;
  const upstreamOrigin = new URL(config.upstream).origin;
  const publicOrigin = () => new URL(config.publicUrl).origin;
  const proxy: ProxyOptions = {
    upstreamOrigin,
    publicOrigin,
    fetch: deps.fetch,
    timeoutMs: deps.proxyTimeoutMs,
  };
  const rewrite = (pushProperties?: RewriteOptions["pushProperties"]): RewriteOptions => ({
    upstreamOrigin,
    publicOrigin: publicOrigin(),
    ...(pushProperties ? { pushProperties } : {}),
  });
  const watched = config.collections.filter((c) => c.proxyPath !== undefined);
  const canonical = (path: string) => canonicalPath(path, upstreamOrigin + "/");

  /** The watched collection at `path` (with or without its trailing slash). */
  function collectionAt(path: string): BridgeCollection | undefined {
    const p = canonical(path);
    return watched.find((c) => {
      const cp = canonical(c.proxyPath!);
      return p === cp || p + "/" === cp;
    });
  }
  /** The watched collection that `path` is, or lies in. */
  function collectionOf(path: string): BridgeCollection | undefined {
    const p = canonical(path);
    return collectionAt(path) ?? watched.find((c) => p.startsWith(canonical(c.proxyPath!)));
  }

  const unreachable = (c: Context) => c.text("The CalDAV server is unreachable", 502);

  async function plain(c: Context, body?: { body: BodyInit | null; stream: boolean }) {
    const req = c.req.raw;
    const res = await forward(req, body ?? await upstreamBody(req), proxy);
    return res ? await clientResponse(res, req.method, rewrite()) : unreachable(c);
  }

  // draft-bitfire-webdav-push §Discovery: "webdav-push" in DAV on push-capable resources.
  async function options(c: Context) {
    const res = await plain(c);
    if (collectionAt(new URL(c.req.url).pathname) && res.status < 300) {
      const dav = res.headers.get("dav");
      if (!/(^|,)\s*webdav-push\s*(,|$)/i.test(dav ?? "")) {
        res.headers.set("dav", dav ? `${dav}, webdav-push` : "webdav-push");
      }
    }
    return res;
  }

  // §Discovery: the properties the PROPFIND named, in the watched collections' responses.
  async function propfind(c: Context) {
    const req = c.req.raw;
    const body = await upstreamBody(req);
    let names: string[] = [];
    if (body.body instanceof Uint8Array && body.body.length > 0) {
      try {
        names = requestedPushProperties(parseXml(body.body, { maxBytes: 1024 * 1024 }));
      } catch { /* the upstream answers a malformed body */ }
    }
    const wp = names.includes(WP.transports) ? await deps.webPush() : undefined;
    const res = await forward(req, body, proxy);
    if (!res) return unreachable(c);
    const pushProperties = names.length === 0 ? undefined : (path: string) => {
      const col = collectionAt(path);
      if (!col) return undefined;
      const all = pushPropertyFragments({ vapidPublicKey: wp?.vapidPublicKey, topic: col.topic });
      return new Map([...all].filter(([name]) => names.includes(name)));
    };
    return await clientResponse(res, "PROPFIND", rewrite(pushProperties));
  }

  async function post(c: Context) {
    const req = c.req.raw;
    const col = collectionAt(new URL(req.url).pathname);
    const length = Number(req.headers.get("content-length") ?? NaN);
    const large = Number.isFinite(length) && length > MAX_PUSH_REGISTER_BYTES;
    if (!isXmlBody(req) || (!col && large) || req.body === null) return await plain(c);
    const { bytes, rest } = await readUpTo(req.body, MAX_PUSH_REGISTER_BYTES);
    if (rest) {
      if (!col) return await plain(c, { body: rejoin(bytes, rest), stream: true });
      await rest.cancel();
      return c.text(`Body is larger than ${MAX_PUSH_REGISTER_BYTES} bytes`, 413);
    }
    let root: XmlElement | undefined;
    try {
      root = parseXml(bytes, {
        maxBytes: MAX_PUSH_REGISTER_BYTES,
        maxDepth: 16,
        maxElements: 1000,
      });
    } catch (err) {
      // Hostile or broken XML sent to a watched collection goes nowhere.
      if (col) return c.text((err as XmlError).message, (err as XmlError).status);
    }
    if (root?.name === WP.pushRegister) {
      if (!col) return c.body(pushErrorXml("push-not-available"), 403, { "content-type": XML });
      return await register(c, col, root);
    }
    if (col && root?.ns === WEBDAV_PUSH_NS) {
      return c.text(`Expected ${WP.pushRegister}, got ${root.name}`, 400);
    }
    return await plain(c, { body: bytes, stream: false });
  }

  /** §Subscription Registration, for a caller that can read the collection upstream. */
  async function register(c: Context, col: BridgeCollection, root: XmlElement) {
    const check = await readCheck(c, col);
    if (check) return check;
    const parsed = parsePushRegister(root, { now: deps.now() });
    if (!parsed.ok) {
      logger.log("info", "webdav-push-refused", { collection: col.index, reason: parsed.reason });
      return c.body(pushErrorXml(parsed.condition), 403, { "content-type": XML });
    }
    const out = await registrar.register(col, parsed.subscription, parsed.expires);
    if (out.kind === "refused") {
      logger.log("info", "webdav-push-refused", { collection: col.index, reason: out.reason });
      return c.body(pushErrorXml("invalid-subscription"), 403, { "content-type": XML });
    }
    if (out.kind === "unavailable") {
      const headers: Record<string, string> = out.retryAfter
        ? { "retry-after": out.retryAfter }
        : {};
      return c.text("The push relay is unavailable", out.status, headers);
    }
    return c.body(null, 201, {
      location: registrar.location(out.id),
      expires: formatHttpDate(out.expires),
    });
  }

  /** The caller's own read access, asked of the upstream; a refusal is the answer. */
  async function readCheck(c: Context, col: BridgeCollection): Promise<Response | undefined> {
    const headers: Record<string, string> = { depth: "0", "content-type": XML };
    const auth = c.req.header("authorization");
    if (auth !== undefined) headers.authorization = auth;
    let res: Response;
    try {
      res = await deps.fetch(upstreamOrigin + col.proxyPath!, {
        method: "PROPFIND",
        headers,
        body: '<?xml version="1.0" encoding="utf-8"?>' +
          '<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>',
        signal: AbortSignal.timeout(deps.timeoutMs),
      });
    } catch {
      return unreachable(c);
    }
    await res.body?.cancel();
    if (res.status === 207 || res.status === 200) return undefined;
    if (res.status === 401 || res.status === 403 || res.status === 404) {
      const www = res.headers.get("www-authenticate");
      return c.text(
        "Reading the collection was refused",
        res.status as 401 | 403 | 404,
        www ? { "www-authenticate": www } : {},
      );
    }
    return unreachable(c);
  }

  /** Writes: forwarded, then pushed at once to everyone `Push-Dont-Notify` leaves. */
  async function write(c: Context) {
    const req = c.req.raw;
    const method = req.method;
    const path = new URL(req.url).pathname;
    let dest: string | undefined;
    if (method === "MOVE" || method === "COPY") {
      try {
        dest = new URL(req.headers.get("destination") ?? "", req.url).pathname;
      } catch { /* the upstream answers it */ }
    }
    const src = collectionOf(path);
    const dst = dest === undefined ? undefined : collectionOf(dest);
    const cols = [...new Set([src, dst].filter((x): x is BridgeCollection => x !== undefined))]
      .sort((a, b) => a.index - b.index);
    if (cols.length === 0) return await plain(c);
    const body = await upstreamBody(req);
    let res: Response | null = null;
    await exclusive(cols, async () => {
      res = await forward(req, body, proxy);
      if (res?.ok) recordWrite(method, path, src, dest, dst, res);
    });
    if (!res) return unreachable(c);
    const answer = res as Response;
    if (answer.ok) {
      const dont = parsePushDontNotify(req.headers.get("push-dont-notify"));
      const writer = clientIdFromHeader(req.headers.get("push-client-id"));
      // "*": nobody is told of this change (the next poll does not tell them either).
      if (!dont.all) { for (const col of cols) deps.track(notify(col, dont.urls, writer)); }
    }
    logger.log("info", "write-proxied", {
      method,
      status: answer.status,
      collections: cols.length,
    });
    return await clientResponse(answer, method, rewrite());
  }

  function exclusive(cols: BridgeCollection[], fn: () => Promise<void>): Promise<void> {
    const [first, ...rest] = cols;
    if (!first) return fn();
    return deps.watchers[first.index]!.exclusive(() => exclusive(rest, fn));
  }

  /** Tells the watchers of what the upstream accepted, so no poll pushes it again. */
  function recordWrite(
    method: string,
    path: string,
    src: BridgeCollection | undefined,
    dest: string | undefined,
    dst: BridgeCollection | undefined,
    res: Response,
  ) {
    const member = (col: BridgeCollection, p: string) =>
      collectionAt(p) === col ? undefined : canonical(p);
    const s = src && member(src, path);
    if (src && s !== undefined) {
      if (method === "PUT") {
        deps.watchers[src.index]!.recordWrite(s, res.headers.get("etag"), false);
      }
      if (method === "DELETE" || method === "MOVE") {
        deps.watchers[src.index]!.recordWrite(s, null, true);
      }
    }
    const d = dst && dest !== undefined ? member(dst, dest) : undefined;
    if (dst && d !== undefined) deps.watchers[dst.index]!.recordWrite(d, null, false);
  }

  async function notify(col: BridgeCollection, urls: string[], writer: string | undefined) {
    try {
      const exclude = await registrar.excluded(col, urls);
      if (writer !== undefined) exclude.push(writer);
      const watcher = deps.watchers[col.index]!;
      const syncToken = await collectionState(watcher.upstream).then(
        (s) => s.syncToken,
        () => undefined,
      );
      await deps.notifier.push(col, { exclude, syncToken });
    } catch (err) {
      logger.log("warn", "push-failed", { collection: col.index, error: (err as Error).message });
    }
  }

  // §Subscription Removal.
  app.delete("/push-subscriptions/:id", async (c) => {
    const outcome = await registrar.unregister(c.req.param("id"));
    if (outcome === "deleted") return c.body(null, 204);
    if (outcome === "unknown") return c.text("No such push registration", 404);
    return c.text("The push relay is unavailable", 502);
  });

  app.all("*", async (c) => {
    if (OWN.test(new URL(c.req.url).pathname)) return c.text("Not found", 404);
    const method = c.req.method;
    if (method === "OPTIONS") return await options(c);
    if (method === "PROPFIND") return await propfind(c);
    if (method === "POST") return await post(c);
    if (WRITES.has(method)) return await write(c);
    return await plain(c);
  });
}
