import assert from "node:assert/strict";
import {
  clientIdFromHeader,
  GatewayClient,
  GatewayError,
  type PushMessage,
  TopicGatewayMap,
} from "./gateway_client.ts";

interface Seen {
  url: string;
  authorization: string | null;
  body: Record<string, unknown>;
}

/** A fake gateway as an injected fetch: records requests, answers with `answer(body)`. */
function fakeGateway(answer: (body: Record<string, unknown>, n: number) => Response) {
  const seen: Seen[] = [];
  const fetch = async (input: string | URL | Request, init?: RequestInit) => {
    const req = new Request(input, init);
    const body = await req.json();
    seen.push({ url: req.url, authorization: req.headers.get("authorization"), body });
    return answer(body, seen.length);
  };
  return { seen, fetch: fetch as typeof globalThis.fetch };
}

const ok = (body: unknown) => Response.json(body);
const messages = (n: number): PushMessage[] =>
  Array.from({ length: n }, (_, i) => ({ topic: `t${i}`, timestamp: "2026-11-24T09:15:02Z" }));

Deno.test("§5.1 bootstrap() posts push-transports without credentials and reads flat transport-data", async () => {
  const gw = fakeGateway(() =>
    ok({
      "push-transports": [
        {
          transport: {
            "transport-uri": "https://r/transports/web-push",
            "refresh-interval": 172800,
            "transport-data": { "vapid-public-key": "BNc", nested: { x: 1 }, n: 5 },
          },
        },
        { transport: { "transport-uri": "urn:ox", "transport-data": "plain" } },
        { transport: { "refresh-interval": 5 } },
      ],
    })
  );
  const client = new GatewayClient({ url: "https://r/gateway", token: "secret", fetch: gw.fetch });
  assert.deepEqual(await client.bootstrap(), [
    {
      transportUri: "https://r/transports/web-push",
      refreshInterval: 172800,
      // §6.1.1: no structured data; the nested object is dropped, scalars kept as text.
      transportData: { "vapid-public-key": "BNc", n: "5" },
    },
    { transportUri: "urn:ox", transportData: "plain" },
  ]);
  assert.deepEqual(gw.seen[0]!.body, { "push-transports": [] });
  assert.equal(gw.seen[0]!.authorization, null);
});

Deno.test("§5.3 subscribe() forwards selected-transport and client-data unchanged, with the bearer token", async () => {
  const gw = fakeGateway(() => ok({ "push-url": "https://r/gateway/app" }));
  const client = new GatewayClient({ url: "https://r/gateway", token: "secret", fetch: gw.fetch });
  const result = await client.subscribe({
    topics: ["a", "b"],
    transportUri: "https://r/transports/web-push",
    clientData: "opaque+/=data",
    expires: new Date("2026-11-26T08:00:00.123Z"),
  });
  assert.deepEqual(result, { pushUrl: "https://r/gateway/app" });
  assert.equal(client.pushUrl, "https://r/gateway/app");
  assert.equal(gw.seen[0]!.authorization, "Bearer secret");
  assert.deepEqual(gw.seen[0]!.body, {
    "push-subscribe": {
      topics: ["a", "b"],
      "selected-transport": {
        "transport-uri": "https://r/transports/web-push",
        "client-data": "opaque+/=data",
      },
      expires: "2026-11-26T08:00:00Z",
    },
  });
});

Deno.test("OX-style path authentication posts to <url>/<appId> and keeps the app id out of errors", async () => {
  const appId = "path-secret-app-id-of-at-least-32-chars";
  const gw = fakeGateway(() => new Response("nope", { status: 500 }));
  const client = new GatewayClient({ url: "https://r/gateway/", appId, fetch: gw.fetch });
  await assert.rejects(client.push(messages(1)), (err: unknown) => {
    assert.ok(err instanceof GatewayError);
    assert.equal(err.status, 500);
    assert.doesNotMatch(err.message, new RegExp(appId));
    return true;
  });
  assert.equal(gw.seen[0]!.url, `https://r/gateway/${appId}`);
  assert.equal(gw.seen[0]!.authorization, null);
});

Deno.test("§5.4 push() sends at most 100 messages per request, as OX does, and merges no-subscribers", async () => {
  const gw = fakeGateway((body, n) => {
    const msgs = (body.push as { messages: { topic: string }[] }).messages;
    assert.ok(msgs.length <= 100);
    // Both answer forms: objects (the draft's examples) and plain strings.
    return ok({
      "push-response": n === 1
        ? { "no-subscribers": [{ topic: "t0" }, "t5"] }
        : n === 3
        ? { "no-subscribers": [{ topic: "t240" }, { topic: "t0" }] }
        : {},
    });
  });
  const client = new GatewayClient({ url: "https://r/gateway", token: "x", fetch: gw.fetch });
  const result = await client.push(messages(250));
  assert.deepEqual(
    gw.seen.map((s) => (s.body.push as { messages: unknown[] }).messages.length),
    [100, 100, 50],
  );
  assert.deepEqual(result.noSubscribers.sort(), ["t0", "t240", "t5"]);
});

