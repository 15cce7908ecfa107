/**
 * The background worker's `Deno.cron` job, registered when this module is evaluated: main.ts
 * imports it first, so the registration comes before any top-level `await` and before
 * `Deno.serve`. Deno Deploy discovers cron jobs by evaluating the entrypoint's top level, and
 * jobs registered inside conditionals, handlers or after the server starts are not picked up
 * (https://docs.deno.com/deploy/reference/cron/). So the call below is unconditional; its
 * handler waits for the work main.ts hands over once the relay exists.
 *
 * Locally the Deno CLI runs cron jobs in-process (https://docs.deno.com/runtime/fundamentals/cron/):
 * one more tick a minute beside main.ts's timer, which is harmless.
 *
 * @module
 */

/** One background pass (`DeliveryEngine.tick`), resolved when it is done. */
export type CronWork = () => Promise<void>;

/** The job's name, as Deno Deploy's dashboard and logs show it. */
export const CRON_NAME = "dav-push-relay worker";

const work = Promise.withResolvers<CronWork>();

/** Whether the job is registered, or why not. */
export type CronRegistration = { registered: true } | { registered: false; error: string };

let registration: CronRegistration;
try {
  // The finest schedule cron allows: once a minute. The handler returns only when the pass is
  // done, so the platform never starts a second run while one is going on.
  Deno.cron(CRON_NAME, "* * * * *", async () => {
    const run = await work.promise;
    await run();
  });
  registration = { registered: true };
} catch (err) {
  // A TypeError when Deno.cron is missing (the "cron" unstable API is off), or the platform's
  // "Error registering cron" when it refuses the job.
  registration = { registered: false, error: String((err as Error)?.message ?? err) };
}

/** What happened to the registration, for main.ts to log. */
export const cronRegistration: CronRegistration = registration;

/** Hands the job its work: a pass of the relay, or nothing when the relay refused to run. */
export function setCronWork(run: CronWork): void {
  work.resolve(run);
}

/**
 * Whether a platform scheduler starts the job even while no instance runs: Deno Deploy runs
 * cron jobs on the production and git branch timelines, not on preview timelines
 * (https://docs.deno.com/deploy/reference/cron/). Everywhere else only a running process
 * ticks, and a timer of its own does the same work more often.
 */
export function platformRunsCron(
  env: { DENO_TIMELINE?: string | undefined },
  onDenoDeploy: boolean,
): boolean {
  const timeline = env.DENO_TIMELINE ?? "";
  return onDenoDeploy && cronRegistration.registered &&
    (timeline === "production" || timeline.startsWith("git-branch/"));
}
