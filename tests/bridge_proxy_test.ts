/**
 * The bridge as a WebDAV-Push proxy (README, "Push for DAVx⁵ on Radicale (or any CalDAV
 * server)") against a fake upstream and a fake relay: what the proxy passes and changes, the
 * registration rules that the real servers cannot provoke (the relay's refusals and outages,
 * pruning seen as 403), the expiry rule, the configuration and what the KV keeps.
 */

import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { createBridge } from "../bridge/app.ts";
import { loadBridgeConfig } from "../bridge/config.ts";
import { memoryLogger } from "../bridge/log.ts";
import { openPushStore } from "../bridge/push_store.ts";
import { grantedExpiry } from "../bridge/registrar.ts";
import { formatHttpDate, pushErrorXml } from "../dav/webdav_push.ts";

const TOKEN = "bridge-relay-token-0123456789abcdef";
const P256DH =
  "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH = "BTBZMqHH6r4Tts7J_aSIgg";
const DAY = 86_400_000;

function registerBody(resource: string, expires?: number) {
  return `<P:push-register xmlns:P="https://bitfire.at/webdav-push"><P:subscription><P:web-push-subscription><P:push-resource>${resource}</P:push-resource><P:subscription-public-key type="p256dh">${P256DH}</P:subscription-public-key><P:auth-secret>${AUTH}</P:auth-secret></P:web-push-subscription></P:subscription>${
    expires === undefined ? "" : `<P:expires>${formatHttpDate(expires)}</P:expires>`
  }</P:push-register>`;
}

/** A fake CalDAV server: answers by path, records what it got. */
function fakeUpstream() {
  const seen: { method: string; path: string; headers: Headers; body: string }[] = [];
  let handler = (_req: Request, _body: string): Response | undefined => undefined;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const body = await req.text();
    seen.push({ method: req.method, path: url.pathname + url.search, headers: req.headers, body });
    const custom = handler(req, body);
    if (custom) return custom;
    if (req.method === "PROPFIND") {
      return new Response(
        `<multistatus xmlns="DAV:"><response><href>${url.pathname}</href><propstat><prop><sync-token>urn:s:1</sync-token></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>`,
        { status: 207, headers: { "content-type": "application/xml; charset=utf-8" } },
      );
    }
    if (req.method === "REPORT") {
      return new Response(
        `<multistatus xmlns="DAV:"><sync-token>urn:s:1</sync-token></multistatus>`,
        {
          status: 207,
          headers: { "content-type": "application/xml" },
        },
      );
    }
    return new Response("ok", { status: 200 });
  });
  const origin = `http://127.0.0.1:${server.addr.port}`;
  return {
    origin,
    seen,
    on(f: typeof handler) {
      handler = f;
    },
    close: () => server.shutdown(),
  };
}

/** A fake relay: bootstrap, /registrations and /gateway, answers settable. */
function fakeRelay() {
  const calls: { path: string; method: string; body: unknown; auth: string | null }[] = [];
  let registration: () => Response = () =>
    Response.json({ "client-id": "cid-1", "client-data": "cdata-1" }, { status: 201 });
  let subscribe: (body: Record<string, unknown>) => Response = () =>
    Response.json({ "push-url": "x" });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    const text = await req.text();
    const body = text ? JSON.parse(text) : undefined;
    calls.push({ path, method: req.method, body, auth: req.headers.get("authorization") });
    if (path === "/registrations") return registration();
    if (path.startsWith("/registrations/")) return new Response(null, { status: 204 });
    if ("push-transports" in body) {
      return Response.json({
        "push-transports": [{
          transport: {
            "transport-uri": "http://relay/transports/web-push",
            "refresh-interval": 604800,
            "transport-data": { "vapid-public-key": "BKey" },
          },
        }],
      });
    }
    if ("push-subscribe" in body) return subscribe(body["push-subscribe"]);
    return Response.json({ "push-response": {} });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    calls,
    onRegistration(f: () => Response) {
      registration = f;
    },
    onSubscribe(f: (body: Record<string, unknown>) => Response) {
      subscribe = f;
    },
    close: () => server.shutdown(),
  };
}

