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

export async function launch(options: LaunchOptions = {}): Promise<Page> {
  const width = options.width ?? 1280;
  const height = options.height ?? 1000;
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
  let cdp: Cdp;
  let sessionId: string;
  try {
    cdp = await Cdp.connect(await devtoolsUrl(child.stderr, timeoutMs));
    const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
    ({ sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true }) as {
      sessionId: string;
    });
  } catch (err) {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
    throw err;
  }
  const page = (method: string, params: Record<string, unknown> = {}) =>
    cdp.send(method, params, sessionId);
  const errors: string[] = [];
  cdp.listeners.add((m) => {
    if (m.sessionId !== sessionId) return;
    const p = m.params as Record<string, Record<string, unknown>> | undefined;
    if (m.method === "Runtime.exceptionThrown") {
      errors.push(String(p?.exceptionDetails?.text ?? "exception"));
    } else if (m.method === "Log.entryAdded" && p?.entry?.level === "error") {
      errors.push(String(p.entry.text));
    } else if (m.method === "Runtime.consoleAPICalled" && m.params?.type === "error") {
      errors.push(JSON.stringify(m.params?.args));
    }
  });
  await Promise.all([page("Page.enable"), page("Runtime.enable"), page("Log.enable")]);

  const evaluate = async <T>(expression: string): Promise<T> => {
    const r = await page("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    }) as {
      result?: { value?: T };
      exceptionDetails?: { text?: string; exception?: { description?: string } };
    };
    if (r.exceptionDetails) {
      throw new Error(
        `In the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`,
      );
    }
    return r.result?.value as T;
  };
  const sel = (selector: string) => `document.querySelector(${JSON.stringify(selector)})`;
  let closed = false;

  const self: Page = {
    async goto(url) {
      const loaded = cdp.once("Page.loadEventFired", sessionId, timeoutMs);
      const r = await page("Page.navigate", { url }) as { errorText?: string };
      if (r.errorText) throw new Error(`Cannot load ${url}: ${r.errorText}`);
      await loaded;
    },
    async type(selector, text) {
      await evaluate(`${sel(selector)}.focus()`);
      for (const ch of text) {
        await page("Input.dispatchKeyEvent", { type: "keyDown", key: ch, text: ch });
        await page("Input.dispatchKeyEvent", { type: "keyUp", key: ch });
      }
    },
    async click(selector) {
      const at = await evaluate<{ x: number; y: number } | null>(`(() => {
        const e = ${sel(selector)};
        if (!e) return null;
        e.scrollIntoView({ block: "center" });
        const r = e.getBoundingClientRect();
        return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
      })()`);
      if (!at) throw new Error(`No element matches ${selector}`);
      const base = { x: at.x, y: at.y, button: "left", clickCount: 1 };
      await page("Input.dispatchMouseEvent", { type: "mouseMoved", x: at.x, y: at.y });
      await page("Input.dispatchMouseEvent", { type: "mousePressed", ...base });
      await page("Input.dispatchMouseEvent", { type: "mouseReleased", ...base });
    },
    async waitFor(expression, ms = 10_000) {
      const until = performance.now() + ms;
      while (!(await evaluate<boolean>(`Boolean(${expression})`))) {
        if (performance.now() > until) throw new Error(`Timed out waiting for ${expression}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    evaluate,
    async screenshot(path) {
      const { cssContentSize } = await page("Page.getLayoutMetrics") as {
        cssContentSize: { width: number; height: number };
      };
      const { data } = await page("Page.captureScreenshot", {
        format: "png",
        captureBeyondViewport: true,
        clip: {
          x: 0,
          y: 0,
          width: Math.max(width, Math.ceil(cssContentSize.width)),
          height: Math.ceil(cssContentSize.height),
          scale: 1,
        },
      }) as { data: string };
      await Deno.writeFile(path, Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
    },
    errors: () => [...errors],
    async close() {
      if (closed) return;
      closed = true;
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
    },
    [Symbol.asyncDispose]() {
      return self.close();
    },
  };
  return self;
}
