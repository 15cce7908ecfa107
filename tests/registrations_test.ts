/**
 * The client API (README "The client API"): registration forms, endpoint policy, rate limit, deletion.
 */

import assert from "node:assert/strict";
import { harness, PUBLIC_URL, settle, testSubscriptionKeys } from "./_harness.ts";
import { listClientSubscriptions } from "./_inspect.ts";

const AUTH = "AAECAwQFBgcICQoLDA0ODw";

async function webPushBody(endpoint: string, keys?: Record<string, unknown>) {
  const { publicKey } = await testSubscriptionKeys();
  return {
    transport: "web-push",
    subscription: {
      endpoint,
      expirationTime: null,
      keys: keys ?? { p256dh: publicKey, auth: AUTH },
    },
  };
}

Deno.test("POST /registrations takes PushSubscription.toJSON() and answers 201 with client-data, client-id, transport-uri, refresh-interval", async () => {
  const h = await harness();
  try {
    const res = await h.request("/registrations", {
      method: "POST",
      json: await webPushBody("https://push.example.com/a"),
    });
    assert.equal(res.status, 201);
    const body = await res.json();
    assert.deepEqual(Object.keys(body).sort(), [
      "client-data",
      "client-id",
      "refresh-interval",
      "transport-uri",
    ]);
    assert.equal(body["transport-uri"], `${PUBLIC_URL}/transports/web-push`);
    assert.equal(body["refresh-interval"], 604800);
    assert.match(body["client-id"], /^[A-Za-z0-9_-]{22}$/);
    assert.match(body["client-data"], /^[A-Za-z0-9_-]+$/);
    // §8.3: the client-data does not carry the endpoint in any readable form.
    assert.equal(body["client-data"].includes("push.example.com"), false);
    // The full transport-uri is accepted as the transport too; the same device keeps its id.
    const again = await h.request("/registrations", {
      method: "POST",
      json: {
        ...(await webPushBody("https://push.example.com/a")),
        transport: `${PUBLIC_URL}/transports/web-push`,
      },
    });
    assert.equal(again.status, 201);
    assert.equal((await again.json())["client-id"], body["client-id"]);
  } finally {
    await h.close();
  }
});

