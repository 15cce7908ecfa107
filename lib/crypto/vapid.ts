/**
 * VAPID (RFC 8292): the relay identifies itself to push services with an ES256 JWT per push
 * service origin. Keys travel as base64url raw keys, exactly as `web-push generate-vapid-keys`
 * prints them: a 65-byte uncompressed public point and the 32-byte private scalar `d`.
 *
 * @module
 */

import { type JWTPayload, jwtVerify } from "jose";
import { decodeBase64Url, encodeBase64Url, isBase64Url, utf8 } from "../encoding.ts";
import { isP256Point } from "./ece.ts";
import { signJwt } from "./jwt.ts";

/** A VAPID key pair as base64url raw keys. */
export interface VapidKeys {
  /** 65-byte uncompressed P-256 point (the `applicationServerKey` browsers subscribe with). */
  publicKey: string;
  /** 32-byte private scalar `d`. Secret. */
  privateKey: string;
}

/**
 * A VAPID key that cannot be used. `key` says which one, so configuration can name its
 * variable (`RELAY_VAPID_PUBLIC_KEY` or `RELAY_VAPID_PRIVATE_KEY`). Messages never hold key
 * material.
 */
export class VapidKeyError extends Error {
  readonly key: "publicKey" | "privateKey";
  constructor(key: "publicKey" | "privateKey", message: string) {
    super(message);
    this.name = "VapidKeyError";
    this.key = key;
  }
}

const ECDSA_P256: EcKeyImportParams = { name: "ECDSA", namedCurve: "P-256" };

/** Generates a new VAPID key pair, exported as base64url raw keys. */
export async function generateVapidKeys(): Promise<VapidKeys> {
  const pair = await crypto.subtle.generateKey(ECDSA_P256, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey);
  return { publicKey: encodeBase64Url(publicKey), privateKey: jwk.d! };
}

/**
 * Imports a VAPID key pair for ES256 signing and checks that the private key belongs to the
 * public key (a mismatch would make every push service reject the relay with `401`/`403`).
 *
 * @throws {VapidKeyError} when a key is malformed or the two keys do not belong together
 */
export async function importVapidKeys(
  keys: VapidKeys,
): Promise<{ signingKey: CryptoKey; publicKey: string }> {
  const pub = decodeRawKey(keys.publicKey, "publicKey", "VAPID public key");
  if (pub.length !== 65 || pub[0] !== 0x04) {
    throw new VapidKeyError(
      "publicKey",
      `Invalid VAPID public key: expected a 65-byte uncompressed P-256 point, got ${pub.length} bytes`,
    );
  }
  const d = decodeRawKey(keys.privateKey, "privateKey", "VAPID private key");
  if (d.length !== 32) {
    throw new VapidKeyError(
      "privateKey",
      `Invalid VAPID private key: expected 32 bytes, got ${d.length}`,
    );
  }
  if (!isP256Point(pub)) {
    throw new VapidKeyError("publicKey", "Invalid VAPID public key: not a point on P-256");
  }
  let verifyKey: CryptoKey;
  try {
    verifyKey = await crypto.subtle.importKey("raw", pub as BufferSource, ECDSA_P256, false, [
      "verify",
    ]);
  } catch {
    throw new VapidKeyError("publicKey", "Invalid VAPID public key: not a point on P-256");
  }
  const jwk: JsonWebKey = {
    kty: "EC",
    crv: "P-256",
    x: encodeBase64Url(pub.subarray(1, 33)),
    y: encodeBase64Url(pub.subarray(33, 65)),
    d: encodeBase64Url(d),
  };
  let signingKey: CryptoKey;
  try {
    signingKey = await crypto.subtle.importKey("jwk", jwk, ECDSA_P256, false, ["sign"]);
  } catch {
    throw new VapidKeyError(
      "privateKey",
      "Invalid VAPID private key: not a P-256 private key for the given public key",
    );
  }
  // Web Crypto does not promise to check that d matches (x, y) on import; a signature that
  // the public key verifies does.
  const probe = utf8("vapid key check");
  const signature = await crypto.subtle.sign(
    { name: "ECDSA", hash: "SHA-256" },
    signingKey,
    probe as BufferSource,
  );
  const matches = await crypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    verifyKey,
    signature,
    probe as BufferSource,
  );
  if (!matches) {
    throw new VapidKeyError(
      "privateKey",
      "Invalid VAPID private key: it does not match the VAPID public key",
    );
  }
  return { signingKey, publicKey: encodeBase64Url(pub) };
}

