/**
 * The pieces of a WebDAV-Push test through the bridge (README, "Push for DAVx⁵ on Radicale (or
 * any CalDAV server)"): the relay as a process, the bridge in this process on a KV file (so a
 * test can restart it), web-push-testing as the push distributor, a capturing push service
 * that decrypts with npm `http_ece`, and the requests DAVx⁵ sends, byte for byte (its serialiser
 * invents the `n0:`, `n1:` prefixes).
 *
 * @module
 */

import { Buffer } from "node:buffer";
import ece from "http_ece";
import { createBridge } from "../../bridge/app.ts";
import { loadBridgeConfig } from "../../bridge/config.ts";
import { memoryLogger } from "../../bridge/log.ts";
import { openPushStore, type PushStore } from "../../bridge/push_store.ts";
import { formatHttpDate } from "../../dav/webdav_push.ts";
import { type UserAgentKeys, userAgentKeys } from "../fixtures/delivery.ts";
import { basic, type DavServer, startRadicale } from "./dav_servers.ts";
import { type RelayProcess, startRelayProcess } from "./relay_process.ts";
import { startWebPushTesting, type WebPushTesting } from "./web_push_testing.ts";

export const RELAY_TOKEN = "webdav-push-e2e-token-0123456789abcdef";
/** The bridge's poll interval in these tests, in seconds. */
export const POLL_SECONDS = 1;

/** DAVx⁵'s collection PROPFIND for CalDAV (home sets at Depth 1, other collections at 0). */
export const DAVX5_CALDAV_COLLECTIONS =
  `<?xml version='1.0' encoding='UTF-8' ?><propfind xmlns="DAV:" xmlns:CAL="urn:ietf:params:xml:ns:caldav" xmlns:CARD="urn:ietf:params:xml:ns:carddav"><prop><current-user-privilege-set /><displayname /><owner /><resourcetype /><n0:transports xmlns:n0="https://bitfire.at/webdav-push" /><n1:topic xmlns:n1="https://bitfire.at/webdav-push" /><n2:calendar-color xmlns:n2="http://apple.com/ns/ical/" /><CAL:calendar-description /><CAL:calendar-timezone /><CAL:calendar-timezone-id /><CAL:supported-calendar-component-set /><n3:source xmlns:n3="http://calendarserver.org/ns/" /></prop></propfind>`;
/** The same for CardDAV. */
export const DAVX5_CARDDAV_COLLECTIONS =
  `<?xml version='1.0' encoding='UTF-8' ?><propfind xmlns="DAV:" xmlns:CAL="urn:ietf:params:xml:ns:caldav" xmlns:CARD="urn:ietf:params:xml:ns:carddav"><prop><current-user-privilege-set /><displayname /><owner /><resourcetype /><n0:transports xmlns:n0="https://bitfire.at/webdav-push" /><n1:topic xmlns:n1="https://bitfire.at/webdav-push" /><CARD:addressbook-description /></prop></propfind>`;

/** Headers DAVx⁵ sends with a PROPFIND (it offers gzip, which Radicale then uses). */
export function davx5Headers(authorization: string | undefined, depth?: string) {
  return {
    ...(authorization ? { authorization } : {}),
    ...(depth !== undefined ? { depth } : {}),
    "content-type": "application/xml; charset=UTF-8",
    accept: "application/xml, text/xml",
    "accept-encoding": "gzip,deflate,identity",
    "user-agent": "DAVx5/4.5.19-ose (at.bitfire.davdroid)",
  };
}