async function setup() {
  const upstream = fakeUpstream();
  const relay = fakeRelay();
  const config = await loadBridgeConfig({
    BRIDGE_UPSTREAM: upstream.origin + "/",
    BRIDGE_COLLECTIONS:
      `${upstream.origin}/u/cal/,https://elsewhere.example/cal/,${upstream.origin}/u/cal2/`,
    BRIDGE_RELAY_URL: relay.url,
    BRIDGE_RELAY_TOKEN: TOKEN,
    BRIDGE_PUBLIC_URL: "https://bridge.example",
    BRIDGE_POLL_SECONDS: "60",
  });
  const kv = await Deno.openKv(":memory:");
  const pushStore = await openPushStore(kv);
  const logger = memoryLogger();
  const bridge = createBridge({ config, logger, pushStore, verifyDelayMs: 10, timeoutMs: 2000 });
  return {
    upstream,
    relay,
    config,
    kv,
    store: pushStore,
    logger,
    bridge,
    req: (path: string, init?: RequestInit) =>
      bridge.app.request(new Request(`https://bridge.example${path}`, init)),
    async [Symbol.asyncDispose]() {
      await bridge.stop();
      kv.close();
      await upstream.close();
      await relay.close();
    },
  };
}

Deno.test("the proxy passes method, path, query, body and the client's Authorization; drops hop-by-hop headers; sets Host to the upstream's; asks for identity", async () => {
  await using s = await setup();
  const res = await s.req("/u/other/x.ics?a=1", {
    method: "PUT",
    headers: {
      authorization: "Basic Y2xpZW50OnB3",
      "content-type": "text/calendar",
      connection: "keep-alive, x-secret-hop",
      "x-secret-hop": "1",
      "keep-alive": "timeout=5",
      "proxy-authorization": "Basic cHJveHk=",
      te: "trailers",
      "accept-encoding": "gzip",
      "x-custom": "kept",
    },
    body: "BEGIN:VCALENDAR",
  });
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "ok");
  const got = s.upstream.seen.at(-1)!;
  assert.deepEqual([got.method, got.path, got.body], [
    "PUT",
    "/u/other/x.ics?a=1",
    "BEGIN:VCALENDAR",
  ]);
  assert.equal(got.headers.get("authorization"), "Basic Y2xpZW50OnB3");
  assert.equal(got.headers.get("host"), new URL(s.upstream.origin).host);
  assert.equal(got.headers.get("x-custom"), "kept");
  assert.equal(got.headers.get("accept-encoding"), "identity");
  assert.equal(got.headers.get("content-length"), "15");
  for (const h of ["x-secret-hop", "keep-alive", "proxy-authorization", "te"]) {
    assert.equal(got.headers.get(h), null, h);
  }
});

Deno.test("the proxy never adds the bridge's polling credentials to a client's request", async () => {
  await using s = await setup();
  const res = await s.req("/u/cal/x.ics", { method: "GET" });
  await res.body?.cancel();
  assert.equal(s.upstream.seen.at(-1)!.headers.get("authorization"), null);
});

Deno.test("absolute upstream URLs in Location, Content-Location and D:href get the bridge's origin; WWW-Authenticate comes back; hop-by-hop answer headers go", async () => {
  await using s = await setup();
  s.upstream.on((req) => {
    if (req.method === "MKCOL") {
      return new Response(
        `<multistatus xmlns="DAV:"><response><href>${s.upstream.origin}/u/new/</href><status>HTTP/1.1 201 Created</status></response></multistatus>`,
        {
          status: 207,
          headers: {
            "content-type": "text/xml",
            location: `${s.upstream.origin}/u/new/`,
            "content-location": `${s.upstream.origin}/u/new/?v=1`,
            "www-authenticate": 'Basic realm="x"',
            "x-hop": "1",
            connection: "x-hop",
          },
        },
      );
    }
  });
  const res = await s.req("/u/new/", { method: "MKCOL" });
  assert.equal(res.status, 207);
  assert.equal(res.headers.get("location"), "https://bridge.example/u/new/");
  assert.equal(res.headers.get("content-location"), "https://bridge.example/u/new/?v=1");
  assert.equal(res.headers.get("www-authenticate"), 'Basic realm="x"');
  assert.equal(res.headers.get("x-hop"), null);
  assert.match(await res.text(), /<href>https:\/\/bridge\.example\/u\/new\/<\/href>/);
});

