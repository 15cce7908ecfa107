/**
 * Apple Push Notification service transport, token-based auth over HTTP/2 (README "APNs"
 * "APNs deliveries").
 *
 * Every delivery is a background push (`apns-push-type: background`, `apns-priority: 5`,
 * `{"aps": {"content-available": 1}}` plus the payload fields at the top level). The ES256
 * provider JWT is reused between `minTokenAgeMs` (20 min) and `maxTokenAgeMs` (50 min): Apple
 * rejects tokens older than an hour and answers `429 TooManyProviderTokenUpdates` when a
 * provider renews more often than every 20 minutes.
 *
 * Never logged or put into outcomes: the JWT, the key, device tokens.
 *
 * @module
 */

import { encodeBase64Url, utf8 } from "../encoding.ts";
import {
  importEs256Pkcs8,
  includesBytes,
  isCompleteDerSequence,
  pemToDer,
  signJwt,
} from "../crypto/jwt.ts";
import { type Logger, silentLogger } from "../log.ts";
import {
  type DeliveryOutcome,
  type OutboundMessage,
  parseRetryAfter,
  type Target,
  type Transport,
} from "./types.ts";

/** Apple's payload limit for regular (non-VoIP) remote notifications. */
export const APNS_MAX_PAYLOAD_BYTES = 4096;
const MINUTE = 60_000;

const EC_PUBLIC_KEY_OID = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/**
 * Normalises `RELAY_APNS_KEY` (the `.p8` file's content; one-line values with literal `\n`
 * are accepted) and checks that it is a complete PKCS#8 P-256 key, so a bad key stops the
 * relay at start instead of failing every delivery.
 *
 * @returns the normalised PEM
 * @throws {Error} whose message starts with `RELAY_APNS_KEY` and never repeats the key
 */
export function validateApnsKey(pem: string): string {
  const normalised = pem.replaceAll("\\n", "\n").trim();
  if (/-----BEGIN EC PRIVATE KEY-----/.test(normalised)) {
    throw new Error(
      "RELAY_APNS_KEY is a SEC1 EC key: use the .p8 file from Apple, or convert it with " +
        "`openssl pkcs8 -topk8 -nocrypt`",
    );
  }
  if (!/^-----BEGIN PRIVATE KEY-----[\s\S]+-----END PRIVATE KEY-----$/.test(normalised)) {
    throw new Error(
      "RELAY_APNS_KEY must be the content of the .p8 key file (-----BEGIN PRIVATE KEY----- ...)",
    );
  }
  let der: Uint8Array;
  try {
    der = pemToDer(normalised);
  } catch {
    throw new Error("RELAY_APNS_KEY has a PEM body that is not base64");
  }
  const head = der.subarray(0, 40);
  if (
    !isCompleteDerSequence(der) || !includesBytes(head, EC_PUBLIC_KEY_OID) ||
    !includesBytes(head, P256_OID)
  ) {
    throw new Error("RELAY_APNS_KEY is not a complete PKCS#8 P-256 (ES256) private key");
  }
  return normalised;
}

/**
 * Returns the normalised (lower-case) APNs device token, or null unless it is an even number,
 * 64 or more, of hexadecimal digits (README "Registering devices": otherwise `400 invalid-token`).
 */
export function validateApnsToken(s: unknown): string | null {
  if (typeof s !== "string") return null;
  if (s.length < 64 || s.length > 1024 || s.length % 2 !== 0) return null;
  return /^[0-9a-fA-F]+$/.test(s) ? s.toLowerCase() : null;
}

/** Returns the APNs environment, or null unless it is `production` or `sandbox`. */
export function validateApnsEnvironment(s: unknown): "production" | "sandbox" | null {
  return s === "production" || s === "sandbox" ? s : null;
}

/** The JSON body of a background push: `aps.content-available` and the payload's fields. */
export function apnsPayload(message: OutboundMessage): Record<string, unknown> {
  const body: Record<string, unknown> = { aps: { "content-available": 1 } };
  const payload = message.payload;
  if (payload.kind === "encrypted") {
    body.type = "webpush";
    body["content-encoding"] = "aes128gcm";
    body.body = encodeBase64Url(payload.body);
    return body;
  }
  // Only Web Push registrations take the WebDAV-Push payload; a text payload is its text.
  if (payload.kind === "text") {
    body.body = payload.text;
    return body;
  }
  for (const [key, value] of Object.entries(payload.data)) {
    if (key !== "aps" && value !== undefined) body[key] = value;
  }
  return body;
}

