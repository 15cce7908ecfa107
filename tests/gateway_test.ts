/**
 * CC/CD 70025's requirements of a Push Gateway, and the draft's two spellings of its messages,
 * through the real HTTP app with a recording transport.
 */

import assert from "node:assert/strict";
import { APP2_TOKEN, APP_TOKEN, harness, PATH_APP, PUBLIC_URL, settle, T0 } from "./_harness.ts";
import { listClientSubscriptions } from "./_inspect.ts";

const WP = `${PUBLIC_URL}/transports/web-push`;

Deno.test("§5.1, §6.1.1: bootstrap lists web-push with refresh-interval and flat string transport-data", async () => {
  const h = await harness();
  try {
    const res = await h.request("/gateway", { method: "POST", json: { "push-transports": [] } });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body["push-transports"].length, 1);
    const t = body["push-transports"][0].transport;
    assert.equal(t["transport-uri"], WP);
    assert.equal(t["refresh-interval"], 604800);
    assert.equal(typeof t["transport-data"]["vapid-public-key"], "string");
    for (const v of Object.values(t["transport-data"])) assert.equal(typeof v, "string");
    const get = await h.request("/transports");
    assert.deepEqual(await get.json(), body);
  } finally {
    await h.close();
  }
});

Deno.test("§6 item 1: every operation works at /gateway and at /gateway/{app}", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    for (const path of ["/gateway", "/gateway/app1"]) {
      const boot = await h.request(path, { method: "POST", json: { "push-transports": [] } });
      assert.equal(boot.status, 200);
      const sub = await h.subscribe(dev["client-data"], ["t-layout"], { path });
      assert.equal(sub.status, 200);
      assert.deepEqual(await sub.json(), { "push-url": `${PUBLIC_URL}/gateway/app1` });
      const push = await h.push([{ topic: "t-layout" }], { path });
      assert.equal(push.status, 200);
      assert.deepEqual(await push.json(), { "push-response": {} });
    }
    // A bearer token of app1 at another app's path is refused.
    const wrong = await h.push([{ topic: "t-layout" }], { path: "/gateway/app2" });
    assert.equal(wrong.status, 401);
  } finally {
    await h.close();
  }
});

Deno.test('§6 item 2: push-subscribe accepts "transport" as an alias of "selected-transport"', async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    const res = await h.request("/gateway", {
      method: "POST",
      headers: { authorization: `Bearer ${APP_TOKEN}` },
      json: {
        "push-subscribe": {
          topics: ["alias-topic"],
          transport: { "transport-uri": WP, "client-data": dev["client-data"] },
          expires: new Date(T0 + 3600_000).toISOString(),
        },
      },
    });
    assert.equal(res.status, 200);
    const subs = await listClientSubscriptions(h.relay.store, dev["client-id"]);
    assert.deepEqual(subs.map((s) => s.topic), ["alias-topic"]);
  } finally {
    await h.close();
  }
});

Deno.test('§6 item 3: push accepts {"push": {"messages": [...]}} and {"push": [...]}', async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["shape"]);
    await settle(h);
    const before = h.webPush.sent.length;
    const a = await h.push([{ topic: "shape", timestamp: "2026-11-24T09:15:02Z" }]);
    assert.equal(a.status, 200);
    const b = await h.request("/gateway", {
      method: "POST",
      headers: { authorization: `Bearer ${APP_TOKEN}` },
      json: { push: [{ topic: "shape", timestamp: "2026-11-24T09:15:03Z" }] },
    });
    assert.equal(b.status, 200);
    await settle(h);
    assert.equal(h.webPush.sent.length - before, 2);
  } finally {
    await h.close();
  }
});

Deno.test("§5.4: unknown topics and topics without active subscribers are listed once in push-response.no-subscribers", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["live"]);
    const res = await h.push([
      { topic: "live" },
      { topic: "nobody-here" },
      { topic: "nobody-here", priority: 90 },
    ]);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      "push-response": { "no-subscribers": [{ topic: "nobody-here" }] },
    });
  } finally {
    await h.close();
  }
});

Deno.test("§5.4 MUST: no-subscribers is omitted when every topic had a subscriber", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["a", "b"]);
    const res = await h.push([{ topic: "a" }, { topic: "b" }]);
    const body = await res.json();
    assert.deepEqual(body, { "push-response": {} });
    assert.equal("no-subscribers" in body["push-response"], false);
  } finally {
    await h.close();
  }
});

