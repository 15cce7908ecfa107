import assert from "node:assert/strict";
import { decodeJwt, importJWK, jwtVerify } from "jose";
import webpush from "web-push";
import {
  createVapid,
  generateVapidKeys,
  importVapidKeys,
  VapidKeyError,
  type VapidKeys,
} from "../lib/crypto/vapid.ts";
import { decodeBase64Url, encodeBase64Url } from "../lib/encoding.ts";

const HOUR = 3_600_000;
const T0 = Date.UTC(2026, 10, 24, 12, 0, 0);
const ENDPOINT = "https://push.example.net:8443/wpush/v2/gAAAAABk-secret-part";

function clock(start = T0) {
  const state = { now: start };
  return { state, now: () => state.now };
}

function parseHeader(header: string): { t: string; k: string } {
  const match = /^vapid t=([A-Za-z0-9_.-]+), k=([A-Za-z0-9_-]+)$/.exec(header);
  assert.ok(match, `not an RFC 8292 §3 header: ${header}`);
  return { t: match[1]!, k: match[2]! };
}

async function publicJwk(publicKey: string) {
  const raw = decodeBase64Url(publicKey);
  return await importJWK({
    kty: "EC",
    crv: "P-256",
    x: encodeBase64Url(raw.subarray(1, 33)),
    y: encodeBase64Url(raw.subarray(33, 65)),
  }, "ES256");
}

Deno.test("RFC 8292 §2: jose verifies our ES256 JWT with aud = origin, exp ≤ 12 h, sub", async () => {
  const keys = await generateVapidKeys();
  const { now } = clock();
  const vapid = await createVapid({ ...keys, subject: "mailto:ops@relay.example", now });
  const { t, k } = parseHeader(await vapid.authorization(ENDPOINT));
  assert.equal(k, keys.publicKey);
  assert.equal(vapid.publicKey, keys.publicKey);

  const { payload, protectedHeader } = await jwtVerify(t, await publicJwk(k), {
    algorithms: ["ES256"],
    audience: "https://push.example.net:8443",
    currentDate: new Date(T0),
  });
  assert.equal(protectedHeader.alg, "ES256");
  assert.equal(protectedHeader.typ, "JWT");
  assert.equal(payload.aud, "https://push.example.net:8443");
  assert.equal(payload.sub, "mailto:ops@relay.example");
  assert.ok(payload.exp! <= (T0 + 12 * HOUR) / 1000, "exp more than 12 h ahead");
  assert.ok(payload.exp! > (T0 + 11 * HOUR) / 1000, "exp unexpectedly short");
});

Deno.test("RFC 8292 §2: the audience is the origin only, never the endpoint's secret path", async () => {
  const keys = await generateVapidKeys();
  const vapid = await createVapid({ ...keys, subject: "https://relay.example", now: clock().now });
  const header = await vapid.authorization("https://fcm.googleapis.com/fcm/send/abc:def");
  const claims = decodeJwt(parseHeader(header).t);
  assert.equal(claims.aud, "https://fcm.googleapis.com");
  assert.ok(!header.includes("abc:def"));
});

Deno.test("VAPID headers are cached per origin and reused while more than 1 h remains", async () => {
  const keys = await generateVapidKeys();
  const c = clock();
  const vapid = await createVapid({ ...keys, subject: "mailto:a@b.example", now: c.now });
  const first = await vapid.authorization(ENDPOINT);
  c.state.now += 10 * HOUR;
  assert.equal(await vapid.authorization(`${ENDPOINT}-another-device`), first);
  const other = await vapid.authorization("https://updates.push.services.mozilla.com/wpush/v2/x");
  assert.notEqual(other, first);
  assert.equal(decodeJwt(parseHeader(other).t).aud, "https://updates.push.services.mozilla.com");
});

Deno.test("VAPID headers are renewed once less than 1 h of their 12 h remains", async () => {
  const keys = await generateVapidKeys();
  const c = clock();
  const vapid = await createVapid({ ...keys, subject: "mailto:a@b.example", now: c.now });
  const first = await vapid.authorization(ENDPOINT);
  c.state.now += 11 * HOUR + 1000;
  const renewed = await vapid.authorization(ENDPOINT);
  assert.notEqual(renewed, first);
  const claims = decodeJwt(parseHeader(renewed).t);
  assert.equal(claims.exp, Math.floor((c.state.now + 12 * HOUR) / 1000));
  // The renewed header is then reused in its turn.
  c.state.now += HOUR;
  assert.equal(await vapid.authorization(ENDPOINT), renewed);
});

