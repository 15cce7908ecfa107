/**
 * Web Push message encryption (RFC 8291) in the `aes128gcm` content coding (RFC 8188). One
 * record of at most 4096 bytes, as RFC 8291 §4 requires of push messages.
 *
 * The two P-256 operations (a fresh sender key pair, then the ECDH) are nearly all of the cost;
 * they run in lib/crypto/p256.ts. HKDF and AES-128-GCM use `node:crypto`'s synchronous HMAC and
 * cipher, which avoid the thread hand-offs of Web Crypto's asynchronous calls. Each key pair is
 * used for exactly one message (RFC 8291 §3.1).
 *
 * @module
 */

import { createCipheriv, createHmac } from "node:crypto";
import { randomBytes, utf8, viewBytes as bytes } from "../encoding.ts";
import type { EphemeralKeyPool } from "./key_pool.ts";
import {
  type EphemeralKeyPair,
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

/** RFC 8188 §2 record size the relay writes: one record, the most a push message may hold. */
export const RECORD_SIZE = 4096;

/**
 * The largest plaintext that fits: 4096 - 86 (header with a 65-byte key id) - 16 (AES-GCM tag)
 * - 1 (padding delimiter) = 3993 bytes (RFC 8291 §4).
 */
export const MAX_PLAINTEXT_BYTES = 3993;

const HEADER_BYTES = 16 + 4 + 1 + 65;
const TAG_BYTES = 16;

// RFC 8291 §3.4 and RFC 8188 §2.2/§2.3 info strings, each with its trailing zero octet.
const KEY_INFO_PREFIX = utf8("WebPush: info\0");
const CEK_INFO = utf8("Content-Encoding: aes128gcm\0");
const NONCE_INFO = utf8("Content-Encoding: nonce\0");
/** RFC 5869 §2.3: T(1) = HMAC(PRK, info || 0x01); one block covers every length used here. */
const ONE = new Uint8Array([1]);

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
  /** The P-256 implementation for a key pair generated inline. @default the faster here */
  p256?: P256Backend;
}

/** HMAC-SHA-256 of the concatenated `data` (RFC 2104), synchronously. */
function hmac(key: Uint8Array, ...data: Uint8Array[]): Uint8Array {
  const h = createHmac("sha256", key);
  for (const d of data) h.update(d);
  return bytes(h.digest());
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
  if (!isP256Point(uaPublic)) {
    throw new TypeError("Cannot encrypt Web Push message: p256dh is not a point on P-256");
  }
  const asKeyPair = options.asKeyPair ??
    (options.keyPool ? await options.keyPool.take() : await generateEphemeralKeyPair(options.p256));

  // RFC 8291 §3.3: the ECDH shared secret.
  let ecdhSecret: Uint8Array;
  try {
    ecdhSecret = await asKeyPair.agree(uaPublic);
  } catch {
    throw new TypeError("Cannot encrypt Web Push message: p256dh is not a point on P-256");
  }
  // RFC 8291 §3.4: IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0x00 || ua_public
  // || as_public, 32), then RFC 8188 §2.2/§2.3: CEK and nonce from HKDF(salt, IKM, ...). Every
  // output fits one SHA-256 block, so each HKDF is one extract and one expand HMAC.
  const ikm = hmac(
    hmac(authSecret, ecdhSecret),
    KEY_INFO_PREFIX,
    uaPublic,
    asKeyPair.publicKey,
    ONE,
  );
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, CEK_INFO, ONE).subarray(0, 16);
  // The nonce of record 0 is the derived nonce itself (sequence number 0 XORed in).
  const nonce = hmac(prk, NONCE_INFO, ONE).subarray(0, 12);

  // RFC 8188 §2: the last (here the only) record ends with the delimiter 0x02 and no padding.
  const record = new Uint8Array(plaintext.length + 1);
  record.set(plaintext);
  record[plaintext.length] = 0x02;
  const cipher = createCipheriv("aes-128-gcm", cek, nonce);
  const ciphertext = bytes(cipher.update(record));
  const rest = bytes(cipher.final());

  const body = new Uint8Array(HEADER_BYTES + record.length + TAG_BYTES);
  body.set(salt, 0);
  new DataView(body.buffer).setUint32(16, RECORD_SIZE);
  body[20] = 65;
  body.set(asKeyPair.publicKey, 21);
  body.set(ciphertext, HEADER_BYTES);
  body.set(rest, HEADER_BYTES + ciphertext.length);
  body.set(bytes(cipher.getAuthTag()), HEADER_BYTES + record.length);
  return body;
}
