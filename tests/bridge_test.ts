import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createBridge } from "../bridge/app.ts";
import { collectionTopic, loadBridgeConfig } from "../bridge/config.ts";
import { memoryLogger } from "../bridge/log.ts";
import { parseDiscovery, PUSH } from "../dav/dav_push.ts";
import { childElement, childElements, parseXml } from "../dav/xml.ts";

// ---------------------------------------------------------------------------------------------
// A fake CalDAV collection at /cal/ (sync-token, getctag and ETag listing can be switched off)

interface FakeUpstreamOptions {
  syncToken?: boolean;
  ctag?: boolean;
}

function startUpstream(options: FakeUpstreamOptions = {}) {
  const items = new Map<string, { body: string; etag: string }>();
  const log: { version: number; path: string }[] = [];
  let version = 0;
  let down = false;
  let forgetTokens = false;
  const requests: { method: string; url: string; headers: Headers; body: string }[] = [];

  const change = (path: string) => log.push({ version: ++version, path });
  const xml = (s: string, status = 207) =>
    new Response(`<?xml version="1.0"?>${s}`, {
      status,
      headers: { "content-type": "text/xml; charset=utf-8" },
    });

  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const body = await req.text();
    requests.push({ method: req.method, url: url.pathname, headers: req.headers, body });
    if (down) return new Response("down", { status: 503 });
    if (url.pathname === "/cal/" && req.method === "PROPFIND") {
      if (req.headers.get("depth") === "0") {
        return xml(
          `<multistatus xmlns="DAV:" xmlns:CS="http://calendarserver.org/ns/"><response>` +
            `<href>/cal/</href><propstat><prop>` +
            (options.syncToken === false ? "" : `<sync-token>urn:sync:${version}</sync-token>`) +
            (options.ctag === false ? "" : `<CS:getctag>"c${version}"</CS:getctag>`) +
            `</prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>`,
        );
      }
      const members = [...items].map(([name, it]) =>
        `<response><href>/cal/${name}</href><propstat><prop><getetag>${it.etag}</getetag>` +
        `<resourcetype/></prop><status>HTTP/1.1 200 OK</status></propstat></response>`
      ).join("");
      return xml(
        `<multistatus xmlns="DAV:"><response><href>/cal/</href><propstat><prop><resourcetype>` +
          `<collection/></resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat>` +
          `</response>${members}</multistatus>`,
      );
    }
    if (url.pathname === "/cal/" && req.method === "REPORT") {
      if (options.syncToken === false) return new Response("", { status: 501 });
      const from = /urn:sync:(\d+)/.exec(body)?.[1];
      if (from === undefined || forgetTokens) {
        return xml(`<error xmlns="DAV:"><valid-sync-token/></error>`, 403);
      }
      const paths = new Set(log.filter((l) => l.version > Number(from)).map((l) => l.path));
      const responses = [...paths].map((name) => {
        const it = items.get(name);
        return it
          ? `<response><href>/cal/${name}</href><propstat><prop><getetag>${it.etag}</getetag>` +
            `</prop><status>HTTP/1.1 200 OK</status></propstat></response>`
          : `<response><href>/cal/${name}</href><status>HTTP/1.1 404 Not Found</status></response>`;
      }).join("");
      return xml(
        `<multistatus xmlns="DAV:">${responses}<sync-token>urn:sync:${version}</sync-token>` +
          `</multistatus>`,
      );
    }
    const m = /^\/cal\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === "PUT") {
      const name = m[1]!;
      const ifMatch = req.headers.get("if-match");
      if (ifMatch && items.get(name)?.etag !== ifMatch) {
        return new Response("", { status: 412 });
      }
      const etag = `"e${version + 1}"`;
      const existed = items.has(name);
      items.set(name, { body, etag });
      change(name);
      return new Response(null, { status: existed ? 204 : 201, headers: { etag } });
    }
    if (m && req.method === "DELETE") {
      if (!items.delete(m[1]!)) return new Response("", { status: 404 });
      change(m[1]!);
      return new Response(null, { status: 204 });
    }
    return new Response("no", { status: 405 });
  });
  const origin = `http://127.0.0.1:${server.addr.port}`;
  return {
    origin,
    requests,
    items,
    /** A write by someone else, straight to the upstream. */
    put(name: string, body = "BEGIN:VCALENDAR") {
      const etag = `"e${version + 1}"`;
      items.set(name, { body, etag });
      change(name);
    },
    setDown(v: boolean) {
      down = v;
    },
    forgetTokens() {
      forgetTokens = true;
    },
    close: () => server.shutdown(),
  };
}

