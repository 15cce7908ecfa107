/**
 * Crash test: the relay (`main.ts`) runs as a process on a KV file and fans one push
 * out to 3000 subscriptions on a deliberately slow local push service; it is killed with
 * SIGKILL half way and started again, and every subscription still gets the message
 * (CC/CD 70025 §5.4: the application server counts every unlisted topic as delivered).
 * Duplicates are counted and reported; they are bounded by what was in flight.
 */

import assert from "node:assert/strict";
import { formatRfc3339 } from "../lib/time.ts";
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

const SUBSCRIBERS = 3000;

Deno.test("Crash: a relay killed with SIGKILL half way through a 3000-subscriber fan-out loses nothing after a restart", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/relay.sqlite3`;
  const push = await startCountingPushService({ delayMs: 40 });
  try {
    const t0 = performance.now();
    await seedSubscribers({
      kvPath,
      app: "app",
      topics: ["crash-topic"],
      count: SUBSCRIBERS,
      endpoint: push.endpoint,
      keys: userAgentKeys(),
    });
    const seeded = performance.now();
    // Advanced tuning: a dead process's work is taken over 1.5 s after its last heartbeat
    // (default 15 s), so the restarted relay resumes quickly.
    const env = relayProcessEnv(kvPath, { RELAY_LEASE_MS: "1500" });
    const first = await startRelayProcess(env);
    // The 200 means the work is durable: every unlisted topic counts as delivered.
    assert.deepEqual(
      await pushToRelay(first.url, { topic: "crash-topic", timestamp: formatRfc3339(Date.now()) }),
      [200, { "push-response": {} }],
    );

    await waitUntil(() => push.total() >= SUBSCRIBERS / 2, 20_000, "half of the fan-out");
    await first.kill(); // SIGKILL: no shutdown handler runs
    const atKill = push.total();
    const inFlightAtKill = push.inFlight();
    assert.ok(atKill < SUBSCRIBERS, `the fan-out had already finished (${atKill})`);
    const killedAt = performance.now();

    // A fresh relay on the same KV finishes the rest.
    await runRelayUntil(env, () => push.counts.size >= SUBSCRIBERS, 30_000, "every subscriber");
    const done = performance.now();

    const missing = [...Array(SUBSCRIBERS).keys()].filter((i) => !push.counts.has(i));
    const duplicates = push.duplicates();
    const maxPerEndpoint = Math.max(...push.counts.values());
    console.log(
      `crash test: ${SUBSCRIBERS} subscribers, seeded in ${Math.round(seeded - t0)} ms; ` +
        `killed after ${atKill} deliveries (${inFlightAtKill} in flight); restart finished ` +
        `the rest in ${Math.round(done - killedAt)} ms; missing ${missing.length}, ` +
        `duplicates ${duplicates}, max per endpoint ${maxPerEndpoint}`,
    );
    assert.deepEqual(missing, []);
    // At least once, duplicates limited to what was in flight: the sends running at the kill
    // (64 per fan-out) plus those finished since the last cursor commit (every 100 or 250 ms).
    assert.ok(duplicates <= 400, `${duplicates} duplicates`);
    assert.ok(maxPerEndpoint <= 2);
    assert.deepEqual(await leftoverWork(kvPath), { outbox: 0, queued: 0 });
  } finally {
    await push.close();
    await Deno.remove(dir, { recursive: true });
  }
});
