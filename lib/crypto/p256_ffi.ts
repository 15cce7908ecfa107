/**
 * P-256, HMAC-SHA-256 and AES-128-GCM on the system's OpenSSL 3 libcrypto through Deno's FFI:
 * the RFC 8291 pipeline at the cost OpenSSL itself runs it (README "Benchmarks": 7-8 × cheaper
 * than `node:crypto` and Web Crypto on Deno 2.9, 3-4 × on 2.5).
 *
 * Loaded only where it can be without asking: `Deno.dlopen` must exist (Deno Deploy has no FFI),
 * the FFI permission must already be granted for the library's path (queried first, so nothing
 * ever prompts: `deno task start` grants exactly {@link LIBCRYPTO_PATHS}), the library and every
 * symbol must be there, and a self-test must pass (RFC 8291 Appendix A byte for byte, and one
 * ECDH against `node:crypto`). Otherwise {@link loadLibcrypto} says why, and the relay keeps to
 * `node:crypto` and Web Crypto (lib/crypto/p256.ts).
 *
 * Only functions with fixed arguments are bound (no variadic ones), and no pointer is ever read
 * from JavaScript: that needs the unscoped FFI permission. The `EC_KEY`/`ECDH_compute_key` API
 * is deprecated in OpenSSL 3 but still exported; a version that drops it fails the load, and the
 * fallback applies. A private key never leaves libcrypto; each key pair serves one ECDH and is
 * freed by it (RFC 8291 §3.1), or by `dispose()`, or when it is collected unused.
 *
 * @module
 */

import { concat } from "../encoding.ts";
import { selfTest } from "./p256_ffi_check.ts";
import type { Symmetric } from "./ece_record.ts";
import type { EphemeralKeyPair } from "./p256.ts";

/**
 * Where libcrypto 3 is looked for, in this order, on Linux: Debian and Ubuntu (merged `/usr`
 * and not), Fedora, RHEL and openSUSE (`/usr/lib64`), Arch (`/usr/lib`), Alpine (`/lib`). The
 * FFI permission names exact paths (Deno compares them as given, without following links), so
 * `deno task start` grants these and no others.
 */
export const LIBCRYPTO_PATHS: readonly string[] = [
  "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
  "/lib/x86_64-linux-gnu/libcrypto.so.3",
  "/usr/lib/aarch64-linux-gnu/libcrypto.so.3",
  "/lib/aarch64-linux-gnu/libcrypto.so.3",
  "/usr/lib64/libcrypto.so.3",
  "/usr/lib/libcrypto.so.3",
  "/lib/libcrypto.so.3",
];

/**
 * A byte array as FFI's `buffer` parameters are typed (ArrayBuffer-backed, which Deno 2.5's
 * types insist on). The relay never hands libcrypto a SharedArrayBuffer.
 */
function buf(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}

