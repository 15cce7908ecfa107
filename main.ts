/**
 * Entry: the `Deno.cron` job first (cron.ts), then environment → config → KV → relay →
 * `Deno.serve`, the background loop, and graceful shutdown on SIGTERM/SIGINT.
 *
 * On Deno Deploy the relay runs only when nothing would be lost per instance (preflight.ts);
 * otherwise it logs what is missing and answers `503` on every route.
 *
 * @module
 */

// First, before anything awaits: Deno Deploy picks up only cron jobs registered at the top level
// before the server starts (https://docs.deno.com/deploy/reference/cron/).
import { cronRegistration, platformRunsCron, setCronWork } from "./cron.ts";
import { describeError } from "./lib/errors.ts";
import { ConfigError, loadConfig } from "./lib/config.ts";
import { consoleLogger } from "./lib/log.ts";
import { deployConfigProblems, openCheckedKv, refusal } from "./preflight.ts";
import { createRelay, type Relay } from "./relay.ts";

function exitOnConfigError(err: unknown): never {
  if (err instanceof ConfigError) {
    console.error(`Configuration error: ${err.message}`);
    Deno.exit(78); // EX_CONFIG
  }
  throw err;
}

const env = Deno.env.toObject();
const config = (() => {
  try {
    return loadConfig(env);
  } catch (err) {
    exitOnConfigError(err);
  }
})();
const logger = consoleLogger({ gather: !config.onDenoDeploy });

// Where no platform scheduler starts the cron job, a timer ticks while the process runs. A
// timer never wakes a stopped instance: on Deno Deploy only requests and cron runs do.
const platformCron = platformRunsCron(env, config.onDenoDeploy);
if (cronRegistration.registered) {
  logger.log("info", "cron", { registered: true, scheduler: platformCron ? "platform" : "local" });
} else {
  logger.log("warn", "cron.unavailable", {
    error: cronRegistration.error,
    effect: "left-over work is picked up only by a timer, while this process runs",
  });
}

const TICK_MS = 1000;
let kv: Deno.Kv | undefined;
let relay: Relay | undefined;
let ticker: ReturnType<typeof setInterval> | undefined;
const tick = () => relay?.tick() ?? Promise.resolve();

/** Opens KV and builds the relay; returns what stopped it (empty once it runs). */
async function start(): Promise<string[]> {
  if (config.onDenoDeploy) {
    const opened = await openCheckedKv(config.kvPath);
    if ("problem" in opened) return [opened.problem];
    kv = opened.kv;
  } else {
    kv = await Deno.openKv(config.kvPath);
  }
  try {
    relay = await createRelay({
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
  } catch (err) {
    // A later retry opens KV again: this one must not stay open.
    kv.close();
    kv = undefined;
    exitOnConfigError(err);
  }
  if (!platformCron) ticker = setInterval(tick, TICK_MS);
  // Pick up what a previous run left (crash or restart) right away.
  void tick();
  return [];
}

let starting: Promise<void> | undefined;
let retryAt = 0;
const problems = config.onDenoDeploy ? deployConfigProblems(config) : [];
// Only a database that did not answer can come back; missing variables cannot.
const retryable = problems.length === 0;
const initial = retryable ? start() : Promise.resolve([]);
// The cron job's pass waits for the relay: an instance the cron itself started is still
// starting when the job runs.
setCronWork(async () => {
  await initial.catch(() => {});
  if (!relay) {
    retryStart();
    await starting;
  }
  await tick();
});
problems.push(...await initial);
if (problems.length > 0) {
  logger.log("error", "deploy.refused", {
    missing: problems,
    effect: "every route answers 503 (README: Deploying to Deno Deploy)",
  });
}

/** While only KV was missing, tries again (at most every 10 s) when a request or cron comes. */
function retryStart(): void {
  if (!retryable || relay || starting || performance.now() < retryAt) return;
  retryAt = performance.now() + 10_000;
  starting = start().then((left) => {
    if (left.length > 0) logger.log("warn", "deploy.still_refused", { missing: left });
    else logger.log("info", "deploy.started", {});
  }).catch((err) => logger.log("error", "deploy.start_error", { error: describeError(err) }))
    .finally(() => (starting = undefined));
}

function handle(req: Request, info: Deno.ServeHandlerInfo): Response | Promise<Response> {
  if (relay) return relay.app.fetch(req, info);
  retryStart();
  return refusal();
}

const shutdown = new AbortController();
const server = Deno.serve({
  port: config.port,
  signal: shutdown.signal,
  onListen({ hostname, port }) {
    logger.log("info", "listening", { hostname, port, publicUrl: config.publicUrl });
  },
}, handle);

let stopping = false;
async function stop(signal: string) {
  if (stopping) return;
  stopping = true;
  logger.log("info", "shutdown", { signal });
  clearInterval(ticker);
  shutdown.abort(); // stop accepting; in-flight requests finish
  // Finish or release claimed work within 5 seconds (Deno Deploy kills an instance 5 s after
  // its SIGINT: https://docs.deno.com/deploy/reference/runtime/). The engine stops starting
  // sends, commits what finished, gives the rest back and removes its heartbeat, so another
  // process (or the next start) takes over at once.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.all([relay?.engine.shutdown(4500), server.finished]),
    new Promise((resolve) => (timer = setTimeout(resolve, 4800))),
  ]);
  clearTimeout(timer);
  kv?.close();
  logger.log("info", "stopped", {});
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  try {
    Deno.addSignalListener(signal, () => void stop(signal));
  } catch {
    // Signals are not available on every platform (Windows has no SIGTERM listener).
  }
}
