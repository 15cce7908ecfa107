/**
 * P-256, HKDF and AES-GCM on OpenSSL's libcrypto through FFI (lib/crypto/p256_ffi.ts): the
 * same bytes as RFC 8291 Appendix A and as node:crypto, decrypted by http_ece, points off the
 * curve refused, one ECDH per key pair (RFC 8291 §3.1); and the fallback to node:crypto or Web
 * Crypto wherever FFI, its permission, the library, a symbol or the self-test is missing.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createCipheriv, createECDH, createHmac, randomBytes } from "node:crypto";
import ece from "http_ece";
import { chooseP256Backend, encryptWebPush } from "../lib/crypto/ece.ts";
import { nodeSymmetric, sealRecord } from "../lib/crypto/ece_record.ts";
import {
  type Libcrypto,
  libcrypto,
  LIBCRYPTO_PATHS,
  loadLibcrypto,
} from "../lib/crypto/p256_ffi.ts";
import { decodeBase64Url, encodeBase64Url, fromUtf8, utf8 } from "../lib/encoding.ts";
import { RFC8291_APPENDIX_A } from "../lib/crypto/p256_ffi_check.ts";

const status = libcrypto();
const lib: Libcrypto | null = status.ok ? status.lib : null;
// CI installs libssl3 (.ci/run); elsewhere the FFI tests say why they cannot run.
const ignore = lib === null;
if (!status.ok) console.log(`libcrypto unavailable here: ${status.reason}`);

function userAgent() {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return { ecdh, uaPublic: new Uint8Array(ecdh.getPublicKey()), auth: new Uint8Array(16).fill(7) };
}

Deno.test({
  name:
    "RFC 8291 Appendix A: libcrypto alone (key import, ECDH, HKDF, AES-GCM) gives the example body byte for byte",
  ignore,
  fn() {
    const v = RFC8291_APPENDIX_A;
    const uaPublic = decodeBase64Url(v.uaPublic);
    const pair = lib!.importKeyPair(decodeBase64Url(v.asPublic), decodeBase64Url(v.asPrivate));
    const body = sealRecord(lib!.symmetric, {
      ecdhSecret: pair.agreeSync(uaPublic),
      uaPublic,
      asPublic: pair.publicKey,
      authSecret: decodeBase64Url(v.authSecret),
      salt: decodeBase64Url(v.salt),
      plaintext: utf8(v.plaintext),
    });
    assert.equal(encodeBase64Url(body), v.body);
  },
});

Deno.test({
  name:
    "RFC 8291 §3.3: 200 fresh libcrypto key pairs agree with node:crypto on the ECDH secret, both ways",
  ignore,
  fn() {
    for (let i = 0; i < 200; i++) {
      const ua = userAgent();
      const pair = lib!.keyPair();
      assert.equal(pair.publicKey.length, 65);
      assert.equal(pair.publicKey[0], 0x04);
      const ours = pair.agreeSync(ua.uaPublic);
      assert.deepEqual(ours, new Uint8Array(ua.ecdh.computeSecret(pair.publicKey)));
    }
  },
});

Deno.test({
  name: "RFC 8291 §3.1: a libcrypto key pair serves one ECDH only, and a disposed one none",
  ignore,
  async fn() {
    const ua = userAgent();
    const pair = lib!.keyPair();
    await pair.agree(ua.uaPublic);
    assert.throws(() => pair.agreeSync(ua.uaPublic), /used already/);
    await assert.rejects(pair.agree(ua.uaPublic), /used already/);
    const unused = lib!.keyPair();
    unused.dispose();
    unused.dispose();
    assert.throws(() => unused.agreeSync(ua.uaPublic), /used already/);
  },
});

Deno.test({
  name:
    "SEC 1 §3.2.2.1: libcrypto refuses a p256dh off the curve, with a coordinate of p or more, or not uncompressed",
  ignore,
  async fn() {
    const ua = userAgent();
    const flipped = ua.uaPublic.slice();
    flipped[64] = flipped[64]! ^ 1;
    const aboveP = new Uint8Array(65).fill(0xff);
    aboveP[0] = 0x04;
    const compressed = ua.uaPublic.slice(0, 33);
    compressed[0] = 0x02;
    for (const bad of [flipped, aboveP, new Uint8Array(65), compressed]) {
      assert.throws(() => lib!.keyPair().agreeSync(bad), TypeError);
    }
    // Through the whole pipeline: the TypeError names p256dh, as on the other backends.
    await assert.rejects(
      encryptWebPush({ plaintext: "x", uaPublic: flipped, authSecret: ua.auth }, { p256: "ffi" }),
      (err: Error) =>
        err instanceof TypeError && /p256dh is not a point on P-256/.test(err.message),
    );
    // Failures leave nothing behind: the next ECDH works.
    assert.equal(lib!.keyPair().agreeSync(ua.uaPublic).length, 32);
  },
});

Deno.test({
  name: "RFC 8291 §3.4: http_ece (independent) decrypts bodies made entirely on libcrypto",
  ignore,
  async fn() {
    const ua = userAgent();
    for (const plaintext of ["", "fresh", "é".repeat(1996)]) {
      const body = await encryptWebPush(
        { plaintext, uaPublic: ua.uaPublic, authSecret: ua.auth },
        { p256: "ffi" },
      );
      const decrypted = ece.decrypt(Buffer.from(body), {
        version: "aes128gcm",
        privateKey: ua.ecdh,
        authSecret: Buffer.from(ua.auth),
      });
      assert.equal(fromUtf8(new Uint8Array(decrypted)), plaintext);
    }
  },
});

Deno.test({
  name: "libcrypto's HMAC-SHA-256 and AES-128-GCM give node:crypto's bytes",
  ignore,
  fn() {
    for (const n of [0, 1, 15, 16, 17, 100, 3994]) {
      const key = new Uint8Array(randomBytes(16));
      const nonce = new Uint8Array(randomBytes(12));
      const data = new Uint8Array(randomBytes(n));
      assert.deepEqual(
        lib!.symmetric.hmac(key, data, data),
        new Uint8Array(createHmac("sha256", key).update(data).update(data).digest()),
      );
      const c = createCipheriv("aes-128-gcm", key, nonce);
      const expected = Buffer.concat([c.update(data), c.final(), c.getAuthTag()]);
      assert.deepEqual(lib!.symmetric.aes128gcm(key, nonce, data), new Uint8Array(expected));
      assert.deepEqual(nodeSymmetric.aes128gcm(key, nonce, data), new Uint8Array(expected));
    }
  },
});

Deno.test({
  name: "importKeyPair() on libcrypto refuses a public key that is not the private key's",
  ignore,
  fn() {
    assert.throws(
      () => lib!.importKeyPair(userAgent().uaPublic, decodeBase64Url(RFC8291_APPENDIX_A.asPrivate)),
      /does not match the private key/,
    );
  },
});

/** Runs encryptWebPush on `backend` and checks http_ece decrypts it. */
async function roundTrip(backend: Awaited<ReturnType<typeof chooseP256Backend>>) {
  const ua = userAgent();
  const body = await encryptWebPush(
    { plaintext: "fallback", uaPublic: ua.uaPublic, authSecret: ua.auth },
    { p256: backend },
  );
  const plain = ece.decrypt(Buffer.from(body), {
    version: "aes128gcm",
    privateKey: ua.ecdh,
    authSecret: Buffer.from(ua.auth),
  });
  assert.equal(fromUtf8(new Uint8Array(plain)), "fallback");
}

