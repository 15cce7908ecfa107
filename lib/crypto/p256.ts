/**
 * P-256 for RFC 8291 (Web Push message encryption): fresh sender key pairs and the ECDH with a
 * subscriber's key, on the cheapest of three implementations ({@link fastestP256Backend}):
 * OpenSSL's libcrypto through FFI wherever it loads and passes its self-test
 * (lib/crypto/p256_ffi.ts), else whichever of `node:crypto`'s key objects and Web Crypto costs
 * less CPU in this runtime, measured once per isolate; which of those two wins differs between
 * Deno versions (README "Benchmarks" has the figures). Web Crypto's `raw` export of a public
 * key computes the point again, so the point is read from the PKCS#8 export, which carries it
 * ({@link pkcs8PublicPoint}). Also the SEC 1 on-curve check.
 *
 * @module
 */

import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import process from "node:process";
import { bytesEqual, decodeBase64Url, encodeBase64Url, viewBytes as bytes } from "../encoding.ts";
import { libcrypto, type LibcryptoStatus, requireLibcrypto } from "./p256_ffi.ts";

const ECDH_P256: EcKeyImportParams = { name: "ECDH", namedCurve: "P-256" };

/**
 * Which implementation runs the P-256 operations: OpenSSL's libcrypto through FFI,
 * `node:crypto`'s key objects, or Web Crypto.
 */
export type P256Backend = "ffi" | "node" | "webcrypto";

/** A sender (application server) ECDH key pair, used for one message only. */
export interface EphemeralKeyPair {
  /** The 65-byte uncompressed public point (`as_public`, RFC 8291 §3.1). */
  readonly publicKey: Uint8Array;
  /** RFC 8291 §3.3: the 32-byte ECDH shared secret with a subscriber's `p256dh` point. */
  agree(uaPublic: Uint8Array): Promise<Uint8Array>;
  /** The same without waiting, where the implementation is synchronous (libcrypto, node). */
  agreeSync?(uaPublic: Uint8Array): Uint8Array;
  /** True when `agree` itself refuses a point off the curve (libcrypto). */
  readonly checksPoint?: boolean;
  /** Frees what a key pair that will not be used holds outside the JavaScript heap. */
  dispose?(): void;
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
function nodeAgree(privateKey: KeyObject): Pick<EphemeralKeyPair, "agree" | "agreeSync"> {
  const agreeSync = (ua: Uint8Array) =>
    bytes(diffieHellman({
      privateKey,
      publicKey: createPublicKey({ key: pointJwk(ua), format: "jwk" }),
    }));
  // deno-lint-ignore require-await
  return { agreeSync, agree: async (ua) => agreeSync(ua) };
}

function nodeKeyPair(): EphemeralKeyPair {
  const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { publicKey: pointOf(pair.publicKey), ...nodeAgree(pair.privateKey) };
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
      return point !== null && bytesEqual(point, raw);
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

/** Generates a fresh sender key pair (on `backend`, by default the fastest here). */
export async function generateEphemeralKeyPair(
  backend?: P256Backend,
): Promise<EphemeralKeyPair> {
  const b = backend ?? await fastestP256Backend();
  return ephemeralKeyPairNow(b) ?? await webCryptoKeyPair();
}

/** A fresh key pair without waiting, on the synchronous backends (libcrypto, node); else null. */
export function ephemeralKeyPairNow(backend: P256Backend): EphemeralKeyPair | null {
  if (backend === "ffi") return requireLibcrypto().keyPair();
  return backend === "node" ? nodeKeyPair() : null;
}

let fastest: Promise<P256Backend> | undefined;
let chosen: P256Backend | undefined;

/** The backend {@link fastestP256Backend} chose, once it has. */
export function chosenP256Backend(): P256Backend | undefined {
  return chosen;
}

/** CPU microseconds this process used so far (every thread: Web Crypto runs on a pool). */
function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/**
 * The P-256 implementation that costs the least CPU here, chosen once per isolate and
 * remembered: libcrypto through FFI when it loads and passes its self-test (lib/crypto/p256_ffi.ts:
 * several times cheaper than both others), else the cheaper of `node:crypto` and Web Crypto
 * ({@link chooseP256Backend}). Call it while the process is otherwise idle (the relay does so as
 * it starts).
 */
export function fastestP256Backend(): Promise<P256Backend> {
  fastest ??= chooseP256Backend(libcrypto()).then((b) => (chosen = b));
  return fastest;
}

/**
 * "ffi" when `ffi` says libcrypto is usable; else the cheaper of `node:crypto` and Web Crypto,
 * measured: a warm-up round on each, then nine alternating rounds of 8 key pairs and ECDHs in
 * flight on each, compared by the median ratio (single rounds of Web Crypto's thread-pool work
 * vary by tens of percent); it takes a fraction of a second. Which one wins depends on the Deno
 * version, not on the relay (README "Benchmarks"). Web Crypto when `node:crypto`'s ECDH is
 * missing or fails.
 */
export function chooseP256Backend(ffi: LibcryptoStatus): Promise<P256Backend> {
  if (ffi.ok) return Promise.resolve("ffi");
  return (async (): Promise<P256Backend> => {
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
  if (backend === "ffi") return requireLibcrypto().importKeyPair(publicKey, privateKey);
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
    return { publicKey: publicKey.slice(), ...nodeAgree(key) };
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
