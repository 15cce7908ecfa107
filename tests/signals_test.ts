/**
 * Running in production (README "Running in production"): the relay started the documented
 * ways, `deploy/deno.sh task start` and the systemd unit's `ExecStart`, is Deno itself (no
 * wrapper that swallows signals), and SIGTERM to that process runs the graceful shutdown: it
 * logs "shutdown", then "stopped", and exits 0.
 */

import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;

/** Starts `cmd` in the repository and waits for the relay's `listening` line. */
async function start(cmd: string, args: string[], env: Record<string, string>) {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", PORT: "0", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const listening = Promise.withResolvers<number>();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      const m = /"event":"listening"[^\n]*"port":(\d+)/.exec(text);
      if (m) listening.resolve(Number(m[1]));
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = child.status.then((s) => {
    listening.reject(new Error(`exited with ${s.code} before listening:\n${text}`));
    return s;
  });
  const timer = setTimeout(() => listening.reject(new Error(`no start:\n${text}`)), 30_000);
  try {
    await listening.promise;
  } catch (err) {
    child.kill("SIGKILL");
    await Promise.all([status, pumps]);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    port: await listening.promise,
    pid: child.pid,
    output: () => text,
    async term() {
      child.kill("SIGTERM");
      const s = await status;
      await pumps;
      return s;
    },
  };
}

/** The relay logged "shutdown" (for SIGTERM), then "stopped", and exited 0. */
function assertGraceful(output: string, code: number): void {
  const shutdown = output.indexOf('"event":"shutdown","signal":"SIGTERM"');
  const stopped = output.indexOf('"event":"stopped"');
  assert.ok(shutdown >= 0 && stopped > shutdown, output);
  assert.equal(code, 0, output);
}

/** On Linux, the executable of `pid` (the Deno binary, when nothing wraps it). */
async function exeOf(pid: number): Promise<string | null> {
  try {
    return await Deno.realPath(await Deno.readLink(`/proc/${pid}/exe`));
  } catch {
    return null;
  }
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("SIGTERM to `deploy/deno.sh task start` reaches Deno and runs the graceful shutdown: shutdown, stopped, exit 0", async () => {
  await withTemp(async (dir) => {
    // A prefix laid out as `npm install deno@<version>` leaves it, holding this very Deno, so
    // that deploy/deno.sh finds its pinned version and needs no registry.
    const arch = Deno.build.arch === "aarch64" ? "arm64" : "x64";
    const pkg = Deno.build.os === "darwin" ? `darwin-${arch}` : `linux-${arch}-glibc`;
    const binDir = `${dir}/prefix/node_modules/@deno/${pkg}`;
    await Deno.mkdir(binDir, { recursive: true });
    await Deno.symlink(Deno.execPath(), `${binDir}/deno`);
    const relay = await start(`${ROOT}deploy/deno.sh`, ["task", "start"], {
      DENO_PREFIX: `${dir}/prefix`,
      DENO_VERSION: Deno.version.deno,
      RELAY_KV_PATH: `${dir}/relay.sqlite3`,
    });
    // The script exec'd Deno: the process we signal is Deno (`deno task`, which passes the
    // signal on to the relay it runs), not a shell or Node.js.
    const exe = await exeOf(relay.pid);
    if (exe !== null) assert.equal(exe, await Deno.realPath(Deno.execPath()));
    const res = await fetch(`http://127.0.0.1:${relay.port}/healthz`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
    const { code } = await relay.term();
    assertGraceful(relay.output(), code);
  });
});

Deno.test("SIGTERM to the systemd unit's ExecStart command runs the graceful shutdown: shutdown, stopped, exit 0", async () => {
  const unit = await Deno.readTextFile(`${ROOT}deploy/systemd/dav-push-relay.service`);
  const execStart = /^ExecStart=(\S+) (.+)$/m.exec(unit);
  assert.ok(execStart, "the unit has an ExecStart line");
  assert.match(execStart[1]!, /\/node_modules\/@deno\/linux-x64-glibc\/deno$/);
  // A single process: the binary from the npm package's platform package, no wrapper.
  const args = execStart[2]!.split(" ");
  assert.deepEqual(args.slice(0, 3), ["run", "--cached-only", "--frozen"]);
  assert.equal(args.at(-1), "main.ts");
  await withTemp(async (dir) => {
    const relay = await start(Deno.execPath(), args, { RELAY_KV_PATH: `${dir}/relay.sqlite3` });
    const { code } = await relay.term();
    assertGraceful(relay.output(), code);
  });
});
