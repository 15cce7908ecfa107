/**
 * Starts `main.ts` as a child process on an ephemeral port and waits for its `listening` log
 * line. Used by process-level tests (startup, restart, crash, shutdown, the CalDAV bridge).
 */

export interface RelayProcess {
  url: string;
  port: number;
  child: Deno.ChildProcess;
  /** Everything the process printed so far (stdout and stderr). */
  output(): string;
  /** Sends SIGTERM and waits for the exit; returns the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
  /** Kills with SIGKILL and waits. */
  kill(): Promise<void>;
}

export async function startRelayProcess(
  env: Record<string, string>,
  options: { timeoutMs?: number; denoArgs?: string[] } = {},
): Promise<RelayProcess> {
  const main = new URL("../../main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...(options.denoArgs ?? ["-A"]), main],
    env: { PORT: "0", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  let text = "";
  let resolvePort: (port: number) => void;
  let rejectPort: (err: Error) => void;
  const portPromise = new Promise<number>((resolve, reject) => {
    resolvePort = resolve;
    rejectPort = reject;
  });
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      const m = /"event":"listening"[^\n]*"port":(\d+)/.exec(text);
      if (m) resolvePort(Number(m[1]));
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = child.status.then((s) => {
    rejectPort(new Error(`relay exited with ${s.code} before listening:\n${text}`));
    return s;
  });
  const timer = setTimeout(
    () => rejectPort(new Error(`relay did not start in time:\n${text}`)),
    options.timeoutMs ?? 20_000,
  );
  let port: number;
  try {
    port = await portPromise;
  } catch (err) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await status;
    await pumps;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const finish = async () => {
    const s = await status;
    await pumps;
    return s.code;
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    child,
    output: () => text,
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
      return await finish();
    },
    async kill() {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await finish();
    },
  };
}
