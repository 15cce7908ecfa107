/**
 * A subscription's `p256dh` and `auth`, as a browser's `PushSubscription.toJSON()` gives them
 * (base64url, RFC 8291 §2): decoded and checked.
 *
 * @module
 */

import { decodeBase64UrlStrict } from "../encoding.ts";
import { isP256Point } from "./p256.ts";

/** The outcome of {@link validateSubscriptionKeys}. */
export type SubscriptionKeysCheck =
  | { ok: true; p256dh: Uint8Array; auth: Uint8Array }
  | { ok: false; reason: string };

/**
 * Checks a subscription's `p256dh` and `auth` (base64url) the way a registration must
 * (otherwise `400 invalid-subscription`): `p256dh` is a 65-byte uncompressed
 * point (0x04 prefix) on P-256, `auth` is 16 bytes. Costs an on-curve check, some
 * microseconds (both P-256 implementations accept every such point).
 */
export function validateSubscriptionKeys(
  keys: { p256dh: unknown; auth: unknown },
): Promise<SubscriptionKeysCheck> {
  const shape = decodeSubscriptionKeys(keys);
  if (shape.ok && !isP256Point(shape.p256dh)) {
    return Promise.resolve({ ok: false, reason: "p256dh is not a point on P-256" });
  }
  return Promise.resolve(shape);
}

/**
 * The cheap part of {@link validateSubscriptionKeys}: base64url decoding, lengths and the
 * 0x04 prefix, without the on-curve check and the import. For the send path, where
 * {@link encryptWebPush} checks the point again anyway (and throws a `TypeError` naming
 * `p256dh` when it is not one).
 */
export function decodeSubscriptionKeys(
  keys: { p256dh: unknown; auth: unknown },
): SubscriptionKeysCheck {
  const p256dh = decodeKey(keys.p256dh);
  if (p256dh === undefined) return { ok: false, reason: "p256dh is not a base64url string" };
  if (p256dh.length !== 65) {
    return { ok: false, reason: `p256dh must be 65 bytes, got ${p256dh.length}` };
  }
  if (p256dh[0] !== 0x04) {
    return {
      ok: false,
      reason: `p256dh must be an uncompressed point (0x04), got prefix 0x${
        p256dh[0]!.toString(16).padStart(2, "0")
      }`,
    };
  }
  const auth = decodeKey(keys.auth);
  if (auth === undefined) return { ok: false, reason: "auth is not a base64url string" };
  if (auth.length !== 16) return { ok: false, reason: `auth must be 16 bytes, got ${auth.length}` };
  return { ok: true, p256dh, auth };
}

/** One pass over the text (this runs for every subscriber of every message). */
function decodeKey(value: unknown): Uint8Array | undefined {
  if (typeof value !== "string") return undefined;
  // Some browsers pad their base64url.
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === 61) end--;
  return decodeBase64UrlStrict(end === value.length ? value : value.slice(0, end));
}
