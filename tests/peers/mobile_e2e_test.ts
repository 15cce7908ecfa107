/**
 * FCM and APNs through the whole relay (README "Android and iOS: FCM and APNs"): bootstrap entries,
 * registration forms, the update payload on each wire format, and pruning on the services'
 * "device gone" answers. The mocks reproduce Google's and Apple's wire formats and verify the
 * JWTs with `jose`.
 */

import assert from "node:assert/strict";
import { formatRfc3339 } from "../../lib/time.ts";
import { APP_TOKEN, harness, PUBLIC_URL, settle, testSubscriptionKeys } from "../_harness.ts";
import { fcmError, startFcmMock } from "../mocks/fcm_mock.ts";
import { MOCK_CA_PEM, startApnsMock } from "../mocks/apns_mock.ts";
import { makeApnsKey, makeServiceAccount } from "../mocks/keys.ts";
import { createApnsHttpClient } from "../../lib/transports/apns.ts";

const FCM_TOKEN = "fcm-token:APA91bHPRgkFLJu6hKDb6Ze0mRj0Mk8cCm6TF6Tr8KT7fjx";
const APNS_TOKEN = "a".repeat(64);
const BUNDLE = "org.example.calendar";

async function mobileRelay(env: Record<string, string> = {}, now: () => number = Date.now) {
  const sa = await makeServiceAccount();
  const fcm = startFcmMock({
    projectId: sa.projectId,
    clientEmail: sa.clientEmail,
    publicKey: sa.publicKey,
    now,
  });
  const key = await makeApnsKey();
  const apns = await startApnsMock({
    teamId: key.teamId,
    keyId: key.keyId,
    publicKey: key.publicKey,
    topic: BUNDLE,
    now,
  });
  const apnsClient = createApnsHttpClient({ caCerts: [MOCK_CA_PEM] });
  const h = await harness({
    RELAY_FCM_SERVICE_ACCOUNT: sa.json(fcm.tokenUri),
    RELAY_FCM_API_URL: fcm.url,
    RELAY_APNS_KEY: key.pem,
    RELAY_APNS_KEY_ID: key.keyId,
    RELAY_APNS_TEAM_ID: key.teamId,
    RELAY_APNS_TOPIC: BUNDLE,
    RELAY_APNS_API_URL: apns.url,
    RELAY_APNS_SANDBOX_URL: apns.url,
    ...env,
  }, { now, apnsClient, transports: {} });
  return {
    h,
    fcm,
    apns,
    sa,
    async close() {
      await h.close();
      apnsClient.close();
      await fcm.close();
      await apns.close();
    },
  };
}

Deno.test("Bootstrap lists FCM (project-id) and APNs (topic) when configured, with flat string transport-data", async () => {
  const m = await mobileRelay();
  try {
    const body = await (await m.h.request("/transports")).json();
    const byUri = Object.fromEntries(
      body["push-transports"].map((
        t: { transport: { "transport-uri": string } },
      ) => [t.transport["transport-uri"], t.transport]),
    );
    assert.deepEqual(byUri[`${PUBLIC_URL}/transports/fcm`]["transport-data"], {
      "project-id": m.sa.projectId,
    });
    assert.deepEqual(byUri[`${PUBLIC_URL}/transports/apns`]["transport-data"], { topic: BUNDLE });
    assert.equal(body["push-transports"].length, 3);
  } finally {
    await m.close();
  }
});

Deno.test("FCM and APNs tokens are validated at registration with 400 invalid-token", async () => {
  const m = await mobileRelay();
  try {
    for (
      const json of [
        { transport: "fcm", token: "" },
        { transport: "fcm", token: "x".repeat(4097) },
        { transport: "fcm", token: "bad\ntoken" },
        { transport: "fcm" },
        { transport: "apns", token: "abc", environment: "production" },
        { transport: "apns", token: "g".repeat(64), environment: "production" },
        { transport: "apns", token: "a".repeat(65), environment: "production" },
        { transport: "apns", token: APNS_TOKEN, environment: "staging" },
        { transport: "apns", token: APNS_TOKEN },
      ]
    ) {
      const res = await m.h.request("/registrations", { method: "POST", json });
      assert.equal(res.status, 400, JSON.stringify(json).slice(0, 80));
      assert.equal((await res.json()).error.code, "invalid-token");
    }
  } finally {
    await m.close();
  }
});