const SYMBOLS = {
  EC_GROUP_new_by_curve_name: { parameters: ["i32"], result: "pointer" },
  EC_KEY_new: { parameters: [], result: "pointer" },
  EC_KEY_set_group: { parameters: ["pointer", "pointer"], result: "i32" },
  EC_KEY_generate_key: { parameters: ["pointer"], result: "i32" },
  EC_KEY_get0_public_key: { parameters: ["pointer"], result: "pointer" },
  EC_KEY_oct2priv: { parameters: ["pointer", "buffer", "usize"], result: "i32" },
  EC_KEY_oct2key: { parameters: ["pointer", "buffer", "usize", "pointer"], result: "i32" },
  EC_KEY_check_key: { parameters: ["pointer"], result: "i32" },
  EC_KEY_free: { parameters: ["pointer"], result: "void" },
  EC_POINT_new: { parameters: ["pointer"], result: "pointer" },
  EC_POINT_free: { parameters: ["pointer"], result: "void" },
  EC_POINT_point2oct: {
    parameters: ["pointer", "pointer", "i32", "buffer", "usize", "pointer"],
    result: "usize",
  },
  EC_POINT_oct2point: {
    parameters: ["pointer", "pointer", "buffer", "usize", "pointer"],
    result: "i32",
  },
  ECDH_compute_key: {
    parameters: ["buffer", "usize", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  EVP_sha256: { parameters: [], result: "pointer" },
  HMAC: {
    parameters: ["pointer", "buffer", "i32", "buffer", "usize", "buffer", "buffer"],
    result: "pointer",
  },
  EVP_aes_128_gcm: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_EncryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer"],
    result: "i32",
  },
  EVP_EncryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_EncryptFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
  ERR_clear_error: { parameters: [], result: "void" },
  OpenSSL_version_num: { parameters: [], result: "u64" },
} as const;

type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const NID_X9_62_PRIME256V1 = 415;
const POINT_CONVERSION_UNCOMPRESSED = 4;
const EVP_CTRL_GCM_GET_TAG = 0x10;

/**
 * A sender key pair on libcrypto: synchronous, and `agree` refuses a point off the curve itself
 * (OpenSSL's `EC_POINT_oct2point`).
 */
export type FfiKeyPair = Required<EphemeralKeyPair> & { readonly checksPoint: true };

/** OpenSSL's libcrypto, loaded and checked in this isolate. */
export interface Libcrypto {
  /** The file it was loaded from (one of {@link LIBCRYPTO_PATHS}). */
  readonly path: string;
  /** OpenSSL's version, e.g. `3.0.19`. */
  readonly version: string;
  /** HMAC-SHA-256 and AES-128-GCM on libcrypto. */
  readonly symmetric: Symmetric;
  /** A fresh P-256 key pair, for one ECDH. */
  keyPair(): FfiKeyPair;
  /**
   * A known key pair (test vectors such as RFC 8291 Appendix A), for one ECDH.
   *
   * @throws {TypeError} when the private key does not give the public key
   */
  importKeyPair(publicKey: Uint8Array, privateKey: Uint8Array): FfiKeyPair;
}

/** Whether libcrypto is usable here, and if not, why. */
export type LibcryptoStatus = { ok: true; lib: Libcrypto } | { ok: false; reason: string };

export interface LoadLibcryptoOptions {
  /** Where to look. @default {@link LIBCRYPTO_PATHS} on Linux, none elsewhere */
  paths?: readonly string[];
  /** `Deno.dlopen`; undefined acts as a platform without FFI. @default Deno.dlopen */
  dlopen?: typeof Deno.dlopen | undefined;
  /** The FFI permission's state for a path. @default Deno.permissions.querySync */
  permission?: (path: string) => Deno.PermissionState;
}

function queryPermission(path: string): Deno.PermissionState {
  return Deno.permissions.querySync({ name: "ffi", path }).state;
}

/**
 * Loads libcrypto from the first of `paths` that the FFI permission already allows and that
 * has every symbol, and runs the self-test. Never prompts for a permission.
 */
export function loadLibcrypto(options: LoadLibcryptoOptions = {}): LibcryptoStatus {
  const dlopen = "dlopen" in options ? options.dlopen : globalThis.Deno?.dlopen;
  if (typeof dlopen !== "function") return { ok: false, reason: "no FFI (Deno.dlopen) here" };
  const paths = options.paths ?? (Deno.build.os === "linux" ? LIBCRYPTO_PATHS : []);
  const permission = options.permission ?? queryPermission;
  let granted = 0;
  for (const path of paths) {
    let state: Deno.PermissionState;
    try {
      state = permission(path);
    } catch {
      continue;
    }
    if (state !== "granted") continue;
    granted++;
    let dl: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      dl = dlopen(path, SYMBOLS);
    } catch (err) {
      // Absent here (the usual case for all but one path), or without a symbol.
      if (/no such file/i.test((err as Error).message)) continue;
      return { ok: false, reason: `${path}: ${firstLine(err)}` };
    }
    let failed: string | null;
    let lib: Libcrypto | undefined;
    try {
      lib = bind(dl.symbols as Symbols, path);
      failed = selfTest(lib);
    } catch (err) {
      failed = firstLine(err);
    }
    if (!failed && lib) return { ok: true, lib };
    // A library that fails its self-test is never used: unload it.
    try {
      dl.close();
    } catch {
      // already unusable
    }
    return { ok: false, reason: `self-test failed: ${failed}` };
  }
  return {
    ok: false,
    reason: granted === 0
      ? "the FFI permission is not granted for libcrypto"
      : "no libcrypto 3 where the FFI permission allows",
  };
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split("\n")[0]!.slice(0, 200);
}

/** `3.0.19` from `OpenSSL_version_num()` (0xMNN00PP0 since OpenSSL 3). */
function versionOf(n: bigint): string {
  const v = Number(n);
  return `${Math.floor(v / 0x10000000)}.${(v >>> 20) & 0xff}.${(v >>> 4) & 0xff}`;
}

