/**
 * The rate limiter (routes/rate_limit.ts) as Hono middleware: a fixed window per subject,
 * `429` with `Retry-After` to the next window over the limit, and off at 0.
 */

import assert from "node:assert/strict";
import { Hono } from "hono";
import { RelayError } from "../../lib/errors.ts";
import { rateLimit } from "../../routes/rate_limit.ts";

function app(limit: number, clock: { now: number }) {
  const counts = new Map<string, number>();
  const a = new Hono();
  a.use(rateLimit({
    limit,
    subject: (c) => c.req.header("x-who") ?? "?",
    hit: (subject, window) => {
      const key = `${subject}/${window}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
      return Promise.resolve(counts.get(key)!);
    },
    now: () => clock.now,
    message: "Too many",
  }));
  a.get("/", (c) => c.text("ok"));
  a.onError((err, c) =>
    err instanceof RelayError ? c.text(err.code, err.status, err.headers) : c.text("bug", 500)
  );
  return a;
}

Deno.test("rateLimit(): at most `limit` per subject per window, then 429 with Retry-After to the window's end", async () => {
  const clock = { now: 60_000 * 1000 + 15_000 };
  const a = app(2, clock);
  const get = (who: string) => a.request("/", { headers: { "x-who": who } });
  assert.equal((await get("a")).status, 200);
  assert.equal((await get("a")).status, 200);
  const over = await get("a");
  assert.equal(over.status, 429);
  assert.equal(await over.text(), "rate-limited");
  assert.equal(over.headers.get("retry-after"), "45");
  assert.equal((await get("b")).status, 200, "another subject has its own count");
  clock.now += 45_000;
  assert.equal((await get("a")).status, 200, "a new window");
});

Deno.test("rateLimit(): 0 turns the limit off; a negative limit is a RangeError", async () => {
  const a = app(0, { now: 0 });
  for (let i = 0; i < 5; i++) assert.equal((await a.request("/")).status, 200);
  assert.throws(() => app(-1, { now: 0 }), RangeError);
});