Deno.test("§5.4: every unlisted topic is delivered to each active subscriber with the update payload", async () => {
  const h = await harness();
  try {
    const devs = await Promise.all([1, 2, 3].map((i) => h.registerDevice(i)));
    for (const d of devs) await h.subscribe(d["client-data"], ["cal-1"]);
    await settle(h);
    h.webPush.sent = [];
    const res = await h.push([{
      topic: "cal-1",
      priority: 90,
      timestamp: "2026-11-24T09:15:02+02:00",
    }]);
    assert.deepEqual(await res.json(), { "push-response": {} });
    await settle(h);
    assert.equal(h.webPush.sent.length, 3);
    for (const s of h.webPush.sent) {
      assert.deepEqual(s.message.payload, {
        kind: "json",
        data: { type: "update", topic: "cal-1", timestamp: "2026-11-24T07:15:02Z", priority: 90 },
      });
      assert.equal(s.message.urgency, "high");
      assert.equal(s.message.ttl, 86400);
      assert.match(s.message.collapseKey ?? "", /^[A-Za-z0-9_-]{32}$/);
      assert.equal(s.message.collapseKey!.includes("cal"), false);
    }
    const endpoints = new Set(
      h.webPush.sent.map((s) => s.target.transport === "web-push" ? s.target.endpoint : ""),
    );
    assert.equal(endpoints.size, 3);
  } finally {
    await h.close();
  }
});

Deno.test("§5.4: a push the relay cannot record fails whole (503) instead of dropping topics", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["x"]);
    await settle(h);
    h.webPush.sent = [];
    h.kv.close();
    const res = await h.push([{ topic: "x" }]);
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "storage-unavailable");
    const health = await h.request("/healthz");
    assert.equal(health.status, 503);
    assert.equal(h.webPush.sent.length, 0);
  } finally {
    await h.relay.engine.shutdown(100);
  }
});

Deno.test("§5.2.2 MUST: a subscription with a past expiry removes the client and it gets no further pushes", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const b = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"]);
    await h.subscribe(b["client-data"], ["t1"]);
    const res = await h.subscribe(a["client-data"], ["t1"], { expires: "2020-01-01T00:00:00Z" });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { "push-url": `${PUBLIC_URL}/gateway/app1` });
    assert.deepEqual(
      (await listClientSubscriptions(h.relay.store, a["client-id"])).map((s) => s.topic),
      ["t2"],
    );
    await settle(h);
    h.webPush.sent = [];
    await h.push([{ topic: "t1" }]);
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    const target = h.webPush.sent[0]!.target;
    const regB = await h.relay.store.registrations.get(b["client-id"]);
    assert.deepEqual(target, regB!.target);
  } finally {
    await h.close();
  }
});

Deno.test("§5.2.2: an unsubscribe succeeds even after the registration was deleted, if the client-data is authentic", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1"]);
    const del = await h.request(`/registrations/${a["client-id"]}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${a["client-data"]}` },
    });
    assert.equal(del.status, 204);
    const unsub = await h.subscribe(a["client-data"], ["t1"], { expires: "2000-01-01T00:00:00Z" });
    assert.equal(unsub.status, 200);
    const resub = await h.subscribe(a["client-data"], ["t1"]);
    assert.equal(resub.status, 403);
    assert.equal((await resub.json()).error.code, "invalid-client-data");
  } finally {
    await h.close();
  }
});

Deno.test("§6.2.1.6 MUST: subscriptions not refreshed within the refresh interval are removed by the sweep", async () => {
  const h = await harness({ RELAY_REFRESH_INTERVAL: "3600" });
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"], {
      expires: new Date(T0 + 3600_000).toISOString(),
    });
    await settle(h);
    h.clock.now = T0 + 3600_001;
    await h.relay.engine.tick();
    assert.deepEqual(await listClientSubscriptions(h.relay.store, a["client-id"]), []);
    const keys = (await h.dump()).filter((k) => /^\["sub/.test(k));
    assert.deepEqual(keys, []);
    // Idempotent: a second sweep finds nothing and fails nothing.
    await h.relay.engine.tick();
  } finally {
    await h.close();
  }
});

Deno.test("§6.2.1.6 MUST NOT: an expiry beyond the refresh interval is refused with expires-exceeds-refresh-interval", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const before = await h.dump();
    const tooLate = new Date(T0 + (604800 + 301) * 1000).toISOString();
    const res = await h.subscribe(a["client-data"], ["t1"], { expires: tooLate });
    assert.equal(res.status, 400);
    assert.deepEqual((await res.json()).error["refresh-interval"], 604800);
    assert.deepEqual(await h.dump(), before);
    // Within the 300 s clock-skew allowance it is accepted.
    const ok = await h.subscribe(a["client-data"], ["t1"], {
      expires: new Date(T0 + (604800 + 299) * 1000).toISOString(),
    });
    assert.equal(ok.status, 200);
  } finally {
    await h.close();
  }
});

