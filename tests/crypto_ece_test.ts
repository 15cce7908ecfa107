import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createECDH } from "node:crypto";
import ece from "http_ece";
import {
  createEphemeralKeyPool,
  encryptWebPush,
  fastestP256Backend,
  generateEphemeralKeyPair,
  importEphemeralKeyPair,
  isP256Point,
  MAX_PLAINTEXT_BYTES,
  pkcs8PublicPoint,
  RECORD_SIZE,
  validateSubscriptionKeys,
} from "../lib/crypto/ece.ts";
import { concat, decodeBase64Url, encodeBase64Url, fromUtf8 } from "../lib/encoding.ts";
import { libcrypto } from "../lib/crypto/p256_ffi.ts";
import { RFC8291_APPENDIX_A } from "../lib/crypto/p256_ffi_check.ts";
import { decryptWithHttpEce, userAgent } from "./_user_agent.ts";

// libcrypto through FFI where it loads (tests run with every permission), and the fallbacks.
const BACKENDS = [...(libcrypto().ok ? ["ffi" as const] : []), "node", "webcrypto"] as const;

for (const backend of BACKENDS) {
  Deno.test(`RFC 8291 Appendix A: encryptWebPush() reproduces the example body byte for byte (P-256 on ${backend})`, async () => {
    const asKeyPair = await importEphemeralKeyPair(
      decodeBase64Url(RFC8291_APPENDIX_A.asPublic),
      decodeBase64Url(RFC8291_APPENDIX_A.asPrivate),
      backend,
    );
    const body = await encryptWebPush(
      {
        plaintext: RFC8291_APPENDIX_A.plaintext,
        uaPublic: decodeBase64Url(RFC8291_APPENDIX_A.uaPublic),
        authSecret: decodeBase64Url(RFC8291_APPENDIX_A.authSecret),
      },
      { asKeyPair, salt: decodeBase64Url(RFC8291_APPENDIX_A.salt), p256: backend },
    );
    assert.equal(encodeBase64Url(body), RFC8291_APPENDIX_A.body);
  });

  Deno.test(`RFC 8291 §3.1/§3.3: a fresh ${backend} key pair agrees on the secret the UA computes, and http_ece decrypts`, async () => {
    const ua = userAgent();
    const pair = await generateEphemeralKeyPair(backend);
    assert.equal(pair.publicKey.length, 65);
    assert.ok(isP256Point(pair.publicKey));
    const ours = await pair.agree(ua.uaPublic);
    assert.deepEqual(ours, new Uint8Array(ua.ecdh.computeSecret(pair.publicKey)));
    const other = await generateEphemeralKeyPair(backend);
    assert.notDeepEqual(other.publicKey, pair.publicKey);
    const body = await encryptWebPush(
      { plaintext: "fresh", uaPublic: ua.uaPublic, authSecret: ua.auth },
      { p256: backend },
    );
    assert.equal(decryptWithHttpEce(body, ua), "fresh");
  });
}

const hex = (h: string) => new Uint8Array(h.match(/../g)!.map((b) => parseInt(b, 16)));
// PKCS#8 (RFC 5208) around an RFC 5915 ECPrivateKey for P-256 (id-ecPublicKey, prime256v1).
const PKCS8_HEAD = "020100301306072a8648ce3d020106082a8648ce3d030107";

Deno.test("RFC 5915 §3: pkcs8PublicPoint() reads the public key an ECPrivateKey carries, and only that", async () => {
  const d = decodeBase64Url(RFC8291_APPENDIX_A.asPrivate);
  const point = decodeBase64Url(RFC8291_APPENDIX_A.asPublic);
  const withPoint = concat(
    hex(`308187${PKCS8_HEAD}046d306b0201010420`),
    d,
    hex("a144034200"),
    point,
  );
  // Web Crypto (an independent DER reader) takes the same bytes for the same key.
  const key = await crypto.subtle.importKey(
    "pkcs8",
    withPoint as BufferSource,
    { name: "ECDH", namedCurve: "P-256" },
    true,
    ["deriveBits"],
  );
  const jwk = await crypto.subtle.exportKey("jwk", key);
  assert.equal(jwk.x, encodeBase64Url(point.subarray(1, 33)));
  assert.deepEqual(pkcs8PublicPoint(withPoint), point);

  // The public key is OPTIONAL in RFC 5915: without it, no point (the caller exports `raw`).
  const without = concat(hex(`3041${PKCS8_HEAD}042730250201010420`), d);
  assert.equal(pkcs8PublicPoint(without), null);
  assert.equal(pkcs8PublicPoint(withPoint.subarray(0, withPoint.length - 1)), null);
  const compressed = withPoint.slice();
  compressed[compressed.length - 65] = 0x02;
  assert.equal(pkcs8PublicPoint(compressed), null);
});

