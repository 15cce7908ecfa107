/**
 * RFC 8030 §5.2 `TTL` per attempt: a first attempt carries the full value (`RELAY_TTL`, or the
 * TTL a Web Push ingress message arrived with), however much time passed since the message was
 * accepted; a retry carries what is left of the message's lifetime, in whole seconds rounded
 * down.
 *
 * The clock here moves on by a millisecond at every read, so time always passes between the
 * `200` (or `201`) and the send, as it does on a real clock.
 */

import assert from "node:assert/strict";
import { harness, settle, T0 } from "./_harness.ts";
import { encryptWebPush } from "../lib/crypto/ece.ts";
import { encodeBase64Url, randomBytes } from "../lib/encoding.ts";
import { attemptTtl } from "../lib/delivery/retry.ts";
import { listDeliveries } from "./_inspect.ts";

/** The harness clock, advanced by 1 ms at every read. */
function tickingClock(start = T0) {
  let t = start;
  return () => t++;
}

Deno.test("RFC 8030 §5.2 TTL: the first delivery of a push and of its acknowledgement carries RELAY_TTL in full", async () => {
  const h = await harness({ RELAY_TTL: "3333" }, { now: tickingClock() });
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["t"]);
    await settle(h);
    await h.push([{ topic: "t" }]);
    await settle(h);
    assert.deepEqual(h.webPush.payloads().map((p) => p.type), ["subscribed", "update"]);
    assert.deepEqual(h.webPush.sent.map((s) => s.message.ttl), [3333, 3333]);
  } finally {
    await h.close();
  }
});

Deno.test("RFC 8030 §5.2 TTL: a Web Push ingress message is forwarded with the TTL it was given", async () => {
  const h = await harness({}, { now: tickingClock() });
  try {
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
      "deriveBits",
    ]) as CryptoKeyPair;
    const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const auth = randomBytes(16);
    const reg = await h.request("/registrations", {
      method: "POST",
      json: {
        transport: "web-push",
        subscription: {
          endpoint: "https://push.example.com/wpush/ingress-ttl",
          keys: { p256dh: encodeBase64Url(p256dh), auth: encodeBase64Url(auth) },
        },
        ingress: true,
      },
    });
    assert.equal(reg.status, 201);
    const resource = new URL((await reg.json())["push-resource"]).pathname;
    const body = await encryptWebPush({
      plaintext: new TextEncoder().encode("<push-message/>"),
      uaPublic: p256dh,
      authSecret: auth,
    });
    for (const ttl of ["3600", "0"]) {
      const res = await h.request(resource, {
        method: "POST",
        headers: { "content-encoding": "aes128gcm", ttl },
        body: body as BodyInit,
      });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get("ttl"), ttl);
      await settle(h);
    }
    assert.deepEqual(h.webPush.sent.map((s) => s.message.ttl), [3600, 0]);
  } finally {
    await h.close();
  }
});

Deno.test("RFC 8030 §5.2 TTL: a retry carries the remaining lifetime, rounded down to whole seconds", async () => {
  const h = await harness({ RELAY_TTL: "3333" }, { delivery: { random: () => 0.5 } });
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    h.webPush.respond = () => ({ kind: "retry", status: 503, reason: "503" });
    await h.push([{ topic: "t" }]);
    await settle(h);
    h.webPush.respond = () => ({ kind: "delivered", status: 201 });
    const [queued] = await listDeliveries(h.relay.store);
    // 10.5 s after the push: 3,322.5 s are left, which goes out as 3,322.
    h.clock.now = Math.max(queued!.dueAt, T0 + 10_500);
    const left = (T0 + 3333_000 - h.clock.now) / 1000;
    await h.relay.engine.tick();
    assert.deepEqual(h.webPush.sent.map((s) => s.message.ttl), [3333, Math.floor(left)]);
  } finally {
    await h.close();
  }
});

Deno.test("attemptTtl() gives the full TTL to a first attempt and the rounded-down rest to a retry", () => {
  const d = { ttl: 60, expiresAt: 100_000, attempts: 0 };
  assert.equal(attemptTtl(d, 99_999), 60);
  assert.equal(attemptTtl({ ...d, attempts: 1 }, 40_000), 60);
  assert.equal(attemptTtl({ ...d, attempts: 1 }, 40_001), 59);
  assert.equal(attemptTtl({ ...d, attempts: 1 }, 41_000), 59);
  assert.equal(attemptTtl({ ...d, attempts: 2 }, 99_999), 0);
  assert.equal(attemptTtl({ ...d, attempts: 2 }, 100_000), 0);
  assert.equal(attemptTtl({ ...d, attempts: 2 }, 130_000), 0);
  // Never more than the full value, even if the clock went back.
  assert.equal(attemptTtl({ ...d, attempts: 1 }, 0), 60);
});
