/**
 * Test harness: a real relay (`createRelay`) on a `:memory:` KV with a settable clock, a
 * recording fake transport, a memory logger and a fake DNS resolver.
 */

import { loadConfig } from "../lib/config.ts";
import { memoryLogger } from "../lib/log.ts";
import { createRelay, type Relay, type RelayOptions } from "../relay.ts";
import type {
  DeliveryOutcome,
  OutboundMessage,
  Target,
  Transport,
  TransportId,
} from "../lib/transports/types.ts";
import { encodeBase64Url } from "../lib/encoding.ts";

/**
 * The injected clock's start. It is only ever used on the harness clock (`h.clock`); a test on
 * the real clock (`{ now: Date.now }`) derives its dates from `h.now()` instead.
 */
export const T0 = Date.parse("2026-11-24T09:00:00Z");
export const APP_TOKEN = "app-one-token-0123456789abcdef";
export const APP2_TOKEN = "app-two-token-0123456789abcdef";
export const PATH_APP = "ox-path-secret-0123456789abcdefghijkl";
export const PUBLIC_URL = "https://relay.example.net";

export interface Sent {
  target: Target;
  message: OutboundMessage;
  at: number;
}

/** A transport that records every send and answers with `respond` (delivered by default). */
export class FakeTransport implements Transport {
  sent: Sent[] = [];
  respond: (
    target: Target,
    message: OutboundMessage,
  ) => DeliveryOutcome | Promise<DeliveryOutcome> = () => ({ kind: "delivered", status: 201 });
  private waiters: { count: number; resolve: () => void }[] = [];
  constructor(readonly id: TransportId, private readonly clock: () => number) {}
  async send(target: Target, message: OutboundMessage): Promise<DeliveryOutcome> {
    this.sent.push({ target, message, at: this.clock() });
    for (const w of [...this.waiters]) {
      if (this.sent.length >= w.count) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
    return await this.respond(target, message);
  }
  /** Resolves once `count` sends happened in total (fails after `timeoutMs`). */
  waitFor(count: number, timeoutMs = 3000): Promise<void> {
    if (this.sent.length >= count) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`Expected ${count} sends, saw ${this.sent.length}`)),
        timeoutMs,
      );
      this.waiters.push({
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }
  /** Payloads (json kind) sent so far. */
  payloads(): Record<string, unknown>[] {
    return this.sent.map((s) => s.message.payload.kind === "json" ? s.message.payload.data : {});
  }
}

export interface Harness {
  relay: Relay;
  kv: Deno.Kv;
  /** The settable clock; the relay runs on it unless the test passed its own `now`. */
  clock: { now: number };
  /** The clock the relay runs on: every date a test builds comes from it. */
  now(): number;
  webPush: FakeTransport;
  logger: ReturnType<typeof memoryLogger>;
  request(
    path: string,
    init?: RequestInit & { json?: unknown; remote?: string },
  ): Promise<Response>;
  /** Registers a fresh Web Push device and returns its registration response. */
  registerDevice(
    n?: number,
  ): Promise<{ "client-data": string; "client-id": string; "transport-uri": string }>;
  subscribe(
    clientData: string,
    topics: string[],
    options?: { token?: string; expires?: string; path?: string },
  ): Promise<Response>;
  push(messages: unknown[], options?: { token?: string; path?: string }): Promise<Response>;
  /** Every key in KV, for asserting that refused requests changed nothing. */
  dump(): Promise<string[]>;
  close(): Promise<void>;
}

