/**
 * The only reader of the environment (README "Configuration"). `loadConfig` parses everything once and
 * fails with a `ConfigError` naming the variable, so a bad deployment stops at start instead
 * of failing on the first push.
 *
 * @module
 */

import { decodeBase64Url } from "./encoding.ts";
import { validateApnsKey } from "./transports/apns.ts";
import { parseServiceAccount } from "./transports/fcm.ts";

/** One application server allowed to use the gateway (README "The gateway protocol"). */
export interface AppConfig {
  id: string;
  /** Bearer token; null for a path-authenticated app, whose id is itself the secret. */
  token: string | null;
}

export interface FcmConfig {
  /** The service-account JSON text (validated by the FCM transport). */
  serviceAccountJson: string;
  apiUrl: string;
}

export interface ApnsConfig {
  key: string;
  keyId: string;
  teamId: string;
  topic: string;
  apiUrl: string;
  sandboxUrl: string;
}

export interface Config {
  port: number;
  /** Base of every transport-uri and push-url, without a trailing slash. */
  publicUrl: string;
  /** undefined: `Deno.openKv()` default (Deno Deploy's attached database). */
  kvPath: string | undefined;
  /** null: dev mode, one app `dev` whose token is generated and kept in KV. */
  apps: AppConfig[] | null;
  /** null: generated on first start and kept in KV. */
  secret: Uint8Array | null;
  /** null: generated on first start and kept in KV. */
  vapid: { publicKey: string; privateKey: string } | null;
  vapidSubject: string;
  refreshInterval: number;
  ttl: number;
  coalesceMs: number;
  /** Advanced: a worker silent this long is presumed dead and its work taken over. */
  leaseMs: number;
  registrationRateLimit: number;
  allowPrivateEndpoints: boolean;
  /**
   * An outbound HTTP proxy is set (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, or lower-case):
   * Web Push then goes out on `fetch`, which honours them, instead of the relay's own client.
   */
  outboundProxy: boolean;
  /** Running on Deno Deploy (`DENO_DEPLOYMENT_ID` set): one `console.log` record per log line. */
  onDenoDeploy: boolean;
  fcm: FcmConfig | null;
  apns: ApnsConfig | null;
  /**
   * Header set by a trusted reverse proxy that carries the client's address (lower case), e.g.
   * `x-forwarded-for` (its last entry is used) or `cf-connecting-ip`; null: never read.
   */
  clientIpHeader: string | null;
  /** Origins allowed to call the client API from a browser; `"*"` any; null: no CORS headers. */
  corsOrigins: string[] | "*" | null;
  /** Bearer token `/metrics` requires; null: `/metrics` is public. */
  metricsToken: string | null;
  /** Bearer token of the admin API; null: the admin API is off (`404`). */
  adminToken: string | null;
  /** Longest time a client may take to send a request's headers and body. */
  requestTimeoutMs: number;
  /** Module workers that encrypt Web Push under load; 0 encrypts in the main isolate. */
  encryptionWorkers: number;
  /** Another CC/CD 70025 gateway this relay relays to; null: none. */
  upstream: UpstreamConfig | null;
}

/** The upstream gateway of CC/CD 70025 §4.2 relaying (README "Relaying to another gateway"). */
export interface UpstreamConfig {
  /** Its gateway URL, e.g. `https://push.example.com/gateway` (no trailing slash). */
  url: string;
  /** This relay's bearer token there; null when the URL's path names a path-secret app. */
  token: string | null;
}

/** A configuration value is wrong; `variable` names the environment variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
  }
}

type Env = Record<string, string | undefined>;

/** Longest TTL push services honour (RFC 8030 leaves it to them; 28 days is common). */
export const MAX_TTL = 28 * 24 * 3600;

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw.trim())) {
    throw new ConfigError(name, `must be a whole number, got "${raw}"`);
  }
  const value = Number(raw.trim());
  if (value < min || value > max) {
    throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

function httpUrl(name: string, raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, `must be an absolute URL, got "${raw}"`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new ConfigError(name, `must be an http: or https: URL, got "${url.protocol}"`);
  }
  if (url.search || url.hash) {
    throw new ConfigError(name, "must not carry a query or fragment");
  }
  return url.href.replace(/\/+$/, "");
}

