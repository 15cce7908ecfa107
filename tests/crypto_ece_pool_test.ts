/**
 * Web Push encryption spread over module workers (lib/crypto/ece_pool.ts). Output
 * must be exactly what `encryptWebPush` promises (RFC 8291, decryptable by an independent
 * implementation, a fresh sender key per message), whether a message went to a worker or was
 * encrypted inline, and errors keep their meaning.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createEncryptionPool, type Encryptor } from "../lib/crypto/ece_pool.ts";
import { decryptWithHttpEce, userAgent } from "./_user_agent.ts";

/** Waits for the pool's workers to be ready (up to 60 s: they start slowly on a loaded machine). */
async function untilWorkers(pool: Encryptor, n: number): Promise<void> {
  for (let i = 0; i < 2400 && pool.workers < n; i++) await new Promise((r) => setTimeout(r, 25));
  assert.equal(pool.workers, n);
}

/** A pool whose one worker is ready, a subscriber, and that subscriber's key moved off the curve. */
async function oneWorkerPool() {
  const pool = createEncryptionPool({ maxWorkers: 1, startAt: 1 });
  const ua = userAgent();
  try {
    await pool.encrypt({ plaintext: "warm", uaPublic: ua.uaPublic, authSecret: ua.auth });
    await untilWorkers(pool, 1);
  } catch (err) {
    await pool.close();
    throw err;
  }
  const bad = ua.uaPublic.slice();
  bad[64] = bad[64]! ^ 1;
  return { pool, ua, bad };
}

Deno.test("Encryption pool: under load workers start, and every body decrypts with a fresh sender key (RFC 8291 §3.1)", async () => {
  const pool = createEncryptionPool({ maxWorkers: 2, startAt: 2 });
  try {
    const ua = userAgent();
    const run = (n: number) =>
      Promise.all(
        Array.from({ length: n }, (_, i) =>
          pool.encrypt({ plaintext: `message ${i}`, uaPublic: ua.uaPublic, authSecret: ua.auth })),
      );
    // The first burst starts the workers (and is encrypted inline meanwhile).
    await run(16);
    // Workers take a while to start on a loaded machine: wait for them (up to 60 s), then check.
    await untilWorkers(pool, 2);
    const bodies = await run(64);
    const senders = new Set<string>();
    bodies.forEach((body, i) => {
      assert.equal(decryptWithHttpEce(body, ua), `message ${i}`);
      senders.add(Buffer.from(body.subarray(21, 86)).toString("hex"));
    });
    assert.equal(senders.size, 64);
  } finally {
    await pool.close();
  }
  assert.equal(pool.workers, 0);
});

Deno.test("Encryption pool: a p256dh off the curve is refused by a worker with a TypeError naming p256dh", async () => {
  const { pool, ua, bad } = await oneWorkerPool();
  try {
    await assert.rejects(
      pool.encrypt({ plaintext: "x", uaPublic: bad, authSecret: ua.auth }),
      (err: Error) =>
        err instanceof TypeError && /p256dh is not a point on P-256/.test(err.message),
    );
    // The worker is still fine afterwards.
    const body = await pool.encrypt({
      plaintext: "ok",
      uaPublic: ua.uaPublic,
      authSecret: ua.auth,
    });
    assert.equal(decryptWithHttpEce(body, ua), "ok");
  } finally {
    await pool.close();
  }
});

Deno.test("Encryption pool: jobs handed to a worker together each get their own body or error (a bad key fails only its own message)", async () => {
  const { pool, ua, bad } = await oneWorkerPool();
  try {
    // 150 at once: two go over alone, the rest wait and go in batches of up to 64.
    const results = await Promise.allSettled(
      Array.from({ length: 150 }, (_, i) =>
        pool.encrypt({
          plaintext: `message ${i}`,
          uaPublic: i % 37 === 5 ? bad : ua.uaPublic,
          authSecret: ua.auth,
        })),
    );
    results.forEach((r, i) => {
      if (i % 37 === 5) {
        assert.equal(r.status, "rejected", `message ${i}`);
        assert.match((r as PromiseRejectedResult).reason.message, /p256dh is not a point/);
      } else {
        assert.equal(r.status, "fulfilled", `message ${i}`);
        assert.equal(
          decryptWithHttpEce((r as PromiseFulfilledResult<Uint8Array>).value, ua),
          `message ${i}`,
        );
      }
    });
  } finally {
    await pool.close();
  }
});

Deno.test("Encryption pool: a single message is encrypted inline (no worker started), and after close() too", async () => {
  const pool = createEncryptionPool({ maxWorkers: 2 });
  const ua = userAgent();
  const body = await pool.encrypt({ plaintext: "one", uaPublic: ua.uaPublic, authSecret: ua.auth });
  assert.equal(decryptWithHttpEce(body, ua), "one");
  assert.equal(pool.workers, 0);
  await pool.close();
  const after = await pool.encrypt({
    plaintext: "two",
    uaPublic: ua.uaPublic,
    authSecret: ua.auth,
  });
  assert.equal(decryptWithHttpEce(after, ua), "two");
});