Deno.test("A push reaches FCM as a data message and APNs as a background push with the contract's fields", async () => {
  const m = await mobileRelay();
  try {
    const f = await (await m.h.request("/registrations", {
      method: "POST",
      json: { transport: "fcm", token: FCM_TOKEN },
    })).json();
    const a = await (await m.h.request("/registrations", {
      method: "POST",
      json: { transport: "apns", token: APNS_TOKEN, environment: "sandbox" },
    })).json();
    assert.equal(f["transport-uri"], `${PUBLIC_URL}/transports/fcm`);
    const expires = new Date(m.h.now() + 3600_000).toISOString();
    for (const [reg, uri] of [[f, "fcm"], [a, "apns"]] as const) {
      const res = await m.h.request("/gateway", {
        method: "POST",
        headers: { authorization: "Bearer app-one-token-0123456789abcdef" },
        json: {
          "push-subscribe": {
            topics: ["cal"],
            "selected-transport": {
              "transport-uri": `${PUBLIC_URL}/transports/${uri}`,
              "client-data": reg["client-data"],
            },
            expires,
          },
        },
      });
      assert.equal(res.status, 200);
    }
    await settle(m.h);
    m.fcm.sends.length = 0;
    m.apns.requests.length = 0;
    const changedAt = formatRfc3339(m.h.now() - 2000);
    await m.h.push([{ topic: "cal", priority: 80, timestamp: changedAt }]);
    await settle(m.h);

    assert.equal(m.fcm.sends.length, 1);
    const msg = m.fcm.sends[0]!.body.message as Record<string, Record<string, unknown>>;
    assert.equal(m.fcm.sends[0]!.path, `/v1/projects/${m.sa.projectId}/messages:send`);
    assert.equal(msg.token as unknown, FCM_TOKEN);
    assert.deepEqual(msg.data, {
      type: "update",
      topic: "cal",
      timestamp: changedAt,
      priority: "80",
    });
    assert.equal(msg.android!.priority, "high");
    assert.match(String(msg.android!.ttl), /^\d+s$/);
    assert.match(String(msg.android!.collapse_key), /^[A-Za-z0-9_-]{32}$/);

    assert.equal(m.apns.requests.length, 1);
    const req = m.apns.requests[0]!;
    assert.equal(req.path, `/3/device/${APNS_TOKEN}`);
    assert.equal(req.headers["apns-push-type"], "background");
    assert.equal(req.headers["apns-priority"], "5");
    assert.equal(req.headers["apns-topic"], BUNDLE);
    assert.equal(req.headers["apns-collapse-id"], String(msg.android!.collapse_key));
    assert.deepEqual(JSON.parse(req.body), {
      aps: { "content-available": 1 },
      type: "update",
      topic: "cal",
      timestamp: changedAt,
      priority: 80,
    });
    assert.deepEqual(m.fcm.problems, []);
    assert.deepEqual(m.apns.problems, []);
  } finally {
    await m.close();
  }
});