Deno.test("a compressed XML answer is decoded to be rewritten; Destination naming the bridge gets the upstream's origin", async () => {
  await using s = await setup();
  const xml =
    `<multistatus xmlns="DAV:"><response><href>ORIGIN/u/a</href><status>HTTP/1.1 201 Created</status></response></multistatus>`;
  s.upstream.on((req) => {
    if (req.method === "COPY") {
      return new Response(new Uint8Array(gzipSync(xml.replace("ORIGIN", s.upstream.origin))), {
        status: 207,
        headers: { "content-type": "application/xml", "content-encoding": "gzip" },
      });
    }
  });
  const res = await s.req("/u/a", {
    method: "COPY",
    headers: { destination: "https://bridge.example/u/b?x" },
  });
  assert.equal(res.headers.get("content-encoding"), null);
  assert.equal(await res.text(), xml.replace("ORIGIN", "https://bridge.example"));
  assert.equal(s.upstream.seen.at(-1)!.headers.get("destination"), `${s.upstream.origin}/u/b?x`);
});

Deno.test("the bridge's own paths never go upstream, and the upstream unreachable is 502", async () => {
  await using s = await setup();
  for (const path of ["/collections/9/", "/subscribe", "/push-subscriptions", "/healthz"]) {
    const res = await s.req(path, { method: "PROPPATCH" });
    assert.equal(res.status, 404, path);
    await res.body?.cancel();
  }
  assert.equal(s.upstream.seen.length, 0);
  assert.deepEqual(await (await s.req("/healthz")).json(), { status: "ok" });
  await s.upstream.close();
  const res = await s.req("/u/cal/", { method: "PROPFIND" });
  assert.equal(res.status, 502);
  await res.body?.cancel();
});

Deno.test("a push-register body is never passed upstream: a watched collection registers, any other path is 403 push-not-available; other POSTs pass", async () => {
  await using s = await setup();
  const body = registerBody("https://push.example/r1");
  const other = await s.req("/u/other/", {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body,
  });
  assert.equal(other.status, 403);
  assert.equal(await other.text(), pushErrorXml("push-not-available"));
  const ok = await s.req("/u/cal", {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body,
  });
  assert.equal(ok.status, 201);
  assert.match(
    ok.headers.get("location")!,
    /^https:\/\/bridge\.example\/push-subscriptions\/[\w-]{32}$/,
  );
  assert.ok(s.upstream.seen.every((r) => r.method !== "POST"));
  const ics = await s.req("/u/cal/", {
    method: "POST",
    headers: { "content-type": "text/calendar" },
    body: "BEGIN",
  });
  assert.equal(ics.status, 200);
  await ics.body?.cancel();
  assert.equal(s.upstream.seen.at(-1)!.body, "BEGIN");
});

Deno.test("§Subscription Registration: the relay's refusal of the endpoint is 403 invalid-subscription; its rate limit 503 with Retry-After; its outage 502; nothing is kept", async () => {
  await using s = await setup();
  const post = () =>
    s.req("/u/cal/", {
      method: "POST",
      headers: { "content-type": "application/xml" },
      body: registerBody("https://10.0.0.1/r"),
    });
  s.relay.onRegistration(() =>
    Response.json({ error: { code: "endpoint-not-allowed", message: "no" } }, { status: 400 })
  );
  const refused = await post();
  assert.equal(refused.status, 403);
  assert.equal(await refused.text(), pushErrorXml("invalid-subscription"));
  s.relay.onRegistration(() =>
    Response.json({ error: { code: "rate-limited" } }, {
      status: 429,
      headers: { "retry-after": "30" },
    })
  );
  const limited = await post();
  assert.equal(limited.status, 503);
  assert.equal(limited.headers.get("retry-after"), "30");
  await limited.body?.cancel();
  s.relay.onRegistration(() => new Response("down", { status: 500 }));
  const down = await post();
  assert.equal(down.status, 502);
  await down.body?.cancel();
  assert.deepEqual(await s.store.ofCollection(s.config.collections[0]!.topic), []);
  // It registers as webdav-push, and never with the bridge's token.
  const reg = s.relay.calls.find((c) => c.path === "/registrations")!;
  assert.deepEqual(reg.body, {
    transport: "web-push",
    subscription: { endpoint: "https://10.0.0.1/r", keys: { p256dh: P256DH, auth: AUTH } },
    payload: "webdav-push",
  });
  assert.equal(reg.auth, null);
});

