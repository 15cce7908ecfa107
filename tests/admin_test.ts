/**
 * The admin API (README "Admin API and page"): off (404) without `RELAY_ADMIN_TOKEN`; with
 * it, every API path needs that bearer token (never an app's), and the status counts what is
 * stored and what this process delivered. Dead letters: admin_dead_letters_test.ts.
 */

import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "../lib/config.ts";
import { encodeBase64Url } from "../lib/encoding.ts";
import { silentLogger } from "../lib/log.ts";
import { createRelay } from "../relay.ts";
import { APP2_TOKEN, APP_TOKEN, harness, settle } from "./_harness.ts";
import { ADMIN, admin, json, refused } from "./_admin.ts";

Deno.test("Admin API: with RELAY_ADMIN_TOKEN unset every /admin path is 404", async () => {
  const h = await harness();
  try {
    for (
      const [method, path] of [
        ["GET", "/admin"],
        ["GET", "/admin/status"],
        ["GET", "/admin/dead-letters"],
        ["POST", "/admin/dead-letters/x/retry"],
        ["DELETE", "/admin/dead-letters/x"],
        ["GET", "/admin/anything"],
      ]
    ) {
      const res = await admin(h, path!, { method: method! }, APP_TOKEN);
      assert.equal(res.status, 404, `${method} ${path}`);
      await res.body?.cancel();
    }
  } finally {
    await h.close();
  }
});

Deno.test("Admin API: each API path needs the admin bearer token (401 otherwise, app tokens never), the page loads without it", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN });
  try {
    const before = await h.dump();
    for (
      const [method, path] of [
        ["GET", "/admin/status"],
        ["GET", "/admin/dead-letters"],
        ["POST", "/admin/dead-letters/x/retry"],
        ["DELETE", "/admin/dead-letters/x"],
      ]
    ) {
      for (const token of [null, APP_TOKEN, APP2_TOKEN, `${ADMIN}x`, "Basic"]) {
        const res = await admin(h, path!, { method: method! }, token);
        assert.equal(res.status, 401, `${method} ${path} with ${token}`);
        assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer /);
        assert.equal((await res.json()).error.code, "unauthorized");
      }
    }
    assert.deepEqual(await h.dump(), before);
    // The page: HTML without data, its own script and style only, no token needed.
    const page = await h.request("/admin");
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    const csp = page.headers.get("content-security-policy") ?? "";
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]+={0,2}'/);
    assert.match(csp, /form-action 'none'/);
    const html = await page.text();
    assert.doesNotMatch(html, /app1|app2|https?:\/\/(?!www\.w3)/);
    assert.equal((await admin(h, "/admin", { method: "HEAD" }, null)).status, 200);
  } finally {
    await h.close();
  }
});

Deno.test("Admin API: a known path with another method is 405 with Allow", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN });
  try {
    for (
      const [method, path, allow] of [
        ["POST", "/admin", "GET, HEAD"],
        ["DELETE", "/admin/status", "GET, HEAD"],
        ["PUT", "/admin/dead-letters", "GET, HEAD"],
        ["GET", "/admin/dead-letters/x/retry", "POST"],
        ["POST", "/admin/dead-letters/x", "DELETE"],
      ]
    ) {
      const res = await admin(h, path!, { method: method! });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get("allow"), allow);
      await res.body?.cancel();
    }
  } finally {
    await h.close();
  }
});

Deno.test("Admin API: an admin token equal to an app token stops the relay at start", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const config = loadConfig({
      RELAY_APPS: `app1:${APP_TOKEN}`,
      RELAY_ADMIN_TOKEN: APP_TOKEN,
      RELAY_SECRET: encodeBase64Url(new Uint8Array(32).fill(7)),
    });
    await assert.rejects(createRelay({ config, kv, logger: silentLogger }), (err) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /RELAY_ADMIN_TOKEN/);
      return true;
    });
  } finally {
    kv.close();
  }
});

Deno.test("Admin status: subscriptions and registrations per app, deliveries per transport, queue depth and open breakers", async () => {
  const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN }, {
    delivery: { breaker: { threshold: 1, cooldownMs: 30_000 } },
  });
  try {
    const [d1, d2] = [await h.registerDevice(), await h.registerDevice()];
    await h.subscribe(d1["client-data"], ["alpha", "beta"]);
    await h.subscribe(d2["client-data"], ["alpha"]);
    await h.subscribe(d1["client-data"], ["gamma"], { token: APP2_TOKEN });
    await settle(h);
    h.webPush.respond = () => refused;
    await h.push([{ topic: "alpha" }]);
    await settle(h);
    let s = await json(await admin(h, "/admin/status"));
    assert.deepEqual(s.apps, [
      { app: "app1", subscriptions: 3, registrations: 2 },
      { app: "app2", subscriptions: 1, registrations: 1 },
      // A path-secret app's id is a secret: it is shown by a label.
      { app: "<path-app-1>", subscriptions: 0, registrations: 0 },
    ]);
    assert.equal(s.subscriptions, 4);
    const web = s.transports.find((t: { transport: string }) => t.transport === "web-push");
    assert.deepEqual(web.deliveries, {
      delivered: 3, // the three acknowledgements
      pruned: 0,
      retried: 0,
      dead_lettered: 2,
      failed: 2,
      replaced: 0,
      short_circuited: 0,
      coalesced: 0,
    });
    assert.deepEqual(s.queue, { outbox: 0, queued: 0, "dead-letters": 2 });
    assert.deepEqual(s.breakers, []);
    assert.equal(s.upstream, null);
    assert.equal(s["started-at"], new Date(h.now()).toISOString().replace(/\.\d{3}Z$/, "Z"));

    // A 503 opens the breaker of that push service (threshold 1 here) and queues a retry.
    h.webPush.respond = () => ({ kind: "retry", status: 503, reason: "unavailable" });
    await h.push([{ topic: "gamma" }], { token: APP2_TOKEN });
    await settle(h);
    s = await json(await admin(h, "/admin/status"));
    assert.deepEqual(s.breakers, [{
      service: "web-push https://push.example.com",
      "open-for-ms": 30_000,
    }]);
    assert.deepEqual(s.queue, { outbox: 0, queued: 1, "dead-letters": 2 });
    // Pruning a client ends its registrations in every app.
    h.webPush.respond = () => ({ kind: "gone", status: 410, reason: "gone" });
    h.clock.now += 60_000;
    await h.push([{ topic: "beta" }]);
    await settle(h);
    s = await json(await admin(h, "/admin/status"));
    assert.deepEqual(s.apps.slice(0, 2), [
      { app: "app1", subscriptions: 1, registrations: 1 },
      { app: "app2", subscriptions: 0, registrations: 0 },
    ]);
  } finally {
    await h.close();
  }
});
