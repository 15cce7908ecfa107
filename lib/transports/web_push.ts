/**
 * The Web Push transport (RFC 8030): one POST per message to the subscription's endpoint,
 * encrypted with RFC 8291 `aes128gcm` and authenticated with VAPID (RFC 8292).
 *
 * Endpoint URLs identify a device, so they are treated as secrets: no outcome reason, error or
 * log line built here contains one.
 *
 * With `endpointPolicy`, each connection is held to the endpoint policy (lib/address_policy.ts)
 * by the HTTP/1.1 client, which connects only to addresses it has just checked. `fetch` cannot
 * be held to it that way (it resolves names itself), so under the policy an origin that
 * refuses HTTP/1.1 is not handed to `fetch`: that send is `failed`. A `fetch` given in the
 * options (an outbound proxy, tests) gets the policy's check right before each request, which
 * leaves the window described at `fetchPost`.
 *
 * @module
 */

import type { Resolver } from "../address_policy.ts";
import { decodeSubscriptionKeys, encryptWebPush, type EphemeralKeyPool } from "../crypto/ece.ts";
import type { Encryptor } from "../crypto/ece_pool.ts";
import type { Vapid } from "../crypto/vapid.ts";
import { utf8 } from "../encoding.ts";
import { isPushTopic } from "../rfc8030.ts";
import {
  type Connect,
  createHttp1Client,
  EndpointRefused,
  fetchPost,
  HeaderBlock,
  type Post,
  ProtocolMismatch,
} from "./http1.ts";
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
   * Encrypts off the main thread (`createEncryptionPool`, lib/crypto/ece_pool.ts; a message's
   * `bulk` is passed on); messages are encrypted inline with `keyPool` when absent.
   */
  encryptor?: Encryptor;
  /**
   * The endpoint policy at every connection (module doc). The relay always sets it; absent,
   * requests go wherever an endpoint's name resolves (tests against local servers).
   */
  endpointPolicy?: {
    /** Turns the policy off (`RELAY_ALLOW_PRIVATE_ENDPOINTS=1`). */
    allowPrivate: boolean;
    /** Resolves endpoint host names (A and AAAA), e.g. `denoResolver` (lib/targets.ts). */
    resolve: Resolver;
    /** Opens TCP connections to checked addresses. @default Deno.connect */
    connect?: Connect;
  };
  /** Extra trusted CA certificates (PEM) for the HTTP/1.1 client's TLS (tests). */
  caCerts?: string[];
}

/**
 * The Web Push transport; `close()` (or `using`) closes its kept-alive connections and stops
 * the encryptor and key pool it was given (it owns them from then on).
 */
export interface WebPushTransport extends Transport, Disposable {
  close(): Promise<void>;
}

/**
 * Creates the `web-push` transport. Requests go out on a lean HTTP/1.1 client with keep-alive
 * connections (lib/transports/http1.ts; `fetch` for a push service that refuses HTTP/1.1,
 * unless the endpoint policy is on), or on `options.fetch` when given.
 */
