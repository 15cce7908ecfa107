/**
 * `RELAY_ENCRYPTION_WORKERS` caps the module workers that encrypt Web Push (README
 * "Configuration"): `0` encrypts in the main isolate, as Deno Deploy gets by default, and the
 * pool never starts more workers than it may.
 */

import assert from "node:assert/strict";
import { loadConfig } from "../lib/config.ts";
import { createEncryptionPool } from "../lib/crypto/ece_pool.ts";
import { harness, settle } from "./_harness.ts";
import { decryptWithHttpEce, userAgent } from "./_user_agent.ts";

/** Replaces `Worker` while `fn` runs with one that counts (and refuses) constructions. */
async function countingWorkers(fn: () => Promise<void>): Promise<number> {
  const original = globalThis.Worker;
  let constructed = 0;
  globalThis.Worker = class {
    constructor() {
      constructed++;
      throw new Error("no worker may start here");
    }
  } as unknown as typeof Worker;
  try {
    await fn();
  } finally {
    globalThis.Worker = original;
  }
  return constructed;
}

Deno.test("Encryption pool with maxWorkers 0 starts no worker under any load, and every body decrypts (RFC 8291)", async () => {
  const ua = userAgent();
  const pool = createEncryptionPool({ maxWorkers: 0, startAt: 1 });
  let bodies: Uint8Array[] = [];
  const constructed = await countingWorkers(async () => {
    bodies = await Promise.all(
      Array.from(
        { length: 40 },
        (_, i) =>
          pool.encrypt({ plaintext: `message ${i}`, uaPublic: ua.uaPublic, authSecret: ua.auth }),
      ),
    );
  });
  assert.equal(constructed, 0);
  assert.equal(pool.workers, 0);
  bodies.forEach((body, i) => assert.equal(decryptWithHttpEce(body, ua), `message ${i}`));
  await pool.close();
});

Deno.test("Encryption pool with bulkOnly encrypts single messages inline under any load, and only bulk ones start workers", async () => {
  const ua = userAgent();
  const pool = createEncryptionPool({ maxWorkers: 1, startAt: 1, bulkOnly: true });
  const burst = (bulk: boolean) =>
    Promise.all(Array.from({ length: 40 }, (_, i) =>
      pool.encrypt(
        { plaintext: `message ${i}`, uaPublic: ua.uaPublic, authSecret: ua.auth },
        { bulk },
      )));
  let single: Uint8Array[] = [];
  const inline = await countingWorkers(async () => {
    single = await burst(false);
  });
  assert.equal(inline, 0);
  single.forEach((body, i) => assert.equal(decryptWithHttpEce(body, ua), `message ${i}`));
  const bulk = await countingWorkers(async () => {
    (await burst(true)).forEach((body, i) =>
      assert.equal(decryptWithHttpEce(body, ua), `message ${i}`)
    );
  });
  assert.equal(bulk, 1);
  await pool.close();
});

Deno.test("Encryption pool never starts more workers than maxWorkers", async () => {
  const pool = createEncryptionPool({ maxWorkers: 1, startAt: 2 });
  try {
    const ua = userAgent();
    const burst = () =>
      Promise.all(
        Array.from({ length: 32 }, (_, i) =>
          pool.encrypt({ plaintext: `m${i}`, uaPublic: ua.uaPublic, authSecret: ua.auth })),
      );
    await burst();
    for (let i = 0; i < 200 && pool.workers < 1; i++) await new Promise((r) => setTimeout(r, 25));
    await burst();
    await burst();
    assert.equal(pool.workers, 1);
  } finally {
    await pool.close();
  }
});

Deno.test("Encryption pool: a negative or fractional maxWorkers is a RangeError", () => {
  assert.throws(() => createEncryptionPool({ maxWorkers: -1 }), RangeError);
  assert.throws(() => createEncryptionPool({ maxWorkers: 1.5 }), RangeError);
});

Deno.test("RELAY_ENCRYPTION_WORKERS defaults to 0 on Deno Deploy and to the core count (at most 4) elsewhere", () => {
  const base = { RELAY_APPS: "a:0123456789abcdef0123" };
  assert.equal(loadConfig({ ...base, DENO_DEPLOYMENT_ID: "x" }).encryptionWorkers, 0);
  const cores = Math.min(4, Math.max(1, navigator.hardwareConcurrency ?? 1));
  assert.equal(loadConfig(base).encryptionWorkers, cores);
  assert.equal(loadConfig({ ...base, RELAY_ENCRYPTION_WORKERS: "0" }).encryptionWorkers, 0);
});

/** Runs a 24-subscriber Web Push fan-out on the real transport; returns the workers asked for. */
async function fanOutWorkers(workers: string): Promise<{ constructed: number; sent: Request[] }> {
  const sent: Request[] = [];
  const fakeFetch = (input: RequestInfo | URL, init?: RequestInit) => {
    sent.push(new Request(input, init));
    return Promise.resolve(new Response(null, { status: 201 }));
  };
  const constructed = await countingWorkers(async () => {
    // The real Web Push transport (fetch injected), not the harness's fake.
    const h = await harness({ RELAY_ENCRYPTION_WORKERS: workers }, {
      fetch: fakeFetch as typeof fetch,
      transports: {},
    });
    try {
      const devices = await Promise.all(Array.from({ length: 24 }, () => h.registerDevice()));
      for (const d of devices) {
        assert.equal((await h.subscribe(d["client-data"], ["t1"])).status, 200);
      }
      await settle(h);
      assert.equal((await h.push([{ topic: "t1" }])).status, 200);
      await settle(h);
    } finally {
      // Shutting the relay down stops the sender-key pool's background refill too.
      await h.close();
    }
  });
  return { constructed, sent };
}

Deno.test("RELAY_ENCRYPTION_WORKERS=0: the relay's Web Push fan-out encrypts in the main isolate and starts no worker", async () => {
  const { constructed, sent } = await fanOutWorkers("0");
  assert.equal(constructed, 0);
  // 24 acknowledgements and 24 updates, each an RFC 8291 aes128gcm body.
  assert.equal(sent.length, 48);
  assert.ok(sent.every((r) => r.headers.get("content-encoding") === "aes128gcm"));
  // The same fan-out with workers allowed does ask for one (here refused, so it went inline).
  assert.equal((await fanOutWorkers("1")).constructed, 1);
});
