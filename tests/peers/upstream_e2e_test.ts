/**
 * Two relays chained on 127.0.0.1 with real HTTP between them (README "Relaying to another
 * gateway"): relay A, the on-site relay the application server talks to, relays to relay B,
 * which holds the Web Push transport and pushes to the npm `web-push-testing` service (it
 * verifies B's VAPID and decrypts). Each relay is `createRelay` served with `Deno.serve`, on a
 * KV file where a restart needs one, and ticks as main.ts does. Everything runs on the real
 * clock, every date derived from it.
 */

import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config.ts";
import { memoryLogger } from "../../lib/log.ts";
import { formatRfc3339 } from "../../lib/time.ts";
import { createRelay, type Relay } from "../../relay.ts";
import { listDeadLetters, listDeliveries } from "../_inspect.ts";
import { waitUntil } from "../fixtures/delivery.ts";
import { startWebPushTesting, type WebPushTesting } from "./web_push_testing.ts";

const APP_TOKEN = "application-server-token-0123456789";
const A_AT_B = "relay-a-at-relay-b-token-0123456789";
const B_AT_A = "relay-b-at-relay-a-token-0123456789";

/** One relay, served on 127.0.0.1. */
interface Node {
  relay: Relay;
  url: string;
  port: number;
  /** Requests it received on /gateway. */
  gatewayHits: number;
  stop(): Promise<void>;
}

/** A listening server whose handler is set later, so that relays can name each other's URL. */
interface Listener {
  url: string;
  port: number;
  server: Deno.HttpServer<Deno.NetAddr>;
  node: Node;
  handler: Deno.ServeHandler;
}

function listen(port = 0): Listener {
  const l = { node: { gatewayHits: 0 } } as Listener;
  l.handler = () => new Response(null, { status: 503 });
  l.server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (req, info) => {
    if (new URL(req.url).pathname.startsWith("/gateway")) l.node.gatewayHits++;
    return l.handler(req, info);
  });
  l.port = l.server.addr.port;
  l.url = `http://127.0.0.1:${l.port}`;
  return l;
}

interface NodeOptions {
  /** Where to serve (default: a fresh listener on any port); the public URL follows it. */
  listener?: Listener;
  /** A KV file (default `:memory:`). */
  kvPath?: string;
  env: Record<string, string>;
}

async function startNode(o: NodeOptions): Promise<Node> {
  const l = o.listener ?? listen();
  const kv = await Deno.openKv(o.kvPath ?? ":memory:");
  const relay = await createRelay({
    config: loadConfig({
      RELAY_PUBLIC_URL: l.url,
      RELAY_COALESCE_MS: "0",
      RELAY_REGISTRATION_RATE_LIMIT: "0",
      RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
      ...o.env,
    }),
    kv,
    logger: memoryLogger(),
    // Retries come back within a second, so a restarted upstream is found quickly.
    delivery: { retry: { baseMs: 100, maxMs: 800 } },
  });
  l.handler = relay.app.fetch;
  // The background loop, as main.ts runs it (with a shorter period).
  const ticker = setInterval(() => void relay.engine.tick().catch(() => {}), 100);
  let stopped: Promise<void> | undefined;
  return Object.assign(l.node, {
    relay,
    url: l.url,
    port: l.port,
    stop() {
      stopped ??= (async () => {
        clearInterval(ticker);
        await l.server.shutdown();
        await relay.engine.shutdown(1000);
        kv.close();
      })();
      return stopped;
    },
  });
}