// ---------------------------------------------------------------------------------------------
// A fake relay

function startRelay() {
  const seen: { authorization: string | null; body: Record<string, unknown> }[] = [];
  let subscribeAnswer: () => Response = () => Response.json({ "push-url": "x" });
  let pushAnswer: () => Response = () => Response.json({ "push-response": {} });
  let bootstrapAnswer: () => Response = () =>
    Response.json({
      "push-transports": [{
        transport: {
          "transport-uri": "http://relay/transports/web-push",
          "refresh-interval": 172800,
          "transport-data": { "vapid-public-key": "BKey" },
        },
      }],
    });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.json();
    seen.push({ authorization: req.headers.get("authorization"), body });
    if ("push-transports" in body) return bootstrapAnswer();
    if ("push-subscribe" in body) return subscribeAnswer();
    return pushAnswer();
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    seen,
    pushes: () =>
      seen.filter((s) => "push" in s.body).map((s) =>
        (s.body.push as { messages: Record<string, unknown>[] }).messages
      ),
    subscribes: () => seen.filter((s) => "push-subscribe" in s.body),
    onSubscribe(f: () => Response) {
      subscribeAnswer = f;
    },
    onPush(f: () => Response) {
      pushAnswer = f;
    },
    onBootstrap(f: () => Response) {
      bootstrapAnswer = f;
    },
    close: () => server.shutdown(),
  };
}

const TOKEN = "bridge-relay-token-0123456789abcdef";

async function setup(upstreamOptions: FakeUpstreamOptions = {}) {
  const upstream = startUpstream(upstreamOptions);
  const relay = startRelay();
  const [scheme, rest] = upstream.origin.split("://");
  const config = await loadBridgeConfig({
    BRIDGE_COLLECTIONS: `${scheme}://poller:p%40ss-w0rd@${rest}/cal/`,
    BRIDGE_RELAY_URL: relay.url,
    BRIDGE_RELAY_TOKEN: TOKEN,
    BRIDGE_PUBLIC_URL: "https://bridge.example/",
    BRIDGE_POLL_SECONDS: "0.05",
  });
  const logger = memoryLogger();
  const bridge = createBridge({ config, logger, timeoutMs: 2000 });
  const topic = config.collections[0]!.topic;
  return {
    upstream,
    relay,
    config,
    logger,
    bridge,
    topic,
    req: (path: string, init?: RequestInit) =>
      bridge.app.request(new Request(`http://bridge${path}`, init)),
    async [Symbol.asyncDispose]() {
      await bridge.stop();
      await upstream.close();
      await relay.close();
      // README, "The CalDAV bridge": polling credentials are never logged.
      const logged = JSON.stringify(logger.lines);
      assert.doesNotMatch(logged, /p%40ss|p@ss|poller|cG9sbGVy/);
      assert.doesNotMatch(logged, new RegExp(TOKEN));
    },
  };
}

/** RFC 3339 at whole seconds, `offsetMs` from the real clock the bridge runs on. */
function rfc3339(offsetMs: number): string {
  return new Date(Date.now() + offsetMs).toISOString().replace(/\.\d+Z$/, "Z");
}
const IN_A_DAY = rfc3339(86400_000);

function subscribeBody(topics: string[], expires = IN_A_DAY, prefix = "P") {
  return `<${prefix}:subscribe xmlns:${prefix}="urn:ietf:params:xml:ns:dav-push">` +
    topics.map((t) => `<${prefix}:topic>${t}</${prefix}:topic>`).join("") +
    `<${prefix}:selected-transport><${prefix}:transport-uri>http://relay/transports/web-push` +
    `</${prefix}:transport-uri><${prefix}:client-data>cd</${prefix}:client-data>` +
    `</${prefix}:selected-transport><${prefix}:expires>${expires}</${prefix}:expires>` +
    `</${prefix}:subscribe>`;
}

