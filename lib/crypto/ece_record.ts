/**
 * The part of RFC 8291 (Web Push message encryption) after the ECDH: the key derivation of
 * RFC 8291 §3.3/§3.4 and RFC 8188 §2.2/§2.3, and the single `aes128gcm` record (RFC 8188 §2),
 * on whichever HMAC-SHA-256 and AES-128-GCM implementation it is given: `node:crypto`'s
 * ({@link nodeSymmetric}) or OpenSSL's libcrypto through FFI (lib/crypto/p256_ffi.ts, which
 * also checks itself with this module against RFC 8291 Appendix A at start-up).
 *
 * @module
 */

import { createCipheriv, createHmac } from "node:crypto";
import { utf8, viewBytes as bytes } from "../encoding.ts";

/** RFC 8188 §2 record size the relay writes: one record, the most a push message may hold. */
export const RECORD_SIZE = 4096;

/** salt(16) || rs(4) || idlen(1) || keyid(65): the RFC 8188 §2.1 header of a Web Push body. */
export const HEADER_BYTES = 16 + 4 + 1 + 65;
const TAG_BYTES = 16;

// RFC 8291 §3.4 and RFC 8188 §2.2/§2.3 info strings, each with its trailing zero octet.
const KEY_INFO_PREFIX = utf8("WebPush: info\0");
/** RFC 5869 §2.3: T(1) = HMAC(PRK, info || 0x01); one block covers every length used here. */
const CEK_INFO = utf8("Content-Encoding: aes128gcm\0\x01");
const NONCE_INFO = utf8("Content-Encoding: nonce\0\x01");
const ONE = new Uint8Array([1]);

/** HMAC-SHA-256 and AES-128-GCM, synchronous. */
export interface Symmetric {
  /** HMAC-SHA-256 (RFC 2104) of the concatenation of `data`. */
  hmac(key: Uint8Array, ...data: Uint8Array[]): Uint8Array;
  /** AES-128-GCM with a 12-byte nonce: the ciphertext followed by the 16-byte tag. */
  aes128gcm(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array): Uint8Array;
}

/** `node:crypto`'s synchronous HMAC and cipher. */
export const nodeSymmetric: Symmetric = {
  hmac(key, ...data) {
    const h = createHmac("sha256", key);
    for (const d of data) h.update(d);
    return bytes(h.digest());
  },
  aes128gcm(key, nonce, plaintext) {
    const cipher = createCipheriv("aes-128-gcm", key, nonce);
    const head = bytes(cipher.update(plaintext));
    const rest = bytes(cipher.final());
    const out = new Uint8Array(plaintext.length + TAG_BYTES);
    out.set(head);
    out.set(rest, head.length);
    out.set(bytes(cipher.getAuthTag()), plaintext.length);
    return out;
  },
};

/** What {@link sealRecord} needs besides the HMAC and AES implementation. */
export interface RecordInput {
  /** RFC 8291 §3.3: the ECDH shared secret of the sender key pair and `uaPublic`. */
  ecdhSecret: Uint8Array;
  /** The subscription's 65-byte `p256dh` point (`ua_public`). */
  uaPublic: Uint8Array;
  /** The sender key pair's 65-byte public point (`as_public`), the record's key id. */
  asPublic: Uint8Array;
  /** The subscription's 16-byte `auth` secret. */
  authSecret: Uint8Array;
  /** 16 bytes, fresh per message (RFC 8291 §3.4). */
  salt: Uint8Array;
  /** At most 3993 bytes (the caller checks). */
  plaintext: Uint8Array;
}

/**
 * The whole `aes128gcm` body: `salt(16) || rs(4) || idlen(1) = 65 || as_public(65) ||
 * ciphertext`, one record whose plaintext ends with the delimiter 0x02 and no padding.
 */
export function sealRecord(sym: Symmetric, input: RecordInput): Uint8Array {
  const { uaPublic, asPublic, salt, plaintext } = input;
  // RFC 8291 §3.4: IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0x00 || ua_public
  // || as_public, 32), then RFC 8188 §2.2/§2.3: CEK and nonce from HKDF(salt, IKM, ...). Every
  // output fits one SHA-256 block, so each HKDF is one extract and one expand HMAC.
  const ikm = sym.hmac(
    sym.hmac(input.authSecret, input.ecdhSecret),
    KEY_INFO_PREFIX,
    uaPublic,
    asPublic,
    ONE,
  );
  const prk = sym.hmac(salt, ikm);
  const cek = sym.hmac(prk, CEK_INFO).subarray(0, 16);
  // The nonce of record 0 is the derived nonce itself (sequence number 0 XORed in).
  const nonce = sym.hmac(prk, NONCE_INFO).subarray(0, 12);

  // RFC 8188 §2: the last (here the only) record ends with the delimiter 0x02.
  const record = new Uint8Array(plaintext.length + 1);
  record.set(plaintext);
  record[plaintext.length] = 0x02;
  const sealed = sym.aes128gcm(cek, nonce, record);

  const body = new Uint8Array(HEADER_BYTES + sealed.length);
  body.set(salt, 0);
  new DataView(body.buffer).setUint32(16, RECORD_SIZE);
  body[20] = 65;
  body.set(asPublic, 21);
  body.set(sealed, HEADER_BYTES);
  return body;
}