async function post(url: string, body: unknown, token: string) {
  const res = await fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

function bootstrap(node: Node) {
  return post(`${node.url}/gateway`, { "push-transports": [] }, "");
}

/** Relay B with the web-push transport, and relay A relaying to it. */
async function chain(o: { kvA?: string; kvB?: string } = {}) {
  const b = await startNode({
    ...(o.kvB ? { kvPath: o.kvB } : {}),
    env: { RELAY_APPS: `relay-a:${A_AT_B}` },
  });
  const a = await startNode({
    ...(o.kvA ? { kvPath: o.kvA } : {}),
    env: {
      RELAY_APPS: `app1:${APP_TOKEN}`,
      RELAY_UPSTREAM_URL: `${b.url}/gateway`,
      RELAY_UPSTREAM_TOKEN: A_AT_B,
    },
  });
  assert.equal(await a.relay.upstream!.refresh(), true);
  return { a, b };
}

/** A device subscribed at web-push-testing with B's key and registered at B. */
async function deviceAt(b: Node, push: WebPushTesting) {
  const sub = await push.subscribe(b.relay.vapidPublicKey);
  const reg = await post(
    `${b.url}/registrations`,
    { transport: "web-push", subscription: sub },
    "",
  );
  assert.equal(reg.status, 201);
  return { sub, clientData: reg.body["client-data"] as string, clientId: reg.body["client-id"] };
}

/** The application server subscribes at A, for B's web-push transport. */
function subscribeAtA(a: Node, b: Node, clientData: string, topics: string[]) {
  return post(`${a.url}/gateway`, {
    "push-subscribe": {
      topics,
      "selected-transport": {
        "transport-uri": `${b.url}/transports/web-push`,
        "client-data": clientData,
      },
      expires: formatRfc3339(Date.now() + 3600_000),
    },
  }, APP_TOKEN);
}

function pushAtA(a: Node, messages: unknown[]) {
  return post(`${a.url}/gateway`, { push: { messages } }, APP_TOKEN);
}

Deno.test("Two relays: the application server subscribes and pushes at A only; B delivers the update, verified and decrypted by web-push-testing", async () => {
  await using push = await startWebPushTesting();
  const { a, b } = await chain();
  try {
    const device = await deviceAt(b, push);
    const sub = await subscribeAtA(a, b, device.clientData, ["cal-home"]);
    assert.deepEqual(sub, { status: 200, body: { "push-url": `${a.url}/gateway/app1` } });
    // B acknowledged the subscription to the device itself (§5.3 SHOULD).
    const [ack] = await push.waitForNotifications(device.sub, { count: 1 });
    assert.deepEqual(JSON.parse(ack!).topics, ["cal-home"]);

    const changedAt = formatRfc3339(Date.now() - 2000);
    assert.deepEqual(
      await pushAtA(a, [{ topic: "cal-home", priority: 80, timestamp: changedAt }]),
      {
        status: 200,
        body: { "push-response": {} },
      },
    );
    const all = await push.waitForNotifications(device.sub, { count: 2 });
    assert.deepEqual(JSON.parse(all[1]!), {
      type: "update",
      topic: "cal-home",
      timestamp: changedAt,
      priority: 80,
    });

    // §7.1 through the chain: the device's own change does not wake it; the next one does.
    await pushAtA(a, [{ topic: "cal-home", priority: 10, "client-id": device.clientId }]);
    await pushAtA(a, [{ topic: "cal-home", priority: 20 }]);
    const later = await push.waitForNotifications(device.sub, { count: 3 });
    await a.relay.engine.idle();
    await b.relay.engine.idle();
    const priorities = (await push.notifications(device.sub)).slice(2).map((m) =>
      JSON.parse(m).priority
    );
    assert.deepEqual(priorities, [20]);
    assert.equal(later.length, 3);
  } finally {
    await a.stop();
    await b.stop();
  }
});

Deno.test("Two relays: B stopped while A accepts pushes, then started again on the same KV and port: nothing is lost", async () => {
  await using push = await startWebPushTesting();
  const dir = await Deno.makeTempDir();
  const kvB = `${dir}/b.sqlite3`;
  const { a, b } = await chain({ kvB });
  let b2: Node | undefined;
  try {
    const device = await deviceAt(b, push);
    assert.equal((await subscribeAtA(a, b, device.clientData, ["cal-home"])).status, 200);
    await push.waitForNotifications(device.sub, { count: 1 });
    await b.stop();

    const stamps = [5, 4, 3, 2, 1].map((s) => formatRfc3339(Date.now() - s * 1000));
    for (const timestamp of stamps) {
      assert.deepEqual(await pushAtA(a, [{ topic: "cal-home", timestamp }]), {
        status: 200,
        body: { "push-response": {} },
      });
    }
    // Every message was tried and is waiting for its retry.
    await waitUntil(
      async () => {
        const queued = await listDeliveries(a.relay.store);
        return queued.length === stamps.length && queued.every((d) => d.attempts >= 1);
      },
      10_000,
      "A's first attempts",
    );

    b2 = await startNode({
      listener: listen(b.port),
      kvPath: kvB,
      env: { RELAY_APPS: `relay-a:${A_AT_B}` },
    });
    const all = await push.waitForNotifications(device.sub, {
      count: 1 + stamps.length,
      timeoutMs: 15_000,
    });
    const received = all.slice(1).map((m) => JSON.parse(m).timestamp).sort();
    assert.deepEqual(received, stamps);
    await waitUntil(
      async () => (await listDeliveries(a.relay.store)).length === 0,
      5000,
      "A's queue",
    );
    assert.deepEqual(await listDeadLetters(a.relay.store), []);
    assert.ok(
      a.relay.metrics.deliveries.get({ transport: "upstream", outcome: "retried" }) >=
        stamps.length,
    );
  } finally {
    await a.stop();
    await b.stop();
    await b2?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Two relays: B prunes the device (410), and A's next-but-one push lists the topic in no-subscribers", async () => {
  await using push = await startWebPushTesting();
  const { a, b } = await chain();
  try {
    const device = await deviceAt(b, push);
    assert.equal((await subscribeAtA(a, b, device.clientData, ["cal-home"])).status, 200);
    await push.waitForNotifications(device.sub, { count: 1 });
    await push.expire(device.sub);

    // This push reaches B, whose delivery meets the 410 and prunes the device.
    assert.deepEqual((await pushAtA(a, [{ topic: "cal-home" }])).body, { "push-response": {} });
    await waitUntil(
      async () => (await b.relay.store.registrations.get(device.clientId)) === null,
      5000,
      "B pruning the device",
    );
    // A still counts the topic as subscribed; B's answer to this push says it is not.
    assert.deepEqual((await pushAtA(a, [{ topic: "cal-home" }])).body, { "push-response": {} });
    await waitUntil(
      async () => (await a.relay.upstream!.status()).mapSize === 0,
      5000,
      "A dropping the topic",
    );
    assert.deepEqual((await pushAtA(a, [{ topic: "cal-home" }])).body, {
      "push-response": { "no-subscribers": [{ topic: "cal-home" }] },
    });
  } finally {
    await a.stop();
    await b.stop();
  }
});

Deno.test("Two relays relaying to each other: a chain A → B → A is refused with 508, not looped", async () => {
  // Each relay's config names the other's URL: both servers listen first.
  const la = listen();
  const lb = listen();
  const a = await startNode({
    listener: la,
    env: {
      RELAY_APPS: `app1:${APP_TOKEN},relay-b:${B_AT_A}`,
      RELAY_UPSTREAM_URL: `${lb.url}/gateway`,
      RELAY_UPSTREAM_TOKEN: A_AT_B,
    },
  });
  const b = await startNode({
    listener: lb,
    env: {
      RELAY_APPS: `relay-a:${A_AT_B}`,
      RELAY_UPSTREAM_URL: `${la.url}/gateway`,
      RELAY_UPSTREAM_TOKEN: B_AT_A,
    },
  });
  try {
    // A once relayed for a third gateway, and still lists its transport; B learns it from A's
    // bootstrap, and A then finds it in B's: each takes it for the other's.
    const stale = {
      transport: {
        "transport-uri": "https://third.example/transports/fcm",
        "refresh-interval": 604800,
        "transport-data": { "project-id": "third" },
      },
    };
    await a.relay.store.upstream.saveBootstrap({
      url: `${b.url}/gateway`,
      transports: [stale],
      fetchedAt: Date.now(),
    });
    await a.relay.upstream!.load();
    assert.equal(await b.relay.upstream!.refresh(), true);
    assert.equal(await a.relay.upstream!.refresh(), true);
    assert.ok(b.relay.upstream!.offers("https://third.example/transports/fcm"));
    assert.ok(a.relay.upstream!.offers("https://third.example/transports/fcm"));
    const hitsA = a.gatewayHits;
    const hitsB = b.gatewayHits;

    const res = await post(`${a.url}/gateway`, {
      "push-subscribe": {
        topics: ["looped"],
        "selected-transport": {
          "transport-uri": "https://third.example/transports/fcm",
          "client-data": "opaque",
        },
        expires: formatRfc3339(Date.now() + 3600_000),
      },
    }, APP_TOKEN);
    assert.equal(res.status, 508);
    assert.equal(res.body.error.code, "loop-detected");
    // The application server's request, B's forward to A, and nothing after it.
    assert.equal(a.gatewayHits - hitsA, 2);
    assert.equal(b.gatewayHits - hitsB, 1);
    assert.equal((await a.relay.upstream!.status()).mapSize, 0);
    assert.equal((await b.relay.upstream!.status()).mapSize, 0);
  } finally {
    await a.stop();
    await b.stop();
  }
});

Deno.test("Two relays: A's bootstrap still lists B's transports while B is down, and after A restarts", async () => {
  const dir = await Deno.makeTempDir();
  const kvA = `${dir}/a.sqlite3`;
  const { a, b } = await chain({ kvA });
  let a2: Node | undefined;
  try {
    const before = (await bootstrap(a)).body["push-transports"];
    const bWebPush = `${b.url}/transports/web-push`;
    assert.deepEqual(
      before.map((t: { transport: Record<string, unknown> }) => t.transport["transport-uri"]),
      [
        `${a.url}/transports/web-push`,
        bWebPush,
      ],
    );
    await b.stop();
    assert.equal(await a.relay.upstream!.refresh(), false);
    assert.deepEqual((await bootstrap(a)).body["push-transports"], before);
    assert.equal((await a.relay.upstream!.status()).reachable, false);
    await a.stop();

    a2 = await startNode({
      listener: listen(a.port),
      kvPath: kvA,
      env: {
        RELAY_APPS: `app1:${APP_TOKEN}`,
        RELAY_UPSTREAM_URL: `${b.url}/gateway`,
        RELAY_UPSTREAM_TOKEN: A_AT_B,
      },
    });
    assert.deepEqual((await bootstrap(a2)).body["push-transports"], before);
    assert.equal(await a2.relay.upstream!.refresh(), false);
    assert.deepEqual((await bootstrap(a2)).body["push-transports"], before);
    assert.ok((await a2.relay.upstream!.status()).lastBootstrap !== null);
  } finally {
    await a.stop();
    await b.stop();
    await a2?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