Deno.test("the granted expiry: as requested but at least 3 days and at most the refresh interval; 7 days when none is asked", () => {
  const now = Date.UTC(2026, 0, 1);
  const ri = 604800;
  assert.equal(grantedExpiry(now, now + 3 * DAY, ri), now + 3 * DAY);
  assert.equal(grantedExpiry(now, now + 5 * DAY + 1500, ri), now + 5 * DAY + 1000);
  assert.equal(grantedExpiry(now, now + DAY, ri), now + 3 * DAY);
  assert.equal(grantedExpiry(now, now - DAY, ri), now + 3 * DAY);
  assert.equal(grantedExpiry(now, now + 30 * DAY, ri), now + 7 * DAY);
  assert.equal(grantedExpiry(now, undefined, ri), now + 7 * DAY);
  // A relay with a shorter refresh interval: never beyond it.
  assert.equal(grantedExpiry(now, now + 3 * DAY, 172800), now + 2 * DAY);
  assert.equal(grantedExpiry(now, undefined, 172800), now + 2 * DAY);
  assert.equal(grantedExpiry(now, undefined, 30 * 86400), now + 7 * DAY);
});

Deno.test("the relay subscription carries the granted expiry; Push-Dont-Notify values naming no registration are ignored", async () => {
  await using s = await setup();
  const before = Date.now();
  const res = await s.req("/u/cal/", {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body: registerBody("https://push.example/r2", before + 60 * DAY),
  });
  assert.equal(res.status, 201);
  const loc = res.headers.get("location")!;
  const expires = Date.parse(res.headers.get("expires")!);
  assert.ok(
    expires >= Math.floor((before + 7 * DAY) / 1000) * 1000 && expires <= Date.now() + 7 * DAY,
  );
  const sub = s.relay.calls.find((c) => (c.body as Record<string, unknown>)?.["push-subscribe"])!;
  assert.equal(
    Date.parse((sub.body as { "push-subscribe": { expires: string } })["push-subscribe"].expires),
    expires,
  );
  const put = await s.req("/u/cal/x.ics", {
    method: "PUT",
    headers: {
      "push-dont-notify":
        `"https://bridge.example/push-subscriptions/nope", "${loc}x", https://other/`,
    },
    body: "x",
  });
  assert.equal(put.status, 200);
  await put.body?.cancel();
  await s.bridge.stop();
  const pushes = s.relay.calls.filter((c) => (c.body as Record<string, unknown>)?.push);
  assert.equal(pushes.length, 1);
  const [message] =
    (pushes[0]!.body as { push: { messages: Record<string, unknown>[] } }).push.messages;
  assert.equal(message!["client-id"], undefined);
  assert.equal(message!["sync-token"], "urn:s:1");
  // Named exactly, the registration's relay client is spared.
  const own = await s.req("/u/cal/y.ics", {
    method: "PUT",
    headers: { "push-dont-notify": `"${loc}"` },
    body: "y",
  });
  await own.body?.cancel();
  await s.bridge.stop();
  const last = s.relay.calls.filter((c) => (c.body as Record<string, unknown>)?.push).at(-1)!;
  assert.equal(
    (last.body as { push: { messages: Record<string, unknown>[] } }).push.messages[0]!["client-id"],
    "cid-1",
  );
});

