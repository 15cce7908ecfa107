/**
 * Web Push message encryption (RFC 8291) in the `aes128gcm` content coding (RFC 8188). One
 * record of at most 4096 bytes, as RFC 8291 §4 requires of push messages.
 *
 * Cost: the two P-256 operations (a fresh sender key pair, then the ECDH) are nearly all of it.
 * They run on whichever of two implementations (`node:crypto`'s key objects, or Web Crypto)
 * costs less CPU in this runtime, measured once per isolate ({@link fastestP256Backend}); which
 * one wins differs between Deno versions (README "Benchmarks" has the figures). Web Crypto's
 * `raw` export of a public key computes the point again, so the point is read from the PKCS#8
 * export, which carries it ({@link pkcs8PublicPoint}). HKDF and AES-128-GCM use `node:crypto`'s
 * synchronous HMAC and cipher, which avoid the thread hand-offs of Web Crypto's asynchronous
 * calls. Each key pair is used for exactly one message (RFC 8291 §3.1).
 *
 * @module
 */

import {
  createCipheriv,
  createECDH,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import process from "node:process";
import { decodeBase64Url, encodeBase64Url, isBase64Url, randomBytes, utf8 } from "../encoding.ts";

/** RFC 8188 §2 record size the relay writes: one record, the most a push message may hold. */
export const RECORD_SIZE = 4096;

/**
 * The largest plaintext that fits: 4096 - 86 (header with a 65-byte key id) - 16 (AES-GCM tag)
 * - 1 (padding delimiter) = 3993 bytes (RFC 8291 §4).
 */
export const MAX_PLAINTEXT_BYTES = 3993;

const HEADER_BYTES = 16 + 4 + 1 + 65;
const TAG_BYTES = 16;
const ECDH_P256: EcKeyImportParams = { name: "ECDH", namedCurve: "P-256" };

// RFC 8291 §3.4 and RFC 8188 §2.2/§2.3 info strings, each with its trailing zero octet.
const KEY_INFO_PREFIX = utf8("WebPush: info\0");
const CEK_INFO = utf8("Content-Encoding: aes128gcm\0");
const NONCE_INFO = utf8("Content-Encoding: nonce\0");
/** RFC 5869 §2.3: T(1) = HMAC(PRK, info || 0x01); one block covers every length used here. */
const ONE = new Uint8Array([1]);

/** Which implementation runs the P-256 operations. */
export type P256Backend = "node" | "webcrypto";

/** A sender (application server) ECDH key pair, used for one message only. */
export interface EphemeralKeyPair {
  /** The 65-byte uncompressed public point (`as_public`, RFC 8291 §3.1). */
  publicKey: Uint8Array;
  /** RFC 8291 §3.3: the 32-byte ECDH shared secret with a subscriber's `p256dh` point. */
  agree(uaPublic: Uint8Array): Promise<Uint8Array>;
}

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

/** Node.js `Buffer` (or any view) as a plain `Uint8Array` over the same bytes. */
function bytes(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
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

/** A P-256 public key as a JWK's coordinates (RFC 7518 §6.2.1: 32 bytes each). */
function pointJwk(point: Uint8Array): { kty: string; crv: string; x: string; y: string } {
  return {
    kty: "EC",
    crv: "P-256",
    x: encodeBase64Url(point.subarray(1, 33)),
    y: encodeBase64Url(point.subarray(33, 65)),
  };
}

/** The 65-byte uncompressed point (SEC 1 §2.3.3) of a P-256 key object. */
function pointOf(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: "jwk" });
  const point = new Uint8Array(65);
  point[0] = 0x04;
  const x = decodeBase64Url(jwk.x ?? "");
  const y = decodeBase64Url(jwk.y ?? "");
  // Right-aligned, should an implementation drop leading zero bytes.
  point.set(x, 33 - x.length);
  point.set(y, 65 - y.length);
  return point;
}

/**
 * `node:crypto` key objects and `diffieHellman()`, which cost less than the `createECDH()` API
 * on Deno 2.9 and as much on 2.5.
 */
function nodeAgree(privateKey: KeyObject): EphemeralKeyPair["agree"] {
  // deno-lint-ignore require-await
  return async (ua) =>
    bytes(diffieHellman({
      privateKey,
      publicKey: createPublicKey({ key: pointJwk(ua), format: "jwk" }),
    }));
}

function nodeKeyPair(): EphemeralKeyPair {
  const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { publicKey: pointOf(pair.publicKey), agree: nodeAgree(pair.privateKey) };
}

function webCryptoAgree(privateKey: CryptoKey): EphemeralKeyPair["agree"] {
  return async (ua) => {
    const uaKey = await crypto.subtle.importKey("raw", ua as BufferSource, ECDH_P256, false, []);
    return new Uint8Array(
      await crypto.subtle.deriveBits({ name: "ECDH", public: uaKey }, privateKey, 256),
    );
  };
}

