/**
 * The only reader of the environment (README "Configuration"). `loadConfig` parses everything once and
 * fails with a `ConfigError` naming the variable, so a bad deployment stops at start instead
 * of failing on the first push.
 *
 * @module
 */

import {
  type AppConfig,
  base64Key,
  bearerToken,
  ConfigError,
  type Env,
  httpUrl,
  integer,
  parseApps,
  parseCorsOrigins,
} from "./config_values.ts";

export { type AppConfig, ConfigError, parseApps, parseCorsOrigins } from "./config_values.ts";
import { validateApnsKey } from "./transports/apns.ts";
import { parseServiceAccount } from "./transports/fcm.ts";

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

/** Longest TTL push services honour (RFC 8030 leaves it to them; 28 days is common). */
export const MAX_TTL = 28 * 24 * 3600;

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
  const onDenoDeploy = env.DENO_DEPLOYMENT_ID !== undefined;
  return {
    port,
    publicUrl,
    kvPath: env.RELAY_KV_PATH === "" ? undefined : env.RELAY_KV_PATH,
    apps: env.RELAY_APPS ? parseApps(env.RELAY_APPS) : null,
    secret: env.RELAY_SECRET ? base64Key("RELAY_SECRET", env.RELAY_SECRET, [32, 1024]) : null,
    vapid: vapidKeys(env),
    vapidSubject: vapidSubject(env, publicUrl),
    // 7 days: WebDAV-Push clients (DAVx⁵) ask for 3 and renew when fewer than 2 are left.
    refreshInterval: integer(env, "RELAY_REFRESH_INTERVAL", 604800, 60, 365 * 24 * 3600),
    ttl: integer(env, "RELAY_TTL", 86400, 0, MAX_TTL),
    coalesceMs: integer(env, "RELAY_COALESCE_MS", 2000, 0, 3600_000),
    leaseMs: integer(env, "RELAY_LEASE_MS", 15_000, 1000, 600_000),
    registrationRateLimit: integer(env, "RELAY_REGISTRATION_RATE_LIMIT", 60, 0, 1_000_000),
    allowPrivateEndpoints: allowPrivate(env),
    outboundProxy: PROXY_VARS.some((name) => (env[name] ?? "") !== ""),
    onDenoDeploy,
    fcm: fcmConfig(env),
    apns: apnsConfig(env),
    clientIpHeader: clientIpHeader(env),
    corsOrigins: parseCorsOrigins(env.RELAY_CORS_ORIGINS),
    metricsToken: bearerToken(env, "RELAY_METRICS_TOKEN"),
    adminToken: bearerToken(env, "RELAY_ADMIN_TOKEN"),
    requestTimeoutMs: integer(env, "RELAY_REQUEST_TIMEOUT_MS", 10_000, 100, 600_000),
    encryptionWorkers: integer(
      env,
      "RELAY_ENCRYPTION_WORKERS",
      onDenoDeploy ? 0 : Math.min(4, Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1)),
      0,
      64,
    ),
    upstream: upstreamConfig(env),
  };
}

function vapidKeys(env: Env): Config["vapid"] {
  const vapidPublic = env.RELAY_VAPID_PUBLIC_KEY;
  const vapidPrivate = env.RELAY_VAPID_PRIVATE_KEY;
  if (!vapidPublic && !vapidPrivate) return null;
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
  return { publicKey: vapidPublic.trim(), privateKey: vapidPrivate.trim() };
}

function vapidSubject(env: Env, publicUrl: string): string {
  const publicHost = new URL(publicUrl).hostname;
  const subject = env.RELAY_VAPID_SUBJECT ||
    (publicUrl.startsWith("https:") ? publicUrl : `mailto:relay@${publicHost}`);
  if (!/^(mailto:.+@.+|https:\/\/.+)$/.test(subject)) {
    throw new ConfigError(
      "RELAY_VAPID_SUBJECT",
      `must be a mailto: or https: URI (RFC 8292 §2.1), got "${subject}"`,
    );
  }
  return subject;
}

function allowPrivate(env: Env): boolean {
  const raw = env.RELAY_ALLOW_PRIVATE_ENDPOINTS ?? "0";
  if (!["0", "1", "", "true", "false"].includes(raw)) {
    throw new ConfigError("RELAY_ALLOW_PRIVATE_ENDPOINTS", `must be 0 or 1, got "${raw}"`);
  }
  return raw === "1" || raw === "true";
}

function fcmConfig(env: Env): FcmConfig | null {
  if (!env.RELAY_FCM_SERVICE_ACCOUNT) return null;
  try {
    parseServiceAccount(env.RELAY_FCM_SERVICE_ACCOUNT);
  } catch (err) {
    throw new ConfigError(
      "RELAY_FCM_SERVICE_ACCOUNT",
      (err as Error).message.replace(/^RELAY_FCM_SERVICE_ACCOUNT:?\s*/, ""),
    );
  }
  return {
    serviceAccountJson: env.RELAY_FCM_SERVICE_ACCOUNT,
    apiUrl: httpUrl("RELAY_FCM_API_URL", env.RELAY_FCM_API_URL || "https://fcm.googleapis.com"),
  };
}

const APNS_VARS = ["RELAY_APNS_KEY", "RELAY_APNS_KEY_ID", "RELAY_APNS_TEAM_ID", "RELAY_APNS_TOPIC"];

function apnsConfig(env: Env): ApnsConfig | null {
  if (!APNS_VARS.some((v) => env[v])) return null;
  const missing = APNS_VARS.find((v) => !env[v]);
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
  return {
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

function clientIpHeader(env: Env): string | null {
  const header = env.RELAY_CLIENT_IP_HEADER?.trim().toLowerCase() || null;
  if (header !== null && !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(header)) {
    throw new ConfigError("RELAY_CLIENT_IP_HEADER", `is not a header name: "${header}"`);
  }
  return header;
}

function upstreamConfig(env: Env): UpstreamConfig | null {
  if (env.RELAY_UPSTREAM_URL) {
    return {
      url: httpUrl("RELAY_UPSTREAM_URL", env.RELAY_UPSTREAM_URL),
      token: bearerToken(env, "RELAY_UPSTREAM_TOKEN"),
    };
  }
  if (env.RELAY_UPSTREAM_TOKEN) {
    throw new ConfigError("RELAY_UPSTREAM_TOKEN", "needs RELAY_UPSTREAM_URL");
  }
  return null;
}