// ---------------------------------------------------------------------------------------------
// Configuration

Deno.test("a collection's topic is base64url(HMAC-SHA-256(relay token, URL without credentials)) cut to 22", async () => {
  const config = await loadBridgeConfig({
    BRIDGE_COLLECTIONS: "https://alice:secret@dav.example/cal/work, https://dav.example/cal/home/",
    BRIDGE_RELAY_TOKEN: TOKEN,
  });
  const expected = createHmac("sha256", TOKEN).update("https://dav.example/cal/work/")
    .digest("base64url").slice(0, 22);
  assert.equal(config.collections[0]!.topic, expected);
  assert.equal(config.collections[0]!.url, "https://dav.example/cal/work/");
  assert.equal(config.collections[0]!.pollAuthorization, `Basic ${btoa("alice:secret")}`);
  assert.equal(config.collections[1]!.pollAuthorization, undefined);
  // Stable across restarts, and independent of the credentials.
  assert.equal(await collectionTopic(TOKEN, "https://dav.example/cal/work/"), expected);
  assert.equal(config.port, 8001);
  assert.equal(config.publicUrl, "http://localhost:8001");
  assert.equal(config.pollSeconds, 30);
  assert.equal(config.relayUrl, "http://localhost:8000");
});

Deno.test("bridge config errors name the variable, never the credentials or the token", async () => {
  await assert.rejects(
    loadBridgeConfig({ BRIDGE_RELAY_TOKEN: TOKEN }),
    /BRIDGE_COLLECTIONS is required/,
  );
  await assert.rejects(
    loadBridgeConfig({ BRIDGE_COLLECTIONS: "https://d/c/" }),
    /BRIDGE_RELAY_TOKEN is required/,
  );
  await assert.rejects(
    loadBridgeConfig({ BRIDGE_COLLECTIONS: "not a url:secret@", BRIDGE_RELAY_TOKEN: TOKEN }),
    (err: Error) => !err.message.includes("secret") && /entry 0 is not a URL/.test(err.message),
  );
  await assert.rejects(
    loadBridgeConfig({
      BRIDGE_COLLECTIONS: "https://d/c/",
      BRIDGE_RELAY_TOKEN: TOKEN,
      BRIDGE_POLL_SECONDS: "-1",
    }),
    /BRIDGE_POLL_SECONDS must be a positive number, got "-1"/,
  );
  await assert.rejects(
    loadBridgeConfig({
      BRIDGE_COLLECTIONS: "https://d/c/",
      BRIDGE_RELAY_TOKEN: TOKEN,
      BRIDGE_PORT: "80a",
    }),
    /BRIDGE_PORT must be an integer from 0 to 65535, got "80a"/,
  );
  await assert.rejects(
    loadBridgeConfig({ BRIDGE_COLLECTIONS: "ftp://u:pw@d/c/", BRIDGE_RELAY_TOKEN: TOKEN }),
    (err: Error) => !err.message.includes("pw") && /must be http: or https:/.test(err.message),
  );
});

// ---------------------------------------------------------------------------------------------
// GET /collections, PROPFIND

Deno.test("GET /collections lists paths and upstream URLs without credentials", async () => {
  await using t = await setup();
  const res = await t.req("/collections");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), [{
    path: "/collections/0/",
    upstream: `${t.upstream.origin}/cal/`,
  }]);
});

Deno.test("§6.2.1 PROPFIND Depth 0 gives 207 with subscribe-URL, relay transports, topic and version", async () => {
  await using t = await setup();
  const res = await t.req("/collections/0/", {
    method: "PROPFIND",
    headers: { depth: "0", "content-type": "application/xml" },
    body: `<propfind xmlns="DAV:" xmlns:P="urn:ietf:params:xml:ns:dav-push"><prop>` +
      `<P:subscribe-URL/><P:supported-transport-set/><P:topic/><P:version/><displayname/>` +
      `</prop></propfind>`,
  });
  assert.equal(res.status, 207);
  assert.match(res.headers.get("content-type")!, /application\/xml/);
  const xml = await res.text();
  assert.deepEqual(parseDiscovery(xml), {
    subscribeUrl: "https://bridge.example/subscribe",
    transports: [{
      transportUri: "http://relay/transports/web-push",
      refreshInterval: 172800,
      transportData: { "vapid-public-key": "BKey" },
    }],
    topic: t.topic,
    version: "1",
  });
  // Unknown properties come back in a 404 propstat.
  const response = childElement(parseXml(xml), "{DAV:}response")!;
  const notFound = childElements(response, "{DAV:}propstat").find((ps) =>
    childElement(ps, "{DAV:}status")!.text.includes("404")
  )!;
  assert.deepEqual(childElement(notFound, "{DAV:}prop")!.children.map((c) => c.name), [
    "{DAV:}displayname",
  ]);
  assert.equal(childElement(response, "{DAV:}href")!.text, "/collections/0/");
});