/**
 * The public point inside a PKCS#8 P-256 private key, when its ECPrivateKey carries one at the
 * end (RFC 5915 §3 `publicKey [1] BIT STRING`, as Deno's Web Crypto writes it); else null.
 */
export function pkcs8PublicPoint(der: Uint8Array): Uint8Array | null {
  const at = der.length - 70; // a1 44 03 42 00 04 <x> <y>
  if (at < 0) return null;
  const prefix = [0xa1, 0x44, 0x03, 0x42, 0x00, 0x04];
  for (let i = 0; i < prefix.length; i++) if (der[at + i] !== prefix[i]) return null;
  return der.slice(at + 5);
}

/**
 * Whether the PKCS#8 export carries the public point (checked once per isolate against the
 * `raw` export): Deno's `raw` export computes the point again, while the PKCS#8 one copies what
 * key generation already computed, at a fraction of the cost.
 */
let pkcs8Carries: Promise<boolean> | undefined;
function pkcs8CarriesPoint(): Promise<boolean> {
  pkcs8Carries ??= (async () => {
    try {
      const pair = await crypto.subtle.generateKey(ECDH_P256, true, [
        "deriveBits",
      ]) as CryptoKeyPair;
      const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
      const der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
      const point = pkcs8PublicPoint(der);
      return point !== null && point.length === raw.length && point.every((b, i) => b === raw[i]);
    } catch {
      return false;
    }
  })();
  return pkcs8Carries;
}

async function webCryptoKeyPair(): Promise<EphemeralKeyPair> {
  const viaPkcs8 = await pkcs8CarriesPoint();
  const pair = await crypto.subtle.generateKey(ECDH_P256, viaPkcs8, [
    "deriveBits",
  ]) as CryptoKeyPair;
  const publicKey = viaPkcs8
    ? pkcs8PublicPoint(new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey)))!
    : new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { publicKey, agree: webCryptoAgree(pair.privateKey) };
}

/** Generates a fresh sender key pair (on `backend`, by default the faster one here). */
export async function generateEphemeralKeyPair(
  backend?: P256Backend,
): Promise<EphemeralKeyPair> {
  return (backend ?? await fastestP256Backend()) === "node"
    ? nodeKeyPair()
    : await webCryptoKeyPair();
}

let fastest: Promise<P256Backend> | undefined;

/** CPU microseconds this process used so far (every thread: Web Crypto runs on a pool). */
function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/**
 * The P-256 implementation that costs less CPU in this runtime, measured once per isolate and
 * remembered: a warm-up round on each, then nine alternating rounds of 8 key pairs and ECDHs
 * in flight on each, compared by the median ratio (single rounds of Web Crypto's thread-pool
 * work vary by tens of percent); it takes a fraction of a second. Which one wins depends on the
 * Deno version, not on the relay (README "Benchmarks"). Web Crypto when `node:crypto`'s ECDH
 * is missing or fails. Call it while the process is otherwise idle
 * (the relay does so as it starts).
 */
export function fastestP256Backend(): Promise<P256Backend> {
  fastest ??= (async (): Promise<P256Backend> => {
    let peer: Uint8Array;
    try {
      peer = nodeKeyPair().publicKey;
      await nodeKeyPair().agree(peer);
    } catch {
      return "webcrypto";
    }
    const cost = async (backend: P256Backend, n: number) => {
      const before = cpuMicros();
      await Promise.all(
        Array.from(
          { length: n },
          async () => (await generateEphemeralKeyPair(backend)).agree(peer),
        ),
      );
      return cpuMicros() - before;
    };
    // A warm-up round each (JIT, Web Crypto's thread pool), then alternating rounds; the median
    // of the per-round ratios, as single rounds vary by tens of percent (other threads of the
    // process, Web Crypto's pool, a busy machine).
    await cost("webcrypto", 8);
    await cost("node", 8);
    const ratios: number[] = [];
    for (let round = 0; round < 9; round++) {
      const node = await cost("node", 8);
      ratios.push(node / Math.max(1, await cost("webcrypto", 8)));
    }
    ratios.sort((a, b) => a - b);
    return ratios[4]! <= 1 ? "node" : "webcrypto";
  })();
  return fastest;
}

/**
 * Imports a known sender key pair (65-byte public point and 32-byte private scalar `d`), for
 * test vectors such as RFC 8291 Appendix A.
 *
 * @throws {TypeError} when the keys have the wrong length or do not belong together
 */
