/**
 * The relay's side of WebDAV-Push through the bridge (README, "The client API" and "The
 * gateway protocol"): the `payload` of a registration, the `push-message` XML a `webdav-push`
 * device gets instead of JSON and acknowledgements, and the two `push` extensions (`client-id`
 * arrays, `sync-token`).
 */

import assert from "node:assert/strict";
import { parsePushMessage } from "../dav/webdav_push.ts";
import { webdavPushMessage } from "../lib/delivery/payload.ts";
import { Registrations } from "../lib/registrations.ts";
import { createSealer } from "../lib/seal.ts";
import { type Harness, harness, PUBLIC_URL, settle, testSubscriptionKeys } from "./_harness.ts";

async function register(h: Harness, extra: Record<string, unknown>, n: number) {
  const { publicKey } = await testSubscriptionKeys();
  return await h.request("/registrations", {
    method: "POST",
    json: {
      transport: "web-push",
      subscription: {
        endpoint: `https://push.example.com/up/${n}-${crypto.randomUUID()}`,
        keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" },
      },
      ...extra,
    },
  });
}

async function device(h: Harness, payload: string | undefined, n: number) {
  const res = await register(h, payload === undefined ? {} : { payload }, n);
  assert.equal(res.status, 201, await res.clone().text());
  return await res.json() as { "client-data": string; "client-id": string };
}

/** What each endpoint received since the last reset, by endpoint path's number. */
function byDevice(h: Harness): Map<number, unknown[]> {
  const out = new Map<number, unknown[]>();
  for (const s of h.webPush.sent) {
    if (s.target.transport !== "web-push") continue;
    const n = Number(/\/up\/(\d+)-/.exec(s.target.endpoint)![1]);
    const p = s.message.payload;
    const list = out.get(n) ?? [];
    list.push(p.kind === "text" ? p.text : p.kind === "json" ? p.data : "encrypted");
    out.set(n, list);
  }
  return out;
}

Deno.test('"payload" is "cc-dav-push" or "webdav-push" on web-push; an unknown value is 400 invalid-request and records nothing', async () => {
  const h = await harness();
  try {
    const before = await h.dump();
    for (const bad of ["json", "WEBDAV-PUSH", "", 1, null, true, ["webdav-push"]]) {
      const res = await register(h, { payload: bad }, 1);
      assert.equal(res.status, 400, JSON.stringify(bad));
      assert.equal((await res.json()).error.code, "invalid-request");
    }
    assert.deepEqual(await h.dump(), before);
    for (const good of ["cc-dav-push", "webdav-push"]) {
      assert.equal((await register(h, { payload: good }, 2)).status, 201);
    }
  } finally {
    await h.close();
  }
});

Deno.test('"payload" on an FCM or APNs registration is 400 invalid-request', async () => {
  const h = await harness();
  try {
    // The harness enables web-push only, so the rule is checked where it is decided.
    const regs = new Registrations({
      store: h.relay.store,
      sealer: await createSealer(new Uint8Array(32).fill(9)),
      transports: [
        { id: "fcm", uri: `${PUBLIC_URL}/transports/fcm`, data: {} },
        { id: "apns", uri: `${PUBLIC_URL}/transports/apns`, data: {} },
      ],
      refreshInterval: 604800,
      publicUrl: PUBLIC_URL,
      allowPrivateEndpoints: false,
      resolve: () => Promise.resolve(["93.184.216.34"]),
      now: h.now,
      logger: h.logger,
    });
    const apns = { token: "ab".repeat(32), environment: "production" };
    for (const payload of ["cc-dav-push", "webdav-push"]) {
      for (
        const req of [{ transport: "fcm" as const, token: "fcm-1" }, {
          transport: "apns" as const,
          ...apns,
        }]
      ) {
        await assert.rejects(
          regs.register({ ...req, ingress: false, payload }),
          (err: { status: number; code: string }) =>
            err.status === 400 && err.code === "invalid-request",
        );
      }
    }
    assert.equal(
      (await regs.register({ transport: "fcm", token: "fcm-1", ingress: false }))["client-id"]
        .length > 0,
      true,
    );
  } finally {
    await h.close();
  }
});

