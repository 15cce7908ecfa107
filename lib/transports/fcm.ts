/**
 * Firebase Cloud Messaging HTTP v1 transport (README "Android and iOS: FCM and APNs").
 *
 * Auth is the OAuth 2.0 JWT-bearer grant (RFC 7523 §2.1): an RS256 assertion signed with the
 * service account's key is exchanged at the account's own `token_uri` for an access token,
 * which is cached until shortly before it expires. Concurrent sends share one in-flight token
 * request (single flight). Messages are data messages: every payload field becomes a string.
 *
 * Never logged or put into outcomes: access tokens, assertions, device tokens, the key.
 *
 * @module
 */

import { encodeBase64Url } from "../encoding.ts";
import {
  importRs256Pkcs8,
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

/** The OAuth scope FCM HTTP v1 requires. */
export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";

const DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token";
const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/** FCM's upper bound for `android.ttl` (4 weeks). */
const MAX_FCM_TTL = 2_419_200;

/** The parts of a Google service-account key file the relay uses. */
export interface ServiceAccount {
  projectId: string;
  clientEmail: string;
  /** PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). */
  privateKey: string;
  /** `private_key_id`, sent as the assertion's `kid` when present. */
  privateKeyId?: string;
  /** Where the assertion is exchanged for an access token. */
  tokenUri: string;
}

const RSA_ENCRYPTION_OID = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/**
 * Parses and checks `RELAY_FCM_SERVICE_ACCOUNT` (the content of the key file the Firebase
 * console downloads).
 *
 * @throws {Error} whose message starts with `RELAY_FCM_SERVICE_ACCOUNT` and says what is
 * wrong; it never repeats the JSON or the key
 */
export function parseServiceAccount(json: string): ServiceAccount {
  const fail = (what: string): never => {
    throw new Error(`RELAY_FCM_SERVICE_ACCOUNT ${what}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    // JSON.parse messages quote the input, which holds the private key: never pass them on.
    fail("is not valid JSON: set it to the whole content of the service-account key file");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    fail("must be a JSON object (the service-account key file)");
  }
  const obj = raw as Record<string, unknown>;
  if (obj.type !== undefined && obj.type !== "service_account") {
    fail('has a "type" other than "service_account": download a service-account key');
  }
  const text = (name: string): string => {
    const v = obj[name];
    if (typeof v !== "string" || v.trim() === "") fail(`lacks "${name}" (a non-empty string)`);
    return (v as string).trim();
  };
  const projectId = text("project_id");
  if (!/^[A-Za-z0-9.:-]{1,100}$/.test(projectId)) {
    fail('has a "project_id" that is not a Google Cloud project id');
  }
  const clientEmail = text("client_email");
  if (!clientEmail.includes("@")) fail('has a "client_email" that is not an e-mail address');
  const privateKey = text("private_key").replaceAll("\\n", "\n");
  if (!/-----BEGIN PRIVATE KEY-----/.test(privateKey)) {
    fail('has a "private_key" that is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)');
  }
  let der: Uint8Array = new Uint8Array();
  try {
    der = pemToDer(privateKey);
  } catch {
    fail('has a "private_key" whose PEM body is not base64');
  }
  if (!isCompleteDerSequence(der) || !includesBytes(der.subarray(0, 32), RSA_ENCRYPTION_OID)) {
    fail('has a "private_key" that is not a complete PKCS#8 RSA key');
  }
  let tokenUri = DEFAULT_TOKEN_URI;
  if (obj.token_uri !== undefined) {
    tokenUri = text("token_uri");
    let url: URL | undefined;
    try {
      url = new URL(tokenUri);
    } catch {
      fail('has a "token_uri" that is not a URL');
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url!.hostname);
    if (url!.protocol !== "https:" && !(url!.protocol === "http:" && loopback)) {
      fail('has a "token_uri" that is not https: (http: is allowed for loopback mocks only)');
    }
  }
  const account: ServiceAccount = { projectId, clientEmail, privateKey, tokenUri };
  if (typeof obj.private_key_id === "string" && obj.private_key_id !== "") {
    account.privateKeyId = obj.private_key_id;
  }
  return account;
}

/**
 * Returns the normalised FCM registration token, or null when it is not 1 to 4096 printable
 * ASCII characters (README "Registering devices": otherwise `400 invalid-token`).
 */
export function validateFcmToken(s: unknown): string | null {
  if (typeof s !== "string") return null;
  return /^[\x21-\x7e]{1,4096}$/.test(s) ? s : null;
}

/** Turns a relay payload into FCM `data`: every field a string (numbers decimal, arrays JSON). */
export function fcmData(message: OutboundMessage): Record<string, string> {
  const payload = message.payload;
  if (payload.kind === "encrypted") {
    // Web Push ingress: forwarded still encrypted; the device decrypts with its own keys.
    return {
      type: "webpush",
      "content-encoding": "aes128gcm",
      body: encodeBase64Url(payload.body),
    };
  }
  // Only Web Push registrations take the WebDAV-Push payload; a text payload is its text.
  if (payload.kind === "text") return { body: payload.text };
  const data: Record<string, string> = {};
  for (const [key, value] of Object.entries(payload.data)) {
    if (value === undefined) continue;
    data[key] = typeof value === "string"
      ? value
      : typeof value === "number" || typeof value === "boolean"
      ? String(value)
      : JSON.stringify(value);
  }
  return data;
}

/** The `messages:send` request body for one device. */
export function fcmRequestBody(token: string, message: OutboundMessage): Record<string, unknown> {
  const ttl = Math.min(MAX_FCM_TTL, Math.max(0, Math.floor(message.ttl)));
  const android: Record<string, unknown> = {
    // High for priority 75-100, normal below (the relay's urgency bands).
    priority: message.priority >= 75 ? "high" : "normal",
    ttl: `${ttl}s`,
  };
  if (message.collapseKey !== undefined) android.collapse_key = message.collapseKey;
  return { message: { token, data: fcmData(message), android } };
}

export interface FcmTransportOptions {
  serviceAccount: ServiceAccount;
  /** `RELAY_FCM_API_URL`, e.g. `https://fcm.googleapis.com`. */
  apiUrl: string;
  fetch?: typeof fetch;
  /** Epoch milliseconds. */
  now: () => number;
  logger?: Logger;
  /** Timeout of a token request, which callers share (default 10 000 ms). */
  tokenTimeoutMs?: number;
  /** Refresh this long before the access token expires (default 300 000 ms). */
  tokenRefreshMarginMs?: number;
  /** After a failed token request, answer `retry` without asking again for this long (default 5000 ms). */
  tokenFailureBackoffMs?: number;
}

interface CachedToken {
  value: string;
  /** Epoch ms after which a new token is fetched. */
  refreshAt: number;
}

/** Why a token could not be had, as a ready outcome. */
class TokenError extends Error {
  constructor(readonly outcome: DeliveryOutcome) {
    super(outcome.kind === "delivered" ? "token" : outcome.reason);
  }
}

/** The FCM transport plus an introspection hook for tests and metrics. */
export interface FcmTransport extends Transport {
  readonly id: "fcm";
  /** How many token requests were made so far. */
  readonly tokenRequests: number;
}

/** Creates the FCM HTTP v1 transport. */
export function createFcmTransport(options: FcmTransportOptions): FcmTransport {
  const account = options.serviceAccount;
  const doFetch = options.fetch ?? fetch;
  const now = options.now;
  const logger = options.logger ?? silentLogger;
  const tokenTimeoutMs = options.tokenTimeoutMs ?? 10_000;
  const margin = options.tokenRefreshMarginMs ?? 300_000;
  const failureBackoff = options.tokenFailureBackoffMs ?? 5_000;
  const sendUrl = `${
    options.apiUrl.replace(/\/+$/, "")
  }/v1/projects/${account.projectId}/messages:send`;

  let keyPromise: Promise<CryptoKey> | undefined;
  let cached: CachedToken | undefined;
  let inFlight: Promise<CachedToken> | undefined;
  let failure: { until: number; outcome: DeliveryOutcome } | undefined;
  let tokenRequests = 0;

  function key(): Promise<CryptoKey> {
    keyPromise ??= importRs256Pkcs8(account.privateKey).catch((_e) => {
      keyPromise = undefined;
      throw new TokenError({ kind: "failed", reason: "fcm-key-invalid" });
    });
    return keyPromise;
  }

  async function fetchToken(): Promise<CachedToken> {
    tokenRequests++;
    const iat = Math.floor(now() / 1000);
    const header: Record<string, unknown> = { alg: "RS256", typ: "JWT" };
    if (account.privateKeyId !== undefined) header.kid = account.privateKeyId;
    const assertion = await signJwt(header, {
      iss: account.clientEmail,
      scope: FCM_SCOPE,
      aud: account.tokenUri,
      iat,
      exp: iat + 3600,
    }, await key());
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), tokenTimeoutMs);
    let res: Response;
    try {
      res = await doFetch(account.tokenUri, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ grant_type: JWT_BEARER, assertion }).toString(),
        signal: controller.signal,
      });
    } catch (_e) {
      throw new TokenError({
        kind: "retry",
        reason: controller.signal.aborted ? "fcm-token-timeout" : "fcm-token-network",
      });
    } finally {
      clearTimeout(timer);
    }
    let body: Record<string, unknown> = {};
    try {
      body = await res.json();
    } catch {
      // A non-JSON answer (e.g. a proxy's 502 page) is judged by its status alone.
    }
    if (res.ok && typeof body.access_token === "string" && body.access_token !== "") {
      const expiresIn = typeof body.expires_in === "number" && body.expires_in > 0
        ? body.expires_in * 1000
        : 3600_000;
      // Refresh `margin` before expiry, or halfway through for short-lived tokens.
      const lead = Math.min(margin, expiresIn / 2);
      logger.log("debug", "fcm.token.fetched", { expiresInS: Math.round(expiresIn / 1000) });
      return { value: body.access_token, refreshAt: now() + expiresIn - lead };
    }
    const error = typeof body.error === "string" ? body.error : `http ${res.status}`;
    // Credentials rejected (invalid_grant, invalid_client...) or the endpoint is down: the
    // device is not at fault and the message may still go out once the operator fixes it.
    logger.log(res.status >= 500 || res.status === 429 ? "warn" : "error", "fcm.token.failed", {
      status: res.status,
      error,
    });
    const outcome: DeliveryOutcome = {
      kind: "retry",
      status: res.status,
      reason: `fcm-token-${error}`,
    };
    const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"), now());
    if (retryAfterMs !== undefined) outcome.retryAfterMs = retryAfterMs;
    throw new TokenError(outcome);
  }

  /** The current access token; concurrent callers share one request (single flight). */
  function accessToken(): Promise<CachedToken> {
    const t = now();
    if (cached && t < cached.refreshAt) return Promise.resolve(cached);
    if (failure && t < failure.until) return Promise.reject(new TokenError(failure.outcome));
    if (inFlight) return inFlight;
    inFlight = fetchToken().then(
      (token) => {
        cached = token;
        failure = undefined;
        inFlight = undefined;
        return token;
      },
      (e) => {
        inFlight = undefined;
        if (e instanceof TokenError) {
          failure = { until: now() + failureBackoff, outcome: e.outcome };
        }
        throw e;
      },
    );
    // Callers that gave up (aborted) no longer listen: never let the rejection go unhandled.
    inFlight.catch(() => {});
    return inFlight;
  }

  /** Drops `token` from the cache, unless another caller already replaced it. */
  function invalidate(token: CachedToken): void {
    if (cached === token) cached = undefined;
  }

  async function post(
    token: CachedToken,
    body: string,
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    const init: RequestInit = {
      method: "POST",
      headers: {
        authorization: `Bearer ${token.value}`,
        "content-type": "application/json; charset=UTF-8",
      },
      body,
    };
    if (signal) init.signal = signal;
    return await doFetch(sendUrl, init);
  }

  async function send(
    target: Target,
    message: OutboundMessage,
    signal?: AbortSignal,
  ): Promise<DeliveryOutcome> {
    if (target.transport !== "fcm") {
      return { kind: "failed", reason: `fcm transport got a ${target.transport} target` };
    }
    if (signal?.aborted) return { kind: "retry", reason: "aborted" };
    const body = JSON.stringify(fcmRequestBody(target.token, message));
    try {
      let token = await withSignal(accessToken(), signal);
      let res = await post(token, body, signal);
      if (res.status === 401) {
        // An access token revoked or expired early: fetch a new one once and try again.
        await res.body?.cancel();
        invalidate(token);
        token = await withSignal(accessToken(), signal);
        res = await post(token, body, signal);
        if (res.status === 401) logger.log("error", "fcm.auth.rejected", { status: 401 });
      }
      return await classify(res, now());
    } catch (e) {
      if (e instanceof TokenError) return e.outcome;
      if (signal?.aborted) return { kind: "retry", reason: "aborted" };
      return { kind: "retry", reason: "network" };
    }
  }

  return {
    id: "fcm",
    send,
    get tokenRequests() {
      return tokenRequests;
    },
  };
}