function decodeRawKey(value: string, key: "publicKey" | "privateKey", label: string): Uint8Array {
  const unpadded = typeof value === "string" ? value.replace(/=+$/, "") : "";
  if (!isBase64Url(unpadded)) {
    throw new VapidKeyError(key, `Invalid ${label}: expected base64url text`);
  }
  try {
    return decodeBase64Url(unpadded);
  } catch {
    throw new VapidKeyError(key, `Invalid ${label}: expected base64url text`);
  }
}

export interface VapidOptions extends VapidKeys {
  /** The `sub` claim: a `mailto:` or `https:` URI (RFC 8292 §2.1). */
  subject: string;
  /** Milliseconds since the epoch; injected so tests control expiry. */
  now: () => number;
  /** JWT lifetime. Default and maximum 12 h (README "The gateway protocol"; RFC 8292 §2 allows 24 h). */
  lifetimeMs?: number;
  /** Renew a cached header when less than this remains. Default 1 h. */
  renewBeforeMs?: number;
  /** How many push service origins to keep headers for. Default 1000. */
  maxCachedOrigins?: number;
}

/** Produces `Authorization` headers for push requests. */
export interface Vapid {
  /** The public key as base64url, the `k` parameter and the `applicationServerKey`. */
  readonly publicKey: string;
  /**
   * `vapid t=<jwt>, k=<publicKey>` (RFC 8292 §3) for the endpoint's origin; cached per origin
   * and renewed before it expires.
   *
   * @throws {TypeError} when the endpoint is not an absolute URL (the URL is not echoed)
   */
  authorization(endpoint: string | URL): Promise<string>;
}

const HOUR_MS = 3_600_000;

/**
 * Imports the relay's VAPID keys and returns a header factory.
 *
 * @throws {VapidKeyError} when a key is unusable (see {@link importVapidKeys})
 * @throws {TypeError} when the subject is not a `mailto:` or `https:` URI
 */
export async function createVapid(options: VapidOptions): Promise<Vapid> {
  const lifetimeMs = options.lifetimeMs ?? 12 * HOUR_MS;
  const renewBeforeMs = options.renewBeforeMs ?? HOUR_MS;
  const maxCachedOrigins = options.maxCachedOrigins ?? 1000;
  if (!(lifetimeMs > 0 && lifetimeMs <= 12 * HOUR_MS)) {
    throw new RangeError(`Invalid VAPID lifetime: must be at most 12 h, got ${lifetimeMs} ms`);
  }
  if (!(renewBeforeMs >= 0 && renewBeforeMs < lifetimeMs)) {
    throw new RangeError(
      `Invalid VAPID renewal margin: must be below the lifetime, got ${renewBeforeMs} ms`,
    );
  }
  // RFC 8292 §2.1: the push service uses `sub` to contact the operator.
  if (!/^(mailto:.+|https:\/\/.+)$/.test(options.subject)) {
    throw new TypeError(
      `Invalid VAPID subject: expected a mailto: or https: URI, got "${options.subject}"`,
    );
  }
  const { signingKey, publicKey } = await importVapidKeys(options);
  const header = { typ: "JWT", alg: "ES256" };
  const cache = new Map<string, { value: Promise<string>; expiresAt: number }>();

  return {
    publicKey,
    authorization(endpoint) {
      let origin: string;
      try {
        origin = (endpoint instanceof URL ? endpoint : new URL(endpoint)).origin;
      } catch {
        return Promise.reject(
          new TypeError("Cannot create VAPID header: endpoint is not an absolute URL"),
        );
      }
      if (origin === "null") {
        return Promise.reject(
          new TypeError("Cannot create VAPID header: endpoint has no origin"),
        );
      }
      const now = options.now();
      const cached = cache.get(origin);
      if (cached && cached.expiresAt - now > renewBeforeMs) return cached.value;

      // RFC 8292 §2: `aud` is the push resource's origin, `exp` no more than 24 h ahead.
      const exp = Math.floor((now + lifetimeMs) / 1000);
      const value = signJwt(header, { aud: origin, exp, sub: options.subject }, signingKey)
        .then((jwt) => `vapid t=${jwt}, k=${publicKey}`);
      cache.delete(origin);
      if (cache.size >= maxCachedOrigins) {
        // Map iteration is insertion order: drop the origin signed longest ago.
        const oldest = cache.keys().next();
        if (!oldest.done) cache.delete(oldest.value);
      }
      const entry = { value, expiresAt: exp * 1000 };
      cache.set(origin, entry);
      value.catch(() => {
        if (cache.get(origin) === entry) cache.delete(origin);
      });
      return value;
    },
  };
}

