/**
 * A small driver for a real headless Chromium (Debian's `chromium`) over the Chrome DevTools
 * Protocol, from Deno's own WebSocket: no browser download, no npm package. One page per
 * browser:
 *
 * ```ts
 * await using page = await launch();
 * await page.goto("http://127.0.0.1:8000/admin");
 * await page.type("#token", "secret");
 * await page.click("#show");
 * await page.waitFor("document.body.dataset.loaded === '1'");
 * const n = await page.evaluate<number>("document.querySelectorAll('tr').length");
 * await page.screenshot("/tmp/page.png");
 * ```
 *
 * The browser runs with a fresh profile in a temporary directory and without any network
 * service of its own (no updates, sync, QUIC or background requests), so a test talks only
 * to the servers it started.
 */

export const CHROMIUM = "/usr/bin/chromium";

/** Whether the browser is installed (tests are ignored without it). */
export function hasChromium(path = CHROMIUM): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

export interface LaunchOptions {
  /** @default "/usr/bin/chromium" */
  executable?: string;
  /** Viewport in CSS pixels. @default 1280 x 1000 */
  width?: number;
  height?: number;
  /** How long the browser may take to start. @default 30000 */
  timeoutMs?: number;
}

export interface Page extends AsyncDisposable {
  /** Navigates and waits for the load event. */
  goto(url: string): Promise<void>;
  /** Focuses the element and types `text` into it, key by key. */
  type(selector: string, text: string): Promise<void>;
  /** A real mouse click in the middle of the element. */
  click(selector: string): Promise<void>;
  /** Waits until the expression is truthy in the page. @default timeout 10000 ms */
  waitFor(expression: string, timeoutMs?: number): Promise<void>;
  /** The expression's value (awaited if it is a promise), as JSON brings it over. */
  evaluate<T = unknown>(expression: string): Promise<T>;
  /** A PNG of the whole page. */
  screenshot(path: string): Promise<void>;
  /** Uncaught exceptions and console errors the page reported so far. */
  errors(): string[];
  close(): Promise<void>;
}

type Message = {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  sessionId?: string;
  result?: Record<string, unknown>;
  error?: { message: string };
};

/** One WebSocket to the browser; page commands carry the page's session id. */
class Cdp {
  private nextId = 1;
  private readonly pending = new Map<number, PromiseWithResolvers<Record<string, unknown>>>();
  readonly listeners = new Set<(m: Message) => void>();

