/**
 * Bad input gets the contract's status (README "Errors and operations") and never changes stored data.
 */

import assert from "node:assert/strict";
import { APP_TOKEN, harness, PUBLIC_URL, settle, T0 } from "./_harness.ts";
import { listClientSubscriptions } from "./_inspect.ts";

const WP = `${PUBLIC_URL}/transports/web-push`;
const auth = { authorization: `Bearer ${APP_TOKEN}` };

Deno.test("Error precedence (README, Errors and operations): 415, then 413, then 400 unparsable, then 401, then 400 invalid content, then 403", async () => {
  const h = await harness();
  try {
    const big = "x".repeat(1024 * 1024 + 1);
    const cases: [RequestInit, number, string][] = [
      [
        { method: "POST", body: big, headers: { "content-type": "text/plain" } },
        415,
        "unsupported-media-type",
      ],
      [{ method: "POST", body: "{}" }, 415, "unsupported-media-type"],
      [
        { method: "POST", body: big, headers: { "content-type": "application/json" } },
        413,
        "payload-too-large",
      ],
      [
        { method: "POST", body: '{"push": [', headers: { "content-type": "application/json" } },
        400,
        "invalid-json",
      ],
      [
        {
          method: "POST",
          body: new Uint8Array([0x7b, 0xff, 0x7d]),
          headers: { "content-type": "application/json" },
        },
        400,
        "invalid-json",
      ],
      [
        {
          method: "POST",
          body: JSON.stringify({ push: "nonsense" }),
          headers: { "content-type": "application/json" },
        },
        401,
        "unauthorized",
      ],
      [
        {
          method: "POST",
          body: JSON.stringify({ push: "nonsense" }),
          headers: { "content-type": "application/json; charset=utf-8", ...auth },
        },
        400,
        "invalid-request",
      ],
      [
        {
          method: "POST",
          body: JSON.stringify({ push: [{ topic: "" }] }),
          headers: { "content-type": "application/json", ...auth },
        },
        400,
        "invalid-topics",
      ],
    ];
    for (const [init, status, code] of cases) {
      const res = await h.request("/gateway", init);
      assert.equal(res.status, status, code);
      const body = await res.json();
      assert.equal(body.error.code, code);
      assert.equal(typeof body.error.message, "string");
    }
  } finally {
    await h.close();
  }
});

Deno.test("A body over 1 MiB without Content-Length is cut off with 413", async () => {
  const h = await harness();
  try {
    const chunk = new TextEncoder().encode(`{"push": [${'{"topic":"a"},'.repeat(10_000)}`);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent > 2 * 1024 * 1024) return controller.close();
        sent += chunk.length;
        controller.enqueue(chunk);
      },
    });
    const res = await h.request("/gateway", {
      method: "POST",
      body: stream,
      headers: { "content-type": "application/json", ...auth },
    });
    assert.equal(res.status, 413);
  } finally {
    await h.close();
  }
});

Deno.test("Bodies that are not one known operation get 400 unknown-operation", async () => {
  const h = await harness();
  try {
    for (
      const json of [{}, [], "push", 42, null, { foo: [] }, { push: [], "push-subscribe": {} }]
    ) {
      const res = await h.request("/gateway", { method: "POST", headers: auth, json });
      assert.equal(res.status, 400, JSON.stringify(json));
      assert.equal((await res.json()).error.code, "unknown-operation");
    }
  } finally {
    await h.close();
  }
});

