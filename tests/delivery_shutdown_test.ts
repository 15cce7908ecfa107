/**
 * On SIGTERM (or SIGINT) the relay stops accepting and finishes or releases its
 * claimed work within 5 seconds; after a restart the rest goes out. The relay runs as a process
 * with the default lease, so the restarted one could only resume this fast if the stopping one
 * really gave its work back.
 */

import assert from "node:assert/strict";
import { startRelayProcess } from "./peers/relay_process.ts";
import {
  leftoverWork,
  pushToRelay,
  relayProcessEnv,
  runRelayUntil,
  seedSubscribers,
  startCountingPushService,
  userAgentKeys,
  waitUntil,
} from "./fixtures/delivery.ts";

const SUBSCRIBERS = 1500;

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`Shutdown: on ${signal} mid-fan-out the relay exits within 5 s and a restart delivers the rest, none twice`, async () => {
    const dir = await Deno.makeTempDir();
    const kvPath = `${dir}/relay.sqlite3`;
    const push = await startCountingPushService({ delayMs: 100 });
    try {
      await seedSubscribers({
        kvPath,
        app: "app",
        topics: ["t"],
        count: SUBSCRIBERS,
        endpoint: push.endpoint,
        keys: userAgentKeys(),
      });
      const env = relayProcessEnv(kvPath);
      const first = await startRelayProcess(env);
      assert.equal((await pushToRelay(first.url, { topic: "t" }))[0], 200);
      await waitUntil(() => push.total() >= SUBSCRIBERS / 3, 20_000, "a third of the fan-out");
      const stopAt = performance.now();
      const code = await first.stop(signal);
      const stopMs = Math.round(performance.now() - stopAt);
      const atStop = push.total();
      assert.equal(code, 0, first.output());
      assert.ok(stopMs < 5000, `took ${stopMs} ms to stop`);
      assert.ok(atStop < SUBSCRIBERS, "the fan-out had already finished");
      // It stopped accepting: nothing listens on its port any more.
      await assert.rejects(fetch(`${first.url}/healthz`));
      assert.match(first.output(), /"event":"stopped"/);

      const restartAt = performance.now();
      await runRelayUntil(env, () => push.counts.size >= SUBSCRIBERS, 20_000, "every subscriber");
      const resumeMs = Math.round(performance.now() - restartAt);
      const duplicates = push.duplicates();
      console.log(
        `${signal}: stopped in ${stopMs} ms after ${atStop}/${SUBSCRIBERS} deliveries; ` +
          `restart delivered the rest in ${resumeMs} ms; duplicates ${duplicates}`,
      );
      assert.equal(push.counts.size, SUBSCRIBERS);
      // Graceful: the in-flight sends finished and were committed before the release.
      assert.equal(duplicates, 0);
      // Released, not left to the 15 s lease.
      assert.ok(resumeMs < 10_000, `resumed after ${resumeMs} ms`);
      assert.deepEqual(await leftoverWork(kvPath), { outbox: 0, queued: 0 });
    } finally {
      await push.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("Shutdown: a push service that hangs cannot hold SIGTERM past 5 s; aborted sends are retried after the restart", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/relay.sqlite3`;
  const service = { delayMs: 60_000 };
  const push = await startCountingPushService(service);
  const subscribers = 300;
  try {
    await seedSubscribers({
      kvPath,
      app: "app",
      topics: ["t"],
      count: subscribers,
      endpoint: push.endpoint,
      keys: userAgentKeys(),
    });
    const env = relayProcessEnv(kvPath);
    const first = await startRelayProcess(env);
    assert.equal((await pushToRelay(first.url, { topic: "t" }))[0], 200);
    // The fan-out's 64 sends hang at the push service.
    await waitUntil(() => push.inFlight() >= 64, 10_000, "64 hanging sends");
    const stopAt = performance.now();
    assert.equal(await first.stop(), 0, first.output());
    const stopMs = Math.round(performance.now() - stopAt);
    assert.ok(stopMs < 5000, `took ${stopMs} ms to stop`);
    // The service saw these requests, but the relay gave up on them: they must go out again.
    const hung = push.total();

    service.delayMs = 0;
    await runRelayUntil(
      env,
      () => push.counts.size >= subscribers && push.total() >= subscribers + hung,
      20_000,
      "every subscriber, and the aborted sends again",
    );
    const duplicates = push.duplicates();
    console.log(
      `hanging service: stopped in ${stopMs} ms with ${hung} sends hanging; ` +
        `duplicates ${duplicates}`,
    );
    assert.equal(push.counts.size, subscribers);
    // Only the sends that hung (and were aborted, so retried) reached the service twice.
    assert.equal(duplicates, hung);
    assert.deepEqual(await leftoverWork(kvPath), { outbox: 0, queued: 0 });
  } finally {
    await push.close();
    await Deno.remove(dir, { recursive: true });
  }
});
