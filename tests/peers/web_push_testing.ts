/**
 * Runs the npm `web-push-testing` mock push service (an independent implementation: Node.js,
 * express, http_ece, jsonwebtoken) for tests. It requires `TTL`, verifies the VAPID ES256 JWT
 * against the subscription's `applicationServerKey`, decrypts `aes128gcm` and keeps the
 * plaintexts; after `expire()` it answers `410`.
 *
 * ```ts
 * const push = await startWebPushTesting();
 * try {
 *   const subscription = await push.subscribe(vapidPublicKey);
 *   // ... send to subscription.endpoint (http://127.0.0.1:<port>/notify/<hash>) ...
 *   assert.deepEqual(await push.notifications(subscription), ['{"type":"update"}']);
 * } finally {
 *   await push.close();
 * }
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** A subscription as `PushSubscription.toJSON()` gives it. */
export interface TestSubscription {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

export interface WebPushTesting {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  /** Creates a subscription bound to a VAPID public key (base64url, 65-byte point). */
  subscribe(applicationServerKey: string): Promise<TestSubscription>;
  /** The decrypted plaintexts received for a subscription so far, oldest first. */
  notifications(subscription: { endpoint: string }): Promise<string[]>;
  /**
   * Polls until at least `count` plaintexts arrived (default 1) and returns them all.
   *
   * @throws {Error} after `timeoutMs` (default 5000)
   */
  waitForNotifications(
    subscription: { endpoint: string },
    options?: { count?: number; timeoutMs?: number },
  ): Promise<string[]>;
  /** Makes the service answer `410` for this subscription from now on. */
  expire(subscription: { endpoint: string }): Promise<void>;
  /** Stops the Node.js process and releases every resource. Safe to call twice. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const LAUNCHER = fileURLToPath(new URL("./web_push_testing_server.cjs", import.meta.url));

/**
 * Starts web-push-testing under Node.js on 127.0.0.1 with an ephemeral port.
 *
 * @throws {Error} when `node` is missing or the service does not start within `timeoutMs`
 */
export async function startWebPushTesting(
  options: { node?: string; timeoutMs?: number } = {},
): Promise<WebPushTesting> {
  const node = options.node ?? "node";
  const timeoutMs = options.timeoutMs ?? 10_000;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(node, {
      args: [LAUNCHER],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    throw new Error(`Cannot start web-push-testing: cannot run "${node}" (${(err as Error).name})`);
  }

  // stderr carries web-push-testing's own diagnostics (e.g. a refused JWT); keep the tail for
  // error messages and drain it so the child never blocks on a full pipe.
  let stderrText = "";
  const stderrDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({
      write(chunk) {
        stderrText = (stderrText + chunk).slice(-4000);
      },
    }),
  ).catch(() => {});

  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdoutDone: Promise<void> = Promise.resolve();
  let closed: Promise<void> | undefined;

  async function shutdown(): Promise<void> {
    await child.stdin.close().catch(() => {});
    try {
      child.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    await child.status;
    await stdoutDone;
    await stderrDone;
  }

  let port: number;
  try {
    port = await readPort(stdout, timeoutMs);
  } catch (err) {
    await stdout.cancel().catch(() => {});
    await shutdown();
    throw new Error(
      `Cannot start web-push-testing: ${(err as Error).message}; stderr: ${stderrText.trim()}`,
    );
  }
  // Keep draining stdout (nothing more is expected) so the stream can close cleanly.
  stdoutDone = (async () => {
    try {
      while (!(await stdout.read()).done) { /* discard */ }
    } catch {
      // The process went away.
    }
  })();

  const origin = `http://127.0.0.1:${port}`;

  async function call(path: string, body: unknown): Promise<unknown> {
    const response = await fetch(`${origin}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body ?? {}),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new Error(
        `web-push-testing ${path.split("/")[1]} answered ${response.status}: ${text}`,
      );
    }
    return text === "" || text === "OK" ? undefined : JSON.parse(text);
  }

  function clientHash(subscription: { endpoint: string }): string {
    const hash = new URL(subscription.endpoint).pathname.split("/").pop();
    if (!hash) throw new Error("Not a web-push-testing endpoint: no client hash in its path");
    return hash;
  }

  const service: WebPushTesting = {
    origin,
    async subscribe(applicationServerKey) {
      // web-push-testing wants the string "true", not a JSON boolean.
      const answer = await call("/subscribe", {
        userVisibleOnly: "true",
        applicationServerKey,
      }) as { data: TestSubscription };
      const { endpoint, keys } = answer.data;
      return { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } };
    },
    async notifications(subscription) {
      const answer = await call("/get-notifications", { clientHash: clientHash(subscription) }) as {
        data: { messages: string[] };
      };
      return answer.data.messages;
    },
    async waitForNotifications(subscription, { count = 1, timeoutMs = 5000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const messages = await service.notifications(subscription);
        if (messages.length >= count) return messages;
        if (Date.now() >= deadline) {
          throw new Error(
            `web-push-testing received ${messages.length} of ${count} notifications in ${timeoutMs} ms`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    async expire(subscription) {
      await call(`/expire-subscription/${clientHash(subscription)}`, {});
    },
    close() {
      closed ??= shutdown();
      return closed;
    },
    [Symbol.asyncDispose]() {
      return service.close();
    },
  };
  return service;
}

async function readPort(
  reader: ReadableStreamDefaultReader<string>,
  timeoutMs: number,
): Promise<number> {
  let buffered = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no port after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    for (;;) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) throw new Error("the process exited before printing its port");
      buffered += value;
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const port = Number(buffered.slice(0, newline).trim());
        if (!Number.isInteger(port) || port <= 0) {
          throw new Error(`unexpected output ${JSON.stringify(buffered.slice(0, 80))}`);
        }
        return port;
      }
    }
  } finally {
    clearTimeout(timer);
  }
}
