/**
 * Measures how long `Deno.serve` keeps slow or silent client connections open (README "Threat
 * model"). Not a test: run it by hand with the Deno to measure, e.g.
 *
 *     deno run -A tests/tools/slowloris.ts [--seconds=90] [--connections=20] [--relay]
 *
 * It starts a plain `Deno.serve` (the same Deno as this script, in a child process) whose
 * handler reads the whole body, or with `--relay` the relay itself (`main.ts`, memory KV,
 * `RELAY_REQUEST_TIMEOUT_MS` from the environment or 10000), opens `connections` TCP
 * connections per scenario, and prints, per scenario, how many the server answered and closed
 * after how long.
 *
 * @module
 */

const args = new Map(
  Deno.args.map((a) => a.replace(/^--/, "").split("=") as [string, string]),
);
const SECONDS = Number(args.get("seconds") ?? 90);
const CONNECTIONS = Number(args.get("connections") ?? 20);
const TRICKLE_MS = 5000;
const RELAY = args.has("relay");
const PATH = RELAY ? "/gateway" : "/x";
const TYPE = "Content-Type: application/json\r\n";

const server = `
Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: ({ port }) => console.log(port) },
  async (req) => new Response(String((await req.arrayBuffer()).byteLength)));
`;

type Scenario = {
  name: string;
  /** Bytes sent at once after connecting. */
  opening: string;
  /** Bytes sent every TRICKLE_MS afterwards, if any. */
  trickle?: string;
  /** Read one response first (keep-alive idle). */
  readResponse?: boolean;
};

const SCENARIOS: Scenario[] = [
  { name: "silent (connect, send nothing)", opening: "" },
  { name: "partial headers, then silent", opening: `POST ${PATH} HTTP/1.1\r\nHost: a\r\n${TYPE}` },
  {
    name: "headers trickled (one header line every 5 s)",
    opening: `POST ${PATH} HTTP/1.1\r\nHost: a\r\n${TYPE}`,
    trickle: "X-Slow: 1\r\n",
  },
  {
    name: "body trickled (Content-Length 100000, 1 byte every 5 s)",
    opening: `POST ${PATH} HTTP/1.1\r\nHost: a\r\n${TYPE}Content-Length: 100000\r\n\r\n`,
    trickle: "x",
  },
  {
    name: "headers complete, body never sent",
    opening: `POST ${PATH} HTTP/1.1\r\nHost: a\r\n${TYPE}Content-Length: 10\r\n\r\n`,
  },
  {
    name: "keep-alive idle after one request",
    opening: `GET ${RELAY ? "/healthz" : "/x"} HTTP/1.1\r\nHost: a\r\n\r\n`,
    readResponse: true,
  },
];

/** Connections the server answered (sent an HTTP status line to) before they closed. */
const answered = new Map<string, number>();

/** Opens one connection for `s`; resolves with the seconds until the server closed it, or null. */
async function probe(port: number, s: Scenario, deadline: number): Promise<number | null> {
  const started = performance.now();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const enc = new TextEncoder();
  let closed = false;
  let timer: ReturnType<typeof setInterval> | undefined;
  const done = new Promise<void>((resolve) => {
    (async () => {
      const buf = new Uint8Array(4096);
      let responses = 0;
      try {
        while (true) {
          const n = await conn.read(buf);
          if (n === null) break;
          if (responses++ === 0 && !s.readResponse) {
            answered.set(s.name, (answered.get(s.name) ?? 0) + 1);
          }
        }
      } catch { /* reset */ }
      closed = true;
      resolve();
    })();
  });
  try {
    if (s.opening) await conn.write(enc.encode(s.opening));
    if (s.trickle) {
      timer = setInterval(() => {
        conn.write(enc.encode(s.trickle!)).catch(() => {});
      }, TRICKLE_MS);
    }
  } catch { /* closed */ }
  await Promise.race([done, new Promise((r) => setTimeout(r, deadline - performance.now()))]);
  clearInterval(timer);
  const elapsed = (performance.now() - started) / 1000;
  if (!closed) {
    try {
      conn.close();
    } catch { /* already */ }
    return null;
  }
  return Math.round(elapsed * 10) / 10;
}

const file = await Deno.makeTempFile({ suffix: ".ts" });
await Deno.writeTextFile(file, server);
const main = new URL("../../main.ts", import.meta.url).pathname;
const child = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", RELAY ? main : file],
  env: RELAY
    ? { PORT: "0", RELAY_KV_PATH: ":memory:", RELAY_APPS: "probe:probe-token-0123456789abcdef" }
    : {},
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
let port = 0;
let head = "";
while (!port) {
  const { value, done } = await reader.read();
  if (done) throw new Error(`The server exited: ${head}`);
  head += value;
  port = Number(RELAY ? /"event":"listening"[^\n]*"port":(\d+)/.exec(head)?.[1] : head.trim());
}
// Keep reading (and dropping) the server's log so it never blocks on a full pipe.
(async () => {
  while (!(await reader.read()).done) { /* drop */ }
})();
console.log(
  `Deno ${Deno.version.deno}, ${RELAY ? "the relay (main.ts)" : "plain Deno.serve"}: ` +
    `${CONNECTIONS} connections per scenario, ${SECONDS} s cap`,
);
const deadline = performance.now() + SECONDS * 1000;
const results = await Promise.all(
  SCENARIOS.map(async (s) => ({
    s,
    times: await Promise.all([...Array(CONNECTIONS)].map(() => probe(port, s, deadline))),
  })),
);
for (const { s, times } of results) {
  const closedAt = times.filter((t): t is number => t !== null).sort((a, b) => a - b);
  const open = times.length - closedAt.length;
  const range = closedAt.length > 0
    ? `closed by the server after ${closedAt[0]}-${closedAt.at(-1)} s`
    : "none closed";
  const got = answered.get(s.name) ?? 0;
  console.log(
    `- ${s.name}: ${got} answered; ${closedAt.length} ${range}; ${open} still open at ${SECONDS} s`,
  );
}
child.kill();
await child.status;
await Deno.remove(file);