Deno.test("a webdav-push registration gets no acknowledging push on subscribe; a cc-dav-push one does", async () => {
  const h = await harness();
  try {
    const xml = await device(h, "webdav-push", 1);
    const json = await device(h, undefined, 2);
    assert.equal((await h.subscribe(xml["client-data"], ["t1"])).status, 200);
    assert.equal((await h.subscribe(json["client-data"], ["t1"])).status, 200);
    await settle(h);
    const got = byDevice(h);
    assert.equal(got.get(1), undefined);
    assert.equal((got.get(2)![0] as Record<string, unknown>).type, "subscribed");
  } finally {
    await h.close();
  }
});

Deno.test("a webdav-push device gets the WebDAV-Push push-message, with D:sync-token only when the message carried one; cc-dav-push devices get JSON", async () => {
  const h = await harness();
  try {
    const xml = await device(h, "webdav-push", 1);
    const json = await device(h, "cc-dav-push", 2);
    await h.subscribe(xml["client-data"], ["O7M1nQ7cKkKTKsoS_j6Z3w"]);
    await h.subscribe(json["client-data"], ["O7M1nQ7cKkKTKsoS_j6Z3w"]);
    await settle(h);
    h.webPush.sent = [];
    const token = "http://example.com/sync/10?a=1&b=<2>";
    await h.push([{ topic: "O7M1nQ7cKkKTKsoS_j6Z3w", "sync-token": token }]);
    await settle(h);
    await h.push([{ topic: "O7M1nQ7cKkKTKsoS_j6Z3w" }]);
    await settle(h);
    const got = byDevice(h);
    assert.deepEqual(got.get(1), [
      '<?xml version="1.0" encoding="utf-8"?>\n' +
      '<push-message xmlns="https://bitfire.at/webdav-push" xmlns:D="DAV:">' +
      "<topic>O7M1nQ7cKkKTKsoS_j6Z3w</topic><content-update><D:sync-token>" +
      "http://example.com/sync/10?a=1&amp;b=&lt;2&gt;</D:sync-token></content-update>" +
      "</push-message>",
      '<?xml version="1.0" encoding="utf-8"?>\n' +
      '<push-message xmlns="https://bitfire.at/webdav-push" xmlns:D="DAV:">' +
      "<topic>O7M1nQ7cKkKTKsoS_j6Z3w</topic><content-update/></push-message>",
    ]);
    // Read back namespace-aware, as DAVx⁵ does.
    const [first, second] = (got.get(1) as string[]).map((x) => parsePushMessage(x));
    assert.deepEqual(first, {
      topic: "O7M1nQ7cKkKTKsoS_j6Z3w",
      contentUpdate: true,
      syncToken: token,
      propertyUpdate: false,
    });
    assert.equal(second!.syncToken, undefined);
    // The JSON payload never carries the sync-token.
    for (const p of got.get(2) as Record<string, unknown>[]) {
      assert.equal(p.type, "update");
      assert.equal("sync-token" in p, false);
    }
  } finally {
    await h.close();
  }
});

Deno.test("a push-message whose sync-token would not fit one Web Push record is sent without it", () => {
  const long = "é".repeat(1024).repeat(2);
  const xml = webdavPushMessage("t", long);
  assert.equal(parsePushMessage(xml).syncToken, undefined);
  assert.equal(parsePushMessage(xml).topic, "t");
  assert.equal(
    parsePushMessage(webdavPushMessage("t", "é".repeat(1024))).syncToken,
    "é".repeat(1024),
  );
});