Deno.test("Without Deno.dlopen (Deno Deploy) there is no libcrypto, and P-256 falls back to node:crypto or Web Crypto, which still encrypt", async () => {
  const none = loadLibcrypto({ dlopen: undefined });
  assert.deepEqual(none, { ok: false, reason: "no FFI (Deno.dlopen) here" });
  const backend = await chooseP256Backend(none);
  assert.ok(backend === "node" || backend === "webcrypto", backend);
  await roundTrip(backend);
});

Deno.test("Without the FFI permission libcrypto is never opened (nothing prompts), and P-256 falls back", async () => {
  let opened = 0;
  const asked: string[] = [];
  const denied = loadLibcrypto({
    permission: (path) => (asked.push(path), "prompt"),
    dlopen: ((...args: Parameters<typeof Deno.dlopen>) => {
      opened++;
      return Deno.dlopen(...args);
    }) as typeof Deno.dlopen,
    paths: LIBCRYPTO_PATHS,
  });
  assert.equal(opened, 0);
  assert.deepEqual(asked, [...LIBCRYPTO_PATHS]);
  assert.equal(denied.ok, false);
  assert.match(denied.ok ? "" : denied.reason, /permission is not granted/);
  assert.notEqual(await chooseP256Backend(denied), "ffi");
});

Deno.test("With no libcrypto at the allowed paths, or a library without the symbols, libcrypto is unavailable", async () => {
  const absent = loadLibcrypto({ paths: ["/nonexistent/libcrypto.so.3"] });
  assert.deepEqual(absent, { ok: false, reason: "no libcrypto 3 where the FFI permission allows" });
  const libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
    .find(exists);
  if (libc) {
    const wrong = loadLibcrypto({ paths: [libc] });
    assert.equal(wrong.ok, false);
    assert.match(wrong.ok ? "" : wrong.reason, new RegExp(`^${libc}: `));
  }
  assert.notEqual(await chooseP256Backend(absent), "ffi");
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name:
    "A libcrypto whose HMAC gives wrong bytes fails the RFC 8291 Appendix A self-test and is not used",
  ignore,
  fn() {
    const broken = loadLibcrypto({
      paths: [lib?.path ?? ""],
      dlopen: ((path: string, symbols: Deno.ForeignLibraryInterface) => {
        const real = Deno.dlopen(path, symbols);
        const s = real.symbols as Record<string, unknown>;
        // Returns a pointer, as HMAC does, without writing the digest.
        const sha = (s.EVP_sha256 as () => Deno.PointerValue)();
        return { symbols: { ...s, HMAC: () => sha }, close: () => real.close() };
      }) as unknown as typeof Deno.dlopen,
    });
    assert.deepEqual(broken, {
      ok: false,
      reason: "self-test failed: RFC 8291 Appendix A body differs",
    });
  },
});

Deno.test("deno task start and the systemd unit grant FFI for exactly the paths libcrypto is looked for", async () => {
  const root = new URL("../", import.meta.url);
  const start = JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).tasks.start;
  const flag = (words: string[]) => words.find((w) => w.startsWith("--allow-ffi="))?.slice(12);
  assert.equal(flag(start.split(" ")), LIBCRYPTO_PATHS.join(","));
  const unit = await Deno.readTextFile(new URL("deploy/systemd/dav-push-relay.service", root));
  const execStart = /^ExecStart=\S+ run --cached-only --frozen (.+)$/m.exec(unit)![1]!;
  // The unit runs what the task runs (README "Running in production").
  assert.equal(execStart, start.replace(/^deno run /, ""));
});
