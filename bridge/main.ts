/**
 * `deno task bridge`: runs the CalDAV bridge (README, "The CalDAV bridge") with settings from
 * `BRIDGE_*`.
 * `BRIDGE_PORT=0` picks a free port; the `listening` log line says which.
 *
 * @module
 */

import { createBridge } from "./app.ts";
import { loadBridgeConfig } from "./config.ts";
import { consoleLogger } from "./log.ts";
import { openPushStore, type PushStore } from "./push_store.ts";

const logger = consoleLogger();
const env = Deno.env.toObject();
let config;
try {
  config = await loadBridgeConfig(env);
} catch (err) {
  logger.log("error", "config-invalid", { error: (err as Error).message });
  Deno.exit(1);
}
// With BRIDGE_UPSTREAM: the WebDAV-Push registrations, kept in KV across restarts.
let kv: Deno.Kv | undefined;
let pushStore: PushStore | undefined;
if (config.upstream !== undefined) {
  kv = await Deno.openKv(config.kvPath);
  pushStore = await openPushStore(kv, config.secret);
}
const bridge = createBridge({ config, logger, ...(pushStore ? { pushStore } : {}) });
const controller = new AbortController();
const server = Deno.serve({
  port: config.port,
  signal: controller.signal,
  onListen({ port: actual }) {
    if (env.BRIDGE_PUBLIC_URL === undefined) config.publicUrl = `http://localhost:${actual}`;
    logger.log("info", "listening", {
      port: actual,
      "public-url": config.publicUrl,
      relay: config.relayUrl,
      collections: config.collections.map((c) => c.url),
      "poll-seconds": config.pollSeconds,
      ...(config.upstream !== undefined
        ? {
          upstream: config.upstream,
          "webdav-push": config.collections.flatMap((c) => c.proxyPath ?? []),
        }
        : {}),
    });
  },
}, bridge.app.fetch);
bridge.start();

const shutdown = async () => {
  await bridge.stop();
  controller.abort();
};
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  try {
    Deno.addSignalListener(signal, shutdown);
  } catch {
    // SIGTERM cannot be listened to on Windows
  }
}
await server.finished;
kv?.close();