const APP_ID = /^[A-Za-z0-9._~-]+$/;

/** Parses `RELAY_APPS`: comma-separated `id:token`, where `id:` is a path-authenticated app. */
export function parseApps(raw: string): AppConfig[] {
  const name = "RELAY_APPS";
  const apps: AppConfig[] = [];
  const parts = raw.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) throw new ConfigError(name, "lists no app");
  for (const part of parts) {
    const colon = part.indexOf(":");
    if (colon < 0) {
      throw new ConfigError(name, `entry ${apps.length + 1} has no ":" (expected id:token)`);
    }
    const id = part.slice(0, colon);
    const token = part.slice(colon + 1);
    if (!APP_ID.test(id)) {
      throw new ConfigError(
        name,
        `entry ${apps.length + 1} has an app id with characters outside A-Z a-z 0-9 . _ ~ -`,
      );
    }
    if (apps.some((a) => a.id === id)) {
      throw new ConfigError(name, `app id "${token === "" ? "<path secret>" : id}" appears twice`);
    }
    if (token === "") {
      // A path-authenticated app's id is its secret, so it must be long.
      if (id.length < 32) {
        throw new ConfigError(
          name,
          `entry ${apps.length + 1} is path-authenticated (empty token), so its id must have ` +
            `at least 32 characters, got ${id.length}`,
        );
      }
      apps.push({ id, token: null });
    } else {
      if (token.length < 16 || /\s/.test(token)) {
        throw new ConfigError(
          name,
          `app "${id}" needs a token of at least 16 characters without spaces`,
        );
      }
      apps.push({ id, token });
    }
  }
  const tokens = apps.map((a) => a.token).filter((t) => t !== null);
  if (new Set(tokens).size !== tokens.length) {
    throw new ConfigError(name, "two apps share one token");
  }
  return apps;
}

function base64Key(name: string, raw: string, length: number | [number, number]): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = decodeBase64Url(raw.trim());
  } catch {
    throw new ConfigError(name, "is not base64url");
  }
  const ok = typeof length === "number"
    ? bytes.length === length
    : bytes.length >= length[0] && bytes.length <= length[1];
  if (!ok) {
    const want = typeof length === "number" ? `${length}` : `at least ${length[0]}`;
    throw new ConfigError(name, `must decode to ${want} bytes, got ${bytes.length}`);
  }
  return bytes;
}

/** The proxy variables `fetch` reads (it also honours `NO_PROXY`). */
const PROXY_VARS = [
  "HTTPS_PROXY",
  "https_proxy",
  "HTTP_PROXY",
  "http_proxy",
  "ALL_PROXY",
  "all_proxy",
];

