/**
 * Concurrent pushes are recorded in shared KV commits (group commit) and share the
 * subscriber look-up of their topic, without changing what each request answers or what is
 * delivered (CC/CD 70025 §5.4: unlisted topics count as delivered; §8.3 coalescing).
 */

import assert from "node:assert/strict";
import { harness, settle } from "./_harness.ts";
import { pendingWork } from "./_inspect.ts";

for (const coalesce of ["0", "2000"]) {
  Deno.test(`Group commit (RELAY_COALESCE_MS=${coalesce}): 40 concurrent pushes each get their own answer and every message is delivered`, async () => {
    const h = await harness({ RELAY_COALESCE_MS: coalesce });
    try {
      const dev = await h.registerDevice();
      assert.equal((await h.subscribe(dev["client-data"], ["hot", "warm"])).status, 200);
      await settle(h);
      h.webPush.sent = [];
      let commits = 0;
      const outbox = h.relay.store.outbox;
      const record = outbox.record.bind(outbox);
      outbox.record = (write) => {
        commits++;
        return record(write);
      };
      const answers = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
        const topics = i % 2 === 0 ? ["hot"] : ["hot", `nobody-${i}`];
        const res = await h.push(topics.map((topic) => ({ topic, priority: i })));
        assert.equal(res.status, 200);
        return await res.json();
      }));
      answers.forEach((a, i) => {
        assert.deepEqual(
          a,
          i % 2 === 0
            ? { "push-response": {} }
            : { "push-response": { "no-subscribers": [{ topic: `nobody-${i}` }] } },
        );
      });
      await settle(h);
      // Far fewer outbox commits than requests: they were recorded together.
      assert.ok(commits < 20, `${commits} outbox commits for 40 pushes`);
      h.clock.now += 2000;
      await h.relay.engine.tick();
      await settle(h);
      const sent = h.webPush.payloads().filter((p) => p.topic === "hot");
      if (coalesce === "0") {
        assert.equal(sent.length, 40);
      } else {
        // The first at once, the other 39 merged into one trailing update with the highest
        // priority (§8.3).
        assert.equal(sent.length, 2);
        assert.equal(sent[1]!.priority, 39);
      }
      assert.equal(h.relay.metrics.pushesReceived.get(), 40);
      assert.deepEqual(await pendingWork(h.relay.store), { outbox: 0, queued: 0 });
    } finally {
      await h.close();
    }
  });
}

Deno.test("Shared subscriber look-ups: concurrent checks of one topic agree with each caller's own clock", async () => {
  const h = await harness();
  try {
    const store = h.relay.store;
    await store.subscriptions.upsert("app1", "c1", "web-push", ["t"], 1000, 0);
    const checks = await Promise.all([
      store.subscriptions.hasActiveSubscriber("app1", "t", 500),
      store.subscriptions.hasActiveSubscriber("app1", "t", 999),
      store.subscriptions.hasActiveSubscriber("app1", "t", 1000),
      store.subscriptions.hasActiveSubscriber("app1", "t", 5000),
      store.subscriptions.hasActiveSubscriber("app1", "other", 0),
    ]);
    assert.deepEqual(checks, [true, true, false, false, false]);
    // A subscription made after a check was called is seen by the next check.
    const late = store.subscriptions.hasActiveSubscriber("app1", "u", 0);
    await store.subscriptions.upsert("app1", "c1", "web-push", ["u"], 1000, 0);
    assert.equal(await store.subscriptions.hasActiveSubscriber("app1", "u", 0), true);
    assert.equal(typeof (await late), "boolean");
  } finally {
    await h.close();
  }
});