Deno.test("Wrong types, 0 or 1001 topics, a thousand-and-one messages and huge strings change nothing", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["kept"]);
    await settle(h);
    h.webPush.sent = [];
    const before = await h.dump();
    const huge = "t".repeat(200_000);
    const sub = (topics: unknown, extra: Record<string, unknown> = {}) => ({
      "push-subscribe": {
        topics,
        "selected-transport": { "transport-uri": WP, "client-data": dev["client-data"] },
        expires: new Date(T0 + 3600_000).toISOString(),
        ...extra,
      },
    });
    const cases: [unknown, string, string[]?][] = [
      [sub("kept"), "invalid-request"],
      [sub([1, 2]), "invalid-request"],
      [sub([]), "invalid-request"],
      [sub(Array.from({ length: 1001 }, (_, i) => `t${i}`)), "invalid-request"],
      [
        sub(["ok", "", "x".repeat(257), "bad\u0000nul", "tab\there", "\ud800lone", huge]),
        "invalid-topics",
        [
          "",
          "x".repeat(257),
          "bad\u0000nul",
          "tab\there",
          "\ud800lone",
          huge,
        ],
      ],
      [sub(["ok"], { expires: 12 }), "invalid-request"],
      [sub(["ok"], { "selected-transport": "nope" }), "invalid-request"],
      [
        sub(["ok"], { "selected-transport": { "transport-uri": WP, "client-data": 5 } }),
        "invalid-request",
      ],
      [
        sub(["ok"], {
          "selected-transport": {
            "transport-uri": `${PUBLIC_URL}/transports/x`,
            "client-data": dev["client-data"],
          },
        }),
        "unknown-transport",
      ],
      [
        { push: { messages: Array.from({ length: 1001 }, () => ({ topic: "kept" })) } },
        "invalid-request",
      ],
      [{ push: { messages: [] } }, "invalid-request"],
      [{ push: { messages: [{ topic: "kept" }, { topic: 7 }] } }, "invalid-request"],
      [{ push: { messages: [{ topic: "kept" }, { topic: huge }] } }, "invalid-topics", [huge]],
      // client-id may be an array (of strings) since the bridge's push extension.
      [{ push: { messages: [{ topic: "kept", "client-id": ["x", 5] }] } }, "invalid-request"],
      [
        { push: { messages: [{ topic: "kept", "client-id": "c".repeat(257) }] } },
        "invalid-request",
      ],
      [{ push: { messages: [{ topic: "kept", timestamp: "yesterday" }] } }, "invalid-request"],
      [{ push: { messages: ["kept"] } }, "invalid-request"],
    ];
    for (const [json, code, listed] of cases) {
      const res = await h.request("/gateway", { method: "POST", headers: auth, json });
      assert.equal(res.status, 400, code);
      const body = await res.json();
      assert.equal(body.error.code, code, JSON.stringify(json).slice(0, 100));
      if (listed) assert.deepEqual(body.error["invalid-topics"], listed);
    }
    await settle(h);
    // Nothing was recorded and nothing was sent.
    assert.deepEqual(await h.dump(), before);
    assert.equal(h.webPush.sent.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("A push for another app's topics reaches nobody and is reported as no-subscribers", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["private-topic"]);
    await settle(h);
    h.webPush.sent = [];
    const before = await h.dump();
    const res = await h.push([{ topic: "private-topic" }], {
      path: "/gateway/app2",
      token: "app-two-token-0123456789abcdef",
    });
    assert.deepEqual(await res.json(), {
      "push-response": { "no-subscribers": [{ topic: "private-topic" }] },
    });
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
    assert.deepEqual(await h.dump(), before);
  } finally {
    await h.close();
  }
});

Deno.test("A 500 never carries a stack trace or internal detail; unknown paths are 404", async () => {
  const h = await harness();
  try {
    h.relay.gateway.bootstrap = () => {
      throw new Error("secret detail /srv/relay/lib/gateway.ts:42");
    };
    const res = await h.request("/transports");
    assert.equal(res.status, 500);
    const text = await res.text();
    assert.deepEqual(JSON.parse(text), {
      error: { code: "internal-error", message: "Internal error" },
    });
    assert.equal(text.includes("secret"), false);
    const missing = await h.request("/nope");
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.code, "not-found");
  } finally {
    await h.close();
  }
});

Deno.test("GET /healthz answers 200 {status: ok} while storage answers", async () => {
  const h = await harness();
  try {
    const res = await h.request("/healthz");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ok" });
  } finally {
    await h.close();
  }
});

Deno.test("Request logs carry method, path, status and time, and never a token, client-data or endpoint", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    await h.subscribe(dev["client-data"], ["t"]);
    await h.push([{ topic: "t" }]);
    await settle(h);
    const requests = h.logger.lines.filter((l) => l.event === "request");
    assert.ok(requests.length >= 3);
    for (const r of requests) {
      assert.deepEqual(Object.keys(r.fields).sort(), ["method", "ms", "path", "status"]);
    }
    const deliveries = h.logger.lines.filter((l) => l.event === "delivery");
    assert.ok(deliveries.length >= 2);
    const text = JSON.stringify(h.logger.lines);
    const reg = await h.relay.store.registrations.get(dev["client-id"]);
    for (
      const secret of [
        APP_TOKEN,
        dev["client-data"],
        reg!.target.transport === "web-push" ? reg!.target.endpoint : "x",
      ]
    ) {
      assert.equal(text.includes(secret), false);
    }
  } finally {
    await h.close();
  }
});

Deno.test("The largest valid requests fit KV's atomic limits: 1000 topics of 256 four-byte characters; 1 MiB of such messages", async () => {
  const h = await harness();
  try {
    const dev = await h.registerDevice();
    // 256 characters, most of them outside the BMP: about 1 KiB of UTF-8 per topic.
    const topics = Array.from(
      { length: 1000 },
      (_, i) => `${i}`.padStart(4, "0") + "😀".repeat(252),
    );
    assert.equal([...topics[0]!].length, 256);
    const sub = await h.subscribe(dev["client-data"], topics);
    assert.equal(sub.status, 200);
    assert.equal((await listClientSubscriptions(h.relay.store, dev["client-id"])).length, 1000);
    await settle(h);
    h.webPush.sent = [];
    // As many as fit in the 1 MiB body: about 1 MiB of messages, more than one KV atomic holds.
    const messages = topics.slice(0, 750).map((topic) => ({ topic, "client-id": "c".repeat(200) }));
    const res = await h.push(messages);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { "push-response": {} });
    await settle(h);
    assert.equal(h.webPush.sent.length, 750);
    const unsub = await h.subscribe(dev["client-data"], topics, {
      expires: "2000-01-01T00:00:00Z",
    });
    assert.equal(unsub.status, 200);
    assert.deepEqual(await listClientSubscriptions(h.relay.store, dev["client-id"]), []);
  } finally {
    await h.close();
  }
});