export function createWebPushTransport(options: WebPushTransportOptions): WebPushTransport {
  const policy = options.endpointPolicy?.allowPrivate === false
    ? options.endpointPolicy
    : undefined;
  const caCerts = options.caCerts ? { caCerts: options.caCerts } : {};
  const client = options.fetch ? undefined : createHttp1Client(
    policy
      ? {
        ...caCerts,
        endpointPolicy: {
          resolve: policy.resolve,
          ...(policy.connect ? { connect: policy.connect } : {}),
        },
      }
      : { ...caCerts, fallback: fetchPost(globalThis.fetch) },
  );
  const post: Post = client
    ? client.post
    : fetchPost(options.fetch!, policy ? { endpointPolicy: policy } : {});
  const { vapid, now, keyPool, encryptor } = options;

  /**
   * Plaintext bytes per payload object: one fan-out hands every subscriber the same payload
   * object, so it is serialised once per message, not once per subscriber.
   */
  const serialised = new WeakMap<object, Uint8Array>();
  type Plain = Exclude<OutboundMessage["payload"], { kind: "encrypted" }>;
  function plaintextOf(payload: Plain): Uint8Array {
    const key = payload.kind === "json" ? payload.data : payload;
    let bytes = serialised.get(key);
    if (!bytes) {
      // A text payload (the WebDAV-Push push-message) is its UTF-8 bytes, as the draft wants.
      bytes = utf8(payload.kind === "json" ? JSON.stringify(payload.data) : payload.text);
      serialised.set(key, bytes);
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
      plaintext = plaintextOf(message.payload);
    } catch (err) {
      return { kind: "failed", reason: `payload is not JSON: ${(err as Error).name}` };
    }
    const input = { plaintext, uaPublic: keys.p256dh, authSecret: keys.auth };
    try {
      return await (encryptor
        ? encryptor.encrypt(input, { bulk: message.bulk === true })
        : encryptWebPush(input, keyPool ? { keyPool } : {}));
    } catch (err) {
      // Only our own size and shape messages reach here; they hold no key material.
      const text = (err as Error).message.replace(/^Cannot encrypt Web Push message: /, "");
      return text.startsWith("p256dh")
        ? { kind: "failed", reason: `invalid subscription keys: ${text}` }
        : { kind: "failed", reason: `cannot encrypt: ${text}` };
    }
  }

  /**
   * The request's header fields, checked and written once per message and origin: a fan-out
   * hands every subscriber the same message object, and an origin's VAPID header is cached.
   */
  const blocks = new WeakMap<OutboundMessage, Map<string, HeaderBlock>>();
  function headerBlock(message: OutboundMessage, authorization: string): HeaderBlock {
    let byOrigin = blocks.get(message);
    if (!byOrigin) blocks.set(message, byOrigin = new Map());
    let block = byOrigin.get(authorization);
    if (!block) {
      const fields: Record<string, string> = {
        // RFC 8030 §5.2: TTL is required, in whole seconds.
        "TTL": String(Math.max(0, Math.floor(message.ttl))),
        "Urgency": message.urgency,
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "Authorization": authorization,
      };
      // An invalid Topic would make the push service refuse the whole message (RFC 8030
      // §5.4); sending it without one only loses the replacement.
      if (message.collapseKey !== undefined && isPushTopic(message.collapseKey)) {
        fields["Topic"] = message.collapseKey;
      }
      block = new HeaderBlock(fields);
      // A message reaches a few push services; the bound only guards against many.
      if (byOrigin.size < 64) byOrigin.set(authorization, block);
    }
    return block;
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

      const headers = headerBlock(message, authorization);

      // The signal may have fired while we were encrypting. The time limit is the caller's
      // (bounded(), lib/transports/bounded.ts): it aborts `signal`.
      if (signal?.aborted) return { kind: "retry", reason: "aborted" };
      try {
        const response = await post(url, headers, body, signal);
        return classify(response.status, response.header("retry-after"), now());
      } catch (err) {
        if (err instanceof EndpointRefused) {
          // `failed` (dead-lettered at once), not `retry`: the endpoint's host now resolves, or
          // its URL leads, where the relay must not connect. That is a decision about where
          // the endpoint points, not a passing failure: retries would keep the message queued
          // for its TTL and resolve the name again and again for whoever controls its DNS. Not
          // `gone` either: the registration stays, and its next message is checked anew. A name
          // with no address at all may be a passing DNS failure: a `retry` like any other.
          return err.kind === "refused"
            ? { kind: "failed", reason: `endpoint refused: ${err.message}` }
            : { kind: "retry", reason: "network error: name resolution failed" };
        }
        if (policy && err instanceof ProtocolMismatch) {
          // No `fetch` fallback under the policy (module doc).
          return {
            kind: "failed",
            reason: "push service refuses HTTP/1.1 (no fetch under the policy)",
          };
        }
        if (signal?.aborted) return { kind: "retry", reason: "aborted" };
        return { kind: "retry", reason: networkReason(err) };
      }
    },
    async close() {
      client?.close();
      await Promise.all([encryptor?.close(), keyPool?.close()]);
    },
    [Symbol.dispose]() {
      void this.close();
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