Deno.test("§6.2.2.1: a subscription is void after its expiry even before the sweep removes it", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1"], { expires: new Date(T0 + 60_000).toISOString() });
    await settle(h);
    h.webPush.sent = [];
    h.clock.now = T0 + 60_000;
    const res = await h.push([{ topic: "t1" }]);
    assert.deepEqual(await res.json(), {
      "push-response": { "no-subscribers": [{ topic: "t1" }] },
    });
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("§6.1.2: a subscribe adds or refreshes its topics and leaves the app's other subscriptions untouched", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"], {
      expires: new Date(T0 + 3600_000).toISOString(),
    });
    await h.subscribe(a["client-data"], ["t2", "t3"], {
      expires: new Date(T0 + 7200_000).toISOString(),
    });
    const subs = await listClientSubscriptions(h.relay.store, a["client-id"]);
    assert.deepEqual(subs.map((s) => [s.topic, s.exp - T0]), [["t1", 3600_000], ["t2", 7200_000], [
      "t3",
      7200_000,
    ]]);
    // A refresh never duplicates: one delivery per (client, topic).
    await settle(h);
    h.webPush.sent = [];
    await h.push([{ topic: "t2" }]);
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    // Only the expiry index of the current expiry remains.
    const idx = (await h.dump()).filter((k) => k.startsWith('["subx"'));
    assert.equal(idx.length, 3);
  } finally {
    await h.close();
  }
});

Deno.test("§6.1.2: expires must be an RFC 3339 timestamp; offsets are normalised to UTC", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    for (
      const bad of [
        "tomorrow",
        "2026-11-25",
        "2026-13-01T00:00:00Z",
        "2026-11-24T25:00:00Z",
        1764000000,
      ]
    ) {
      const res = await h.request("/gateway", {
        method: "POST",
        headers: { authorization: `Bearer ${APP_TOKEN}` },
        json: {
          "push-subscribe": {
            topics: ["t"],
            "selected-transport": { "transport-uri": WP, "client-data": a["client-data"] },
            expires: bad,
          },
        },
      });
      assert.equal(res.status, 400, String(bad));
      assert.equal((await res.json()).error.code, "invalid-request");
    }
    const ok = await h.subscribe(a["client-data"], ["t"], {
      expires: "2026-11-24T12:00:00.5+01:00",
    });
    assert.equal(ok.status, 200);
    const [sub] = await listClientSubscriptions(h.relay.store, a["client-id"]);
    assert.equal(sub!.exp, Date.parse("2026-11-24T11:00:00.500Z"));
  } finally {
    await h.close();
  }
});

Deno.test("§6.1.3 SHOULD: an omitted priority is 50; priorities outside 0..100 are refused", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    await h.push([{ topic: "t", timestamp: "2026-11-24T09:00:00Z" }]);
    await settle(h);
    assert.equal(h.webPush.payloads()[0]!.priority, 50);
    assert.equal(h.webPush.sent[0]!.message.urgency, "normal");
    for (const p of [-1, 101, 50.5, "50", null]) {
      const res = await h.push([{ topic: "t", priority: p }]);
      assert.equal(res.status, 400, String(p));
      assert.equal((await res.json()).error.code, "invalid-request");
    }
    // A missing timestamp is the time of receipt.
    h.webPush.sent = [];
    await h.push([{ topic: "t" }]);
    await settle(h);
    assert.equal(h.webPush.payloads()[0]!.timestamp, "2026-11-24T09:00:00Z");
  } finally {
    await h.close();
  }
});

Deno.test("Urgency follows priority: 0-24 very-low, 25-49 low, 50-74 normal, 75-100 high", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["u"]);
    await settle(h);
    for (
      const [priority, urgency] of [
        [0, "very-low"],
        [24, "very-low"],
        [25, "low"],
        [49, "low"],
        [50, "normal"],
        [74, "normal"],
        [75, "high"],
        [100, "high"],
      ] as const
    ) {
      h.webPush.sent = [];
      await h.push([{ topic: "u", priority }]);
      await settle(h);
      assert.equal(h.webPush.sent[0]!.message.urgency, urgency, `priority ${priority}`);
    }
  } finally {
    await h.close();
  }
});

Deno.test("§7.1: the client whose client-id sent the change is not pushed; others are", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const b = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t"]);
    await h.subscribe(b["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    // Percent-encoded client-ids compare decoded (Push-Client-Id is RFC 3986 percent-encoded).
    const encoded = a["client-id"].replace(/-/g, "%2D");
    const res = await h.push([{ topic: "t", "client-id": encoded }]);
    assert.deepEqual(await res.json(), { "push-response": {} });
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
    const regB = await h.relay.store.registrations.get(b["client-id"]);
    assert.deepEqual(h.webPush.sent[0]!.target, regB!.target);
    // The only subscriber being the originator still counts as a subscriber: not listed.
    await h.subscribe(a["client-data"], ["solo"]);
    const solo = await h.push([{ topic: "solo", "client-id": a["client-id"] }]);
    assert.deepEqual(await solo.json(), { "push-response": {} });
  } finally {
    await h.close();
  }
});