Deno.test("PROPFIND with an empty body (allprop) answers the DAV-Push properties; unknown collection is 404", async () => {
  await using t = await setup();
  const res = await t.req("/collections/0", { method: "PROPFIND", headers: { depth: "0" } });
  assert.equal(res.status, 207);
  assert.equal(parseDiscovery(await res.text()).topic, t.topic);
  assert.equal((await t.req("/collections/7/", { method: "PROPFIND" })).status, 404);
});

Deno.test("PROPFIND while the relay is unreachable: supported-transport-set in a 503 propstat, no crash", async () => {
  await using t = await setup();
  t.relay.onBootstrap(() => new Response("down", { status: 500 }));
  const res = await t.req("/collections/0/", { method: "PROPFIND" });
  assert.equal(res.status, 207);
  const xml = await res.text();
  assert.match(xml, /<P:supported-transport-set\/><\/D:prop><D:status>HTTP\/1.1 503/);
  assert.equal(parseDiscovery(xml).topic, t.topic);
});

Deno.test("a malformed or hostile PROPFIND body is 400, never a crash", async () => {
  await using t = await setup();
  for (const body of ["<propfind", "<!DOCTYPE x><x/>", "<D:propfind/>", '<a:b xmlns:a="DAV:"/>']) {
    const res = await t.req("/collections/0/", { method: "PROPFIND", body });
    assert.equal(res.status, 400, body);
  }
});

// ---------------------------------------------------------------------------------------------
// POST /subscribe

