/**
 * Firebase Cloud Messaging HTTP v1 transport (README "Android and iOS: FCM and APNs").
 *
 * Auth is the OAuth 2.0 JWT-bearer grant (RFC 7523 §2.1): an RS256 assertion signed with the
 * service account's key is exchanged at the account's own `token_uri` for an access token,
 * which is cached until shortly before it expires. Concurrent sends share one in-flight token
 * request (single flight; lib/transports/fcm_oauth.ts). Messages are data messages: every
 * payload field becomes a string.
 *
 * Never logged or put into outcomes: access tokens, assertions, device tokens, the key.
 *
 * @module
 */

import { encodeBase64Url } from "../encoding.ts";
import { type Logger, silentLogger } from "../log.ts";
import type { ServiceAccount } from "./fcm_account.ts";
import { type CachedToken, createTokenSource, TokenError } from "./fcm_oauth.ts";

export { parseServiceAccount, type ServiceAccount } from "./fcm_account.ts";
export { FCM_SCOPE } from "./fcm_oauth.ts";
import {
  type DeliveryOutcome,
  type OutboundMessage,
  parseRetryAfter,
  type Target,
  type Transport,
} from "./types.ts";
import { untilAborted } from "../async/abort.ts";

/** FCM's upper bound for `android.ttl` (4 weeks). */
const MAX_FCM_TTL = 2_419_200;

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
  const sendUrl = `${
    options.apiUrl.replace(/\/+$/, "")
  }/v1/projects/${account.projectId}/messages:send`;

  const tokens = createTokenSource({
    account,
    fetch: doFetch,
    now,
    logger,
    timeoutMs: options.tokenTimeoutMs ?? 10_000,
    marginMs: options.tokenRefreshMarginMs ?? 300_000,
    failureBackoffMs: options.tokenFailureBackoffMs ?? 5_000,
  });

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
      let token = await untilAborted(tokens.accessToken(), signal);
      let res = await post(token, body, signal);
      if (res.status === 401) {
        // An access token revoked or expired early: fetch a new one once and try again.
        await res.body?.cancel();
        tokens.invalidate(token);
        token = await untilAborted(tokens.accessToken(), signal);
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
      return tokens.requests;
    },
  };
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
