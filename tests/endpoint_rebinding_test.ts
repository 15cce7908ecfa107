/**
 * The endpoint policy at every connection (lib/transports/http1.ts, lib/transports/web_push.ts):
 * a delivery resolves the endpoint's host again, checks every address, and connects to one it
 * checked, so a name that resolved to a public address at registration and to a private one
 * later (DNS rebinding) is never reached. No real DNS: resolvers are injected, and an injected
 * `connect` maps a "public" address to a local TLS server whose certificate names `localhost`.
 */

import assert from "node:assert/strict";
import { listDeadLetters } from "./_inspect.ts";
import { createVapid, generateVapidKeys } from "../lib/crypto/vapid.ts";
import type { Resolver } from "../lib/address_policy.ts";
import { type Connect, createHttp1Client, EndpointRefused } from "../lib/transports/http1.ts";
import type { OutboundMessage, WebPushTarget } from "../lib/transports/types.ts";
import { createWebPushTransport } from "../lib/transports/web_push.ts";
import { aes128gcmShaped, harness, settle, testSubscriptionKeys } from "./_harness.ts";
import { MOCK_CA_PEM } from "./mocks/apns_mock.ts";

const CERT_DIR = new URL("./mocks/certs/", import.meta.url);
const LEAF_PEM = Deno.readTextFileSync(new URL("leaf.pem", CERT_DIR));
const LEAF_KEY = Deno.readTextFileSync(new URL("leaf.key", CERT_DIR));
const AUTH = "AAECAwQFBgcICQoLDA0ODw";
/** Stands for a push service's public address; `connect` below maps it to 127.0.0.1. */
const PUBLIC_IP = "93.184.216.34";