/** A push subscription as a UnifiedPush distributor gives one. */
export interface PushEndpoint {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

/**
 * DAVx⁵ 4.5.19's `push-register`: a serializer-made
 * prefix, no `trigger`, no `content-encoding`, `expires` now + 3 days as an IMF-fixdate.
 */
export function davx5Register(sub: PushEndpoint, expires: number, prefix = "n0"): string {
  const p = prefix;
  return `<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><${p}:push-register xmlns:${p}="https://bitfire.at/webdav-push"><${p}:subscription><${p}:web-push-subscription><${p}:push-resource>${sub.endpoint}</${p}:push-resource><${p}:subscription-public-key type="p256dh">${sub.keys.p256dh}</${p}:subscription-public-key><${p}:auth-secret>${sub.keys.auth}</${p}:auth-secret></${p}:web-push-subscription></${p}:subscription><${p}:expires>${
    formatHttpDate(expires)
  }</${p}:expires></${p}:push-register>`;
}

/** The `push-register` of newer DAVx⁵ versions: with `content-encoding` and `trigger`. */
export function davx5RegisterNext(sub: PushEndpoint, expires: number): string {
  return `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><n1:push-register xmlns:n1="https://bitfire.at/webdav-push"><n1:subscription><n1:web-push-subscription><n1:push-resource>${sub.endpoint}</n1:push-resource><n1:content-encoding>aes128gcm</n1:content-encoding><n1:subscription-public-key type="p256dh">${sub.keys.p256dh}</n1:subscription-public-key><n1:auth-secret>${sub.keys.auth}</n1:auth-secret></n1:web-push-subscription></n1:subscription><n1:trigger><n1:content-update><n2:depth xmlns:n2="DAV:">1</n2:depth></n1:content-update></n1:trigger><n1:expires>${
    formatHttpDate(expires)
  }</n1:expires></n1:push-register>`;
}

/** The relay as a process, for Web Push to local push services. */
export function startRelay(): Promise<RelayProcess> {
  return startRelayProcess({
    RELAY_KV_PATH: ":memory:",
    RELAY_APPS: `bridge:${RELAY_TOKEN}`,
    RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
    RELAY_REGISTRATION_RATE_LIMIT: "0",
    RELAY_COALESCE_MS: "0",
  });
}

export interface BridgeUnderTest {
  /** `http://127.0.0.1:<port>`, also its BRIDGE_PUBLIC_URL. */
  url: string;
  port: number;
  store: PushStore;
  logger: ReturnType<typeof memoryLogger>;
  topics: string[];
  /** Stops polling and serving, and closes its KV. */
  stop(): Promise<void>;
}

/**
 * Starts the bridge in this process: `env` (BRIDGE_*) plus a poll interval of
 * {@linkcode POLL_SECONDS}, on `port` (0: a free one), keeping registrations in `kvPath`.
 */
export async function startBridge(
  env: Record<string, string>,
  options: { kvPath: string; port?: number },
): Promise<BridgeUnderTest> {
  const config = await loadBridgeConfig({
    BRIDGE_POLL_SECONDS: String(POLL_SECONDS),
    BRIDGE_RELAY_TOKEN: RELAY_TOKEN,
    BRIDGE_KV_PATH: options.kvPath,
    ...env,
  });
  const kv = await Deno.openKv(config.kvPath);
  const store = await openPushStore(kv, config.secret);
  const logger = memoryLogger();
  const bridge = createBridge({ config, logger, pushStore: store, verifyDelayMs: 300 });
  const controller = new AbortController();
  const { promise: listening, resolve } = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: options.port ?? 0,
    signal: controller.signal,
    onListen: ({ port }) => resolve(port),
  }, bridge.app.fetch);
  const port = await listening;
  config.publicUrl = `http://127.0.0.1:${port}`;
  bridge.start();
  return {
    url: config.publicUrl,
    port,
    store,
    logger,
    topics: config.collections.map((c) => c.topic),
    async stop() {
      await bridge.stop();
      controller.abort();
      await server.finished;
      kv.close();
    },
  };
}

/** One request a push service received, decrypted with http_ece. */
export interface Captured {
  headers: Headers;
  body: Uint8Array;
  plaintext: string;
}

/**
 * A push service on 127.0.0.1 that keeps every message for the subscriptions it hands out and
 * decrypts them with npm `http_ece` (RFC 8188/8291, independent of the relay's own code).
 */
export async function startCapturingPushService() {
  const subscribers = new Map<string, { keys: UserAgentKeys; got: Captured[] }>();
  const { promise, resolve } = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => resolve(port),
  }, async (req) => {
    const id = new URL(req.url).pathname.split("/").pop() ?? "";
    const s = subscribers.get(id);
    if (!s || req.method !== "POST") return new Response(null, { status: 404 });
    const body = new Uint8Array(await req.arrayBuffer());
    const plaintext = ece.decrypt(Buffer.from(body), {
      version: "aes128gcm",
      privateKey: s.keys.ecdh,
      authSecret: Buffer.from(s.keys.authBytes),
    }).toString("utf8");
    s.got.push({ headers: req.headers, body, plaintext });
    return new Response(null, { status: 201 });
  });
  const origin = `http://127.0.0.1:${await promise}`;
  return {
    subscribe(): PushEndpoint & { received: Captured[] } {
      const keys = userAgentKeys();
      const id = crypto.randomUUID();
      const got: Captured[] = [];
      subscribers.set(id, { keys, got });
      return {
        endpoint: `${origin}/push/${id}`,
        keys: { p256dh: keys.p256dh, auth: keys.auth },
        received: got,
      };
    },
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

/** Polls `check` until it holds or `timeoutMs` passed; returns its last answer. */
export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return await check();
}