/** The request headers of a background push, without `authorization`. */
export function apnsHeaders(
  message: OutboundMessage,
  topic: string,
  nowMs: number,
): Record<string, string> {
  const ttl = Math.max(0, Math.floor(message.ttl));
  const headers: Record<string, string> = {
    "apns-topic": topic,
    // Apple: background pushes must use push type background and priority 5.
    "apns-push-type": "background",
    "apns-priority": "5",
    // 0 = deliver at most once, never stored; otherwise a UNIX time in seconds.
    "apns-expiration": String(ttl === 0 ? 0 : Math.floor(nowMs / 1000) + ttl),
    "content-type": "application/json",
  };
  if (message.collapseKey !== undefined && utf8(message.collapseKey).length <= 64) {
    headers["apns-collapse-id"] = message.collapseKey;
  }
  return headers;
}

export interface ApnsTransportOptions {
  /** PKCS#8 PEM of the `.p8` signing key (`RELAY_APNS_KEY`). */
  key: string;
  /** `RELAY_APNS_KEY_ID`: the key's 10-character id, sent as the JWT `kid`. */
  keyId: string;
  /** `RELAY_APNS_TEAM_ID`: sent as the JWT `iss`. */
  teamId: string;
  /** `RELAY_APNS_TOPIC`: the app's bundle id, sent as `apns-topic`. */
  topic: string;
  /** `RELAY_APNS_API_URL`, for `production` registrations. */
  productionUrl: string;
  /** `RELAY_APNS_SANDBOX_URL`, for `sandbox` registrations. */
  sandboxUrl: string;
  /**
   * An HTTP client for every request, e.g. `createApnsHttpClient()` (HTTP/2 only, extra CA
   * certificates). Without one, the default client is used; it negotiates h2 by ALPN.
   */
  client?: Deno.HttpClient;
  fetch?: typeof fetch;
  /** Epoch milliseconds. */
  now: () => number;
  logger?: Logger;
  /** Never renew the provider JWT sooner than this after it was issued (default 20 min). */
  minTokenAgeMs?: number;
  /** Renew the provider JWT once it is this old (default 50 min; Apple's limit is 60). */
  maxTokenAgeMs?: number;
}

/** An HTTP/2-only client for APNs; pass `caCerts` to trust a private CA (tests, mocks). */
export function createApnsHttpClient(options: { caCerts?: string[] } = {}): Deno.HttpClient {
  const init: Deno.CreateHttpClientOptions = { http1: false, http2: true };
  if (options.caCerts) init.caCerts = options.caCerts;
  return Deno.createHttpClient(init);
}

interface ProviderToken {
  jwt: string;
  /** Epoch ms the token was signed. */
  issuedAt: number;
  generation: number;
}

/** The APNs transport plus introspection for tests and metrics. */
export interface ApnsTransport extends Transport {
  readonly id: "apns";
  /** How many provider JWTs were signed so far. */
  readonly tokensIssued: number;
}