/** A TCP listener on 127.0.0.1:0 that counts the connections it accepts and closes them. */
function countingListener() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let accepted = 0;
  const done = (async () => {
    for await (const conn of listener) {
      accepted++;
      conn.close();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get accepted() {
      return accepted;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await done;
    },
  };
}

/** Answers `first` to the first lookup and `later` to every other one; counts lookups. */
function rebindingResolver(first: string[], later: string[]) {
  const lookups: string[] = [];
  const resolve: Resolver = (host) => {
    lookups.push(host);
    return Promise.resolve(lookups.length === 1 ? first : later);
  };
  return { resolve, lookups };
}

/** A `connect` that records the addresses dialed and sends PUBLIC_IP to 127.0.0.1. */
function mappedConnect() {
  const dialed: string[] = [];
  const connect: Connect = ({ hostname, port }) => {
    dialed.push(hostname);
    return Deno.connect({ hostname: hostname === PUBLIC_IP ? "127.0.0.1" : hostname, port });
  };
  return { connect, dialed };
}

/** A TLS server on 127.0.0.1 (certificate for `localhost` and 127.0.0.1) answering 201. */
function tlsServer() {
  const paths: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: LEAF_PEM, key: LEAF_KEY, onListen() {} },
    async (req) => {
      paths.push(new URL(req.url).pathname);
      await req.arrayBuffer();
      return new Response(null, { status: 201 });
    },
  );
  return {
    port: server.addr.port,
    paths,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

const MESSAGE: OutboundMessage = {
  payload: { kind: "encrypted", body: new Uint8Array([1, 2, 3]) },
  ttl: 60,
  urgency: "normal",
  priority: 50,
};

async function target(endpoint: string): Promise<WebPushTarget> {
  const { publicKey } = await testSubscriptionKeys();
  return { transport: "web-push", endpoint, p256dh: publicKey, auth: AUTH };
}

async function vapid() {
  const keys = await generateVapidKeys();
  return await createVapid({ ...keys, subject: "mailto:ops@relay.example", now: Date.now });
}

for (
  const [label, privateAnswer] of [
    ["127.0.0.1", ["127.0.0.1"]],
    ["::ffff:127.0.0.1", ["::ffff:127.0.0.1"]],
    ["a public and a private IPv6 address", ["2001:4860::1", "fd00::1"]],
  ] as const
) {
  Deno.test(`Endpoint policy: every address of the host must be public, at registration and at every connection (rebound to ${label})`, async () => {
    await using loopback = countingListener();
    const dns = rebindingResolver([PUBLIC_IP], [...privateAnswer]);
    const h = await harness({}, { transports: {}, resolve: dns.resolve });
    try {
      const secret = `SECRET-${crypto.randomUUID()}`;
      // The endpoint's port is the loopback listener's: a connection by name would reach it.
      const endpoint = `https://push.example.com:${loopback.port}/wpush/${secret}`;
      const { publicKey } = await testSubscriptionKeys();
      const reg = await h.request("/registrations", {
        method: "POST",
        json: {
          transport: "web-push",
          subscription: { endpoint, keys: { p256dh: publicKey, auth: AUTH } },
          // Deliveries of already-encrypted Web Push messages: nothing to encrypt here.
          ingress: true,
        },
      });
      assert.equal(reg.status, 201);
      const resource = new URL((await reg.json())["push-resource"]).pathname;
      for (let i = 0; i < 2; i++) {
        const res = await h.request(resource, {
          method: "POST",
          headers: { "content-encoding": "aes128gcm", ttl: "60" },
          body: aes128gcmShaped(),
        });
        assert.equal(res.status, 201);
        // One delivery at a time: concurrent new connections to one host share a lookup.
        await settle(h);
      }

      assert.equal(loopback.accepted, 0);
      // Registration's lookup, then one per delivery.
      assert.deepEqual(dns.lookups, ["push.example.com", "push.example.com", "push.example.com"]);
      const dead = await listDeadLetters(h.relay.store);
      assert.equal(dead.length, 2);
      for (const d of dead) {
        // Refused, not retried: dead-lettered at the first attempt.
        assert.equal(d.why, "refused");
        assert.equal(d.attempts, 1);
        assert.equal(
          d.lastError,
          "endpoint refused: the endpoint's host resolves to a non-public address",
        );
      }
      assert.equal(h.relay.metrics.deliveries.get({ transport: "web-push", outcome: "failed" }), 2);
      const log = JSON.stringify(h.logger.lines);
      for (const secretPart of [secret, "push.example.com", ...privateAnswer, PUBLIC_IP]) {
        assert.equal(log.includes(secretPart), false, secretPart);
      }
    } finally {
      await h.close();
    }
  });
}

Deno.test("Endpoint policy at connection: the client connects to the address it checked, and TLS verifies the certificate for the host name", async () => {
  await using server = tlsServer();
  const { connect, dialed } = mappedConnect();
  const lookups: string[] = [];
  const resolve: Resolver = (host) => {
    lookups.push(host);
    return Promise.resolve([PUBLIC_IP]);
  };
  using transport = createWebPushTransport({
    vapid: await vapid(),
    now: Date.now,
    caCerts: [MOCK_CA_PEM],
    endpointPolicy: { allowPrivate: false, resolve, connect },
  });
  // The certificate names localhost (and 127.0.0.1); the connection goes to PUBLIC_IP.
  const named = await target(`https://localhost:${server.port}/wpush/a`);
  assert.deepEqual(await transport.send(named, MESSAGE), { kind: "delivered", status: 201 });
  assert.deepEqual(await transport.send(named, MESSAGE), { kind: "delivered", status: 201 });
  // One connection, checked once when it was opened, then kept alive.
  assert.deepEqual(lookups, ["localhost"]);
  assert.deepEqual(dialed, [PUBLIC_IP]);
  assert.deepEqual(server.paths, ["/wpush/a", "/wpush/a"]);

  // Same server, same address; but the certificate does not name this host: refused by TLS,
  // though it names 127.0.0.1, the address actually connected to.
  const other = await target(`https://push.example.com:${server.port}/wpush/b`);
  assert.deepEqual(await transport.send(other, MESSAGE), {
    kind: "retry",
    reason: "network error: TLS failure",
  });
  assert.deepEqual(dialed, [PUBLIC_IP, PUBLIC_IP]);
  assert.equal(server.paths.length, 2);
});

Deno.test("Endpoint policy at connection: a kept-alive connection was checked when opened; the next new one is checked again and refused", async () => {
  await using server = tlsServer();
  const { connect, dialed } = mappedConnect();
  const dns = rebindingResolver([PUBLIC_IP], ["127.0.0.1"]);
  const client = createHttp1Client({
    caCerts: [MOCK_CA_PEM],
    idleTimeoutMs: 20,
    endpointPolicy: { resolve: dns.resolve, connect },
  });
  try {
    const url = new URL(`https://localhost:${server.port}/w`);
    const body = new TextEncoder().encode("x");
    assert.equal((await client.post(url, {}, body)).status, 201);
    assert.equal((await client.post(url, {}, body)).status, 201);
    assert.equal(client.opened, 1);
    // The idle connection expires; a new one resolves again, now to loopback.
    await new Promise((r) => setTimeout(r, 40));
    await assert.rejects(client.post(url, {}, body), (err) => {
      assert.ok(err instanceof EndpointRefused);
      assert.equal(err.kind, "refused");
      assert.equal(err.message, "the endpoint's host resolves to a non-public address");
      return true;
    });
    assert.deepEqual(dialed, [PUBLIC_IP]);
    assert.equal(client.opened, 1);
    assert.deepEqual(dns.lookups, ["localhost", "localhost"]);
  } finally {
    client.close();
  }
});

Deno.test("Endpoint policy at connection: concurrent new connections to one host share one lookup", async () => {
  await using server = tlsServer();
  const { connect, dialed } = mappedConnect();
  let lookups = 0;
  const client = createHttp1Client({
    caCerts: [MOCK_CA_PEM],
    endpointPolicy: {
      resolve: async () => {
        lookups++;
        await new Promise((r) => setTimeout(r, 10));
        return [PUBLIC_IP];
      },
      connect,
    },
  });
  try {
    const url = new URL(`https://localhost:${server.port}/w`);
    const answers = await Promise.all(
      Array.from({ length: 4 }, () => client.post(url, {}, new Uint8Array(1))),
    );
    assert.deepEqual(answers.map((a) => a.status), [201, 201, 201, 201]);
    assert.equal(lookups, 1);
    assert.equal(dialed.length, 4);
  } finally {
    client.close();
  }
});

Deno.test("Endpoint policy at connection: scheme, port and credentials are checked before any lookup; no address is unresolved (a retry)", async () => {
  const { connect, dialed } = mappedConnect();
  const lookups: string[] = [];
  using transport = createWebPushTransport({
    vapid: await vapid(),
    now: Date.now,
    endpointPolicy: {
      allowPrivate: false,
      resolve: (host) => {
        lookups.push(host);
        return Promise.resolve([]);
      },
      connect,
    },
  });
  const cases: [string, string][] = [
    ["http://push.example.com/x", "endpoint refused: the endpoint must be an https: URL"],
    [
      "https://push.example.com:22/x",
      "endpoint refused: the endpoint's port must be 443 or 1024-65535",
    ],
    ["https://127.0.0.1:8443/x", "endpoint refused: the endpoint's address is not public"],
    ["https://[::ffff:7f00:1]:8443/x", "endpoint refused: the endpoint's address is not public"],
  ];
  for (const [endpoint, reason] of cases) {
    assert.deepEqual(await transport.send(await target(endpoint), MESSAGE), {
      kind: "failed",
      reason,
    });
  }
  assert.deepEqual(lookups, []);
  assert.deepEqual(
    await transport.send(await target("https://gone.example.com/x"), MESSAGE),
    { kind: "retry", reason: "network error: name resolution failed" },
  );
  assert.deepEqual(lookups, ["gone.example.com"]);
  assert.deepEqual(dialed, []);
});

Deno.test("Endpoint policy and the fetch fallback: under the policy an origin that refuses HTTP/1.1 is not handed to fetch, and a private address is not reached", async () => {
  const h2Only = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: LEAF_PEM,
    key: LEAF_KEY,
    alpnProtocols: ["h2"],
  });
  let accepted = 0;
  const accepting = (async () => {
    for await (const conn of h2Only) {
      accepted++;
      conn.handshake().catch(() => {}).finally(() => conn.close());
    }
  })();
  const port = (h2Only.addr as Deno.NetAddr).port;
  const realFetch = globalThis.fetch;
  let fetched = 0;
  globalThis.fetch = (...args: Parameters<typeof fetch>) => {
    fetched++;
    return realFetch(...args);
  };
  try {
    const { connect, dialed } = mappedConnect();
    const dns = rebindingResolver([PUBLIC_IP], ["127.0.0.1"]);
    using transport = createWebPushTransport({
      vapid: await vapid(),
      now: Date.now,
      caCerts: [MOCK_CA_PEM],
      endpointPolicy: { allowPrivate: false, resolve: dns.resolve, connect },
    });
    const h2 = await target(`https://localhost:${port}/wpush/h2`);
    // The checked address answers in TLS but offers only h2: the send fails, fetch is unused.
    assert.deepEqual(await transport.send(h2, MESSAGE), {
      kind: "failed",
      reason: "push service refuses HTTP/1.1 (no fetch under the policy)",
    });
    assert.equal(accepted, 1);
    // The same name now resolves to loopback: refused before any connection.
    assert.deepEqual(await transport.send(h2, MESSAGE), {
      kind: "failed",
      reason: "endpoint refused: the endpoint's host resolves to a non-public address",
    });
    assert.equal(accepted, 1);
    assert.deepEqual(dialed, [PUBLIC_IP]);
    assert.equal(fetched, 0);
  } finally {
    globalThis.fetch = realFetch;
    h2Only.close();
    await accepting;
  }
});

