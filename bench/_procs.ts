/**
 * Processes the benchmarks drive: the relay (`main.ts`) and the counting sink
 * (`bench/sink.mjs`), plus resident-memory readings from `/proc`.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url);
export const CERT_DIR = new URL("tests/mocks/certs/", ROOT).pathname;

/** Epoch milliseconds with sub-millisecond resolution, comparable across processes. */
export const epochMs = () => performance.timeOrigin + performance.now();

/** Reads a stream to its end, keeping only the last `keep` characters (for error reports). */
function drain(stream: ReadableStream<Uint8Array>, onText: (t: string) => void): Promise<void> {
  return (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) onText(decoder.decode(chunk, { stream: true }));
  })();
}

export interface Proc {
  pid: number;
  /** The last few KiB the process printed on stderr (warnings, errors). */
  tail(): string;
  /** What it printed on stdout up to its ready line. */
  head(): string;
  stop(): Promise<void>;
}

async function spawnUntil(
  cmd: Deno.Command,
  ready: RegExp,
  what: string,
  timeoutMs = 30_000,
): Promise<Proc & { match: RegExpExecArray }> {
  const child = cmd.spawn();
  let head = "";
  let errTail = "";
  let found: RegExpExecArray | null = null;
  let resolveReady!: (m: RegExpExecArray) => void;
  let rejectReady!: (e: Error) => void;
  const isReady = new Promise<RegExpExecArray>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  // stdout: only the start is kept (to find the ready line); the rest is read and dropped so
  // the process never blocks on a full pipe.
  // For experiments: BENCH_STDOUT=<file> keeps every process's whole stdout (e.g. --trace-gc).
  const keep = Deno.env.get("BENCH_STDOUT");
  const out = drain(child.stdout, (t) => {
    if (keep) Deno.writeTextFileSync(keep, `[${what}] ${t}`, { append: true });
    if (found) return;
    head = (head + t).slice(-65536);
    found = ready.exec(head);
    if (found) resolveReady(found);
  });
  const err = drain(child.stderr, (t) => {
    errTail = (errTail + t).slice(-4096);
  });
  const status = child.status.then((s) => {
    rejectReady(new Error(`${what} exited with ${s.code} before it was ready:\n${head}${errTail}`));
    return s;
  });
  const timer = setTimeout(
    () => rejectReady(new Error(`${what} was not ready in time:\n${head}${errTail}`)),
    timeoutMs,
  );
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    const killTimer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 8000);
    await status;
    clearTimeout(killTimer);
    await Promise.allSettled([out, err]);
  };
  try {
    const match = await isReady;
    return { pid: child.pid, match, tail: () => errTail, head: () => head, stop };
  } catch (e) {
    await stop();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

export interface Sink extends Proc {
  /** Base URL of the push endpoints: `https://127.0.0.1:<port>`. */
  url: string;
  stats(): Promise<SinkStats>;
  reset(): Promise<void>;
  /** Resolves when `n` good deliveries arrived (or after `timeoutMs`, with fewer). */
  wait(n: number, timeoutMs: number): Promise<SinkStats>;
}

export interface SinkStats {
  count: number;
  bad: number;
  bytes: number;
  /** Epoch ms of the first and last good delivery. */
  first: number;
  last: number;
  connections: number;
}

/** Starts the counting push service (HTTPS with the test certificate) on Node.js. */
export async function startSink(): Promise<Sink> {
  const p = await spawnUntil(
    new Deno.Command("node", {
      args: [new URL("bench/sink.mjs", ROOT).pathname, "--tls", CERT_DIR],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }),
    /\{"port":(\d+),"control":(\d+)\}/,
    "sink (node bench/sink.mjs)",
  );
  const control = `http://127.0.0.1:${p.match[2]}`;
  const get = async (path: string, init?: RequestInit) => {
    const res = await fetch(`${control}${path}`, init);
    if (!res.ok) throw new Error(`sink ${path} answered ${res.status}`);
    return await res.json() as SinkStats;
  };
  return {
    ...p,
    url: `https://127.0.0.1:${p.match[1]}`,
    stats: () => get("/stats"),
    reset: async () => void await get("/reset", { method: "POST" }),
    wait: (n, timeoutMs) => get(`/wait?n=${n}&timeoutMs=${timeoutMs}`),
  };
}

export interface RelayProc extends Proc {
  url: string;
}

/**
 * The flags `deno task start` runs `main.ts` with (deno.json of the checkout at `root`, by
 * default this one), so the relay is measured the way the README starts it:
 * `deno run <flags> main.ts`.
 */
export async function startTaskFlags(root: URL = ROOT): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
  const words = String(config.tasks?.start ?? "").split(/\s+/).filter(Boolean);
  const run = words.indexOf("run");
  const main = words.indexOf("main.ts");
  if (words[0] !== "deno" || run !== 1 || main < run) {
    throw new Error(`deno.json's start task is not "deno run <flags> main.ts": ${words.join(" ")}`);
  }
  return words.slice(run + 1, main);
}

/**
 * One `--v8-flags` from several (Deno 2.5 refuses the option twice): the task's values first,
 * then the extra ones, which V8 lets override them.
 */
export function mergeV8Flags(args: string[]): string[] {
  const v8 = args.filter((a) => a.startsWith("--v8-flags=")).map((a) => a.slice(11));
  const rest = args.filter((a) => !a.startsWith("--v8-flags="));
  return v8.length > 0 ? [...rest, `--v8-flags=${v8.join(",")}`] : rest;
}

/**
 * Starts `main.ts` as its own process with `env` (on an ephemeral port), as `deno task start`
 * does; `root` is the checkout whose relay runs (another one for A/B runs, `--relay-root`).
 */
export async function startRelay(
  env: Record<string, string>,
  denoArgs: string[] = [],
  root: URL = ROOT,
): Promise<RelayProc> {
  const flags = mergeV8Flags([...await startTaskFlags(root), ...denoArgs]);
  const p = await spawnUntil(
    new Deno.Command(Deno.execPath(), {
      args: ["run", ...flags, new URL("main.ts", root).pathname],
      cwd: new URL(".", root).pathname,
      env: { PORT: "0", NO_COLOR: "1", DENO_CERT: `${CERT_DIR}ca.pem`, ...env },
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }),
    /"event":"listening"[^\n]*"port":(\d+)/,
    "relay (main.ts)",
  );
  return { ...p, url: `http://127.0.0.1:${p.match[1]}` };
}

/** Resident memory of a process in bytes: now (VmRSS) and its peak so far (VmHWM). */
export async function residentMemory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
  return { rss: kib("VmRSS") * 1024, peak: kib("VmHWM") * 1024 };
}

/** CPU seconds (user + system) a process used so far, from /proc/<pid>/stat. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