function bind(l: Symbols, path: string): Libcrypto {
  const group = l.EC_GROUP_new_by_curve_name(NID_X9_62_PRIME256V1);
  const sha256 = l.EVP_sha256();
  const gcm = l.EVP_aes_128_gcm();
  const ctx = l.EVP_CIPHER_CTX_new();
  if (!group || !sha256 || !gcm || !ctx) throw new Error("libcrypto did not initialise");
  const outLength = new Uint8Array(4);
  /** Frees an EC_KEY that was never used (a key pair dropped unused). */
  const unused = new FinalizationRegistry<{ key: Deno.PointerValue; freed: boolean }>((h) => {
    if (!h.freed) l.EC_KEY_free(h.key);
  });

  const fail = <E extends Error>(err: E): never => {
    l.ERR_clear_error();
    throw err;
  };

  /** ECDH of `key` with a 65-byte point; frees nothing. */
  function ecdh(key: Deno.PointerValue, ua: Uint8Array): Uint8Array {
    if (ua.length !== 65 || ua[0] !== 0x04) {
      throw new TypeError("p256dh is not an uncompressed P-256 point");
    }
    const point = l.EC_POINT_new(group);
    if (!point) return fail(new Error("EC_POINT_new failed"));
    try {
      // OpenSSL checks that the point lies on the curve (SEC 1 §3.2.2.1).
      if (l.EC_POINT_oct2point(group, point, buf(ua), 65n, null) !== 1) {
        return fail(new TypeError("p256dh is not a point on P-256"));
      }
      const secret = new Uint8Array(32);
      if (l.ECDH_compute_key(secret, 32n, point, key, null) !== 32) {
        return fail(new TypeError("p256dh is not a point on P-256"));
      }
      return secret;
    } finally {
      l.EC_POINT_free(point);
    }
  }

  function publicPoint(key: Deno.PointerValue): Uint8Array {
    const out = new Uint8Array(65);
    const n = l.EC_POINT_point2oct(
      group,
      l.EC_KEY_get0_public_key(key),
      POINT_CONVERSION_UNCOMPRESSED,
      out,
      65n,
      null,
    );
    if (n !== 65n) throw new Error("EC_POINT_point2oct failed");
    return out;
  }

  function newKey(): Deno.PointerValue {
    const key = l.EC_KEY_new();
    if (!key) return fail(new Error("EC_KEY_new failed"));
    if (l.EC_KEY_set_group(key, group) !== 1) {
      l.EC_KEY_free(key);
      return fail(new Error("EC_KEY_set_group failed"));
    }
    return key;
  }

  function pairOf(key: Deno.PointerValue, publicKey: Uint8Array): FfiKeyPair {
    const handle = { key, freed: false };
    const release = () => {
      handle.freed = true;
      unused.unregister(handle);
      l.EC_KEY_free(key);
    };
    const pair: FfiKeyPair = {
      publicKey,
      checksPoint: true,
      agreeSync(ua) {
        // RFC 8291 §3.1: a key pair for one message only.
        if (handle.freed) throw new Error("Cannot agree: this key pair was used already");
        try {
          return ecdh(key, ua);
        } finally {
          release();
        }
      },
      agree(ua) {
        try {
          return Promise.resolve(pair.agreeSync(ua));
        } catch (err) {
          return Promise.reject(err);
        }
      },
      dispose() {
        if (!handle.freed) release();
      },
    };
    unused.register(pair, handle, handle);
    return pair;
  }

  const symmetric: Symmetric = {
    hmac(key, ...data) {
      const input = data.length === 1 ? data[0]! : concat(...data);
      const out = new Uint8Array(32);
      if (
        l.HMAC(sha256, buf(key), key.length, buf(input), BigInt(input.length), out, null) === null
      ) {
        return fail(new Error("HMAC failed"));
      }
      return out;
    },
    aes128gcm(key, nonce, plaintext) {
      if (key.length !== 16 || nonce.length !== 12) throw new TypeError("bad AES-GCM key or nonce");
      const out = new Uint8Array(plaintext.length + 16);
      const tag = out.subarray(plaintext.length);
      const ok = l.EVP_EncryptInit_ex(ctx, gcm, null, buf(key), buf(nonce)) === 1 &&
        l.EVP_EncryptUpdate(ctx, out, outLength, buf(plaintext), plaintext.length) === 1 &&
        l.EVP_EncryptFinal_ex(ctx, tag, outLength) === 1 &&
        l.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) === 1;
      if (!ok) return fail(new Error("AES-GCM failed"));
      return out;
    },
  };

  return {
    path,
    version: versionOf(l.OpenSSL_version_num()),
    symmetric,
    keyPair() {
      const key = newKey();
      if (l.EC_KEY_generate_key(key) !== 1) {
        l.EC_KEY_free(key);
        return fail(new Error("EC_KEY_generate_key failed"));
      }
      try {
        return pairOf(key, publicPoint(key));
      } catch (err) {
        l.EC_KEY_free(key);
        throw err;
      }
    },
    importKeyPair(publicKey, privateKey) {
      const key = newKey();
      const ok = privateKey.length === 32 && publicKey.length === 65 &&
        l.EC_KEY_oct2priv(key, buf(privateKey), 32n) === 1 &&
        l.EC_KEY_oct2key(key, buf(publicKey), 65n, null) === 1 &&
        // The public point must be the private scalar's (SEC 1 §3.2.1).
        l.EC_KEY_check_key(key) === 1;
      if (!ok) {
        l.EC_KEY_free(key);
        return fail(
          new TypeError(
            "Cannot import ECDH key pair: the public key does not match the private key",
          ),
        );
      }
      return pairOf(key, publicKey.slice());
    },
  };
}

/**
 * {@link loadLibcrypto} with the defaults, done once per isolate as this module is evaluated
 * (at start-up, before any request), so that no later call opens a library. At the end of the
 * module: everything it uses is initialised by then.
 */
const loaded: LibcryptoStatus = loadLibcrypto();

/** libcrypto as this isolate loaded it (or why it did not). */
export function libcrypto(): LibcryptoStatus {
  return loaded;
}

/** The loaded libcrypto, for a caller that chose the "ffi" backend; throws why there is none. */
export function requireLibcrypto(): Libcrypto {
  if (!loaded.ok) throw new Error(`Cannot use libcrypto: ${loaded.reason}`);
  return loaded.lib;
}