Deno.test("§5.3 POST /subscribe forwards to the relay with the bridge token and answers 200 empty", async () => {
  await using t = await setup();
  for (const prefix of ["P", "dp"]) {
    const res = await t.req("/subscribe", {
      method: "POST",
      headers: { "content-type": "application/xml" },
      body: subscribeBody([t.topic], IN_A_DAY, prefix),
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "");
  }
  const [first] = t.relay.subscribes();
  assert.equal(first!.authorization, `Bearer ${TOKEN}`);
  assert.deepEqual(first!.body, {
    "push-subscribe": {
      topics: [t.topic],
      "selected-transport": {
        "transport-uri": "http://relay/transports/web-push",
        "client-data": "cd",
      },
      expires: IN_A_DAY,
    },
  });
});

Deno.test("§5.2.3.2 a topic not of this bridge gives 403 invalid-topics and nothing is forwarded", async () => {
  await using t = await setup();
  const res = await t.req("/subscribe", {
    method: "POST",
    body: subscribeBody([t.topic, "someone-elses-topic"]),
  });
  assert.equal(res.status, 403);
  const root = parseXml(await res.text());
  assert.equal(root.name, "{DAV:}error");
  assert.deepEqual(
    childElement(root, PUSH.invalidTopics)!.children.map((c) => c.text),
    ["someone-elses-topic"],
  );
  assert.equal(t.relay.subscribes().length, 0);
});

Deno.test("POST /subscribe: malformed XML, unbound prefix, DOCTYPE or a missing element is 400", async () => {
  await using t = await setup();
  const good = subscribeBody([t.topic]);
  for (
    const body of [
      good.slice(0, -3),
      good.replace(' xmlns:P="urn:ietf:params:xml:ns:dav-push"', ""),
      `<!DOCTYPE P:subscribe [<!ENTITY x "y">]>${good}`,
      good.replace(/<P:expires>.*<\/P:expires>/, ""),
      "",
    ]
  ) {
    const res = await t.req("/subscribe", { method: "POST", body });
    assert.equal(res.status, 400, body);
  }
  assert.equal(t.relay.subscribes().length, 0);
});

Deno.test("POST /subscribe over 64 KiB is 413", async () => {
  await using t = await setup();
  const res = await t.req("/subscribe", {
    method: "POST",
    body: subscribeBody([t.topic]).replace(
      "</P:subscribe>",
      " ".repeat(65 * 1024) + "</P:subscribe>",
    ),
  });
  assert.equal(res.status, 413);
  // Also without a Content-Length (a stream).
  const stream = new Blob(["<x>", "a".repeat(70 * 1024), "</x>"]).stream();
  const res2 = await t.req("/subscribe", { method: "POST", body: stream });
  assert.equal(res2.status, 413);
});

Deno.test("§5.2.2 a past expires is forwarded to the relay as the unsubscribe it is", async () => {
  await using t = await setup();
  const yesterday = rfc3339(-86400_000);
  const res = await t.req("/subscribe", {
    method: "POST",
    body: subscribeBody([t.topic], yesterday),
  });
  assert.equal(res.status, 200);
  const forwarded = t.relay.subscribes()[0]!.body["push-subscribe"] as { expires: string };
  assert.equal(forwarded.expires, yesterday);
});

Deno.test("the relay's 400 and 403 refusals of the client's data are passed on with their status", async () => {
  await using t = await setup();
  for (const status of [400, 403]) {
    const error = { error: { code: status === 403 ? "invalid-client-data" : "x", message: "No" } };
    t.relay.onSubscribe(() => Response.json(error, { status }));
    const res = await t.req("/subscribe", { method: "POST", body: subscribeBody([t.topic]) });
    assert.equal(res.status, status);
    assert.deepEqual(await res.json(), error);
  }
});

Deno.test("relay 401, 5xx or unreachable is 502 for the client", async () => {
  await using t = await setup();
  for (const status of [401, 500, 503]) {
    t.relay.onSubscribe(() => new Response("", { status }));
    const res = await t.req("/subscribe", { method: "POST", body: subscribeBody([t.topic]) });
    assert.equal(res.status, 502, String(status));
    await res.body?.cancel();
  }
  await t.relay.close();
  const res = await t.req("/subscribe", { method: "POST", body: subscribeBody([t.topic]) });
  assert.equal(res.status, 502);
  await res.body?.cancel();
});

// ---------------------------------------------------------------------------------------------
// Writes and polling

const ICS = "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n";

Deno.test("PUT passes the client's body, headers and own Authorization upstream, never the polling credentials", async () => {
  await using t = await setup();
  const res = await t.req("/collections/0/ev%201.ics", {
    method: "PUT",
    headers: {
      "content-type": "text/calendar; charset=utf-8",
      "if-none-match": "*",
      authorization: "Basic Y2xpZW50OnB3",
      "x-other": "dropped",
    },
    body: ICS,
  });
  assert.equal(res.status, 201);
  assert.equal(res.headers.get("etag"), '"e1"');
  const put = t.upstream.requests.find((r) => r.method === "PUT")!;
  assert.equal(put.url, "/cal/ev%201.ics");
  assert.equal(put.body, ICS);
  assert.equal(put.headers.get("content-type"), "text/calendar; charset=utf-8");
  assert.equal(put.headers.get("if-none-match"), "*");
  assert.equal(put.headers.get("authorization"), "Basic Y2xpZW50OnB3");
  assert.equal(put.headers.get("x-other"), null);

  // Without the client's own Authorization, the bridge adds none.
  await t.req("/collections/0/b.ics", { method: "PUT", body: ICS });
  const second = t.upstream.requests.filter((r) => r.method === "PUT")[1]!;
  assert.equal(second.headers.get("authorization"), null);
});

Deno.test("§7.1 a write through the bridge pushes the topic at once with the Push-Client-Id as client-id", async () => {
  await using t = await setup();
  await t.bridge.pollOnce(); // baseline
  const res = await t.req("/collections/0/a.ics", {
    method: "PUT",
    headers: { "push-client-id": "c-5e0a17" },
    body: ICS,
  });
  assert.equal(res.status, 201);
  assert.equal(t.relay.pushes().length, 1);
  const [message] = t.relay.pushes()[0]!;
  assert.equal(message!.topic, t.topic);
  assert.equal(message!["client-id"], "c-5e0a17");
  assert.match(String(message!.timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

  // The next poll does not push that write again.
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
});

Deno.test("a change by someone else in the same window is still pushed, without client-id", async () => {
  for (const mode of [{}, { syncToken: false }, { syncToken: false, ctag: false }]) {
    await using t = await setup(mode);
    await t.bridge.pollOnce();
    await t.req("/collections/0/a.ics", {
      method: "PUT",
      headers: { "push-client-id": "me" },
      body: ICS,
    });
    t.upstream.put("other.ics");
    await t.bridge.pollOnce();
    const pushes = t.relay.pushes();
    assert.equal(pushes.length, 2, JSON.stringify(mode));
    assert.equal(pushes[1]![0]!["client-id"], undefined);
    // And then quiet again.
    await t.bridge.pollOnce();
    assert.equal(t.relay.pushes().length, 2);
  }
});

Deno.test("someone else changing the very item the bridge wrote is pushed without client-id", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  await t.req("/collections/0/a.ics", {
    method: "PUT",
    headers: { "push-client-id": "me" },
    body: ICS,
  });
  t.upstream.put("a.ics", "changed by another client");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 2);
  assert.equal(t.relay.pushes()[1]![0]!["client-id"], undefined);
});

Deno.test("DELETE is passed upstream, pushed with client-id, and not pushed again by the next poll", async () => {
  await using t = await setup({ syncToken: false });
  t.upstream.put("a.ics");
  await t.bridge.pollOnce();
  const res = await t.req("/collections/0/a.ics", {
    method: "DELETE",
    headers: { "push-client-id": "me", "if-match": '"e1"' },
  });
  assert.equal(res.status, 204);
  assert.equal(t.upstream.requests.at(-1)!.headers.get("if-match"), '"e1"');
  assert.equal(t.relay.pushes().length, 1);
  assert.equal(t.relay.pushes()[0]![0]!["client-id"], "me");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
});

Deno.test("a write the upstream refuses is passed back and pushes nothing", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  const res = await t.req("/collections/0/a.ics", {
    method: "PUT",
    headers: { "if-match": '"nope"' },
    body: ICS,
  });
  assert.equal(res.status, 412);
  await res.body?.cancel();
  assert.equal(t.relay.pushes().length, 0);
});

