/**
 * Real CalDAV/CardDAV servers for tests, from Debian: Radicale (htpasswd users, no delay after
 * a failed login) and Xandikos (no authentication at all), each on 127.0.0.1 with a temporary
 * data directory. `installed()` says whether the binary is there; CI installs both.
 *
 * @module
 */

export interface DavServer {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  /** The tail of the server's log, for failure messages. */
  log(): string;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Whether `command --version` runs. */
export async function installed(command: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(command, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function spawn(
  command: string,
  args: string[],
  origin: string,
  dir: string,
): Promise<DavServer> {
  const child = new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).spawn();
  let text = "";
  const drain = (s: ReadableStream<Uint8Array>) =>
    s.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({
        write(c) {
          text = (text + c).slice(-8000);
        },
      }),
    ).catch(() => {});
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  let stopped: Promise<void> | undefined;
  const server: DavServer = {
    origin,
    log: () => text,
    stop() {
      stopped ??= (async () => {
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
        await child.status;
        await drained;
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      })();
      return stopped;
    },
    [Symbol.asyncDispose]() {
      return server.stop();
    },
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const res = await fetch(`${origin}/`, { method: "OPTIONS" });
      await res.body?.cancel();
      return server;
    } catch {
      if (Date.now() > deadline) {
        await server.stop();
        throw new Error(`${command} did not start within 15 s: ${text}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Radicale with htpasswd users (`name:password`, plain), `owner_only` rights and no delay
 * after a failed login. Its sync-token history is kept for ten years: Radicale compares its
 * clock with the files' times, which a suite run under faketime moves apart.
 */
export async function startRadicale(users: Record<string, string>): Promise<DavServer> {
  const dir = await Deno.makeTempDir({ prefix: "radicale-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/users`,
    Object.entries(users).map(([u, p]) => `${u}:${p}\n`).join(""),
  );
  await Deno.writeTextFile(
    `${dir}/config`,
    [
      "[server]",
      `hosts = 127.0.0.1:${port}`,
      "ssl = False",
      "[auth]",
      "type = htpasswd",
      `htpasswd_filename = ${dir}/users`,
      "htpasswd_encryption = plain",
      "delay = 0",
      "[rights]",
      "type = owner_only",
      "[storage]",
      `filesystem_folder = ${dir}/collections`,
      "max_sync_token_age = 315360000",
      "[web]",
      "type = none",
      "[logging]",
      "level = warning",
      "",
    ].join("\n"),
  );
  // -C replaces the Debian default /etc/radicale/config (remote_user auth, TLS paths).
  return await spawn("radicale", ["-C", `${dir}/config`], `http://127.0.0.1:${port}`, dir);
}

/**
 * Xandikos with its default collections: `/user/calendars/calendar/` and
 * `/user/contacts/addressbook/`, principal `/user/`.
 */
export async function startXandikos(): Promise<DavServer> {
  const dir = await Deno.makeTempDir({ prefix: "xandikos-" });
  const port = freePort();
  return await spawn(
    "xandikos",
    ["-d", `${dir}/data`, "--defaults", "-l", "127.0.0.1", "-p", String(port)],
    `http://127.0.0.1:${port}`,
    dir,
  );
}

/** RFC 5545 §3.3.5 UTC date-time. */
function icalTime(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

/** A one-event calendar object, its dates from the real clock. */
export function icsEvent(uid: string, summary: string): string {
  const now = Date.now();
  return [
    "BEGIN:VCALENDAR",
    "VERSION:2.0",
    "PRODID:-//dav-push-relay//tests//EN",
    "BEGIN:VEVENT",
    `UID:${uid}`,
    `DTSTAMP:${icalTime(now)}`,
    `DTSTART:${icalTime(now + 7 * 86400_000)}`,
    `DTEND:${icalTime(now + 7 * 86400_000 + 3600_000)}`,
    `SUMMARY:${summary}`,
    "END:VEVENT",
    "END:VCALENDAR",
    "",
  ].join("\r\n");
}

/** Basic credentials. */
export function basic(user: string, password: string): string {
  return `Basic ${btoa(`${user}:${password}`)}`;
}
