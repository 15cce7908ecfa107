import assert from "node:assert/strict";
import { Semaphore } from "../../lib/async/semaphore.ts";

Deno.test("Semaphore: at most max holders, waiters served in order, an aborted waiter holds nothing", async () => {
  const s = new Semaphore(2);
  assert.equal(await s.acquire(), true);
  assert.equal(await s.acquire(), true);
  assert.equal(s.available, false);
  const order: string[] = [];
  const a = s.acquire().then(() => order.push("a"));
  const controller = new AbortController();
  const b = s.acquire(controller.signal);
  const c = s.acquire().then(() => order.push("c"));
  assert.equal(s.waiting, 3);
  controller.abort();
  assert.equal(await b, false);
  s.release();
  s.release();
  await Promise.all([a, c]);
  assert.deepEqual(order, ["a", "c"]);
  assert.equal(s.held, 2);
});

Deno.test("Semaphore: a max below 1 is a RangeError", () => {
  assert.throws(() => new Semaphore(0), RangeError);
  assert.throws(() => new Semaphore(1.5), RangeError);
});