Deno.test("write paths: unknown collection 404, a dot segment or encoded slash 400", async () => {
  await using t = await setup();
  assert.equal((await t.req("/collections/9/a.ics", { method: "PUT", body: "x" })).status, 404);
  for (const name of ["a%2Fb", "%5C"]) {
    const res = await t.req(`/collections/0/${name}`, { method: "PUT", body: "x" });
    assert.equal(res.status, 400, name);
  }
  // URL parsing resolves an encoded ".." before routing: it never names a member.
  for (const name of ["%2E%2E", "%2E"]) {
    const res = await t.req(`/collections/0/${name}`, { method: "PUT", body: "x" });
    assert.equal(res.status, 404, name);
  }
  assert.equal(t.upstream.requests.filter((r) => r.method === "PUT").length, 0);
});

Deno.test("polling: the first poll takes a baseline; a change someone else makes is pushed once", async () => {
  await using t = await setup();
  t.upstream.put("before.ics");
  await t.bridge.pollOnce();
  assert.equal(t.bridge.watchers[0]!.mode, "sync-token");
  assert.equal(t.relay.pushes().length, 0);
  t.upstream.put("x.ics");
  await t.bridge.pollOnce();
  assert.deepEqual(t.relay.pushes().map((p) => p.map((m) => m.topic)), [[t.topic]]);
  // Polling uses the credentials from BRIDGE_COLLECTIONS.
  const report = t.upstream.requests.find((r) => r.method === "REPORT")!;
  assert.equal(report.headers.get("authorization"), `Basic ${btoa("poller:p@ss-w0rd")}`);
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
});

Deno.test("polling falls back to getctag when the server has no sync-token", async () => {
  await using t = await setup({ syncToken: false });
  await t.bridge.pollOnce();
  assert.equal(t.bridge.watchers[0]!.mode, "ctag");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 0);
  t.upstream.put("x.ics");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
});

