/**
 * End to end through the real relay and the real Web Push transport against an independent
 * push service: the npm `web-push-testing` server (run under Node.js), which verifies the
 * VAPID JWT and decrypts aes128gcm with `http_ece`.
 */

import assert from "node:assert/strict";
import { formatRfc3339 } from "../../lib/time.ts";
import { harness, settle } from "../_harness.ts";
import { startWebPushTesting } from "./web_push_testing.ts";
import { listClientSubscriptions } from "../_inspect.ts";

Deno.test("web-push-testing end to end: register, subscribe, push; the decrypted update arrives; 410 prunes the client", async () => {
  await using push = await startWebPushTesting();
  const h = await harness({ RELAY_ALLOW_PRIVATE_ENDPOINTS: "1" }, {
    transports: {},
    now: Date.now,
  });
  try {
    const sub = await push.subscribe(h.relay.vapidPublicKey);
    const reg = await h.request("/registrations", {
      method: "POST",
      json: { transport: "web-push", subscription: { ...sub, expirationTime: null } },
    });
    assert.equal(reg.status, 201);
    const { "client-data": clientData, "client-id": clientId } = await reg.json();

    const subscribed = await h.subscribe(clientData, ["cal-home"], {
      expires: new Date(h.now() + 3600_000).toISOString(),
    });
    assert.equal(subscribed.status, 200);
    // §5.3 SHOULD: the acknowledging push arrives, decrypted by the push service.
    const [ack] = await push.waitForNotifications(sub, { count: 1, timeoutMs: 5000 });
    assert.deepEqual(JSON.parse(ack!).type, "subscribed");
    assert.deepEqual(JSON.parse(ack!).topics, ["cal-home"]);

    const changedAt = formatRfc3339(h.now() - 2000);
    const res = await h.push([{ topic: "cal-home", priority: 80, timestamp: changedAt }]);
    assert.deepEqual(await res.json(), { "push-response": {} });
    const all = await push.waitForNotifications(sub, { count: 2, timeoutMs: 5000 });
    assert.deepEqual(JSON.parse(all[1]!), {
      type: "update",
      topic: "cal-home",
      timestamp: changedAt,
      priority: 80,
    });

    // The push service now answers 410: the client is pruned and revoked.
    await push.expire(sub);
    const gone = await h.push([{ topic: "cal-home" }]);
    assert.deepEqual(await gone.json(), { "push-response": {} });
    await settle(h);
    assert.equal(await h.relay.store.registrations.get(clientId), null);
    assert.deepEqual(await listClientSubscriptions(h.relay.store, clientId), []);
    const after = await h.push([{ topic: "cal-home" }]);
    assert.deepEqual(await after.json(), {
      "push-response": { "no-subscribers": [{ topic: "cal-home" }] },
    });
    // Its client-data is refused from now on: the device must register again.
    const again = await h.subscribe(clientData, ["cal-home"]);
    assert.equal(again.status, 403);
    // No secret reached the log: not the endpoint, the client-data or the app token.
    const log = JSON.stringify(h.logger.lines);
    assert.equal(log.includes(sub.endpoint), false);
    assert.equal(log.includes(clientData), false);
    assert.equal(log.includes(new URL(sub.endpoint).pathname), false);
  } finally {
    await h.close();
  }
});
