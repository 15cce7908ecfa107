/**
 * The bridge's configuration (README, "The CalDAV bridge" and "Push for DAVx⁵ on Radicale (or
 * any CalDAV server)"): the only reader of the `BRIDGE_*` environment.
 *
 * Credentials in a collection URL's user-info are split off here and kept apart from the URL,
 * so that nothing downstream can log them by accident.
 *
 * @module
 */

const encoder = new TextEncoder();

/** RFC 4648 §4 base64 (`btoa` takes one character per byte). */
function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

/** RFC 4648 §5 base64url, without padding. */
export function base64Url(bytes: Uint8Array): string {
  return base64(bytes).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** One watched CalDAV collection. */
export interface BridgeCollection {
  /** Position in `BRIDGE_COLLECTIONS`; the bridge serves it at `/collections/{index}/`. */
  index: number;
  /** The bridge's path for it, `/collections/{index}/`. */
  path: string;
  /** The upstream collection URL without credentials, ending in `/`. Safe to log. */
  url: string;
  /** `Authorization` value the bridge polls with (Basic, from the URL's user-info), if any. */
  pollAuthorization: string | undefined;
  /** The collection's DAV-Push topic (see {@linkcode collectionTopic}). */
  topic: string;
  /**
   * Its path at the bridge's proxy (the upstream path, ending in `/`) when the collection lies
   * under `BRIDGE_UPSTREAM`: a watched collection, offered WebDAV-Push.
   */
  proxyPath?: string;
}

/** The validated `BRIDGE_*` settings. */
export interface BridgeConfig {
  /** `BRIDGE_PORT`, default 8001; `0` picks a free port (see `bridge/main.ts`). */
  port: number;
  /** `BRIDGE_PUBLIC_URL` without a trailing slash, default `http://localhost:$BRIDGE_PORT`. */
  publicUrl: string;
  /** `BRIDGE_COLLECTIONS`, required. */
  collections: BridgeCollection[];
  /** `BRIDGE_POLL_SECONDS`, default 30; fractions allowed (tests use 1 or less). */
  pollSeconds: number;
  /** `BRIDGE_RELAY_URL` without a trailing slash, default `http://localhost:8000`. */
  relayUrl: string;
  /** `BRIDGE_RELAY_TOKEN`, required. A secret: never logged. */
  relayToken: string;
  /**
   * `BRIDGE_UPSTREAM`: the CalDAV/CardDAV server the bridge is a reverse proxy for, without a
   * trailing slash; unset, no proxy.
   */
  upstream?: string;
  /** `BRIDGE_KV_PATH`: where the WebDAV-Push registrations are kept; unset, Deno's default. */
  kvPath?: string;
  /** `BRIDGE_SECRET` (base64url, 32 bytes or more); unset, generated and kept in KV. A secret. */
  secret?: string;
}

/**
 * A collection's topic: base64url(HMAC-SHA-256(key = the relay token, the collection URL
 * without credentials)) cut to 22 characters (132 bits). Stable across restarts, and it reveals
 * neither the URL nor any user name (CC/CD 70025 §4.1: topics carry no user data or plain URLs;
 * §6.2.1.7: no collisions across installations).
 */
export async function collectionTopic(relayToken: string, collectionUrl: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(relayToken),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, encoder.encode(collectionUrl));
  return base64Url(new Uint8Array(mac)).slice(0, 22);
}