Deno.test("FCM UNREGISTERED and APNs 410 Unregistered prune the client; an FCM 404 for a wrong project does not", async () => {
  const m = await mobileRelay();
  try {
    const reg = async (json: unknown) =>
      await (await m.h.request("/registrations", { method: "POST", json })).json();
    const f1 = await reg({ transport: "fcm", token: FCM_TOKEN });
    const f2 = await reg({ transport: "fcm", token: `${FCM_TOKEN}-2` });
    const a = await reg({ transport: "apns", token: APNS_TOKEN, environment: "production" });
    const expires = new Date(m.h.now() + 3600_000).toISOString();
    for (
      const [r, t, topic] of [[f1, "fcm", "f1"], [f2, "fcm", "f2"], [a, "apns", "a1"]] as const
    ) {
      await m.h.request("/gateway", {
        method: "POST",
        headers: { authorization: "Bearer app-one-token-0123456789abcdef" },
        json: {
          "push-subscribe": {
            topics: [topic],
            "selected-transport": {
              "transport-uri": `${PUBLIC_URL}/transports/${t}`,
              "client-data": r["client-data"],
            },
            expires,
          },
        },
      });
    }
    await settle(m.h);
    m.fcm.enqueue(
      fcmError(404, "NOT_FOUND", "Requested entity was not found.", { errorCode: "UNREGISTERED" }),
    );
    await m.h.push([{ topic: "f1" }]);
    await settle(m.h);
    assert.equal(await m.h.relay.store.registrations.get(f1["client-id"]), null);
    m.fcm.enqueue(fcmError(404, "NOT_FOUND", "Project not found"));
    await m.h.push([{ topic: "f2" }]);
    await settle(m.h);
    assert.notEqual(await m.h.relay.store.registrations.get(f2["client-id"]), null);
    m.apns.enqueue({ status: 410, reason: "Unregistered" });
    await m.h.push([{ topic: "a1" }]);
    await settle(m.h);
    assert.equal(await m.h.relay.store.registrations.get(a["client-id"]), null);
    const after = await m.h.push([{ topic: "f1" }, { topic: "f2" }, { topic: "a1" }]);
    assert.deepEqual(await after.json(), {
      "push-response": { "no-subscribers": [{ topic: "f1" }, { topic: "a1" }] },
    });
  } finally {
    await m.close();
  }
});

Deno.test("RFC 8030 §5.2 TTL on the wire: a first attempt carries RELAY_TTL exactly as the Web Push TTL, FCM android.ttl and APNs apns-expiration", async () => {
  // The real clock from a whole second on, moved on by 1 ms at every read: time passes between
  // the 200 and each send, and the sends still fall in the push's second.
  const start = Math.ceil(Date.now() / 1000) * 1000;
  let reads = 0;
  const now = () => start + reads++;
  const seen: (string | null)[] = [];
  await using sink = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    seen.push(req.headers.get("ttl"));
    return new Response(null, { status: 201 });
  });
  const m = await mobileRelay({ RELAY_TTL: "3333", RELAY_ALLOW_PRIVATE_ENDPOINTS: "1" }, now);
  try {
    const { publicKey } = await testSubscriptionKeys();
    const devices = [
      { transport: "fcm", token: FCM_TOKEN },
      { transport: "apns", token: APNS_TOKEN, environment: "production" },
      {
        transport: "web-push",
        subscription: {
          endpoint: `http://127.0.0.1:${sink.addr.port}/w/1`,
          keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" },
        },
      },
    ];
    for (const json of devices) {
      const reg = await (await m.h.request("/registrations", { method: "POST", json })).json();
      const res = await m.h.request("/gateway", {
        method: "POST",
        headers: { authorization: `Bearer ${APP_TOKEN}` },
        json: {
          "push-subscribe": {
            topics: ["ttl"],
            "selected-transport": {
              "transport-uri": reg["transport-uri"],
              "client-data": reg["client-data"],
            },
            expires: new Date(now() + 3600_000).toISOString(),
          },
        },
      });
      assert.equal(res.status, 200);
    }
    await settle(m.h);
    m.fcm.sends.length = 0;
    m.apns.requests.length = 0;
    seen.length = 0;
    const pushedAt = now();
    assert.equal((await m.h.push([{ topic: "ttl" }])).status, 200);
    await settle(m.h);
    assert.equal(
      Math.floor(now() / 1000),
      Math.floor(pushedAt / 1000),
      "the clock left its second",
    );
    assert.deepEqual(seen, ["3333"]);
    const android = (m.fcm.sends[0]!.body.message as { android: Record<string, unknown> }).android;
    assert.equal(android.ttl, "3333s");
    assert.equal(
      m.apns.requests[0]!.headers["apns-expiration"],
      String(Math.floor(pushedAt / 1000) + 3333),
    );
  } finally {
    await m.close();
  }
});