Deno.test("RFC 6578 §3.2: an invalid sync token leads to a new baseline and one push", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  t.upstream.forgetTokens();
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
});

Deno.test("the bridge survives the CalDAV server being down: logs once, retries, recovers", async () => {
  await using t = await setup();
  t.upstream.setDown(true);
  await t.bridge.pollOnce();
  await t.bridge.pollOnce();
  const failures = t.logger.lines.filter((l) => l.event === "poll-failed");
  assert.deepEqual(failures.map((l) => l.level), ["warn", "debug"]);
  assert.equal(failures[0]!.fields.upstream, `${t.upstream.origin}/cal/`);
  t.upstream.setDown(false);
  await t.bridge.pollOnce();
  assert.ok(t.logger.lines.some((l) => l.event === "upstream-recovered"));
  t.upstream.put("x.ics");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
  // Unreachable altogether (connection refused) is survived too.
  await t.upstream.close();
  await t.bridge.pollOnce();
  const res = await t.req("/collections/0/a.ics", { method: "PUT", body: ICS });
  assert.equal(res.status, 502);
  await res.body?.cancel();
});

Deno.test("§5.4 a push the relay did not take is retried with the next poll", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  t.relay.onPush(() => new Response("", { status: 503 }));
  t.upstream.put("x.ics");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
  t.relay.onPush(() => Response.json({ "push-response": {} }));
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 2);
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 2);
});

Deno.test("a failed push of a bridge write is retried with its client-id; merged with another change, without", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  t.relay.onPush(() => new Response("", { status: 503 }));
  await t.req("/collections/0/a.ics", {
    method: "PUT",
    headers: { "push-client-id": "me" },
    body: ICS,
  });
  t.relay.onPush(() => Response.json({ "push-response": {} }));
  await t.bridge.pollOnce();
  assert.deepEqual(t.relay.pushes().map((p) => p[0]!["client-id"]), ["me", "me"]);

  t.relay.onPush(() => new Response("", { status: 503 }));
  await t.req("/collections/0/b.ics", {
    method: "PUT",
    headers: { "push-client-id": "me" },
    body: ICS,
  });
  t.relay.onPush(() => Response.json({ "push-response": {} }));
  t.upstream.put("other.ics");
  await t.bridge.pollOnce();
  // §6.1.3: a message that merges changes of different clients has no client-id.
  assert.deepEqual(t.relay.pushes().map((p) => p[0]!["client-id"]), ["me", "me", "me", undefined]);
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 4);
});

Deno.test("§6.1.3 after no-subscribers the topic is not pushed until a client subscribes", async () => {
  await using t = await setup();
  await t.bridge.pollOnce();
  t.relay.onPush(() =>
    Response.json({ "push-response": { "no-subscribers": [{ topic: t.topic }] } })
  );
  t.upstream.put("x.ics");
  await t.bridge.pollOnce();
  t.upstream.put("y.ics");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 1);
  await t.req("/subscribe", { method: "POST", body: subscribeBody([t.topic]) });
  t.upstream.put("z.ics");
  await t.bridge.pollOnce();
  assert.equal(t.relay.pushes().length, 2);
});

Deno.test("start() polls every BRIDGE_POLL_SECONDS until stop()", async () => {
  await using t = await setup();
  t.bridge.start();
  await new Promise((r) => setTimeout(r, 120));
  t.upstream.put("x.ics");
  const deadline = Date.now() + 2000;
  while (t.relay.pushes().length === 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(t.relay.pushes().length, 1);
  await t.bridge.stop();
});

Deno.test("a failing relay bootstrap is retried on the next PROPFIND", async () => {
  await using t = await setup();
  t.relay.onBootstrap(() => new Response("", { status: 500 }));
  await (await t.req("/collections/0/", { method: "PROPFIND" })).body?.cancel();
  t.relay.onBootstrap(() => Response.json({ "push-transports": [] }));
  const xml = await (await t.req("/collections/0/", { method: "PROPFIND" })).text();
  assert.doesNotMatch(xml, /503/);
  assert.match(xml, /<P:supported-transport-set\/>/);
});
