/**
 * Composition root: environment → config → KV → relay → `Deno.serve`, plus the background
 * loop (a timer locally, `Deno.cron` on Deno Deploy) and graceful shutdown on SIGTERM/SIGINT.
 *
 * @module
 */

import { describeError } from "./lib/errors.ts";
import { ConfigError, loadConfig } from "./lib/config.ts";
import { consoleLogger } from "./lib/log.ts";
import { createRelay } from "./relay.ts";

let config;
try {
  config = loadConfig(Deno.env.toObject());
} catch (err) {
  if (err instanceof ConfigError) {
    console.error(`Configuration error: ${err.message}`);
    Deno.exit(78); // EX_CONFIG
  }
  throw err;
}
const logger = consoleLogger({ gather: !config.onDenoDeploy });

const kv = await Deno.openKv(config.kvPath);
const relay = await createRelay({
  config,
  kv,
  logger,
  onDevTokenCreated(token) {
    // The dev app's token is the only secret ever printed, once, when it is created.
    console.log(
      `Dev mode (RELAY_APPS unset): app "dev" created; its bearer token is ${token}\n` +
        "It is kept in KV and will not be shown again.",
    );
  },
});

const TICK_MS = 1000;
const onDeploy = Deno.env.get("DENO_DEPLOYMENT_ID") !== undefined;
let ticker: ReturnType<typeof setInterval> | undefined;
const tick = () =>
  relay.engine.tick().catch((err) =>
    logger.log("error", "tick.error", { error: describeError(err) })
  );
if (onDeploy && typeof Deno.cron === "function") {
  // Deno Deploy: isolates sleep when idle, so a cron wakes one to pick up left-over work.
  Deno.cron("dav-push-relay worker", "* * * * *", tick);
} else {
  ticker = setInterval(tick, TICK_MS);
}
// Pick up what a previous run left (crash or restart) right away.
tick();

const shutdown = new AbortController();
const server = Deno.serve({
  port: config.port,
  signal: shutdown.signal,
  onListen({ hostname, port }) {
    logger.log("info", "listening", { hostname, port, publicUrl: config.publicUrl });
  },
}, relay.app.fetch);

let stopping = false;
async function stop(signal: string) {
  if (stopping) return;
  stopping = true;
  logger.log("info", "shutdown", { signal });
  clearInterval(ticker);
  shutdown.abort(); // stop accepting; in-flight requests finish
  // Finish or release claimed work within 5 seconds. The engine stops starting
  // sends, commits what finished, gives the rest back and removes its heartbeat, so another
  // process (or the next start) takes over at once.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.all([relay.engine.shutdown(4500), server.finished]),
    new Promise((resolve) => (timer = setTimeout(resolve, 4800))),
  ]);
  clearTimeout(timer);
  kv.close();
  logger.log("info", "stopped", {});
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  try {
    Deno.addSignalListener(signal, () => void stop(signal));
  } catch {
    // Signals are not available everywhere (e.g. some deploy targets).
  }
}
