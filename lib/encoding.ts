/**
 * Byte helpers shared by every module: base64url (RFC 4648 §5, no padding), UTF-8 and
 * concatenation. Written by hand because `Uint8Array.fromBase64` is newer than Deno 2.5,
 * which Deno Deploy runs.
 *
 * @module
 */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

/** Encodes bytes as base64url without padding. */
export function encodeBase64Url(input: Uint8Array | ArrayBuffer): string {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! +
      ALPHABET[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]!;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]!;
  }
  return out;
}

/**
 * Decodes base64url (padding and the standard alphabet's `+` and `/` are tolerated).
 *
 * @throws {TypeError} when the input holds a character outside the alphabet or has an
 * impossible length
 */
export function decodeBase64Url(input: string): Uint8Array {
  const s = input.replace(/=+$/, "").replaceAll("+", "-").replaceAll("/", "_");
  if (s.length % 4 === 1) {
    throw new TypeError(`Cannot decode base64url: impossible length ${input.length}`);
  }
  const out = decodeInto(s);
  if (typeof out === "number") {
    throw new TypeError(`Cannot decode base64url: invalid character at ${out}`);
  }
  return out;
}

/**
 * Decodes unpadded base64url in one pass, without the tolerance of {@link decodeBase64Url};
 * undefined for an empty string, a character outside the URL-safe alphabet, or an impossible
 * length. For the send path, which decodes every subscriber's keys.
 */
export function decodeBase64UrlStrict(s: string): Uint8Array | undefined {
  if (s.length === 0 || s.length % 4 === 1) return undefined;
  const out = decodeInto(s);
  return typeof out === "number" ? undefined : out;
}

/** The bytes of URL-safe base64 text of a possible length, or the index of a bad character. */
function decodeInto(s: string): Uint8Array | number {
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let buffer = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const v = c < 128 ? LOOKUP[c]! : -1;
    if (v < 0) return i;
    buffer = ((buffer << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (buffer >> bits) & 0xff;
    }
  }
  return out;
}

/** Returns true when `s` is non-empty and uses only the base64url alphabet. */
export function isBase64Url(s: string): boolean {
  return /^[A-Za-z0-9_-]+$/.test(s);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** UTF-8 encodes a string. */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** UTF-8 decodes bytes (invalid sequences become U+FFFD). */
export function fromUtf8(b: Uint8Array): string {
  return decoder.decode(b);
}

/** Whether two byte arrays are equal, in time that depends only on their length. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** Returns `n` cryptographically random bytes. */
export function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

/** A random base64url token of `bytes` bytes of entropy. */
export function randomToken(bytes = 16): string {
  return encodeBase64Url(randomBytes(bytes));
}

/** Constant-time comparison of two strings (length may leak, content does not). */
export function timingSafeEqual(a: string, b: string): boolean {
  const x = utf8(a);
  const y = utf8(b);
  let diff = x.length ^ y.length;
  const n = Math.max(x.length, y.length);
  for (let i = 0; i < n; i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** Any view (a Node.js `Buffer`, say) as a plain `Uint8Array` over the same bytes. */
export function viewBytes(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}