Deno.test("§8.3 SHOULD: forged, tampered, foreign and revoked client-data get 403 and record nothing", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const before = await h.dump();
    const cd = a["client-data"];
    const flipped = cd.slice(0, 20) + (cd[20] === "A" ? "B" : "A") + cd.slice(21);
    const other = await harness({ RELAY_SECRET: "b".repeat(43) });
    const foreign = (await other.registerDevice())["client-data"];
    await other.close();
    for (
      const bad of [
        flipped,
        cd.slice(0, -4),
        "not-client-data",
        foreign,
        btoa(JSON.stringify({ c: a["client-id"], t: "w" })),
      ]
    ) {
      const res = await h.subscribe(bad, ["t"]);
      assert.equal(res.status, 403);
      assert.equal((await res.json()).error.code, "invalid-client-data");
    }
    assert.deepEqual(await h.dump(), before);
    // client-data reveals nothing: it does not contain the endpoint or the client id.
    const reg = await h.relay.store.registrations.get(a["client-id"]);
    const endpoint = reg!.target.transport === "web-push" ? reg!.target.endpoint : "";
    assert.equal(
      atob(cd.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - cd.length % 4) % 4))
        .includes(endpoint.slice(8, 30)),
      false,
    );
  } finally {
    await h.close();
  }
});

Deno.test("Apps are isolated: one app's topics and subscribers are invisible to another", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["shared-name"]);
    await settle(h);
    h.webPush.sent = [];
    const res = await h.push([{ topic: "shared-name" }], { token: APP2_TOKEN });
    assert.deepEqual(await res.json(), {
      "push-response": { "no-subscribers": [{ topic: "shared-name" }] },
    });
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("Path-secret apps (OX App Suite style) authenticate by the app id in the path", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const sub = await h.request(`/gateway/${PATH_APP}`, {
      method: "POST",
      json: {
        "push-subscribe": {
          topics: ["ox"],
          "selected-transport": { "transport-uri": WP, "client-data": a["client-data"] },
          expires: new Date(T0 + 3600_000).toISOString(),
        },
      },
    });
    assert.equal(sub.status, 200);
    assert.deepEqual(await sub.json(), { "push-url": `${PUBLIC_URL}/gateway/${PATH_APP}` });
    const push = await h.push([{ topic: "ox" }], { path: `/gateway/${PATH_APP}` });
    assert.deepEqual(await push.json(), { "push-response": {} });
    // Wrong id, or the right path with a wrong Authorization: 401 with WWW-Authenticate.
    for (
      const init of [
        { path: `/gateway/${PATH_APP}x`, headers: {} },
        { path: `/gateway/${PATH_APP}`, headers: { authorization: "Bearer wrong" } },
        { path: "/gateway", headers: {} },
      ]
    ) {
      const res = await h.request(init.path, {
        method: "POST",
        headers: init.headers,
        json: { push: [{ topic: "ox" }] },
      });
      assert.equal(res.status, 401);
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
    }
    // The path secret never reaches the request log.
    assert.equal(JSON.stringify(h.logger.lines).includes(PATH_APP), false);
  } finally {
    await h.close();
  }
});

Deno.test("The acknowledging push (§5.3 SHOULD) lists only newly subscribed topics, once per request", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"], { expires: "2026-11-25T09:00:00Z" });
    await settle(h);
    assert.deepEqual(h.webPush.payloads(), [{
      type: "subscribed",
      topics: ["t1", "t2"],
      expires: "2026-11-25T09:00:00Z",
    }]);
    await h.subscribe(a["client-data"], ["t1", "t2"]); // pure refresh: no ack
    await h.subscribe(a["client-data"], ["t2", "t3"], { expires: "2026-11-25T10:00:00Z" });
    await settle(h);
    assert.deepEqual(h.webPush.payloads().slice(1), [{
      type: "subscribed",
      topics: ["t3"],
      expires: "2026-11-25T10:00:00Z",
    }]);
    // Many long topics: the list is cut to fit 3 KiB and marked truncated.
    const many = Array.from({ length: 100 }, (_, i) => `topic-${i}-${"x".repeat(50)}`);
    h.webPush.sent = [];
    await h.subscribe(a["client-data"], many);
    await settle(h);
    const ack = h.webPush.payloads()[0]!;
    assert.equal(ack.truncated, true);
    assert.ok((ack.topics as string[]).length > 10 && (ack.topics as string[]).length < 100);
    assert.ok(new TextEncoder().encode(JSON.stringify(ack)).length <= 3072);
  } finally {
    await h.close();
  }
});