export function loadConfig(env: Env): Config {
  const port = integer(env, "PORT", 8000, 0, 65535);
  const publicUrl = httpUrl(
    "RELAY_PUBLIC_URL",
    env.RELAY_PUBLIC_URL || `http://localhost:${port}`,
  );

  const kvPath = env.RELAY_KV_PATH === "" ? undefined : env.RELAY_KV_PATH;
  const apps = env.RELAY_APPS ? parseApps(env.RELAY_APPS) : null;

  const secret = env.RELAY_SECRET ? base64Key("RELAY_SECRET", env.RELAY_SECRET, [32, 1024]) : null;

  let vapid: Config["vapid"] = null;
  const vapidPublic = env.RELAY_VAPID_PUBLIC_KEY;
  const vapidPrivate = env.RELAY_VAPID_PRIVATE_KEY;
  if (vapidPublic || vapidPrivate) {
    if (!vapidPublic) {
      throw new ConfigError("RELAY_VAPID_PUBLIC_KEY", "must be set with the private key");
    }
    if (!vapidPrivate) {
      throw new ConfigError("RELAY_VAPID_PRIVATE_KEY", "must be set with the public key");
    }
    const pub = base64Key("RELAY_VAPID_PUBLIC_KEY", vapidPublic, 65);
    if (pub[0] !== 4) {
      throw new ConfigError(
        "RELAY_VAPID_PUBLIC_KEY",
        "must be an uncompressed P-256 point (0x04...)",
      );
    }
    base64Key("RELAY_VAPID_PRIVATE_KEY", vapidPrivate, 32);
    vapid = { publicKey: vapidPublic.trim(), privateKey: vapidPrivate.trim() };
  }

  const publicHost = new URL(publicUrl).hostname;
  const vapidSubject = env.RELAY_VAPID_SUBJECT ||
    (publicUrl.startsWith("https:") ? publicUrl : `mailto:relay@${publicHost}`);
  if (!/^(mailto:.+@.+|https:\/\/.+)$/.test(vapidSubject)) {
    throw new ConfigError(
      "RELAY_VAPID_SUBJECT",
      `must be a mailto: or https: URI (RFC 8292 §2.1), got "${vapidSubject}"`,
    );
  }

  // 7 days: WebDAV-Push clients (DAVx⁵) ask for 3 and renew when fewer than 2 are left.
  const refreshInterval = integer(env, "RELAY_REFRESH_INTERVAL", 604800, 60, 365 * 24 * 3600);
  const ttl = integer(env, "RELAY_TTL", 86400, 0, MAX_TTL);
  const coalesceMs = integer(env, "RELAY_COALESCE_MS", 2000, 0, 3600_000);
  const leaseMs = integer(env, "RELAY_LEASE_MS", 15_000, 1000, 600_000);
  const registrationRateLimit = integer(env, "RELAY_REGISTRATION_RATE_LIMIT", 60, 0, 1_000_000);

  const allowRaw = env.RELAY_ALLOW_PRIVATE_ENDPOINTS ?? "0";
  if (!["0", "1", "", "true", "false"].includes(allowRaw)) {
    throw new ConfigError("RELAY_ALLOW_PRIVATE_ENDPOINTS", `must be 0 or 1, got "${allowRaw}"`);
  }
  const allowPrivateEndpoints = allowRaw === "1" || allowRaw === "true";
  const outboundProxy = PROXY_VARS.some((name) => (env[name] ?? "") !== "");

  let fcm: FcmConfig | null = null;
  if (env.RELAY_FCM_SERVICE_ACCOUNT) {
    try {
      parseServiceAccount(env.RELAY_FCM_SERVICE_ACCOUNT);
    } catch (err) {
      throw new ConfigError(
        "RELAY_FCM_SERVICE_ACCOUNT",
        (err as Error).message.replace(/^RELAY_FCM_SERVICE_ACCOUNT:?\s*/, ""),
      );
    }
    fcm = {
      serviceAccountJson: env.RELAY_FCM_SERVICE_ACCOUNT,
      apiUrl: httpUrl("RELAY_FCM_API_URL", env.RELAY_FCM_API_URL || "https://fcm.googleapis.com"),
    };
  }

  let apns: ApnsConfig | null = null;
  const apnsVars = [
    "RELAY_APNS_KEY",
    "RELAY_APNS_KEY_ID",
    "RELAY_APNS_TEAM_ID",
    "RELAY_APNS_TOPIC",
  ];
  const apnsSet = apnsVars.filter((v) => env[v]);
  if (apnsSet.length > 0) {
    const missing = apnsVars.find((v) => !env[v]);
    if (missing) throw new ConfigError(missing, "must be set to turn APNs on (with the others)");
    let key: string;
    try {
      key = validateApnsKey(env.RELAY_APNS_KEY!);
    } catch (err) {
      throw new ConfigError(
        "RELAY_APNS_KEY",
        (err as Error).message.replace(/^RELAY_APNS_KEY:?\s*/, ""),
      );
    }
    apns = {
      key,
      keyId: env.RELAY_APNS_KEY_ID!,
      teamId: env.RELAY_APNS_TEAM_ID!,
      topic: env.RELAY_APNS_TOPIC!,
      apiUrl: httpUrl("RELAY_APNS_API_URL", env.RELAY_APNS_API_URL || "https://api.push.apple.com"),
      sandboxUrl: httpUrl(
        "RELAY_APNS_SANDBOX_URL",
        env.RELAY_APNS_SANDBOX_URL || "https://api.sandbox.push.apple.com",
      ),
    };
  }

  const onDenoDeploy = env.DENO_DEPLOYMENT_ID !== undefined;
  const clientIpHeader = env.RELAY_CLIENT_IP_HEADER?.trim().toLowerCase() || null;
  if (clientIpHeader !== null && !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(clientIpHeader)) {
    throw new ConfigError("RELAY_CLIENT_IP_HEADER", `is not a header name: "${clientIpHeader}"`);
  }
  const corsOrigins = parseCorsOrigins(env.RELAY_CORS_ORIGINS);
  const metricsToken = bearerToken(env, "RELAY_METRICS_TOKEN");
  const adminToken = bearerToken(env, "RELAY_ADMIN_TOKEN");
  const requestTimeoutMs = integer(env, "RELAY_REQUEST_TIMEOUT_MS", 10_000, 100, 600_000);
  const cores = globalThis.navigator?.hardwareConcurrency ?? 1;
  const encryptionWorkers = integer(
    env,
    "RELAY_ENCRYPTION_WORKERS",
    onDenoDeploy ? 0 : Math.min(4, Math.max(1, cores)),
    0,
    64,
  );
  let upstream: UpstreamConfig | null = null;
  if (env.RELAY_UPSTREAM_URL) {
    upstream = {
      url: httpUrl("RELAY_UPSTREAM_URL", env.RELAY_UPSTREAM_URL),
      token: bearerToken(env, "RELAY_UPSTREAM_TOKEN"),
    };
  } else if (env.RELAY_UPSTREAM_TOKEN) {
    throw new ConfigError("RELAY_UPSTREAM_TOKEN", "needs RELAY_UPSTREAM_URL");
  }

  return {
    port,
    publicUrl,
    kvPath,
    apps,
    secret,
    vapid,
    vapidSubject,
    refreshInterval,
    ttl,
    coalesceMs,
    leaseMs,
    registrationRateLimit,
    allowPrivateEndpoints,
    outboundProxy,
    onDenoDeploy,
    fcm,
    apns,
    clientIpHeader,
    corsOrigins,
    metricsToken,
    adminToken,
    requestTimeoutMs,
    encryptionWorkers,
    upstream,
  };
}

/** A bearer token from the environment: at least 16 characters, no spaces; unset is null. */
function bearerToken(env: Env, name: string): string | null {
  const raw = env[name];
  if (raw === undefined || raw === "") return null;
  if (raw.length < 16 || /\s/.test(raw)) {
    throw new ConfigError(name, "must be a token of at least 16 characters without spaces");
  }
  return raw;
}

/** `RELAY_CORS_ORIGINS`: comma-separated origins (`https://app.example`), or `*`. */
export function parseCorsOrigins(raw: string | undefined): string[] | "*" | null {
  if (raw === undefined || raw.trim() === "") return null;
  if (raw.trim() === "*") return "*";
  const origins: string[] = [];
  for (const part of raw.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    let url: URL;
    try {
      url = new URL(part);
    } catch {
      throw new ConfigError("RELAY_CORS_ORIGINS", `"${part}" is not an origin`);
    }
    if ((url.protocol !== "https:" && url.protocol !== "http:") || url.origin !== part) {
      throw new ConfigError(
        "RELAY_CORS_ORIGINS",
        `"${part}" is not an origin (scheme://host[:port], no path)`,
      );
    }
    origins.push(url.origin);
  }
  return origins;
}