export async function importEphemeralKeyPair(
  publicKey: Uint8Array,
  privateKey: Uint8Array,
  backend: P256Backend = "node",
): Promise<EphemeralKeyPair> {
  if (publicKey.length !== 65 || publicKey[0] !== 0x04) {
    throw new TypeError(
      `Cannot import ECDH key pair: public key must be a 65-byte uncompressed point, got ${publicKey.length} bytes`,
    );
  }
  if (privateKey.length !== 32) {
    throw new TypeError(
      `Cannot import ECDH key pair: private key must be 32 bytes, got ${privateKey.length}`,
    );
  }
  if (backend === "node") {
    // The public point computed from `d`, so a mismatched pair is refused.
    const ecdh = createECDH("prime256v1");
    ecdh.setPrivateKey(privateKey);
    if (!ecdh.getPublicKey().equals(publicKey)) {
      throw new TypeError(
        "Cannot import ECDH key pair: the public key does not match the private key",
      );
    }
    const key = createPrivateKey({
      key: { ...pointJwk(publicKey), d: encodeBase64Url(privateKey) },
      format: "jwk",
    });
    return { publicKey: publicKey.slice(), agree: nodeAgree(key) };
  }
  const jwk: JsonWebKey = { ...pointJwk(publicKey), d: encodeBase64Url(privateKey) };
  const key = await crypto.subtle.importKey("jwk", jwk, ECDH_P256, false, ["deriveBits"]);
  return { publicKey: publicKey.slice(), agree: webCryptoAgree(key) };
}

// P-256 domain parameters (SEC 2 §2.4.2; FIPS 186-4 D.1.2.3).
const P256_P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const P256_B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;

function bytesToBigInt(bytes: Uint8Array): bigint {
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  return n;
}

/**
 * True when `point` is a 65-byte uncompressed P-256 point (SEC 1 §2.3.4): prefix 0x04,
 * coordinates below p, and y² = x³ - 3x + b (mod p). Deno's Web Crypto (2.5 and 2.9) accepts
 * off-curve points on `importKey("raw")` and only fails later, in `deriveBits`, so the check
 * is done here. The cofactor of P-256 is 1, so every such point is a valid public key.
 */
export function isP256Point(point: Uint8Array): boolean {
  if (point.length !== 65 || point[0] !== 0x04) return false;
  const x = bytesToBigInt(point.subarray(1, 33));
  const y = bytesToBigInt(point.subarray(33, 65));
  if (x >= P256_P || y >= P256_P) return false;
  const lhs = (y * y) % P256_P;
  const rhs = (((x * x) % P256_P) * x - 3n * x + P256_B) % P256_P;
  return lhs === (rhs + P256_P) % P256_P;
}

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

function decodeKey(value: unknown): Uint8Array | undefined {
  if (typeof value !== "string") return undefined;
  // Some browsers pad their base64url; the alphabet check runs on the unpadded text.
  const unpadded = value.replace(/=+$/, "");
  if (!isBase64Url(unpadded)) return undefined;
  try {
    return decodeBase64Url(unpadded);
  } catch {
    return undefined;
  }
}

/** Pre-generated sender key pairs; see {@link createEphemeralKeyPool}. */
export interface EphemeralKeyPool {
  /** Removes and returns a key pair, generating one inline when the pool is empty. */
  take(): Promise<EphemeralKeyPair>;
  /** Fills the pool to capacity and resolves when it is full (or closed). */
  fill(): Promise<void>;
  /** Key pairs ready right now. */
  readonly available: number;
  /** Stops refilling and waits for work in flight; `take()` still works afterwards. */
  close(): Promise<void>;
}

export interface EphemeralKeyPoolOptions {
  /** How many key pairs to keep ready. Default 32. */
  size?: number;
  /** The P-256 implementation. @default the faster here ({@link fastestP256Backend}) */
  p256?: P256Backend;
}

/**
 * A small pool of fresh ECDH key pairs whose public points are already exported, refilled in
 * the background after `take()`. A key pair leaves the pool once and is never handed out again
 * (RFC 8291 §3.1). The refill yields to the event loop between key pairs so that deliveries in
 * flight go first; call `close()` before shutdown (and in tests, for the op sanitizer).
 */
export function createEphemeralKeyPool(options: EphemeralKeyPoolOptions = {}): EphemeralKeyPool {
  const size = options.size ?? 32;
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`Cannot create key pool: size must be a positive integer, got ${size}`);
  }
  const ready: EphemeralKeyPair[] = [];
  let refilling: Promise<void> | undefined;
  let closed = false;

  const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

  async function refillLoop(): Promise<void> {
    while (!closed && ready.length < size) {
      const pair = await generateEphemeralKeyPair(options.p256);
      if (closed) return;
      ready.push(pair);
      if (ready.length < size) await yieldToEventLoop();
    }
  }

  function startRefill(): Promise<void> {
    if (closed || ready.length >= size) return refilling ?? Promise.resolve();
    // `.finally` runs in a later microtask, so the assignment below always happens first.
    refilling ??= refillLoop().finally(() => {
      refilling = undefined;
    });
    return refilling;
  }

  return {
    take() {
      const pair = ready.shift();
      if (ready.length < size) void startRefill().catch(() => {});
      return pair ? Promise.resolve(pair) : generateEphemeralKeyPair(options.p256);
    },
    fill() {
      return startRefill();
    },
    get available() {
      return ready.length;
    },
    async close() {
      closed = true;
      await refilling?.catch(() => {});
      ready.length = 0;
    },
  };
}
