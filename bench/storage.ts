/**
 * Storage and memory for the benchmarks: KV bytes per registration and per subscription over
 * `n` of each (seeded through the store API), and the relay's resident memory before, during
 * and after a fan-out to all of them.
 *
 * @module
 */

import { createStore } from "../lib/store/mod.ts";
import { APP, HOUR, log } from "./_common.ts";
import { residentMemory, type Sink, startRelay } from "./_procs.ts";
import { kvFileBytes, seedClients, seedSubscriptions } from "./_seed.ts";
import { relayFanOut } from "./fanout.ts";
import type { StorageResult } from "./report.ts";

export async function storage(
  sink: Sink,
  keys: string[],
  env: Record<string, string>,
  o: { n: number; relayFlags: string[]; relayRoot: URL | undefined },
): Promise<StorageResult> {
  const { n, relayFlags, relayRoot } = o;
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-storage-" });
  const path = `${dir}/relay.sqlite3`;
  const now = Date.now();
  try {
    // An empty database with the relay's own meta keys, as a started relay leaves it.
    const first = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags, relayRoot);
    await first.stop();
    const size0 = await kvFileBytes(path);

    let kv = await Deno.openKv(path);
    log(`storage: registering ${n} clients`);
    // Endpoints as long as real ones (FCM: ~150 characters after the origin), on the sink.
    const clients = await seedClients(createStore(kv), n, {
      endpointBase: `${sink.url}/fcm/send`,
      keys,
      pathBytes: 105,
      now,
    });
    kv.close();
    const size1 = await kvFileBytes(path);

    kv = await Deno.openKv(path);
    log(`storage: subscribing ${n} clients to one topic`);
    await seedSubscriptions(createStore(kv), APP, "all-clients", clients, now + 47 * HOUR, now);
    kv.close();
    const size2 = await kvFileBytes(path);

    const relay = await startRelay({ ...env, RELAY_KV_PATH: path }, relayFlags, relayRoot);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const before = await residentMemory(relay.pid);
      log(`storage: fan-out to all ${n}`);
      let sampled = before.rss;
      const sampler = setInterval(() => {
        residentMemory(relay.pid).then((m) => (sampled = Math.max(sampled, m.rss))).catch(
          () => {},
        );
      }, 100);
      const fanOut = await relayFanOut(relay, sink, "all-clients", n);
      clearInterval(sampler);
      await new Promise((r) => setTimeout(r, 1500));
      const after = await residentMemory(relay.pid);
      return {
        n,
        bytesPerRegistration: (size1 - size0) / n,
        bytesPerSubscription: (size2 - size1) / n,
        kvBytes: size2,
        rssBefore: before.rss,
        rssPeak: Math.max(after.peak, sampled),
        rssAfter: after.rss,
        fanOut,
      } satisfies StorageResult;
    } finally {
      await relay.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