/** The outcome of {@linkcode verifyVapid}: the signer's key, or why the token is refused. */
export type VapidCheck = { ok: true; publicKey: Uint8Array } | { ok: false; reason: string };

/** RFC 8292 §2: a VAPID JWT's `exp` is at most 24 h after the request. */
const VAPID_MAX_LIFETIME_MS = 24 * HOUR_MS;
/** Clock skew tolerated on the 24 h bound only (an expired JWT is always refused). */
const VAPID_SKEW_MS = 60_000;

/**
 * Verifies the `t` (an ES256 JWT) and `k` (its signer's public key) of a VAPID header
 * (RFC 8292 §3), with jose: the signature verifies with `k`, `aud` is `audience` (the push
 * service's origin, RFC 8292 §2), and `exp` lies in the future but no more than 24 hours ahead.
 * Returns the signer's key; whether it is the key a subscription is restricted to is the
 * caller's question (RFC 8292 §4.2).
 */
export async function verifyVapid(
  token: { t: string; k: string },
  options: {
    audience: string;
    now: number;
    importKey?: (raw: Uint8Array) => Promise<CryptoKey | null>;
  },
): Promise<VapidCheck> {
  let publicKey: Uint8Array;
  try {
    publicKey = decodeBase64Url(token.k);
  } catch {
    return { ok: false, reason: "k is not base64url" };
  }
  if (!isP256Point(publicKey)) return { ok: false, reason: "k is not an uncompressed P-256 point" };
  const key = await (options.importKey ?? importVerifyKey)(publicKey);
  if (!key) return { ok: false, reason: "k cannot be imported" };
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token.t, key, {
      algorithms: ["ES256"],
      audience: [options.audience, `${options.audience}/`],
      requiredClaims: ["exp"],
      currentDate: new Date(options.now),
    }));
  } catch (err) {
    return { ok: false, reason: joseReason(err) };
  }
  if (payload.exp! * 1000 > options.now + VAPID_MAX_LIFETIME_MS + VAPID_SKEW_MS) {
    return { ok: false, reason: "the JWT exp is more than 24 hours ahead" };
  }
  return { ok: true, publicKey };
}

/** A refusal reason from jose's error codes (never the token itself). */
function joseReason(err: unknown): string {
  const code = (err as { code?: string }).code;
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return "the JWT has expired";
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return "the JWT signature does not verify with k";
    case "ERR_JOSE_ALG_NOT_ALLOWED":
      return "the JWT alg is not ES256";
    case "ERR_JWT_CLAIM_VALIDATION_FAILED": {
      const claim = (err as { claim?: string }).claim;
      return claim === "aud"
        ? "the JWT aud is not this relay's origin"
        : `the JWT ${claim} is invalid`;
    }
    default:
      return "t is not a valid JWT";
  }
}

/** Imports a raw P-256 public key for ECDSA verification, or null when it is not one. */
export async function importVerifyKey(raw: Uint8Array): Promise<CryptoKey | null> {
  try {
    return await crypto.subtle.importKey(
      "raw",
      raw as BufferSource,
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["verify"],
    );
  } catch {
    return null;
  }
}
