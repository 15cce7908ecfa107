/**
 * The Web Push transport (RFC 8030): one POST per message to the subscription's endpoint,
 * encrypted with RFC 8291 `aes128gcm` and authenticated with VAPID (RFC 8292).
 *
 * Endpoint URLs identify a device, so they are treated as secrets: no outcome reason, error or
 * log line built here contains one.
 *
 * @module
 */

import { decodeSubscriptionKeys, encryptWebPush, type EphemeralKeyPool } from "../crypto/ece.ts";
import type { Encryptor } from "../crypto/ece_pool.ts";
import type { Vapid } from "../crypto/vapid.ts";
import { utf8 } from "../encoding.ts";
import { isPushTopic } from "../rfc8030.ts";
import { createHttp1Client, fetchPost, type Post } from "./http1.ts";
import {
  type DeliveryOutcome,
  type OutboundMessage,
  parseRetryAfter,
  type Target,
  type Transport,
} from "./types.ts";

export interface WebPushTransportOptions {
  /** Signs the `Authorization` header. */
  vapid: Vapid;
  /** Milliseconds since the epoch, for `Retry-After` dates. */
  now: () => number;
  /**
   * Sends with this `fetch` instead of the relay's HTTP/1.1 client (tests; outbound proxies,
   * which `fetch` supports and the lean client does not).
   */
  fetch?: typeof fetch;
  /** Pre-generated ECDH key pairs for encryption; generated per message when absent. */
  keyPool?: EphemeralKeyPool;
  /**
   * Encrypts off the main thread (`createEncryptionPool`, lib/crypto/ece_pool.ts); messages
   * are encrypted inline with `keyPool` when absent.
   */
  encryptor?: Encryptor;
}

/** The Web Push transport; `close()` (or `using`) closes its kept-alive connections. */
export interface WebPushTransport extends Transport, Disposable {
  close(): void;
}

/**
 * Creates the `web-push` transport. Requests go out on a lean HTTP/1.1 client with keep-alive
 * connections (lib/transports/http1.ts; `fetch` for a push service that refuses HTTP/1.1),
 * or on `options.fetch` when given.
 */
