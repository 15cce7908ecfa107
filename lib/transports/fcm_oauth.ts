/**
 * The OAuth 2.0 access token FCM HTTP v1 needs: the JWT-bearer grant (RFC 7523 §2.1), an RS256
 * assertion signed with the service account's key exchanged at the account's own `token_uri`,
 * cached until shortly before it expires. Concurrent callers share one request (single
 * flight); after a failure, callers get its outcome without asking again for a while.
 *
 * Never logged or put into outcomes: access tokens, assertions, the key.
 *
 * @module
 */

import { importRs256Pkcs8, signJwt } from "../crypto/jwt.ts";
import type { Logger } from "../log.ts";
import type { ServiceAccount } from "./fcm_account.ts";
import { type DeliveryOutcome, parseRetryAfter } from "./types.ts";

/** The OAuth scope FCM HTTP v1 requires. */
export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";

const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";

export interface CachedToken {
  value: string;
  /** Epoch ms after which a new token is fetched. */
  refreshAt: number;
}

/** Why a token could not be had, as a ready outcome. */
export class TokenError extends Error {
  constructor(readonly outcome: DeliveryOutcome) {
    super(outcome.kind === "delivered" ? "token" : outcome.reason);
  }
}

export interface TokenSourceOptions {
  account: ServiceAccount;
  fetch: typeof fetch;
  now: () => number;
  logger: Logger;
  /** Timeout of a token request, which callers share. */
  timeoutMs: number;
  /** Refresh this long before the access token expires. */
  marginMs: number;
  /** After a failed token request, answer with its outcome without asking again for this long. */
  failureBackoffMs: number;
}

/** The access token of one service account. */
export interface TokenSource {
  /** The current access token; concurrent callers share one request. */
  accessToken(): Promise<CachedToken>;
  /** Drops `token` from the cache, unless another caller already replaced it. */
  invalidate(token: CachedToken): void;
  /** How many token requests were made so far. */
  readonly requests: number;
}

/** Creates the token source of `options.account`. */
export function createTokenSource(options: TokenSourceOptions): TokenSource {
  const { account, now, logger } = options;
  const doFetch = options.fetch;
  const tokenTimeoutMs = options.timeoutMs;
  const margin = options.marginMs;
  const failureBackoff = options.failureBackoffMs;
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

  return {
    accessToken,
    invalidate,
    get requests() {
      return tokenRequests;
    },
  };
}