Deno.test("a registration the relay pruned (403 invalid-client-data on refresh) is removed after the next push, and DELETE says 404", async () => {
  await using s = await setup();
  const res = await s.req("/u/cal/", {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body: registerBody("https://push.example/r3"),
  });
  const loc = res.headers.get("location")!;
  const id = loc.split("/").pop()!;
  s.relay.onSubscribe(() =>
    Response.json({ error: { code: "invalid-client-data" } }, { status: 403 })
  );
  const put = await s.req("/u/cal/z.ics", { method: "PUT", body: "z" });
  await put.body?.cancel();
  const deadline = Date.now() + 3000;
  while ((await s.store.byId(id)) !== null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(await s.store.byId(id), null);
  const del = await s.req(`/push-subscriptions/${id}`, { method: "DELETE" });
  assert.equal(del.status, 404);
  await del.body?.cancel();
});

Deno.test("the bridge's KV keeps no registration id, push resource or client-data in the clear", async () => {
  await using s = await setup();
  const res = await s.req("/u/cal/", {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body: registerBody("https://push.example/secret-endpoint"),
  });
  const id = res.headers.get("location")!.split("/").pop()!;
  let dump = "";
  for await (const e of s.kv.list({ prefix: [] })) dump += JSON.stringify([e.key, e.value]);
  for (const secret of [id, "secret-endpoint", "cdata-1", P256DH, AUTH]) {
    assert.ok(!dump.includes(secret), secret);
  }
  assert.ok(dump.includes("cid-1"));
});

Deno.test("BRIDGE_UPSTREAM, BRIDGE_KV_PATH and BRIDGE_SECRET: collections under the upstream are watched at their own paths; a bad secret is refused without showing it", async () => {
  const config = await loadBridgeConfig({
    BRIDGE_UPSTREAM: "http://127.0.0.1:5232/",
    BRIDGE_COLLECTIONS: "http://a:b@127.0.0.1:5232/alice/cal/,http://127.0.0.1:5233/x/",
    BRIDGE_RELAY_TOKEN: TOKEN,
    BRIDGE_KV_PATH: "/tmp/bridge.kv",
    BRIDGE_SECRET: "A".repeat(43),
  });
  assert.equal(config.upstream, "http://127.0.0.1:5232");
  assert.equal(config.collections[0]!.proxyPath, "/alice/cal/");
  assert.equal(config.collections[1]!.proxyPath, undefined);
  assert.equal(config.kvPath, "/tmp/bridge.kv");
  assert.equal(config.secret, "A".repeat(43));
  await assert.rejects(
    loadBridgeConfig({
      BRIDGE_COLLECTIONS: "https://d/c/",
      BRIDGE_RELAY_TOKEN: TOKEN,
      BRIDGE_SECRET: "short-secret",
    }),
    (e: Error) => e.message === "BRIDGE_SECRET must be base64url of 32 bytes or more",
  );
  await assert.rejects(
    loadBridgeConfig({
      BRIDGE_COLLECTIONS: "https://d/c/",
      BRIDGE_RELAY_TOKEN: TOKEN,
      BRIDGE_UPSTREAM: "ftp://x",
    }),
    /BRIDGE_UPSTREAM must be http: or https:/,
  );
  // Without BRIDGE_UPSTREAM, nothing of this: the §6 bridge as before.
  const plain = await loadBridgeConfig({
    BRIDGE_COLLECTIONS: "https://d/c/",
    BRIDGE_RELAY_TOKEN: TOKEN,
  });
  assert.equal(plain.upstream, undefined);
  assert.equal(plain.collections[0]!.proxyPath, undefined);
});

Deno.test("a secret generated on first start is kept in KV and used again", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const a = await openPushStore(kv);
    const b = await openPushStore(kv);
    const save = {
      id: "i".repeat(32),
      pushResource: "https://p/x",
      topic: "t",
      relayClientId: "c",
      clientData: "d",
      transportUri: "u",
      expires: Date.now() + DAY,
      now: Date.now(),
    };
    assert.equal(await a.save(save), true);
    assert.equal((await b.byId(save.id))!.clientData, "d");
  } finally {
    kv.close();
  }
});

Deno.test("one push resource on two collections shares its relay registration: DELETE of one unsubscribes its topic only, DELETE of the last removes the relay registration", async () => {
  await using s = await setup();
  const [cal, , cal2] = s.config.collections as [
    { topic: string },
    unknown,
    { topic: string },
  ];
  const locs: string[] = [];
  for (const path of ["/u/cal/", "/u/cal2/"]) {
    const res = await s.req(path, {
      method: "POST",
      headers: { "content-type": "application/xml" },
      body: registerBody("https://push.example/shared"),
    });
    assert.equal(res.status, 201);
    locs.push(res.headers.get("location")!);
  }
  assert.notEqual(locs[0], locs[1]);
  const subscribes = () =>
    s.relay.calls.flatMap((c) => {
      const b = (c.body as { "push-subscribe"?: { topics: string[]; expires: string } })
        ?.["push-subscribe"];
      return b ? [b] : [];
    });
  const deletes = () => s.relay.calls.filter((c) => c.method === "DELETE");
  const first = await s.req(new URL(locs[0]!).pathname, { method: "DELETE" });
  assert.equal(first.status, 204);
  const last = subscribes().at(-1)!;
  assert.deepEqual(last.topics, [cal.topic]);
  assert.ok(Date.parse(last.expires) < Date.now());
  assert.equal(deletes().length, 0);
  const second = await s.req(new URL(locs[1]!).pathname, { method: "DELETE" });
  assert.equal(second.status, 204);
  assert.deepEqual(subscribes().at(-1)!.topics, [cal2.topic]);
  assert.deepEqual(deletes().map((c) => [c.path, c.auth]), [[
    "/registrations/cid-1",
    "Bearer cdata-1",
  ]]);
});