/** Settles with `promise`, or rejects as soon as `signal` aborts (the promise stays shared). */
function withSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

interface FcmErrorBody {
  status?: string;
  message?: string;
  errorCode?: string;
  fields: string[];
}

function parseFcmError(text: string): FcmErrorBody {
  const out: FcmErrorBody = { fields: [] };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return out; // e.g. a load balancer's HTML 502 page
  }
  const error = (json as { error?: unknown } | null)?.error;
  if (typeof error !== "object" || error === null) return out;
  const e = error as Record<string, unknown>;
  if (typeof e.status === "string") out.status = e.status;
  if (typeof e.message === "string") out.message = e.message;
  if (Array.isArray(e.details)) {
    for (const d of e.details as Record<string, unknown>[]) {
      if (typeof d !== "object" || d === null) continue;
      const type = String(d["@type"] ?? "");
      if (type.endsWith("google.firebase.fcm.v1.FcmError") && typeof d.errorCode === "string") {
        out.errorCode = d.errorCode;
      }
      if (type.endsWith("google.rpc.BadRequest") && Array.isArray(d.fieldViolations)) {
        for (const v of d.fieldViolations as Record<string, unknown>[]) {
          if (typeof v?.field === "string") out.fields.push(v.field);
        }
      }
    }
  }
  return out;
}