/** Everything a Radicale test needs, started; `close()` stops it all. */
export interface RadicaleStack {
  radicale: DavServer;
  relay: RelayProcess;
  push: WebPushTesting;
  bridge: BridgeUnderTest;
  /** The relay's VAPID public key, from its bootstrap. */
  vapid: string;
  /** `alice`'s credentials at Radicale. */
  alice: string;
  /** Upstream collection paths: `cal1`, `cal2`, `book1` are watched, `other` is not. */
  paths: { cal1: string; cal2: string; book1: string; other: string };
  /** Stops the bridge and starts it again on the same port and KV file. */
  restartBridge(): Promise<void>;
  close(): Promise<void>;
}

const MKCOL_BOOK =
  `<?xml version="1.0" encoding="utf-8"?><D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype><D:displayname>Contacts</D:displayname></D:prop></D:set></D:mkcol>`;

/** Radicale with alice's collections, the relay, web-push-testing and the bridge. */
/** A DAVx⁵-shaped POST of a push-register (or other XML) body to a collection, as `auth`. */
export function postXml(
  s: RadicaleStack,
  path: string,
  body: string,
  auth: string | null = s.alice,
): Promise<Response> {
  return fetch(s.bridge.url + path, {
    method: "POST",
    headers: {
      ...(auth ? { authorization: auth } : {}),
      "content-type": "application/xml; charset=UTF-8",
    },
    body,
  });
}

export async function startRadicaleStack(): Promise<RadicaleStack> {
  const cleanup: (() => Promise<unknown>)[] = [];
  try {
    const radicale = await startRadicale({ alice: "alice-pw", bob: "bob-pw" });
    cleanup.push(() => radicale.stop());
    const alice = basic("alice", "alice-pw");
    const paths = {
      cal1: "/alice/cal1/",
      cal2: "/alice/cal2/",
      book1: "/alice/book1/",
      other: "/alice/other/",
    };
    for (
      const [path, method, body] of [
        [paths.cal1, "MKCALENDAR", null],
        [paths.cal2, "MKCALENDAR", null],
        [paths.other, "MKCALENDAR", null],
        [paths.book1, "MKCOL", MKCOL_BOOK],
      ] as const
    ) {
      const res = await fetch(radicale.origin + path, {
        method,
        headers: { authorization: alice, "content-type": "application/xml" },
        body,
      });
      await res.body?.cancel();
      if (res.status !== 201) throw new Error(`${method} ${path}: ${res.status}`);
    }
    const relay = await startRelay();
    cleanup.push(() => relay.stop());
    const push = await startWebPushTesting();
    cleanup.push(() => push.close());
    const bootstrap = await (await fetch(`${relay.url}/transports`)).json();
    const vapid = bootstrap["push-transports"][0].transport["transport-data"]["vapid-public-key"];
    const kvPath = await Deno.makeTempFile({ prefix: "bridge-kv-" });
    cleanup.push(() => Deno.remove(kvPath).catch(() => {}));
    const withCreds = radicale.origin.replace("http://", "http://alice:alice-pw@");
    const env = {
      BRIDGE_UPSTREAM: radicale.origin,
      BRIDGE_COLLECTIONS: [paths.cal1, paths.cal2, paths.book1].map((p) => withCreds + p)
        .join(","),
      BRIDGE_RELAY_URL: relay.url,
    };
    let bridge = await startBridge(env, { kvPath });
    const stack: RadicaleStack = {
      radicale,
      relay,
      push,
      get bridge() {
        return bridge;
      },
      vapid,
      alice,
      paths,
      async restartBridge() {
        await bridge.stop();
        bridge = await startBridge(env, { kvPath, port: bridge.port });
      },
      async close() {
        await bridge.stop();
        for (const f of cleanup.reverse()) await f();
      },
    };
    return stack;
  } catch (err) {
    for (const f of cleanup.reverse()) await f().catch(() => {});
    throw err;
  }
}
