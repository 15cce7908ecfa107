/**
 * Web Push message encryption (RFC 8291) in the `aes128gcm` content coding (RFC 8188). One
 * record of at most 4096 bytes, as RFC 8291 §4 requires of push messages.
 *
 * The two P-256 operations (a fresh sender key pair, then the ECDH) are nearly all of the cost;
 * they run in lib/crypto/p256.ts, on OpenSSL's libcrypto through FFI where it is available.
 * HKDF and AES-128-GCM (lib/crypto/ece_record.ts) run synchronously on the same libcrypto then,
 * else on `node:crypto`'s HMAC and cipher, which avoid the thread hand-offs of Web Crypto's
 * asynchronous calls. Each key pair is used for exactly one message (RFC 8291 §3.1).
 *
 * @module
 */

import { randomBytes, utf8 } from "../encoding.ts";
import { nodeSymmetric, RECORD_SIZE, sealRecord, type Symmetric } from "./ece_record.ts";
import type { EphemeralKeyPool } from "./key_pool.ts";
import { requireLibcrypto } from "./p256_ffi.ts";
import {
  chosenP256Backend,
  type EphemeralKeyPair,
  ephemeralKeyPairNow,
  fastestP256Backend,
  generateEphemeralKeyPair,
  isP256Point,
  type P256Backend,
} from "./p256.ts";

export {
  createEphemeralKeyPool,
  type EphemeralKeyPool,
  type EphemeralKeyPoolOptions,
} from "./key_pool.ts";
export {
  chooseP256Backend,
  type EphemeralKeyPair,
  fastestP256Backend,
  generateEphemeralKeyPair,
  importEphemeralKeyPair,
  isP256Point,
  type P256Backend,
  pkcs8PublicPoint,
} from "./p256.ts";
export {
  decodeSubscriptionKeys,
  type SubscriptionKeysCheck,
  validateSubscriptionKeys,
} from "./subscription_keys.ts";
export { RECORD_SIZE } from "./ece_record.ts";

/**
 * The largest plaintext that fits: 4096 - 86 (header with a 65-byte key id) - 16 (AES-GCM tag)
 * - 1 (padding delimiter) = 3993 bytes (RFC 8291 §4).
 */
export const MAX_PLAINTEXT_BYTES = 3993;

export interface EncryptWebPushInput {
  /** The message; strings are UTF-8 encoded. At most {@link MAX_PLAINTEXT_BYTES} bytes. */
  plaintext: Uint8Array | string;
  /** The subscription's `p256dh`: a 65-byte uncompressed P-256 point (`ua_public`). */
  uaPublic: Uint8Array;
  /** The subscription's 16-byte `auth` secret. */
  authSecret: Uint8Array;
}

export interface EncryptWebPushOptions {
  /**
   * The sender key pair to use. Only for reproducing test vectors: reusing a key pair across
   * messages breaks RFC 8291 §3.1's "a new key pair for every message".
   */
  asKeyPair?: EphemeralKeyPair;
  /** A 16-byte salt; random by default (RFC 8291 §3.4: MUST be fresh per message). */
  salt?: Uint8Array;
  /** Where to take a fresh key pair from; one is generated inline when absent. */
  keyPool?: EphemeralKeyPool;
  /**
   * The implementation: P-256 for a key pair generated inline, and HKDF and AES-GCM on
   * libcrypto for "ffi", on `node:crypto` otherwise. @default the key pool's, else the fastest
   * here
   */
  p256?: P256Backend;
}

/** HKDF and AES-GCM for a backend: libcrypto's with "ffi", else `node:crypto`'s. */
function symmetricFor(backend: P256Backend): Symmetric {
  return backend === "ffi" ? requireLibcrypto().symmetric : nodeSymmetric;
}

/**
 * Encrypts one Web Push message and returns the whole `aes128gcm` body:
 * `salt(16) || rs(4) || idlen(1) = 65 || as_public(65) || ciphertext`.
 *
 * @throws {RangeError} when the plaintext is longer than {@link MAX_PLAINTEXT_BYTES}
 * @throws {TypeError} when a key, the auth secret or the salt has the wrong shape
 */
export async function encryptWebPush(
  input: EncryptWebPushInput,
  options: EncryptWebPushOptions = {},
): Promise<Uint8Array> {
  const plaintext = typeof input.plaintext === "string" ? utf8(input.plaintext) : input.plaintext;
  if (plaintext.length > MAX_PLAINTEXT_BYTES) {
    throw new RangeError(
      `Cannot encrypt Web Push message: plaintext is ${plaintext.length} bytes, at most ${MAX_PLAINTEXT_BYTES} fit in one ${RECORD_SIZE}-byte record`,
    );
  }
  const { uaPublic, authSecret } = input;
  if (uaPublic.length !== 65 || uaPublic[0] !== 0x04) {
    throw new TypeError(
      `Cannot encrypt Web Push message: p256dh must be a 65-byte uncompressed point, got ${uaPublic.length} bytes`,
    );
  }
  if (authSecret.length !== 16) {
    throw new TypeError(
      `Cannot encrypt Web Push message: auth secret must be 16 bytes, got ${authSecret.length}`,
    );
  }
  const salt = options.salt ?? randomBytes(16);
  if (salt.length !== 16) {
    throw new TypeError(
      `Cannot encrypt Web Push message: salt must be 16 bytes, got ${salt.length}`,
    );
  }
  const backend = options.p256 ?? options.keyPool?.p256 ?? chosenP256Backend() ??
    await fastestP256Backend();
  const asKeyPair = options.asKeyPair ??
    (options.keyPool
      ? await options.keyPool.take()
      : ephemeralKeyPairNow(backend) ?? await generateEphemeralKeyPair(backend));
  // libcrypto checks the point itself as part of the ECDH; the others are checked here.
  if (!asKeyPair.checksPoint && !isP256Point(uaPublic)) {
    asKeyPair.dispose?.();
    throw new TypeError("Cannot encrypt Web Push message: p256dh is not a point on P-256");
  }

  // RFC 8291 §3.3: the ECDH shared secret.
  let ecdhSecret: Uint8Array;
  try {
    ecdhSecret = asKeyPair.agreeSync
      ? asKeyPair.agreeSync(uaPublic)
      : await asKeyPair.agree(uaPublic);
  } catch {
    throw new TypeError("Cannot encrypt Web Push message: p256dh is not a point on P-256");
  }
  return sealRecord(symmetricFor(backend), {
    ecdhSecret,
    uaPublic,
    asPublic: asKeyPair.publicKey,
    authSecret,
    salt,
    plaintext,
  });
}
