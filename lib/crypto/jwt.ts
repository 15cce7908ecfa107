/**
 * Compact JWS signing for the three places the relay signs tokens: VAPID (RFC 8292, ES256),
 * the APNs provider token (ES256) and the FCM service-account assertion (RS256). Web Crypto
 * only; ECDSA `sign` already returns the raw `r||s` form JWS wants (RFC 7518 §3.4).
 *
 * @module
 */

import { decodeBase64Url, encodeBase64Url, utf8 } from "../encoding.ts";

/** Signs `header.payload` and returns the compact JWT. */
export async function signJwt(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  key: CryptoKey,
): Promise<string> {
  const input = `${encodeBase64Url(utf8(JSON.stringify(header)))}.${
    encodeBase64Url(utf8(JSON.stringify(payload)))
  }`;
  const algorithm: AlgorithmIdentifier | EcdsaParams = key.algorithm.name === "ECDSA"
    ? { name: "ECDSA", hash: "SHA-256" }
    : { name: "RSASSA-PKCS1-v1_5" };
  const signature = await crypto.subtle.sign(algorithm, key, utf8(input) as BufferSource);
  return `${input}.${encodeBase64Url(new Uint8Array(signature))}`;
}

/** Decodes the DER body of a PEM block (`-----BEGIN ...-----`). */
export function pemToDer(pem: string): Uint8Array {
  const body = pem.replace(/-----(BEGIN|END)[^-]*-----/g, "").replace(/\s+/g, "");
  if (body.length === 0) throw new TypeError("Cannot read PEM: no base64 body found");
  return decodeBase64Url(body);
}

/** Imports a PKCS#8 P-256 private key (an Apple `.p8` file) for ES256 signing. */
export function importEs256Pkcs8(pem: string): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "pkcs8",
    pemToDer(pem) as BufferSource,
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
}

/** Imports a PKCS#8 RSA private key (a service account's `private_key`) for RS256 signing. */
export function importRs256Pkcs8(pem: string): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "pkcs8",
    pemToDer(pem) as BufferSource,
    { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
    false,
    ["sign"],
  );
}

/** True when `der` is one DER SEQUENCE whose length covers exactly the whole input. */
export function isCompleteDerSequence(der: Uint8Array): boolean {
  if (der.length < 2 || der[0] !== 0x30) return false;
  const first = der[1]!;
  if (first < 0x80) return 2 + first === der.length;
  const n = first & 0x7f;
  if (n === 0 || n > 4 || der.length < 2 + n) return false;
  let length = 0;
  for (let i = 0; i < n; i++) length = length * 256 + der[2 + i]!;
  return 2 + n + length === der.length;
}

/** True when `needle` occurs in `haystack` (used to spot algorithm OIDs in a key's DER). */
export function includesBytes(haystack: Uint8Array, needle: readonly number[]): boolean {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}