/** Splits a collection URL into the credential-free URL (ending in `/`) and Basic auth. */
export function splitCredentials(raw: string, index: number): {
  url: string;
  authorization: string | undefined;
} {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    // The text may hold a password: name the position, not the value.
    throw new Error(`BRIDGE_COLLECTIONS entry ${index} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(
      `BRIDGE_COLLECTIONS entry ${index} must be http: or https:, got ${url.protocol}`,
    );
  }
  let authorization: string | undefined;
  if (url.username || url.password) {
    let user: string, pass: string;
    try {
      user = decodeURIComponent(url.username);
      pass = decodeURIComponent(url.password);
    } catch {
      throw new Error(`BRIDGE_COLLECTIONS entry ${index} has badly percent-encoded credentials`);
    }
    authorization = "Basic " + base64(encoder.encode(`${user}:${pass}`));
    url.username = "";
    url.password = "";
  }
  url.hash = "";
  if (url.search) {
    throw new Error(`BRIDGE_COLLECTIONS entry ${index} must not have a query: ${url.origin}`);
  }
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return { url: url.href, authorization };
}

function positiveNumber(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined || value.trim() === "") return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    throw new Error(`${name} must be a positive number, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** `BRIDGE_SECRET`: base64url of 32 bytes or more (the message never holds the value). */
function secretOf(value: string | undefined): string | undefined {
  if (value === undefined || value.trim() === "") return undefined;
  const t = value.trim();
  if (!/^[A-Za-z0-9_-]+={0,2}$/.test(t) || Math.floor(t.replace(/=+$/, "").length * 3 / 4) < 32) {
    throw new Error("BRIDGE_SECRET must be base64url of 32 bytes or more");
  }
  return t.replace(/=+$/, "");
}

function baseUrl(name: string, value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`${name} is not a URL: ${JSON.stringify(value)}`);
  }
  if (url.username || url.password) throw new Error(`${name} must not hold credentials`);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`${name} must be http: or https:, got ${url.protocol}`);
  }
  return url.href.replace(/\/+$/, "");
}

/**
 * Reads and validates the bridge's settings from `env`.
 *
 * @throws {Error} naming the offending variable (never a credential or the relay token)
 */
export async function loadBridgeConfig(
  env: Readonly<Record<string, string | undefined>>,
): Promise<BridgeConfig> {
  const rawPort = env.BRIDGE_PORT?.trim() || "8001";
  const port = Number(rawPort);
  if (!/^\d+$/.test(rawPort) || port > 65535) {
    throw new Error(
      `BRIDGE_PORT must be an integer from 0 to 65535, got ${JSON.stringify(rawPort)}`,
    );
  }
  const relayToken = env.BRIDGE_RELAY_TOKEN ?? "";
  if (relayToken === "") throw new Error("BRIDGE_RELAY_TOKEN is required");
  const rawCollections = (env.BRIDGE_COLLECTIONS ?? "").split(",").map((s) => s.trim())
    .filter((s) => s !== "");
  if (rawCollections.length === 0) {
    throw new Error("BRIDGE_COLLECTIONS is required: a comma-separated list of collection URLs");
  }
  const collections: BridgeCollection[] = [];
  const seen = new Set<string>();
  for (const [index, raw] of rawCollections.entries()) {
    const { url, authorization } = splitCredentials(raw, index);
    if (seen.has(url)) throw new Error(`BRIDGE_COLLECTIONS lists ${url} twice`);
    seen.add(url);
    collections.push({
      index,
      path: `/collections/${index}/`,
      url,
      pollAuthorization: authorization,
      topic: await collectionTopic(relayToken, url),
    });
  }
  const upstream = env.BRIDGE_UPSTREAM?.trim()
    ? baseUrl("BRIDGE_UPSTREAM", env.BRIDGE_UPSTREAM.trim())
    : undefined;
  if (upstream !== undefined) {
    if (new URL(upstream).search) throw new Error("BRIDGE_UPSTREAM must not have a query");
    // Watched: the collection lies under the upstream; at the proxy it keeps its path.
    for (const c of collections) {
      if (c.url.startsWith(upstream + "/")) c.proxyPath = new URL(c.url).pathname;
    }
  }
  const secret = secretOf(env.BRIDGE_SECRET);
  const kvPath = env.BRIDGE_KV_PATH?.trim() || undefined;
  return {
    port,
    publicUrl: baseUrl("BRIDGE_PUBLIC_URL", env.BRIDGE_PUBLIC_URL ?? `http://localhost:${port}`),
    collections,
    pollSeconds: positiveNumber("BRIDGE_POLL_SECONDS", env.BRIDGE_POLL_SECONDS, 30),
    relayUrl: baseUrl("BRIDGE_RELAY_URL", env.BRIDGE_RELAY_URL ?? "http://localhost:8000"),
    relayToken,
    ...(upstream !== undefined ? { upstream } : {}),
    ...(kvPath !== undefined ? { kvPath } : {}),
    ...(secret !== undefined ? { secret } : {}),
  };
}
