/**
 * CORS for the client API in a real browser (README "The client API", browsers): a headless
 * Chromium loads a page from an origin in RELAY_CORS_ORIGINS, which registers a Web Push
 * subscription with `fetch` (keys made by the browser's own Web Crypto), reads
 * `GET /transports` and deletes the registration again; the same page on another origin is
 * refused by the browser, and the relay stores nothing for it.
 */

import assert from "node:assert/strict";
import { hasChromium, launch, type Page } from "./driver.ts";
import { harness } from "../_harness.ts";

/** The test page: it calls the relay named in its query and shows what happened. */
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>CORS test page</title>
<style>body{font:16px sans-serif;margin:2em} pre{background:#eee;padding:1em;white-space:pre-wrap}</style>
</head><body><h1>Client API from a page</h1><p id="origin"></p><pre id="out">running</pre>
<script>
const relay = new URLSearchParams(location.search).get("relay");
document.getElementById("origin").textContent = "page origin " + location.origin + ", relay " + relay;
const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
async function call(path, init) {
  try {
    const res = await fetch(relay + path, init);
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  } catch (err) {
    return { error: String(err) };
  }
}
window.run = async () => {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const subscription = {
    endpoint: "https://push.example.com/wpush/" + crypto.randomUUID(),
    expirationTime: null,
    keys: { p256dh: b64url(await crypto.subtle.exportKey("raw", pair.publicKey)),
            auth: b64url(crypto.getRandomValues(new Uint8Array(16))) },
  };
  const result = {};
  result.register = await call("/registrations", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ transport: "web-push", subscription }),
  });
  result.transports = await call("/transports", {});
  const reg = result.register.body;
  if (reg && reg["client-id"]) {
    result.delete = await call("/registrations/" + reg["client-id"], {
      method: "DELETE", headers: { Authorization: "Bearer " + reg["client-data"] },
    });
  }
  const shown = JSON.parse(JSON.stringify(result));
  if (shown.register.body) shown.register.body["client-data"] = "(sealed, " + reg["client-data"].length + " characters)";
  if (shown.transports.body) shown.transports.body = shown.transports.body["push-transports"].length + " transport(s)";
  document.getElementById("out").textContent = JSON.stringify(shown, null, 2);
  return result;
};
</script></body></html>`;

function servePage() {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } }),
  );
}

interface CallResult {
  status?: number;
  body?: Record<string, unknown> | null;
  error?: string;
}

Deno.test({
  name:
    "CORS in Chromium: a page on an allowed origin registers with fetch; a page on another origin is refused by the browser",
  ignore: !hasChromium(),
  async fn() {
    const allowedSite = servePage();
    const otherSite = servePage();
    const allowedOrigin = `http://127.0.0.1:${allowedSite.addr.port}`;
    const otherOrigin = `http://127.0.0.1:${otherSite.addr.port}`;
    const h = await harness({ RELAY_CORS_ORIGINS: allowedOrigin });
    const relay = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req, info) => h.relay.app.fetch(req, info),
    );
    const relayUrl = `http://127.0.0.1:${relay.addr.port}`;
    const pages: Page[] = [];
    const open = async (url: string) => {
      const page = await launch();
      pages.push(page);
      await page.goto(url);
      return page;
    };
    try {
      const regs = async () => (await h.dump()).filter((l) => l.startsWith('["reg",')).length;

      const page = await open(`${allowedOrigin}/?relay=${encodeURIComponent(relayUrl)}`);
      const ok = await page.evaluate<Record<string, CallResult>>("window.run()");
      assert.equal(ok.register?.status, 201, JSON.stringify(ok));
      assert.match(String(ok.register?.body?.["client-id"]), /^[A-Za-z0-9_-]{22}$/);
      assert.equal(ok.transports?.status, 200);
      assert.equal(ok.delete?.status, 204, "DELETE with Authorization passes its preflight");
      assert.equal(await regs(), 0, "registered, then deleted");
      const dir = Deno.env.get("CORS_SCREENSHOT_DIR") ?? await Deno.makeTempDir();
      const shot = `${dir}/cors-allowed-origin.png`;
      await page.screenshot(shot);
      const png = await Deno.readFile(shot);
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);

      const before = await h.dump();
      const seen = h.logger.lines.length;
      const other = await open(`${otherOrigin}/?relay=${encodeURIComponent(relayUrl)}`);
      const refused = await other.evaluate<Record<string, CallResult>>("window.run()");
      assert.match(
        refused.register?.error ?? "",
        /TypeError: Failed to fetch/,
        JSON.stringify(refused),
      );
      assert.match(refused.transports?.error ?? "", /TypeError: Failed to fetch/);
      assert.equal(refused.delete, undefined);
      await other.screenshot(`${dir}/cors-other-origin.png`);
      const cors = other.errors().filter((text) => /CORS policy/.test(text));
      assert.ok(cors.length >= 2, JSON.stringify(other.errors()));
      // The browser sent only the preflight of the POST (and the simple GET, whose answer it
      // hid from the page): nothing was registered.
      const methods = h.logger.lines.slice(seen).filter((l) => l.event === "request")
        .map((l) => `${l.fields.method} ${l.fields.path}`);
      assert.deepEqual(methods.sort(), ["GET /transports", "OPTIONS /registrations"]);
      assert.deepEqual(await h.dump(), before);
    } finally {
      for (const page of pages) await page.close();
      await relay.shutdown();
      await allowedSite.shutdown();
      await otherSite.shutdown();
      await h.close();
    }
  },
});