Deno.test("importEphemeralKeyPair() refuses a public key that is not the private key's", async () => {
  const wrong = userAgent().uaPublic;
  await assert.rejects(
    importEphemeralKeyPair(wrong, decodeBase64Url(RFC8291_APPENDIX_A.asPrivate), "node"),
    /does not match the private key/,
  );
});

Deno.test("fastestP256Backend() picks libcrypto where it loads, else one of the other two, once per isolate", async () => {
  const first = await fastestP256Backend();
  assert.equal(first === "ffi", libcrypto().ok);
  assert.ok(first === "ffi" || first === "node" || first === "webcrypto");
  assert.equal(await fastestP256Backend(), first);
  console.log(`P-256 on ${first} in Deno ${Deno.version.deno}`);
});

Deno.test("RFC 8291 Appendix A: http_ece decrypts the example body with the UA private key", () => {
  const ecdh = createECDH("prime256v1");
  ecdh.setPrivateKey(Buffer.from(decodeBase64Url(RFC8291_APPENDIX_A.uaPrivate)));
  const plaintext = ece.decrypt(Buffer.from(decodeBase64Url(RFC8291_APPENDIX_A.body)), {
    version: "aes128gcm",
    privateKey: ecdh,
    authSecret: Buffer.from(decodeBase64Url(RFC8291_APPENDIX_A.authSecret)),
  });
  assert.equal(fromUtf8(new Uint8Array(plaintext)), RFC8291_APPENDIX_A.plaintext);
});

Deno.test("RFC 8291 §3.4: http_ece (independent) decrypts our output for random keys", async () => {
  const ua = userAgent();
  const message = JSON.stringify({ type: "update", topic: "Zk3m8PqW0oYt5sUe", priority: 90 });
  const body = await encryptWebPush({
    plaintext: message,
    uaPublic: ua.uaPublic,
    authSecret: ua.auth,
  });
  assert.equal(decryptWithHttpEce(body, ua), message);
});

Deno.test("RFC 8188 §2.1: the header is salt(16) || rs=4096 || idlen=65 || a fresh as_public", async () => {
  const ua = userAgent();
  const a = await encryptWebPush({ plaintext: "x", uaPublic: ua.uaPublic, authSecret: ua.auth });
  const b = await encryptWebPush({ plaintext: "x", uaPublic: ua.uaPublic, authSecret: ua.auth });
  for (const body of [a, b]) {
    assert.equal(new DataView(body.buffer).getUint32(16), RECORD_SIZE);
    assert.equal(body[20], 65);
    assert.equal(body[21], 0x04);
    // 86-byte header + 1 byte + delimiter + 16-byte tag.
    assert.equal(body.length, 86 + 1 + 1 + 16);
  }
  // RFC 8291 §3.1 and §3.4: a new key pair and a new salt for every message.
  assert.notDeepEqual(a.subarray(0, 16), b.subarray(0, 16));
  assert.notDeepEqual(a.subarray(21, 86), b.subarray(21, 86));
});

Deno.test("RFC 8291 §4: a 3993-byte plaintext fills exactly one 4096-byte body and decrypts", async () => {
  const ua = userAgent();
  const plaintext = "a".repeat(MAX_PLAINTEXT_BYTES);
  const body = await encryptWebPush({ plaintext, uaPublic: ua.uaPublic, authSecret: ua.auth });
  assert.equal(body.length, 4096);
  assert.equal(decryptWithHttpEce(body, ua), plaintext);
});

Deno.test("RFC 8291 §4: encryptWebPush() refuses 3994 bytes with a RangeError naming the size", async () => {
  const ua = userAgent();
  await assert.rejects(
    encryptWebPush({
      plaintext: new Uint8Array(MAX_PLAINTEXT_BYTES + 1),
      uaPublic: ua.uaPublic,
      authSecret: ua.auth,
    }),
    (err: unknown) => err instanceof RangeError && /3994 bytes, at most 3993/.test(err.message),
  );
});

Deno.test("encryptWebPush() rejects a p256dh that is not on P-256 and a short auth secret", async () => {
  const ua = userAgent();
  const offCurve = new Uint8Array(65);
  offCurve[0] = 0x04;
  offCurve[1] = 1;
  await assert.rejects(
    encryptWebPush({ plaintext: "x", uaPublic: offCurve, authSecret: ua.auth }),
    TypeError,
  );
  await assert.rejects(
    encryptWebPush({ plaintext: "x", uaPublic: ua.uaPublic, authSecret: new Uint8Array(15) }),
    /auth secret must be 16 bytes, got 15/,
  );
});

