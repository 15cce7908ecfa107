/**
 * Deno Deploy (README "Deploying to Deno Deploy"), with `main.ts` run as a child process as
 * Deploy would (`DENO_DEPLOYMENT_ID` set): the relay refuses to run (one log line naming what
 * is missing, `503` on every route) unless the secret, the VAPID keys and `RELAY_APPS` are set
 * and KV answers; and the `Deno.cron` job is registered at the top level, first.
 */

import assert from "node:assert/strict";
import { generateVapidKeys } from "../lib/crypto/vapid.ts";
import { encodeBase64Url } from "../lib/encoding.ts";
import { startRelayProcess } from "./peers/relay_process.ts";

const ROUTES: [string, string][] = [
  ["GET", "/healthz"],
  ["GET", "/transports"],
  ["POST", "/gateway"],
  ["POST", "/registrations"],
  ["GET", "/admin"],
  ["GET", "/metrics"],
  ["GET", "/no/such/path"],
];

async function deployEnv() {
  const vapid = await generateVapidKeys();
  return {
    DENO_DEPLOYMENT_ID: "test-deployment",
    RELAY_SECRET: encodeBase64Url(crypto.getRandomValues(new Uint8Array(32))),
    RELAY_VAPID_PUBLIC_KEY: vapid.publicKey,
    RELAY_VAPID_PRIVATE_KEY: vapid.privateKey,
    RELAY_APPS: "server:0123456789abcdef0123456789",
  };
}

/** Every route answers 503 `not-configured`, and one log line names what is missing. */
async function assertRefused(env: Record<string, string>, missing: RegExp[]): Promise<string> {
  const relay = await startRelayProcess(env);
  try {
    for (const [method, path] of ROUTES) {
      const res = await fetch(`${relay.url}${path}`, { method });
      assert.equal(res.status, 503, `${method} ${path}`);
      assert.equal((await res.json()).error.code, "not-configured");
    }
  } finally {
    assert.equal(await relay.stop(), 0);
  }
  const refusals = relay.output().split("\n").filter((l) => l.includes('"deploy.refused"'));
  assert.equal(refusals.length, 1, relay.output());
  for (const m of missing) assert.match(refusals[0]!, m);
  return relay.output();
}

Deno.test("On Deno Deploy without RELAY_SECRET, the VAPID keys and RELAY_APPS every route is 503, one log line names them, and nothing is generated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const kvPath = `${dir}/relay.sqlite3`;
    const out = await assertRefused({ DENO_DEPLOYMENT_ID: "test", RELAY_KV_PATH: kvPath }, [
      /RELAY_SECRET/,
      /RELAY_VAPID_PUBLIC_KEY and RELAY_VAPID_PRIVATE_KEY/,
      /RELAY_APPS/,
    ]);
    assert.doesNotMatch(out, /bearer token is/);
    // No secret, key pair or dev token was generated: KV was never even opened.
    await assert.rejects(Deno.stat(kvPath), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("On Deno Deploy one missing variable is enough to refuse", async () => {
  const env = await deployEnv();
  delete (env as Record<string, string | undefined>).RELAY_APPS;
  await assertRefused({ ...env, RELAY_KV_PATH: ":memory:" }, [/RELAY_APPS/, /:memory:/]);
});

Deno.test("On Deno Deploy a KV database that does not answer is refused too", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A path whose directory does not exist: Deno.openKv rejects.
    const env = { ...(await deployEnv()), RELAY_KV_PATH: `${dir}/missing/relay.sqlite3` };
    await assertRefused(env, [/KV database does not answer/]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("On Deno Deploy with the secret, the VAPID keys, RELAY_APPS and a KV that answers, the relay runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const env = { ...(await deployEnv()), RELAY_KV_PATH: `${dir}/relay.sqlite3` };
    const relay = await startRelayProcess(env);
    try {
      const health = await fetch(`${relay.url}/healthz`);
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { status: "ok" });
      const boot = await (await fetch(`${relay.url}/transports`)).json();
      assert.equal(
        boot["push-transports"][0].transport["transport-data"]["vapid-public-key"],
        env.RELAY_VAPID_PUBLIC_KEY,
      );
    } finally {
      assert.equal(await relay.stop(), 0);
    }
    assert.doesNotMatch(relay.output(), /deploy\.refused|bearer token is/);
    assert.match(relay.output(), /"event":"cron","registered":true/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("An admin token equal to an app token stops the process at start (exit 78) naming RELAY_ADMIN_TOKEN", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname],
    env: {
      RELAY_APPS: "a:0123456789abcdef0123",
      RELAY_ADMIN_TOKEN: "0123456789abcdef0123",
      RELAY_KV_PATH: ":memory:",
      PORT: "0",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 78);
  assert.match(new TextDecoder().decode(out.stderr), /RELAY_ADMIN_TOKEN: must differ/);
});

Deno.test("main.ts imports cron.ts before anything else, and cron.ts calls Deno.cron at its top level before any await", async () => {
  const main = await Deno.readTextFile(new URL("../main.ts", import.meta.url));
  const firstImport = /^import [^;]+ from "([^"]+)";/m.exec(main);
  assert.equal(firstImport?.[1], "./cron.ts");
  const cron = (await Deno.readTextFile(new URL("../cron.ts", import.meta.url)))
    .replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "")
    .replace(/^\s*\n/gm, ""); // the code, without comments and blank lines
  assert.doesNotMatch(cron, /^import /m);
  const call = cron.indexOf("\n  Deno.cron(CRON_NAME,");
  assert.ok(call > 0 && call < cron.indexOf("await"), "registered before any await");
  // Top level: the call sits in a `try` block of the module, not in a function or condition.
  const before = cron.slice(0, call);
  assert.match(before, /\ntry \{$/);
  assert.doesNotMatch(before.slice(before.lastIndexOf("\n\n")), /\bif\b|function|=>/);
});

Deno.test("cron.ts registers the job where Deno.cron exists and says why where it does not; only production and branch timelines get platform runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const probe = `${dir}/probe.ts`;
    const cronUrl = new URL("../cron.ts", import.meta.url).href;
    await Deno.writeTextFile(
      probe,
      `import { cronRegistration, platformRunsCron } from "${cronUrl}";
const timelines = ["production", "git-branch/main", "preview/abc123", undefined];
console.log(JSON.stringify({
  cronRegistration,
  onDeploy: timelines.map((t) => platformRunsCron({ DENO_TIMELINE: t }, true)),
  local: platformRunsCron({ DENO_TIMELINE: "production" }, false),
}));
Deno.exit(0);
`,
    );
    const run = async (flags: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-config", ...flags, probe],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      return JSON.parse(new TextDecoder().decode(out.stdout));
    };
    const without = await run([]);
    assert.equal(without.cronRegistration.registered, false);
    assert.match(without.cronRegistration.error, /cron/i);
    assert.deepEqual(without.onDeploy, [false, false, false, false]);
    const withCron = await run(["--unstable-cron"]);
    assert.deepEqual(withCron.cronRegistration, { registered: true });
    assert.deepEqual(withCron.onDeploy, [true, true, false, false]);
    assert.equal(withCron.local, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