Deno.test("concurrent authorization() calls for one origin share one signature", async () => {
  const keys = await generateVapidKeys();
  const vapid = await createVapid({ ...keys, subject: "mailto:a@b.example", now: clock().now });
  const headers = await Promise.all(Array.from({ length: 5 }, () => vapid.authorization(ENDPOINT)));
  assert.equal(new Set(headers).size, 1);
});

Deno.test("authorization() rejects a relative endpoint without echoing it", async () => {
  const keys = await generateVapidKeys();
  const vapid = await createVapid({ ...keys, subject: "mailto:a@b.example", now: clock().now });
  await assert.rejects(vapid.authorization("/secret-path"), (err: unknown) => {
    assert.ok(err instanceof TypeError);
    assert.ok(!err.message.includes("secret-path"));
    return true;
  });
});

Deno.test("importVapidKeys() detects a private key that does not match the public key", async () => {
  const a = await generateVapidKeys();
  const b = await generateVapidKeys();
  await assert.rejects(
    importVapidKeys({ publicKey: a.publicKey, privateKey: b.privateKey }),
    (err: unknown) => {
      assert.ok(err instanceof VapidKeyError);
      assert.equal(err.key, "privateKey");
      assert.match(err.message, /does not match the VAPID public key/);
      assert.ok(!err.message.includes(b.privateKey), "the message leaks the private key");
      return true;
    },
  );
});

Deno.test("importVapidKeys() names the malformed key and its size", async () => {
  const good = await generateVapidKeys();
  const offCurve = new Uint8Array(65).fill(1);
  offCurve[0] = 0x04;
  const cases: [VapidKeys, "publicKey" | "privateKey", RegExp][] = [
    [{ ...good, publicKey: good.publicKey.slice(0, 40) }, "publicKey", /got 30 bytes/],
    [{ ...good, publicKey: encodeBase64Url(offCurve) }, "publicKey", /not a point on P-256/],
    [
      { ...good, privateKey: encodeBase64Url(new Uint8Array(31)) },
      "privateKey",
      /32 bytes, got 31/,
    ],
    [{ ...good, privateKey: "not base64!" }, "privateKey", /expected base64url/],
    [{ ...good, privateKey: encodeBase64Url(new Uint8Array(32)) }, "privateKey", /private key/],
  ];
  for (const [keys, which, message] of cases) {
    await assert.rejects(importVapidKeys(keys), (err: unknown) => {
      assert.ok(err instanceof VapidKeyError, String(err));
      assert.equal(err.key, which);
      assert.match(err.message, message);
      return true;
    });
  }
});

Deno.test("RFC 8292 §2.1: createVapid() refuses a subject that is not mailto: or https:", async () => {
  const keys = await generateVapidKeys();
  await assert.rejects(
    createVapid({ ...keys, subject: "http://relay.example", now: clock().now }),
    /expected a mailto: or https: URI, got "http:\/\/relay.example"/,
  );
});

Deno.test("generateVapidKeys() output loads in npm web-push's setVapidDetails", async () => {
  const keys = await generateVapidKeys();
  assert.equal(decodeBase64Url(keys.publicKey).length, 65);
  assert.equal(decodeBase64Url(keys.privateKey).length, 32);
  webpush.setVapidDetails("mailto:ops@relay.example", keys.publicKey, keys.privateKey);
});

Deno.test("keys printed by npm web-push generate-vapid-keys import and sign", async () => {
  const keys = webpush.generateVAPIDKeys();
  const vapid = await createVapid({ ...keys, subject: "mailto:a@b.example", now: clock().now });
  const { t } = parseHeader(await vapid.authorization(ENDPOINT));
  await jwtVerify(t, await publicJwk(keys.publicKey), {
    algorithms: ["ES256"],
    currentDate: new Date(T0),
  });
});