/** Creates the APNs transport. */
export function createApnsTransport(options: ApnsTransportOptions): ApnsTransport {
  const doFetch = options.fetch ?? fetch;
  const now = options.now;
  const logger = options.logger ?? silentLogger;
  const minAge = options.minTokenAgeMs ?? 20 * MINUTE;
  const maxAge = options.maxTokenAgeMs ?? 50 * MINUTE;
  const pem = validateApnsKey(options.key);
  const urls = {
    production: options.productionUrl.replace(/\/+$/, ""),
    sandbox: options.sandboxUrl.replace(/\/+$/, ""),
  };

  let keyPromise: Promise<CryptoKey> | undefined;
  let current: Promise<ProviderToken> | undefined;
  /** Bumped synchronously by every `issue()`, so concurrent callers renew only once. */
  let generation = 0;
  let tokensIssued = 0;

  function key(): Promise<CryptoKey> {
    keyPromise ??= importEs256Pkcs8(pem).catch((e) => {
      keyPromise = undefined;
      throw e;
    });
    return keyPromise;
  }

  function issue(): Promise<ProviderToken> {
    const issuedAt = now();
    const gen = ++generation;
    const promise = (async () => {
      const jwt = await signJwt(
        { alg: "ES256", kid: options.keyId },
        { iss: options.teamId, iat: Math.floor(issuedAt / 1000) },
        await key(),
      );
      tokensIssued++;
      logger.log("info", "apns.token.issued", {});
      return { jwt, issuedAt, generation: gen };
    })();
    current = promise;
    promise.catch(() => {
      if (current === promise) current = undefined;
    });
    return promise;
  }

  /** The provider JWT, renewed once it reaches `maxAge`; concurrent callers share one. */
  async function providerToken(): Promise<ProviderToken> {
    if (!current) return issue();
    const token = await current;
    if (token.generation !== generation) return current ?? issue();
    return now() - token.issuedAt >= maxAge ? issue() : token;
  }

  /**
   * After `403 ExpiredProviderToken` for `used`: renew, unless someone already did or the token
   * is younger than `minAge` (renewing then risks `429 TooManyProviderTokenUpdates`, and a
   * token that young is stale only when the clock is off).
   */
  function renewAfterExpired(used: ProviderToken): Promise<ProviderToken> | null {
    if (used.generation !== generation) return current ?? issue();
    if (now() - used.issuedAt < minAge) return null;
    return issue();
  }

  async function post(
    url: string,
    token: ProviderToken,
    headers: Record<string, string>,
    body: string,
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    const init: RequestInit & { client?: Deno.HttpClient } = {
      method: "POST",
      headers: { ...headers, authorization: `bearer ${token.jwt}` },
      body,
    };
    if (signal) init.signal = signal;
    if (options.client) init.client = options.client;
    return await doFetch(url, init);
  }

  async function send(
    target: Target,
    message: OutboundMessage,
    signal?: AbortSignal,
  ): Promise<DeliveryOutcome> {
    if (target.transport !== "apns") {
      return { kind: "failed", reason: `apns transport got a ${target.transport} target` };
    }
    const body = JSON.stringify(apnsPayload(message));
    if (utf8(body).length > APNS_MAX_PAYLOAD_BYTES) {
      return { kind: "failed", status: 413, reason: "PayloadTooLarge" };
    }
    const base = target.environment === "sandbox" ? urls.sandbox : urls.production;
    const url = `${base}/3/device/${encodeURIComponent(target.token)}`;
    const headers = apnsHeaders(message, options.topic, now());
    let token: ProviderToken;
    try {
      token = await providerToken();
    } catch (_e) {
      logger.log("error", "apns.key.invalid", {});
      return { kind: "failed", reason: "apns-key-invalid" };
    }
    try {
      let res = await post(url, token, headers, body, signal);
      let reason: string | undefined;
      if (res.status === 403) {
        reason = await reasonOf(res);
        if (reason === "ExpiredProviderToken") {
          const renewed = renewAfterExpired(token);
          if (!renewed) {
            logger.log("warn", "apns.token.expired_early", {
              ageS: Math.round((now() - token.issuedAt) / 1000),
            });
            return {
              kind: "retry",
              status: 403,
              reason,
              retryAfterMs: Math.max(0, token.issuedAt + minAge - now()),
            };
          }
          // Apple: a stale provider token; sign a new one and try once more.
          token = await renewed;
          res = await post(url, token, headers, body, signal);
          reason = undefined;
        }
      }
      if (res.ok) {
        await res.body?.cancel();
        return { kind: "delivered", status: res.status };
      }
      reason ??= await reasonOf(res);
      if (res.status === 403 && /ProviderToken/.test(reason)) {
        logger.log("error", "apns.auth.rejected", { status: 403, reason });
      }
      return outcomeFor(res.status, reason, res, now());
    } catch (_e) {
      if (signal?.aborted) return { kind: "retry", reason: "aborted" };
      return { kind: "retry", reason: "network" };
    }
  }

  return {
    id: "apns",
    send,
    get tokensIssued() {
      return tokensIssued;
    },
  };
}

/** Reads APNs' `{"reason": "..."}` error body; `http <status>` when there is none. */
async function reasonOf(res: Response): Promise<string> {
  const text = await res.text().catch(() => "");
  try {
    const json = JSON.parse(text) as { reason?: unknown };
    if (typeof json?.reason === "string" && /^[A-Za-z]{1,64}$/.test(json.reason)) {
      return json.reason;
    }
  } catch {
    // not JSON
  }
  return `http ${res.status}`;
}

/** Maps an APNs error answer to an outcome (Apple's status-code table). */
function outcomeFor(
  status: number,
  reason: string,
  res: Response,
  now: number,
): DeliveryOutcome {
  // 410: the device token is no longer active for the topic (Unregistered, ExpiredToken).
  if (status === 410) return { kind: "gone", status, reason };
  if (status === 400 && (reason === "BadDeviceToken" || reason === "DeviceTokenNotForTopic")) {
    return { kind: "gone", status, reason };
  }
  if (status === 429 || status >= 500) {
    const outcome: DeliveryOutcome = { kind: "retry", status, reason };
    const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"), now);
    if (retryAfterMs !== undefined) outcome.retryAfterMs = retryAfterMs;
    return outcome;
  }
  // Credentials rejected (InvalidProviderToken, MissingProviderToken...): the device is not at
  // fault and the message can still go out once the operator fixes the key.
  if (status === 403 && /ProviderToken/.test(reason)) return { kind: "retry", status, reason };
  return { kind: "failed", status, reason };
}