Deno.test('"client-id" as an array: none of those clients is notified, everyone else is', async () => {
  const h = await harness();
  try {
    const devices = [];
    for (let i = 1; i <= 4; i++) devices.push(await device(h, "webdav-push", i));
    for (const d of devices) await h.subscribe(d["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    const res = await h.push([{
      topic: "t",
      // One percent-encoded, as Push-Client-Id may be; a duplicate; an unknown id.
      "client-id": [
        devices[0]!["client-id"].replace(/-/g, "%2D"),
        devices[2]!["client-id"],
        devices[2]!["client-id"],
        "not-a-client",
      ],
    }]);
    assert.deepEqual(await res.json(), { "push-response": {} });
    await settle(h);
    assert.deepEqual([...byDevice(h).keys()].sort(), [2, 4]);
    // Every subscriber named: nobody is notified, and the topic still has subscribers.
    h.webPush.sent = [];
    const all = await h.push([{ topic: "t", "client-id": devices.map((d) => d["client-id"]) }]);
    assert.deepEqual(await all.json(), { "push-response": {} });
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
    // An empty array names nobody.
    await h.push([{ topic: "t", "client-id": [] }]);
    await settle(h);
    assert.equal(h.webPush.sent.length, 4);
  } finally {
    await h.close();
  }
});

Deno.test('"client-id" arrays of more than 100, or with a non-string or empty entry, and a "sync-token" over 1024 characters are 400 invalid-request, and nothing is sent', async () => {
  const h = await harness();
  try {
    const d = await device(h, "webdav-push", 1);
    await h.subscribe(d["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    const ids = (n: number) => Array.from({ length: n }, (_, i) => `c${i}`);
    const bad: Record<string, unknown>[] = [
      { "client-id": ids(101) },
      { "client-id": ["ok", 7] },
      { "client-id": ["ok", ""] },
      { "client-id": ["x".repeat(257)] },
      { "client-id": { id: "x" } },
      { "sync-token": "x".repeat(1025) },
      { "sync-token": 10 },
      { "sync-token": ["s"] },
    ];
    for (const extra of bad) {
      const res = await h.push([{ topic: "t" }, { topic: "t", ...extra }]);
      assert.equal(res.status, 400, JSON.stringify(extra).slice(0, 80));
      assert.equal((await res.json()).error.code, "invalid-request");
    }
    await settle(h);
    assert.equal(h.webPush.sent.length, 0);
    // The limits themselves are fine: 100 client-ids, 1024 characters (code points).
    const ok = await h.push([{
      topic: "t",
      "client-id": ids(100),
      "sync-token": "😀".repeat(1024),
    }]);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    await settle(h);
    assert.equal(h.webPush.sent.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("coalescing carries the latest sync-token into the merged trailing update and never tells a client of only changes that excluded it", async () => {
  const h = await harness({ RELAY_COALESCE_MS: "2000" });
  try {
    const a = await device(h, "webdav-push", 1);
    const b = await device(h, "webdav-push", 2);
    const c = await device(h, "webdav-push", 3);
    for (const d of [a, b, c]) await h.subscribe(d["client-data"], ["t"]);
    await settle(h);
    h.webPush.sent = [];
    const msg = (token: string, ids: string[]) => ({
      topic: "t",
      "sync-token": token,
      "client-id": ids,
    });
    // a and b wrote the first change together; then a alone twice.
    await h.push([msg("s1", [a["client-id"], b["client-id"]])]);
    await h.push([msg("s2", [a["client-id"]])]);
    await h.push([msg("s3", [a["client-id"]])]);
    await settle(h);
    const now = byDevice(h);
    // c had s1 at once; b had s2 at once (its first update from someone else); a nothing.
    assert.deepEqual(now.get(3)!.map((x) => parsePushMessage(x as string).syncToken), ["s1"]);
    assert.deepEqual(now.get(2)!.map((x) => parsePushMessage(x as string).syncToken), ["s2"]);
    assert.equal(now.get(1), undefined);
    h.webPush.sent = [];
    h.clock.now += 2500;
    await h.relay.engine.tick();
    await settle(h);
    const later = byDevice(h);
    // The trailing update: the latest sync-token, to b (s3 came after its s2) and c.
    assert.deepEqual(later.get(2)!.map((x) => parsePushMessage(x as string).syncToken), ["s3"]);
    assert.deepEqual(later.get(3)!.map((x) => parsePushMessage(x as string).syncToken), ["s3"]);
    assert.equal(later.get(1), undefined);
  } finally {
    await h.close();
  }
});
