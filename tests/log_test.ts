/**
 * consoleLogger() in a child process, as the relay runs it: JSON lines on stdout (info, debug)
 * and stderr (warn, error), gathered info lines written once per turn of the event loop and
 * never lost, not even when the process exits at once.
 */

import assert from "node:assert/strict";

const LOG_MODULE = new URL("../lib/log.ts", import.meta.url).href;

async function runChild(body: string) {
  const script = `import { consoleLogger } from ${JSON.stringify(LOG_MODULE)};\n${body}`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const lines = (bytes: Uint8Array) =>
    new TextDecoder().decode(bytes).split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
  return { code: out.code, stdout: lines(out.stdout), stderr: lines(out.stderr) };
}

Deno.test("consoleLogger(): one JSON line per event, info on stdout and warnings on stderr, in order", async () => {
  const { code, stdout, stderr } = await runChild(`
    const log = consoleLogger({ gather: true });
    for (let i = 0; i < 5; i++) log.log("info", "request", { i });
    log.log("debug", "hidden", {});
    log.log("warn", "slow", { ms: 12 });
    await new Promise((r) => setTimeout(r, 20));
    log.log("info", "later", {});
  `);
  assert.equal(code, 0);
  assert.deepEqual(stdout.map((l) => [l.event, l.i]), [
    ["request", 0],
    ["request", 1],
    ["request", 2],
    ["request", 3],
    ["request", 4],
    ["later", undefined],
  ]);
  assert.deepEqual(stderr.map((l) => [l.level, l.event, l.ms]), [["warn", "slow", 12]]);
  for (const l of stdout) assert.match(l.t, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});

Deno.test("consoleLogger(): gathered lines are written when the process exits at once (Deno.exit)", async () => {
  const { code, stdout } = await runChild(`
    const log = consoleLogger({ gather: true });
    log.log("info", "stopped", {});
    Deno.exit(3);
  `);
  assert.equal(code, 3);
  assert.deepEqual(stdout.map((l) => l.event), ["stopped"]);
});

Deno.test("consoleLogger(): a gathered line is out within one turn of the event loop", async () => {
  // The parent reads the child's first line while the child keeps running: nobody waits for
  // an exit or a timer far away to see "listening".
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--ext=ts",
      `import { consoleLogger } from ${JSON.stringify(LOG_MODULE)};
       consoleLogger({ gather: true }).log("info", "listening", {});
       setTimeout(() => {}, 5000);`,
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const started = performance.now();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  const waited = performance.now() - started;
  child.kill();
  await reader.cancel();
  await child.status;
  assert.match(first.value ?? "", /"event":"listening"/);
  assert.ok(waited < 4000, `first line after ${Math.round(waited)} ms`);
});

Deno.test("consoleLogger() without gathering (as on Deno Deploy): every line is its own console.log call", async () => {
  const { stdout } = await runChild(`
    const calls: string[] = [];
    console.log = (line: string) => calls.push(line);
    const log = consoleLogger({ gather: false });
    log.log("info", "a", {});
    log.log("info", "b", {});
    Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify({ calls: calls.length }) + "\\n"));
  `);
  assert.deepEqual(stdout, [{ calls: 2 }]);
});