Deno.test("Endpoint policy with fetch (an outbound proxy): the addresses are checked right before each request", async () => {
  let fetched = 0;
  const fakeFetch = (() => {
    fetched++;
    return Promise.resolve(new Response(null, { status: 201 }));
  }) as typeof fetch;
  let answer = [PUBLIC_IP];
  using transport = createWebPushTransport({
    vapid: await vapid(),
    now: Date.now,
    fetch: fakeFetch,
    endpointPolicy: { allowPrivate: false, resolve: () => Promise.resolve(answer) },
  });
  const t = await target("https://push.example.com/wpush/p");
  assert.deepEqual(await transport.send(t, MESSAGE), { kind: "delivered", status: 201 });
  answer = ["169.254.169.254"];
  assert.deepEqual(await transport.send(t, MESSAGE), {
    kind: "failed",
    reason: "endpoint refused: the endpoint's host resolves to a non-public address",
  });
  assert.equal(fetched, 1);
});

Deno.test("RELAY_ALLOW_PRIVATE_ENDPOINTS=1 turns the policy off at connection too: loopback endpoints are reached", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    await req.arrayBuffer();
    return new Response(null, { status: 201 });
  });
  try {
    using transport = createWebPushTransport({
      vapid: await vapid(),
      now: Date.now,
      endpointPolicy: { allowPrivate: true, resolve: () => Promise.resolve(["127.0.0.1"]) },
    });
    const t = await target(`http://127.0.0.1:${server.addr.port}/wpush/local`);
    assert.deepEqual(await transport.send(t, MESSAGE), { kind: "delivered", status: 201 });
  } finally {
    await server.shutdown();
  }
});
