/**
 * The admin page (README "Admin API and page") in a real headless Chromium: served by a relay
 * on 127.0.0.1, it shows nothing until the admin token is typed in; then every figure it shows
 * is what `GET /admin/status` answers, its dead-letter rows are the API's newest, a Retry
 * button queues one again, and the token is kept nowhere but in the page's memory.
 *
 * Set ADMIN_SCREENSHOT=<file.png> to keep the screenshot the test takes.
 */

import assert from "node:assert/strict";
import { APP2_TOKEN, harness, settle } from "../_harness.ts";
import { hasChromium, launch } from "./driver.ts";

const ADMIN = "admin-token-for-the-browser-0123456789";

/** The figures the page should show, keyed as its `data-k` attributes are, from the status. */
function expectedFigures(s: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  const status = s as {
    subscriptions: number;
    queue: Record<string, number>;
    breakers: unknown[];
    apps: { app: string; subscriptions: number; registrations: number }[];
    transports: { transport: string; deliveries: Record<string, number> }[];
  };
  out.subscriptions = String(status.subscriptions);
  for (const [k, v] of Object.entries(status.queue)) out[`queue.${k}`] = String(v);
  out["breakers.open"] = String(status.breakers.length);
  for (const a of status.apps) {
    out[`apps.${a.app}.subscriptions`] = String(a.subscriptions);
    out[`apps.${a.app}.registrations`] = String(a.registrations);
  }
  for (const t of status.transports) {
    for (const [o, v] of Object.entries(t.deliveries)) {
      out[`transports.${t.transport}.${o}`] = String(v);
    }
  }
  return out;
}

Deno.test({
  name:
    "Admin page in headless Chromium: after the token is typed in it shows the figures GET /admin/status returns, and keeps the token only in memory",
  ignore: !hasChromium(),
  async fn() {
    const h = await harness({ RELAY_ADMIN_TOKEN: ADMIN }, {
      delivery: { breaker: { threshold: 1, cooldownMs: 60_000 } },
    });
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req, info) => h.relay.app.fetch(req, info),
    );
    const base = `http://127.0.0.1:${server.addr.port}`;
    const page = await launch();
    try {
      // Some subscriptions in two apps, three deliveries, a dead letter, an open breaker.
      const [d1, d2, d3] = [
        await h.registerDevice(),
        await h.registerDevice(),
        await h.registerDevice(),
      ];
      await h.subscribe(d1["client-data"], ["cal-1", "cal-2"]);
      await h.subscribe(d2["client-data"], ["cal-1"]);
      await h.subscribe(d3["client-data"], ["book-1"], { token: APP2_TOKEN });
      await settle(h);
      h.webPush.respond = () => ({ kind: "failed", status: 413, reason: "payload too large" });
      await h.push([{ topic: "cal-2" }]);
      await settle(h);
      h.webPush.respond = () => ({
        kind: "retry",
        status: 503,
        reason: "push service answered 503",
      });
      await h.push([{ topic: "book-1" }], { token: APP2_TOKEN });
      await settle(h);
      h.webPush.respond = () => ({ kind: "delivered", status: 201 });

      await page.goto(`${base}/admin`);
      // The page itself holds no data.
      assert.equal(await page.evaluate("document.querySelectorAll('[data-k]').length"), 0);
      assert.equal(await page.evaluate("document.getElementById('view').hidden"), true);

      // A wrong token is refused and shows nothing.
      await page.type("#token", "not-the-admin-token");
      await page.click("#show");
      await page.waitFor("document.getElementById('error').textContent !== ''");
      assert.equal(await page.evaluate("document.getElementById('view').hidden"), true);

      await page.type("#token", ADMIN);
      await page.click("#show");
      await page.waitFor("document.body.dataset.loaded === '1'");

      const shown = await page.evaluate<Record<string, string>>(
        "Object.fromEntries([...document.querySelectorAll('[data-k]')].map((e) => [e.dataset.k, e.textContent]))",
      );
      const headers = { authorization: `Bearer ${ADMIN}` };
      const status = await (await fetch(`${base}/admin/status`, { headers })).json();
      assert.deepEqual(shown, expectedFigures(status));
      // What this scenario makes, so the comparison is not between two empty pages.
      assert.equal(shown["apps.app1.subscriptions"], "3");
      assert.equal(shown["apps.app1.registrations"], "2");
      assert.equal(shown["queue.dead-letters"], "1");
      assert.equal(shown["breakers.open"], "1");
      assert.equal(shown["transports.web-push.delivered"], "3");

      const dead = await (await fetch(`${base}/admin/dead-letters?limit=20`, { headers })).json();
      const rows = await page.evaluate<string[]>(
        "[...document.querySelectorAll('tr[data-dead]')].map((r) => r.dataset.dead)",
      );
      assert.deepEqual(rows, dead["dead-letters"].map((d: { id: string }) => d.id));

      // The token is in no storage, cookie, URL or the document.
      const kept = await page.evaluate<Record<string, unknown>>(`({
        storage: localStorage.length + sessionStorage.length,
        cookie: document.cookie,
        url: location.href,
        html: document.documentElement.outerHTML.includes(${JSON.stringify(ADMIN)}),
        input: document.getElementById("token").value,
      })`);
      assert.deepEqual(kept, {
        storage: 0,
        cookie: "",
        url: `${base}/admin`,
        html: false,
        input: "",
      });

      const shot = Deno.env.get("ADMIN_SCREENSHOT") ?? `${await Deno.makeTempDir()}/admin.png`;
      await page.screenshot(shot);
      const png = await Deno.readFile(shot);
      assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);

      // Retry from the page, once the breaker has half-opened: the dead letter goes out again
      // (with the queued retry, now due too) and leaves the list.
      h.webPush.sent = [];
      h.clock.now += 61_000;
      await page.click(`button[data-retry="${dead["dead-letters"][0].id}"]`);
      await page.waitFor("document.body.dataset.loaded === '2'");
      await settle(h);
      assert.deepEqual(h.webPush.payloads().map((p) => p.topic).sort(), ["book-1", "cal-2"]);
      assert.equal(await page.evaluate("document.querySelectorAll('tr[data-dead]').length"), 0);
      assert.deepEqual(page.errors().filter((e) => !/401/.test(e)), []);
    } finally {
      await page.close();
      await server.shutdown();
      await h.close();
    }
  },
});
