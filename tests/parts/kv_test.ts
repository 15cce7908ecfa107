/**
 * The KV wrapper (lib/store/kv.ts): KV failures become StorageError, the relay's own errors do
 * not; one loop for optimistic-concurrency retries; batches within KV's limits.
 */

import assert from "node:assert/strict";
import { StorageError } from "../../lib/errors.ts";
import { Kv, sizedBatches, untilCommitted } from "../../lib/store/kv.ts";

Deno.test("Kv: a closed database is a StorageError naming what KV said", async () => {
  const db = await Deno.openKv(":memory:");
  const kv = new Kv(db);
  db.close();
  await assert.rejects(kv.get(["a"]), (err: unknown) => {
    assert.ok(err instanceof StorageError);
    assert.match(err.message, /^Storage get failed: /);
    return true;
  });
});

Deno.test("Kv: an error of the caller's own code inside a list loop is not turned into a StorageError", async () => {
  const db = await Deno.openKv(":memory:");
  try {
    const kv = new Kv(db);
    await kv.set(["x", 1], 1);
    await assert.rejects(async () => {
      for await (const _ of kv.list({ prefix: ["x"] })) throw new TypeError("a bug");
    }, TypeError);
  } finally {
    db.close();
  }
});

Deno.test("untilCommitted() reads again after a lost check, and gives up with the fallback", async () => {
  let tries = 0;
  assert.equal(
    await untilCommitted(() => Promise.resolve(++tries < 3 ? undefined : "ok"), () => "no"),
    "ok",
  );
  assert.equal(tries, 3);
  tries = 0;
  assert.equal(
    await untilCommitted(() => (tries++, Promise.resolve(undefined)), () => "gave up", 4),
    "gave up",
  );
  assert.equal(tries, 4);
});

Deno.test("sizedBatches() keeps each batch within the count and the byte budget", () => {
  const items = [5, 5, 5, 20, 1, 1, 1, 1];
  assert.deepEqual(sizedBatches(items, (n) => n, 10, 3), [[5, 5], [5], [20], [1, 1, 1], [1]]);
});
