/**
 * A Web Push user agent for the encryption tests: fresh subscription keys (RFC 8291 §2), with
 * the private half kept, and decryption by npm http_ece, an independent RFC 8188/8291
 * implementation on node:crypto.
 */

import { Buffer } from "node:buffer";
import { createECDH, type ECDH, randomBytes } from "node:crypto";
import ece from "http_ece";
import { fromUtf8 } from "../lib/encoding.ts";

export interface UserAgent {
  ecdh: ECDH;
  /** The `p256dh` key: an uncompressed P-256 point. */
  uaPublic: Uint8Array;
  /** The `auth` secret: 16 random bytes. */
  auth: Uint8Array;
}

export function userAgent(): UserAgent {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return {
    ecdh,
    uaPublic: new Uint8Array(ecdh.getPublicKey()),
    auth: new Uint8Array(randomBytes(16)),
  };
}

/** The plaintext of an `aes128gcm` body for `ua`, as http_ece decrypts it. */
export function decryptWithHttpEce(body: Uint8Array, ua: UserAgent): string {
  const plaintext = ece.decrypt(Buffer.from(body), {
    version: "aes128gcm",
    privateKey: ua.ecdh,
    authSecret: Buffer.from(ua.auth),
  });
  return fromUtf8(new Uint8Array(plaintext));
}