export function createWebPushTransport(options: WebPushTransportOptions): WebPushTransport {
  const client = options.fetch
    ? undefined
    : createHttp1Client({ fallback: fetchPost(globalThis.fetch) });
  const post: Post = client ? client.post : fetchPost(options.fetch!);
  const { vapid, now, keyPool, encryptor } = options;

  /**
   * Plaintext bytes per payload object: one fan-out hands every subscriber the same payload
   * object, so it is serialised once per message, not once per subscriber.
   */
  const serialised = new WeakMap<object, Uint8Array>();
  function plaintextOf(data: Record<string, unknown>): Uint8Array {
    let bytes = serialised.get(data);
    if (!bytes) {
      bytes = utf8(JSON.stringify(data));
      serialised.set(data, bytes);
    }
    return bytes;
  }

  async function buildBody(
    target: { p256dh: string; auth: string },
    message: OutboundMessage,
  ): Promise<Uint8Array | DeliveryOutcome> {
    if (message.payload.kind === "encrypted") return message.payload.body;
    // Shape only here; encryptWebPush checks the point on the curve (once, not twice).
    const keys = decodeSubscriptionKeys(target);
    if (!keys.ok) return { kind: "failed", reason: `invalid subscription keys: ${keys.reason}` };
    let plaintext: Uint8Array;
    try {
      plaintext = plaintextOf(message.payload.data);
    } catch (err) {
      return { kind: "failed", reason: `payload is not JSON: ${(err as Error).name}` };
    }
    const input = { plaintext, uaPublic: keys.p256dh, authSecret: keys.auth };
    try {
      return await (encryptor
        ? encryptor.encrypt(input)
        : encryptWebPush(input, keyPool ? { keyPool } : {}));
    } catch (err) {
      // Only our own size and shape messages reach here; they hold no key material.
      const text = (err as Error).message.replace(/^Cannot encrypt Web Push message: /, "");
      return text.startsWith("p256dh")
        ? { kind: "failed", reason: `invalid subscription keys: ${text}` }
        : { kind: "failed", reason: `cannot encrypt: ${text}` };
    }
  }

  return {
    id: "web-push",
    async send(target: Target, message: OutboundMessage, signal?: AbortSignal) {
      if (target.transport !== "web-push") {
        return { kind: "failed", reason: `wrong target for web-push: ${target.transport}` };
      }
      let url: URL;
      try {
        url = new URL(target.endpoint);
      } catch {
        return { kind: "failed", reason: "endpoint is not a valid URL" };
      }
      if (url.protocol !== "https:" && url.protocol !== "http:") {
        return { kind: "failed", reason: `endpoint scheme ${url.protocol} is not http(s)` };
      }
      if (signal?.aborted) return { kind: "retry", reason: "aborted" };

      const body = await buildBody(target, message);
      if (!(body instanceof Uint8Array)) return body;

      let authorization: string;
      try {
        authorization = await vapid.authorization(url);
      } catch (err) {
        return { kind: "failed", reason: `cannot sign VAPID header: ${(err as Error).name}` };
      }

      const headers: Record<string, string> = {
        // RFC 8030 §5.2: TTL is required, in whole seconds.
        "TTL": String(Math.max(0, Math.floor(message.ttl))),
        "Urgency": message.urgency,
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "Authorization": authorization,
      };
      // An invalid Topic would make the push service refuse the whole message (RFC 8030 §5.4);
      // sending it without one only loses the replacement.
      if (message.collapseKey !== undefined && isPushTopic(message.collapseKey)) {
        headers["Topic"] = message.collapseKey;
      }

      // The signal may have fired while we were encrypting. The time limit is the caller's
      // (bounded(), lib/transports/bounded.ts): it aborts `signal`.
      if (signal?.aborted) return { kind: "retry", reason: "aborted" };
      try {
        const response = await post(url, headers, body, signal);
        return classify(response.status, response.header("retry-after"), now());
      } catch (err) {
        if (signal?.aborted) return { kind: "retry", reason: "aborted" };
        return { kind: "retry", reason: networkReason(err) };
      }
    },
    close() {
      client?.close();
    },
    [Symbol.dispose]() {
      this.close();
    },
  };
}

/** Maps a push service's status to an outcome (RFC 8030 §5, §6.2; RFC 8292 §4). */
function classify(status: number, retryAfter: string | null, now: number): DeliveryOutcome {
  if (status >= 200 && status < 300) return { kind: "delivered", status };
  // RFC 8030 §6.2 / §7.3: the subscription has expired or never existed.
  if (status === 404 || status === 410) {
    return { kind: "gone", status, reason: `push service answered ${status}` };
  }
  // 429 (RFC 8030 §8.4 rate limiting), 5xx and 408 are transient.
  if (status === 429 || status === 408 || status >= 500) {
    const retryAfterMs = parseRetryAfter(retryAfter, now);
    return retryAfterMs === undefined
      ? { kind: "retry", status, reason: `push service answered ${status}` }
      : { kind: "retry", status, retryAfterMs, reason: `push service answered ${status}` };
  }
  // 400, 401/403 (VAPID refused, RFC 8292 §4), 413 (too large), redirects: this message
  // cannot succeed as sent, but the device is not known to be gone.
  return { kind: "failed", status, reason: `push service answered ${status}` };
}

/** A reason for a network failure without the error's message, which may hold the URL. */
function networkReason(err: unknown): string {
  // Deno 2.5 puts the detail in the message, 2.9 in `cause` ("fetch failed"): read the chain.
  let text = "";
  let current: unknown = err;
  for (let depth = 0; current instanceof Error && depth < 5; depth++) {
    text += ` ${current.message.toLowerCase()}`;
    current = current.cause;
  }
  if (text.includes("connection refused")) return "network error: connection refused";
  if (text.includes("dns error") || text.includes("failed to lookup")) {
    return "network error: name resolution failed";
  }
  if (text.includes("certificate") || text.includes("tls")) return "network error: TLS failure";
  if (text.includes("connection reset")) return "network error: connection reset";
  if (text.includes("blocked")) return "network error: port blocked by the runtime";
  return `network error: ${err instanceof Error ? err.name : typeof err}`;
}