/** Maps an FCM HTTP v1 answer to an outcome (FCM's ErrorCode reference). */
async function classify(res: Response, now: number): Promise<DeliveryOutcome> {
  const status = res.status;
  if (res.ok) {
    await res.body?.cancel();
    return { kind: "delivered", status };
  }
  const text = await res.text().catch(() => "");
  const err = parseFcmError(text);
  const reason = err.errorCode ?? err.status ?? `http ${status}`;
  if (status === 429 || status >= 500) {
    const outcome: DeliveryOutcome = { kind: "retry", status, reason };
    const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"), now);
    if (retryAfterMs !== undefined) outcome.retryAfterMs = retryAfterMs;
    return outcome;
  }
  // FCM UNREGISTERED (404): the app instance is gone. A 404 without it (a wrong project id)
  // says nothing about the device and must not prune.
  if (err.errorCode === "UNREGISTERED") return { kind: "gone", status, reason };
  if (status === 400 && isTokenArgumentError(err)) {
    return { kind: "gone", status, reason: "INVALID_ARGUMENT (registration token)" };
  }
  if (status === 401) return { kind: "retry", status, reason: "fcm-unauthenticated" };
  return { kind: "failed", status, reason };
}

/** A `400 INVALID_ARGUMENT` about the registration token itself, not about the message. */
function isTokenArgumentError(err: FcmErrorBody): boolean {
  if (err.fields.some((f) => f === "message.token")) return true;
  if (err.fields.length > 0) return false;
  return (err.errorCode === "INVALID_ARGUMENT" || err.status === "INVALID_ARGUMENT") &&
    /registration token/i.test(err.message ?? "");
}