export async function harness(
  env: Record<string, string> = {},
  options: Partial<RelayOptions> = {},
): Promise<Harness> {
  const kv = await Deno.openKv(":memory:");
  const clock = { now: T0 };
  const now = options.now ?? (() => clock.now);
  const logger = memoryLogger();
  const webPush = new FakeTransport("web-push", now);
  const config = loadConfig({
    RELAY_PUBLIC_URL: PUBLIC_URL,
    RELAY_APPS: `app1:${APP_TOKEN},app2:${APP2_TOKEN},${PATH_APP}:`,
    RELAY_SECRET: encodeBase64Url(new Uint8Array(32).fill(7)),
    RELAY_COALESCE_MS: "0",
    RELAY_REGISTRATION_RATE_LIMIT: "0",
    ...env,
  });
  const relay = await createRelay({
    config,
    kv,
    now,
    logger,
    resolve: (host) =>
      Promise.resolve(host.endsWith(".internal") ? ["10.0.0.5"] : ["93.184.216.34"]),
    transports: { "web-push": webPush },
    ...options,
  });
  let devices = 0;
  const request: Harness["request"] = (path, init = {}) => {
    const headers = new Headers(init.headers);
    let body = init.body;
    if (init.json !== undefined) {
      body = JSON.stringify(init.json);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
    }
    return Promise.resolve(
      relay.app.request(
        new Request(`http://relay.test${path}`, { ...init, headers, body: body ?? null }),
        undefined,
        { remoteAddr: { hostname: init.remote ?? "198.51.100.7" } },
      ),
    );
  };
  const h: Harness = {
    relay,
    kv,
    clock,
    now,
    webPush,
    logger,
    request,
    async registerDevice(n) {
      const i = n ?? ++devices;
      const { publicKey } = await testSubscriptionKeys();
      const res = await request("/registrations", {
        method: "POST",
        json: {
          transport: "web-push",
          subscription: {
            endpoint: `https://push.example.com/wpush/device-${i}-${crypto.randomUUID()}`,
            expirationTime: null,
            keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" },
          },
        },
      });
      if (res.status !== 201) {
        throw new Error(`registration failed: ${res.status} ${await res.text()}`);
      }
      return await res.json();
    },
    subscribe(clientData, topics, o = {}) {
      return request(o.path ?? "/gateway", {
        method: "POST",
        headers: { authorization: `Bearer ${o.token ?? APP_TOKEN}` },
        json: {
          "push-subscribe": {
            topics,
            "selected-transport": {
              "transport-uri": `${PUBLIC_URL}/transports/web-push`,
              "client-data": clientData,
            },
            expires: o.expires ?? new Date(now() + 86400_000).toISOString(),
          },
        },
      });
    },
    push(messages, o = {}) {
      return request(o.path ?? "/gateway", {
        method: "POST",
        headers: o.path?.startsWith(`/gateway/${PATH_APP}`)
          ? {}
          : { authorization: `Bearer ${o.token ?? APP_TOKEN}` },
        json: { push: { messages } },
      });
    },
    async dump() {
      const keys: string[] = [];
      for await (const e of kv.list({ prefix: [] })) {
        if (e.key[0] === "rl") continue;
        keys.push(
          JSON.stringify(e.key) + "=" +
            JSON.stringify(e.value, (_k, v) => typeof v === "bigint" ? String(v) : v),
        );
      }
      return keys.sort();
    },
    async close() {
      await relay.engine.shutdown(1000);
      kv.close();
    },
  };
  return h;
}

let cachedKeys: { publicKey: string } | null = null;
/**
 * `n` random bytes with a well-formed RFC 8188 `aes128gcm` header (record size 4096, a 65-byte
 * key id shaped as an uncompressed P-256 point): a body the ingress's structural checks accept,
 * as a WebDAV-Push server posts it.
 */
export function aes128gcmShaped(n = 120): Uint8Array<ArrayBuffer> {
  const b = crypto.getRandomValues(new Uint8Array(n));
  new DataView(b.buffer).setUint32(16, 4096);
  b[20] = 65;
  b[21] = 0x04;
  return b;
}

/** A valid P-256 public key for subscriptions (generated once per test process). */
export async function testSubscriptionKeys(): Promise<{ publicKey: string }> {
  if (!cachedKeys) {
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
      "deriveBits",
    ]) as CryptoKeyPair;
    cachedKeys = {
      publicKey: encodeBase64Url(
        new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)),
      ),
    };
  }
  return cachedKeys;
}

/** Waits until the engine has no due work left (background fan-out settled). */
export async function settle(h: Harness): Promise<void> {
  await h.relay.engine.idle();
}