Deno.test("Registrations: validateSubscriptionKeys() accepts a browser's p256dh and auth", async () => {
  const ua = userAgent();
  const result = await validateSubscriptionKeys({
    p256dh: encodeBase64Url(ua.uaPublic),
    auth: encodeBase64Url(ua.auth),
  });
  assert.equal(result.ok, true);
  assert.ok(result.ok && result.p256dh.length === 65 && result.auth.length === 16);
  // Padded base64url, as some browsers send it, is accepted too.
  const padded = await validateSubscriptionKeys({
    p256dh: encodeBase64Url(ua.uaPublic) + "=",
    auth: encodeBase64Url(ua.auth) + "==",
  });
  assert.equal(padded.ok, true);
});

Deno.test("Registrations: validateSubscriptionKeys() rejects keys that are not a P-256 point and a 16-byte secret", async () => {
  const ua = userAgent();
  const p256dh = encodeBase64Url(ua.uaPublic);
  const auth = encodeBase64Url(ua.auth);
  // SEC 1 §2.3.3 compressed form: 0x02/0x03 by the parity of y, then x.
  const compressed = new Uint8Array(33);
  compressed[0] = 0x02 | (ua.uaPublic[64]! & 1);
  compressed.set(ua.uaPublic.subarray(1, 33), 1);
  const offCurve = new Uint8Array(65);
  offCurve[0] = 0x04;
  offCurve.fill(0xff, 1);
  const prefixed = ua.uaPublic.slice();
  prefixed[0] = 0x03;
  const cases: [unknown, unknown, RegExp][] = [
    [encodeBase64Url(compressed), auth, /p256dh must be 65 bytes, got 33/],
    [encodeBase64Url(prefixed), auth, /uncompressed point \(0x04\), got prefix 0x03/],
    [encodeBase64Url(offCurve), auth, /not a point on P-256/],
    ["not base64url!", auth, /p256dh is not a base64url string/],
    [undefined, auth, /p256dh is not a base64url string/],
    ["", auth, /p256dh is not a base64url string/],
    [p256dh, encodeBase64Url(new Uint8Array(12)), /auth must be 16 bytes, got 12/],
    [p256dh, 16, /auth is not a base64url string/],
  ];
  for (const [p, a, reason] of cases) {
    const result = await validateSubscriptionKeys({ p256dh: p, auth: a });
    assert.equal(result.ok, false);
    assert.match(result.ok ? "" : result.reason, reason);
  }
});

Deno.test("RFC 8291 §3.1: the key pool never hands out the same key pair twice and refills", async () => {
  const pool = createEphemeralKeyPool({ size: 4 });
  try {
    await pool.fill();
    assert.equal(pool.available, 4);
    const seen = new Set<string>();
    // More takes than the pool holds: the rest are generated inline or by the refill.
    for (let i = 0; i < 10; i++) {
      const pair = await pool.take();
      assert.equal(pair.publicKey.length, 65);
      const id = encodeBase64Url(pair.publicKey);
      assert.ok(!seen.has(id), "a key pair was handed out twice");
      seen.add(id);
    }
    await pool.fill();
    assert.equal(pool.available, 4);
  } finally {
    await pool.close();
  }
  assert.equal(pool.available, 0);
});

Deno.test("RFC 8291 §3.1: messages encrypted from a key pool use distinct as_public keys and decrypt", async () => {
  const pool = createEphemeralKeyPool({ size: 2 });
  try {
    await pool.fill();
    const ua = userAgent();
    const bodies = await Promise.all(
      ["one", "two", "three"].map((plaintext) =>
        encryptWebPush({ plaintext, uaPublic: ua.uaPublic, authSecret: ua.auth }, {
          keyPool: pool,
        })
      ),
    );
    const keys = new Set(bodies.map((body) => encodeBase64Url(body.subarray(21, 86))));
    assert.equal(keys.size, 3);
    assert.deepEqual(bodies.map((body) => decryptWithHttpEce(body, ua)), ["one", "two", "three"]);
  } finally {
    await pool.close();
  }
});

Deno.test("SEC 1 §2.3.4: isP256Point() accepts node:crypto's points and rejects a flipped bit", () => {
  assert.ok(isP256Point(decodeBase64Url(RFC8291_APPENDIX_A.uaPublic)));
  assert.ok(isP256Point(decodeBase64Url(RFC8291_APPENDIX_A.asPublic)));
  for (let i = 0; i < 50; i++) {
    const point = userAgent().uaPublic;
    assert.ok(isP256Point(point));
    point[64] = point[64]! ^ 1;
    assert.equal(isP256Point(point), false);
  }
  // Deno's Web Crypto imports these without complaint; the check must not.
  const coordinateAboveP = new Uint8Array(65).fill(0xff);
  coordinateAboveP[0] = 0x04;
  assert.equal(isP256Point(coordinateAboveP), false);
  assert.equal(isP256Point(new Uint8Array(65)), false);
});
