/**
 * The relay as a process (`main.ts`): starts with no configuration, keeps generated keys in
 * KV across restarts, prints the dev token once, and refuses a bad configuration at start.
 */

import assert from "node:assert/strict";
import { libcrypto } from "../lib/crypto/p256_ffi.ts";
import { startRelayProcess } from "./peers/relay_process.ts";

Deno.test("With no environment the relay starts, prints the dev token once, and a restart keeps keys and token", async () => {
  const dir = await Deno.makeTempDir();
  const env = { RELAY_KV_PATH: `${dir}/relay.sqlite3` };
  try {
    const first = await startRelayProcess(env);
    const token = /bearer token is (\S+)/.exec(first.output())?.[1];
    assert.ok(token, first.output());
    const boot1 = await (await fetch(`${first.url}/transports`)).json();
    const health = await fetch(`${first.url}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    const push = await fetch(`${first.url}/gateway`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ push: [{ topic: "nobody" }] }),
    });
    assert.deepEqual(await push.json(), {
      "push-response": { "no-subscribers": [{ topic: "nobody" }] },
    });
    await first.stop();

    const second = await startRelayProcess(env);
    const boot2 = await (await fetch(`${second.url}/transports`)).json();
    assert.deepEqual(boot2, boot1);
    assert.equal(second.output().includes("bearer token is"), false);
    assert.equal(second.output().includes(token), false);
    const again = await fetch(`${second.url}/gateway`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ push: [{ topic: "nobody" }] }),
    });
    assert.equal(again.status, 200);
    await again.body?.cancel();
    await second.stop();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A bad RELAY_APPS stops the process at start with a message naming the variable", async () => {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname],
    env: { RELAY_APPS: "broken", RELAY_KV_PATH: ":memory:", PORT: "0" },
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cmd.output();
  assert.notEqual(out.code, 0);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.match(stderr, /RELAY_APPS/);
});

/** The flags `deno task start` runs main.ts with (deno.json). */
async function startTaskFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const words: string[] = config.tasks.start.split(" ");
  return words.slice(2, words.indexOf("main.ts"));
}

Deno.test("Started as deno task start starts it, the relay encrypts on libcrypto; without the FFI permission it falls back without asking", async () => {
  const flags = await startTaskFlags();
  const crypto = async (denoArgs: string[]) => {
    const relay = await startRelayProcess({ RELAY_KV_PATH: ":memory:" }, { denoArgs });
    await relay.stop();
    const line = relay.output().split("\n").find((l) => l.includes('"event":"crypto"'));
    assert.ok(line, relay.output());
    return JSON.parse(line);
  };
  const granted = await crypto(flags);
  if (libcrypto().ok) {
    assert.equal(granted.p256, "ffi");
    assert.match(granted.libcrypto, /^3\.\d+\.\d+$/);
  } else {
    assert.equal(typeof granted.ffi, "string");
  }
  // stdin is not a terminal here, so a prompt would fail the start: it must not come to that.
  const denied = await crypto(flags.filter((f) => !f.startsWith("--allow-ffi")));
  assert.ok(denied.p256 === "node" || denied.p256 === "webcrypto", denied.p256);
  assert.equal(denied.ffi, "the FFI permission is not granted for libcrypto");
});