Deno.test("§6.1.3 push() sends priority and client-id only when given", async () => {
  const gw = fakeGateway(() => ok({ "push-response": {} }));
  const client = new GatewayClient({ url: "https://r/gateway", token: "x", fetch: gw.fetch });
  await client.push([
    { topic: "a", timestamp: "2026-11-24T09:15:02Z", priority: 90, clientId: "c-1" },
    { topic: "b", timestamp: "2026-11-24T09:15:04Z" },
  ]);
  assert.deepEqual(gw.seen[0]!.body, {
    push: {
      messages: [
        { topic: "a", priority: 90, timestamp: "2026-11-24T09:15:02Z", "client-id": "c-1" },
        { topic: "b", timestamp: "2026-11-24T09:15:04Z" },
      ],
    },
  });
  assert.deepEqual(await client.push([]), { noSubscribers: [] });
  assert.equal(gw.seen.length, 1);
});

Deno.test("push() reports how many messages earlier chunks delivered when a chunk fails", async () => {
  const gw = fakeGateway((_, n) => n === 2 ? new Response("", { status: 503 }) : ok({}));
  const client = new GatewayClient({
    url: "https://r/gateway",
    token: "x",
    chunkSize: 10,
    fetch: gw.fetch,
  });
  await assert.rejects(client.push(messages(35)), (err: unknown) => {
    assert.ok(err instanceof GatewayError);
    assert.equal(err.status, 503);
    assert.equal(err.sent, 10);
    return true;
  });
  assert.throws(() => new GatewayClient({ url: "https://r/", chunkSize: 101 }), RangeError);
});

Deno.test("§4.1 topic-to-gateway map: subscribe adds, no-subscribers silences until a new subscribe (§6.1.3)", async () => {
  const map = new TopicGatewayMap();
  const gw = fakeGateway((body) =>
    "push" in body ? ok({ "push-response": { "no-subscribers": [{ topic: "a" }] } }) : ok({})
  );
  const client = new GatewayClient({
    url: "https://r/gateway",
    token: "x",
    topicMap: map,
    fetch: gw.fetch,
  });
  // Unknown topics are pushed: the answer teaches the map.
  assert.equal(client.shouldPush("a"), true);
  const sub = { transportUri: "u", clientData: "d", expires: "2999-01-01T00:00:00Z" };
  await client.subscribe({ ...sub, topics: ["a", "b"] });
  assert.deepEqual(map.gatewaysFor("a"), ["https://r/gateway"]);
  await client.push([{ topic: "a", timestamp: "2026-11-24T09:15:02Z" }]);
  assert.deepEqual(map.gatewaysFor("a"), []);
  assert.equal(client.shouldPush("a"), false);
  assert.equal(client.shouldPush("b"), true);
  // An unsubscribe (past expires) does not bring the topic back...
  await client.subscribe({ ...sub, topics: ["a"], expires: "1970-01-01T00:00:00Z" });
  assert.equal(client.shouldPush("a"), false);
  // ...a new subscription does.
  await client.subscribe({ ...sub, topics: ["a"] });
  assert.equal(client.shouldPush("a"), true);
});

Deno.test("GatewayError carries the gateway's status and error code for refusals", async () => {
  const gw = fakeGateway(() =>
    Response.json({ error: { code: "invalid-client-data", message: "Forged" } }, { status: 403 })
  );
  const client = new GatewayClient({ url: "https://r/gateway", token: "x", fetch: gw.fetch });
  await assert.rejects(
    client.subscribe({
      topics: ["a"],
      transportUri: "u",
      clientData: "d",
      expires: "2999-01-01T00:00:00Z",
    }),
    (err: unknown) => {
      assert.ok(err instanceof GatewayError);
      assert.equal(err.status, 403);
      assert.equal(err.code, "invalid-client-data");
      assert.match(
        err.message,
        /Gateway answered 403 to push-subscribe with code invalid-client-data/,
      );
      return true;
    },
  );
});

Deno.test("an unreachable gateway is a GatewayError with status 0 (real socket, closed port)", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(),
  );
  const port = server.addr.port;
  await server.shutdown();
  const client = new GatewayClient({ url: `http://127.0.0.1:${port}/gateway`, token: "secret" });
  await assert.rejects(client.bootstrap(), (err: unknown) => {
    assert.ok(err instanceof GatewayError);
    assert.equal(err.status, 0);
    assert.match(err.message, /unreachable/);
    assert.doesNotMatch(err.message, /secret/);
    return true;
  });
});

Deno.test("a non-JSON 200 answer is a GatewayError, not a crash", async () => {
  const gw = { fetch: (() => Promise.resolve(new Response("<html>"))) as typeof fetch };
  const client = new GatewayClient({ url: "https://r/gateway", fetch: gw.fetch });
  await assert.rejects(client.bootstrap(), GatewayError);
});

Deno.test("§7.1 clientIdFromHeader() passes an RFC 7230 token through and ignores anything else", () => {
  assert.equal(clientIdFromHeader("c-5e0a17"), "c-5e0a17");
  assert.equal(clientIdFromHeader("  abc%2Fdef  "), "abc%2Fdef");
  assert.equal(clientIdFromHeader(null), undefined);
  assert.equal(clientIdFromHeader(undefined), undefined);
  assert.equal(clientIdFromHeader(""), undefined);
  assert.equal(clientIdFromHeader("two words"), undefined);
  assert.equal(clientIdFromHeader('quoted"'), undefined);
  assert.equal(clientIdFromHeader("x".repeat(257)), undefined);
});