Deno.test("Keys that are not a 65-byte P-256 point and a 16-byte secret get 400 invalid-subscription", async () => {
  const h = await harness();
  try {
    const { publicKey } = await testSubscriptionKeys();
    const offCurve = "BA" + "A".repeat(85);
    for (
      const keys of [
        { p256dh: publicKey.slice(0, 40), auth: AUTH },
        { p256dh: offCurve, auth: AUTH },
        { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0O" },
        { p256dh: publicKey },
        { p256dh: 42, auth: AUTH },
      ]
    ) {
      const res = await h.request("/registrations", {
        method: "POST",
        json: await webPushBody("https://push.example.com/k", keys),
      });
      assert.equal(res.status, 400, JSON.stringify(keys));
      assert.equal((await res.json()).error.code, "invalid-subscription");
    }
    const noSub = await h.request("/registrations", {
      method: "POST",
      json: { transport: "web-push" },
    });
    assert.equal((await noSub.json()).error.code, "invalid-subscription");
    assert.deepEqual(await h.dump(), (await h.dump()).filter((k) => !k.startsWith('["reg')));
  } finally {
    await h.close();
  }
});

Deno.test("Endpoints must be https: on a public address: loopback, private, link-local and unique-local are refused", async () => {
  const h = await harness();
  try {
    for (
      const endpoint of [
        "http://push.example.com/x",
        "https://localhost/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[fd00::1]/x",
        "https://[fe80::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://metadata.internal/x",
        "https://user:pw@push.example.com/x",
        "ftp://push.example.com/x",
        "not a url",
      ]
    ) {
      const res = await h.request("/registrations", {
        method: "POST",
        json: await webPushBody(endpoint),
      });
      assert.equal(res.status, 400, endpoint);
      assert.equal((await res.json()).error.code, "endpoint-not-allowed", endpoint);
    }
    const ok = await h.request("/registrations", {
      method: "POST",
      json: await webPushBody("https://[2001:4860::1]/x"),
    });
    assert.equal(ok.status, 201);
  } finally {
    await h.close();
  }
});

Deno.test("RELAY_ALLOW_PRIVATE_ENDPOINTS=1 allows http: and loopback endpoints for local testing", async () => {
  const h = await harness({ RELAY_ALLOW_PRIVATE_ENDPOINTS: "1" });
  try {
    for (const endpoint of ["http://127.0.0.1:8090/notify/x", "https://localhost/x"]) {
      const res = await h.request("/registrations", {
        method: "POST",
        json: await webPushBody(endpoint),
      });
      assert.equal(res.status, 201, endpoint);
    }
  } finally {
    await h.close();
  }
});

Deno.test("Unknown or disabled transports get 400 unknown-transport", async () => {
  const h = await harness();
  try {
    for (const transport of ["carrier-pigeon", "fcm", "apns", `${PUBLIC_URL}/transports/nope`]) {
      const res = await h.request("/registrations", {
        method: "POST",
        json: { transport, token: "abc" },
      });
      assert.equal(res.status, 400, transport);
      assert.equal((await res.json()).error.code, "unknown-transport");
    }
    const missing = await h.request("/registrations", { method: "POST", json: { token: "abc" } });
    assert.equal((await missing.json()).error.code, "invalid-request");
  } finally {
    await h.close();
  }
});

Deno.test("Registrations are rate limited per client address with 429 and Retry-After", async () => {
  const h = await harness({ RELAY_REGISTRATION_RATE_LIMIT: "2" });
  try {
    const body = await webPushBody("https://push.example.com/rl");
    for (let i = 0; i < 2; i++) {
      assert.equal(
        (await h.request("/registrations", { method: "POST", json: body, remote: "192.0.2.1" }))
          .status,
        201,
      );
    }
    const limited = await h.request("/registrations", {
      method: "POST",
      json: body,
      remote: "192.0.2.1",
    });
    assert.equal(limited.status, 429);
    assert.equal((await limited.json()).error.code, "rate-limited");
    const retryAfter = Number(limited.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 60);
    // Another address is not affected; the next minute resets the window.
    assert.equal(
      (await h.request("/registrations", { method: "POST", json: body, remote: "192.0.2.2" }))
        .status,
      201,
    );
    h.clock.now += 60_000;
    assert.equal(
      (await h.request("/registrations", { method: "POST", json: body, remote: "192.0.2.1" }))
        .status,
      201,
    );
  } finally {
    await h.close();
  }
});

Deno.test("DELETE /registrations/{client-id}: 401 without Authorization, 403 for another client's client-data, 204 removes everything", async () => {
  const h = await harness();
  try {
    const a = await h.registerDevice();
    const b = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"]);
    const none = await h.request(`/registrations/${a["client-id"]}`, { method: "DELETE" });
    assert.equal(none.status, 401);
    assert.match(none.headers.get("www-authenticate") ?? "", /^Bearer/);
    const other = await h.request(`/registrations/${a["client-id"]}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${b["client-data"]}` },
    });
    assert.equal(other.status, 403);
    assert.equal((await other.json()).error.code, "invalid-client-data");
    assert.notEqual(await h.relay.store.registrations.get(a["client-id"]), null);
    const ok = await h.request(`/registrations/${a["client-id"]}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${a["client-data"]}` },
    });
    assert.equal(ok.status, 204);
    assert.equal(await h.relay.store.registrations.get(a["client-id"]), null);
    assert.deepEqual(await listClientSubscriptions(h.relay.store, a["client-id"]), []);
    await settle(h);
    const push = await h.push([{ topic: "t1" }]);
    assert.deepEqual(await push.json(), {
      "push-response": { "no-subscribers": [{ topic: "t1" }] },
    });
    // Deleting again is idempotent.
    const again = await h.request(`/registrations/${a["client-id"]}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${a["client-data"]}` },
    });
    assert.equal(again.status, 204);
  } finally {
    await h.close();
  }
});

Deno.test('ingress-vapid-public-key without "ingress": true is 400 invalid-request', async () => {
  const h = await harness();
  try {
    const { publicKey } = await testSubscriptionKeys();
    const res = await h.request("/registrations", {
      method: "POST",
      json: {
        ...(await webPushBody("https://push.example.com/i")),
        "ingress-vapid-public-key": publicKey,
      },
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.code, "invalid-request");
  } finally {
    await h.close();
  }
});