  constructor(private readonly ws: WebSocket) {
    ws.onmessage = (e) => {
      const m = JSON.parse(String(e.data)) as Message;
      if (m.id !== undefined) {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.error) p?.reject(new Error(`CDP: ${m.error.message}`));
        else p?.resolve(m.result ?? {});
      } else for (const l of this.listeners) l(m);
    };
    ws.onclose = () => {
      for (const p of this.pending.values()) p.reject(new Error("CDP: the browser went away"));
      this.pending.clear();
    };
  }

  static async connect(url: string): Promise<Cdp> {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`Cannot connect to ${url}`));
    });
    return new Cdp(ws);
  }

  send(method: string, params: Record<string, unknown> = {}, sessionId?: string) {
    const id = this.nextId++;
    const p = Promise.withResolvers<Record<string, unknown>>();
    this.pending.set(id, p);
    this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return p.promise;
  }

  /** The next event `method` of the session. */
  once(method: string, sessionId: string, timeoutMs: number): Promise<Message["params"]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`CDP: no ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (m: Message) => {
        if (m.method !== method || m.sessionId !== sessionId) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(m.params);
      };
      this.listeners.add(listener);
    });
  }

  close(): void {
    this.ws.close();
  }
}

/** Reads the browser's stderr until it names its DevTools WebSocket. */
async function devtoolsUrl(stderr: ReadableStream<Uint8Array>, timeoutMs: number) {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const timer = setTimeout(() => reader.cancel(), timeoutMs);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`Chromium did not start:\n${text.slice(-2000)}`);
      text += value;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
      if (m) {
        // Keep draining, so the browser never blocks on a full pipe.
        void (async () => {
          while (!(await reader.read().catch(() => ({ done: true }))).done) { /* drain */ }
        })();
        return m[1]!;
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Starts the browser and returns its DevTools session on a fresh blank page. */
async function startBrowser(options: LaunchOptions, width: number, height: number) {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const profile = await Deno.makeTempDir({ prefix: "chromium-profile-" });
  const child = new Deno.Command(options.executable ?? CHROMIUM, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      `--user-data-dir=${profile}`,
      `--window-size=${width},${height}`,
      "--remote-debugging-port=0",
      "about:blank",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    const cdp = await Cdp.connect(await devtoolsUrl(child.stderr, timeoutMs));
    const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
    return { child, profile, cdp, sessionId: String(sessionId), timeoutMs };
  } catch (err) {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
    throw err;
  }
}

type Browser = Awaited<ReturnType<typeof startBrowser>>;

/** Collects what the page reports as errors: uncaught exceptions and console or log errors. */
function collectErrors(b: Browser, errors: string[]): void {
  b.cdp.listeners.add((m) => {
    if (m.sessionId !== b.sessionId) return;
    const p = m.params as Record<string, Record<string, unknown>> | undefined;
    if (m.method === "Runtime.exceptionThrown") {
      errors.push(String(p?.exceptionDetails?.text ?? "exception"));
    } else if (m.method === "Log.entryAdded" && p?.entry?.level === "error") {
      errors.push(String(p.entry.text));
    } else if (m.method === "Runtime.consoleAPICalled" && m.params?.type === "error") {
      errors.push(JSON.stringify(m.params?.args));
    }
  });
}

const sel = (selector: string) => `document.querySelector(${JSON.stringify(selector)})`;

class ChromiumPage implements Page {
  private readonly reported: string[] = [];
  private closed = false;

  constructor(private readonly b: Browser, private readonly width: number) {
    collectErrors(b, this.reported);
  }

  send(method: string, params: Record<string, unknown> = {}) {
    return this.b.cdp.send(method, params, this.b.sessionId);
  }

  async goto(url: string): Promise<void> {
    const loaded = this.b.cdp.once("Page.loadEventFired", this.b.sessionId, this.b.timeoutMs);
    const r = await this.send("Page.navigate", { url }) as { errorText?: string };
    if (r.errorText) throw new Error(`Cannot load ${url}: ${r.errorText}`);
    await loaded;
  }

  async type(selector: string, text: string): Promise<void> {
    await this.evaluate(`${sel(selector)}.focus()`);
    for (const ch of text) {
      await this.send("Input.dispatchKeyEvent", { type: "keyDown", key: ch, text: ch });
      await this.send("Input.dispatchKeyEvent", { type: "keyUp", key: ch });
    }
  }

  async click(selector: string): Promise<void> {
    const at = await this.evaluate<{ x: number; y: number } | null>(`(() => {
      const e = ${sel(selector)};
      if (!e) return null;
      e.scrollIntoView({ block: "center" });
      const r = e.getBoundingClientRect();
      return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
    })()`);
    if (!at) throw new Error(`No element matches ${selector}`);
    const press = { x: at.x, y: at.y, button: "left", clickCount: 1 };
    await this.send("Input.dispatchMouseEvent", { type: "mouseMoved", x: at.x, y: at.y });
    await this.send("Input.dispatchMouseEvent", { type: "mousePressed", ...press });
    await this.send("Input.dispatchMouseEvent", { type: "mouseReleased", ...press });
  }

  async waitFor(expression: string, timeoutMs = 10_000): Promise<void> {
    const until = performance.now() + timeoutMs;
    while (!(await this.evaluate<boolean>(`Boolean(${expression})`))) {
      if (performance.now() > until) throw new Error(`Timed out waiting for ${expression}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async evaluate<T = unknown>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    }) as {
      result?: { value?: T };
      exceptionDetails?: { text?: string; exception?: { description?: string } };
    };
    const failed = r.exceptionDetails;
    if (failed) throw new Error(`In the page: ${failed.exception?.description ?? failed.text}`);
    return r.result?.value as T;
  }

  async screenshot(path: string): Promise<void> {
    const { cssContentSize } = await this.send("Page.getLayoutMetrics") as {
      cssContentSize: { width: number; height: number };
    };
    const { data } = await this.send("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
      clip: {
        x: 0,
        y: 0,
        width: Math.max(this.width, Math.ceil(cssContentSize.width)),
        height: Math.ceil(cssContentSize.height),
        scale: 1,
      },
    }) as { data: string };
    await Deno.writeFile(path, Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
  }

  errors(): string[] {
    return [...this.reported];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const { cdp, child, profile } = this.b;
    await cdp.send("Browser.close").catch(() => {});
    cdp.close();
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5000);
    await child.status;
    clearTimeout(timer);
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Starts a headless Chromium with one blank page. */
export async function launch(options: LaunchOptions = {}): Promise<Page> {
  const width = options.width ?? 1280;
  const browser = await startBrowser(options, width, options.height ?? 1000);
  const page = new ChromiumPage(browser, width);
  await Promise.all([
    page.send("Page.enable"),
    page.send("Runtime.enable"),
    page.send("Log.enable"),
  ]);
  return page;
}
