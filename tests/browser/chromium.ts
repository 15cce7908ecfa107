/**
 * A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket), for tests that
 * need a real browser: pages on origins the test serves, `evaluate()` in them, console and
 * network-error messages, screenshots. No npm package: Debian's `chromium`
 * (`/usr/bin/chromium`, or `CHROMIUM_PATH`), a fresh profile per launch, and nothing that
 * reaches the network on its own.
 *
 *     await using browser = await launchChromium();   // null when Chromium is not installed
 *     const page = await browser.newPage("http://127.0.0.1:1234/");
 *     const title = await page.evaluate<string>("document.title");
 *     await page.screenshot("/tmp/page.png");
 *
 * @module
 */

/** Where Chromium is looked for when `CHROMIUM_PATH` is unset. */
export const DEFAULT_CHROMIUM = "/usr/bin/chromium";

const LAUNCH_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--remote-debugging-port=0",
  "--remote-allow-origins=*",
];

export interface LaunchOptions {
  /** @default `CHROMIUM_PATH`, else /usr/bin/chromium */
  executablePath?: string;
  /** How long to wait for the browser and for each protocol call. @default 30000 */
  timeoutMs?: number;
  /** Window size of new pages. @default 1000 x 700 */
  width?: number;
  height?: number;
}

/** A console message or a browser log entry (e.g. a CORS refusal) of a page. */
export interface PageMessage {
  source: "console" | "log";
  level: string;
  text: string;
}

/** What the protocol sends: JSON whose shape each method documents. */
// deno-lint-ignore no-explicit-any
type Json = any;

interface Pending {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
}

/** One DevTools Protocol connection: numbered calls, and events by method and session. */
class Cdp {
  private next = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(method: string, params: Json, session?: string) => void>();

  private constructor(private readonly ws: WebSocket, private readonly timeoutMs: number) {
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data as string);
      if (typeof msg.id === "number") {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`CDP: ${msg.error.message}`));
        else p?.resolve(msg.result ?? {});
      } else {
        for (const l of this.listeners) l(msg.method, msg.params, msg.sessionId);
      }
    };
    ws.onclose = () => {
      for (const p of this.pending.values()) p.reject(new Error("CDP: connection closed"));
      this.pending.clear();
    };
  }

  static async connect(url: string, timeoutMs: number): Promise<Cdp> {
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`Cannot connect to Chromium at ${url}`));
    });
    return new Cdp(ws, timeoutMs);
  }

  call(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Json> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`CDP: ${method} did not answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  on(listener: (method: string, params: Json, session?: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.ws.close();
  }
}

/** One tab. */
export class Page {
  /** Console messages and log entries, in arrival order. */
  readonly messages: PageMessage[] = [];

  constructor(
    private readonly cdp: Cdp,
    private readonly session: string,
    readonly targetId: string,
  ) {
    cdp.on((method, params, sessionId) => {
      if (sessionId !== session) return;
      if (method === "Runtime.consoleAPICalled") {
        const text = (params.args as { value?: unknown; description?: string }[])
          .map((a) => a.value ?? a.description ?? "").join(" ");
        this.messages.push({ source: "console", level: params.type, text });
      } else if (method === "Log.entryAdded") {
        this.messages.push({ source: "log", level: params.entry.level, text: params.entry.text });
      }
    });
  }

  /** Loads `url` and resolves once its load event fired. */
  async goto(url: string): Promise<void> {
    const loaded = new Promise<void>((resolve) => {
      const off = this.cdp.on((method, _params, sessionId) => {
        if (sessionId === this.session && method === "Page.loadEventFired") {
          off();
          resolve();
        }
      });
    });
    const nav = await this.cdp.call("Page.navigate", { url }, this.session);
    if (nav.errorText) throw new Error(`Cannot load ${url}: ${nav.errorText}`);
    await loaded;
  }

  /** Evaluates `expression` in the page (promises awaited) and returns its JSON value. */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.cdp.call("Runtime.evaluate", {
      expression,
      awaitPromise: true,
      returnByValue: true,
    }, this.session);
    if (r.exceptionDetails) {
      const d = r.exceptionDetails;
      throw new Error(`In the page: ${d.exception?.description ?? d.text}`);
    }
    return r.result.value as T;
  }

  /** Saves a PNG of the page's viewport. */
  async screenshot(path: string): Promise<void> {
    const r = await this.cdp.call("Page.captureScreenshot", { format: "png" }, this.session);
    await Deno.writeFile(path, Uint8Array.from(atob(r.data), (c) => c.charCodeAt(0)));
  }

  async close(): Promise<void> {
    await this.cdp.call("Target.closeTarget", { targetId: this.targetId }).catch(() => {});
  }
}

/** A running Chromium; `await using` closes it and removes its profile. */
export class Browser {
  constructor(
    private readonly cdp: Cdp,
    private readonly child: Deno.ChildProcess,
    private readonly profile: string,
    private readonly size: { width: number; height: number },
  ) {}

  /** Opens a tab on `url` (its load awaited). */
  async newPage(url = "about:blank"): Promise<Page> {
    const { targetId } = await this.cdp.call("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.cdp.call("Target.attachToTarget", { targetId, flatten: true });
    const page = new Page(this.cdp, sessionId, targetId);
    await Promise.all(
      ["Page.enable", "Runtime.enable", "Log.enable"].map((m) => this.cdp.call(m, {}, sessionId)),
    );
    await this.cdp.call("Emulation.setDeviceMetricsOverride", {
      ...this.size,
      deviceScaleFactor: 1,
      mobile: false,
    }, sessionId);
    if (url !== "about:blank") await page.goto(url);
    return page;
  }

  async close(): Promise<void> {
    await this.cdp.call("Browser.close").catch(() => {});
    this.cdp.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const exited = await Promise.race([
      this.child.status.then(() => true),
      new Promise<false>((r) => (timer = setTimeout(() => r(false), 5000))),
    ]);
    clearTimeout(timer);
    if (!exited) {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
      await this.child.status;
    }
    await Deno.remove(this.profile, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The Chromium executable to use, or null when there is none. */
export function chromiumPath(options: LaunchOptions = {}): string | null {
  const path = options.executablePath ?? Deno.env.get("CHROMIUM_PATH") ?? DEFAULT_CHROMIUM;
  try {
    return Deno.statSync(path).isFile ? path : null;
  } catch {
    return null;
  }
}

/** Starts a headless Chromium with a fresh profile; null when Chromium is not installed. */
export async function launchChromium(options: LaunchOptions = {}): Promise<Browser | null> {
  const path = chromiumPath(options);
  if (path === null) return null;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const profile = await Deno.makeTempDir({ prefix: "chromium-profile-" });
  const child = new Deno.Command(path, {
    args: [...LAUNCH_FLAGS, `--user-data-dir=${profile}`, "about:blank"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  let url: string | undefined;
  while (!url) {
    const { value, done } = await reader.read();
    if (done) {
      clearTimeout(timer);
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw new Error(`Chromium exited before it listened: ${seen.slice(-500)}`);
    }
    seen += value;
    url = /DevTools listening on (ws:\/\/\S+)/.exec(seen)?.[1];
  }
  clearTimeout(timer);
  // Keep draining Chromium's stderr so that it never blocks on a full pipe.
  (async () => {
    while (!(await reader.read().catch(() => ({ done: true }))).done) { /* drop */ }
  })();
  const cdp = await Cdp.connect(url, timeoutMs);
  return new Browser(cdp, child, profile, {
    width: options.width ?? 1000,
    height: options.height ?? 700,
  });
}
