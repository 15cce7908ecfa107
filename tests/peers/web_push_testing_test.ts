import assert from "node:assert/strict";
import { generateVapidKeys } from "../../lib/crypto/vapid.ts";
import { startWebPushTesting } from "./web_push_testing.ts";

Deno.test("startWebPushTesting() listens on 127.0.0.1 and close() can be called twice", async () => {
  const push = await startWebPushTesting();
  assert.match(push.origin, /^http:\/\/127\.0\.0\.1:\d+$/);
  const { publicKey } = await generateVapidKeys();
  const subscription = await push.subscribe(publicKey);
  assert.ok(subscription.endpoint.startsWith(`${push.origin}/notify/`));
  assert.equal(subscription.keys.auth.length, 22);
  assert.equal(subscription.keys.p256dh.length, 87);
  assert.deepEqual(await push.notifications(subscription), []);
  await assert.rejects(
    push.waitForNotifications(subscription, { timeoutMs: 50 }),
    /received 0 of 1 notifications in 50 ms/,
  );
  await push.close();
  await push.close();
});

Deno.test("startWebPushTesting() reports a subscribe with an invalid applicationServerKey", async () => {
  await using push = await startWebPushTesting();
  await assert.rejects(push.subscribe("AAAA"), /subscribe answered 400/);
});

Deno.test("startWebPushTesting() fails clearly, without leaks, when node cannot be run", async () => {
  await assert.rejects(
    startWebPushTesting({ node: "/nonexistent/node" }),
    /Cannot start web-push-testing: cannot run "\/nonexistent\/node"/,
  );
});

Deno.test("startWebPushTesting() fails clearly, without leaks, when the process exits at once", async () => {
  await assert.rejects(
    startWebPushTesting({ node: "false" }),
    /exited before printing its port/,
  );
});
