/**
 * The upstream gateway's HTTP client (README "Relaying to another gateway"): every request to
 * it (bootstrap, forwarded subscribes, and the push requests of upstream deliveries) is a JSON
 * `POST` with this relay's credentials there (a bearer token, or the path-secret URL itself)
 * and a `Via` list (RFC 9110 §7.6.3) that ends with this relay. It never follows redirects
 * (they would carry the token elsewhere), and what it reports names no URL: a path-secret
 * app's URL is a secret.
 *
 * @module
 */

import { Semaphore } from "../async/semaphore.ts";
import type { UpstreamConfig } from "../config.ts";
import type { ViaHop } from "../model.ts";
import type { Clock } from "../time.ts";
import { parseRetryAfter } from "../transports/types.ts";
import type { UpstreamPushResult } from "./upstream.ts";

/** Largest upstream answer read; anything longer is not a gateway's answer. */
const ANSWER_BYTES = 1 << 20;

/** A `Via` list as the header writes it (comments left out, as RFC 9110 §7.6.3 allows). */
export function formatVia(hops: readonly ViaHop[]): string {
  return hops.map((h) => `${h.protocol} ${h.receivedBy}`).join(", ");
}

/** The list a forwarded request carries: the incoming one with `1.1 <id>` appended. */
export function appendVia(hops: readonly ViaHop[], id: string): ViaHop[] {
  return [...hops, { protocol: "1.1", receivedBy: id }];
}

/** True when one of the hops is the relay named `id` (compared case-insensitively). */
export function viaNames(hops: readonly ViaHop[], id: string): boolean {
  const own = id.toLowerCase();
  return hops.some((h) => h.receivedBy.toLowerCase() === own);
}

export const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The topics of a push answer's `no-subscribers` (CC/CD 70025 §6.1.3): wrapped in
 * `push-response` or bare, each `{"topic": ...}` or a plain string.
 */
export function noSubscribersOf(json: unknown): string[] {
  const response = isObject(json) && isObject(json["push-response"]) ? json["push-response"] : json;
  const list = isObject(response) ? response["no-subscribers"] : undefined;
  if (!Array.isArray(list)) return [];
  return list.flatMap((item) => {
    if (typeof item === "string") return [item];
    return isObject(item) && typeof item.topic === "string" ? [item.topic] : [];
  });
}

/** How one request went: an answer (its JSON body when it had one), or none. */
export type Reply =
  | { ok: true; status: number; json: unknown; retryAfter: string | null }
  | { ok: false; error: string; timeout: boolean };

/** The last request: when, and whether it got an answer that was not a `5xx`. */
export interface Contact {
  at: number;
  ok: boolean;
  error?: string;
}

export interface UpstreamClientOptions {
  config: UpstreamConfig;
  /** This relay's name in `Via`. */
  relayId: string;
  fetch: typeof fetch;
  now: Clock;
  /** Longest time one request may take. */
  timeoutMs: number;
  /** Push requests in flight at most. @default 16 */
  concurrency?: number;
}

/** Reads a body up to `max` bytes; null when it is longer. */
async function readCapped(res: Response, max: number): Promise<string | null> {
  if (!res.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += chunk.length;
    if (size > max) return null; // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

export class UpstreamClient {
  /** The last request of this process; null before the first. */
  contact: Contact | null = null;
  private readonly slots: Semaphore;

  constructor(private readonly o: UpstreamClientOptions) {
    this.slots = new Semaphore(o.concurrency ?? 16);
  }

  /** One POST of `body` to `url` (the gateway URL or its push-url), carrying `via` and this relay. */
  async post(
    url: string,
    body: unknown,
    via: readonly ViaHop[],
    signal?: AbortSignal,
  ): Promise<Reply> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/json",
      via: formatVia(appendVia(via, this.o.relayId)),
    };
    if (this.o.config.token) headers.authorization = `Bearer ${this.o.config.token}`;
    const timeout = AbortSignal.timeout(this.o.timeoutMs);
    const at = this.o.now();
    let reply: Reply;
    try {
      const res = await this.o.fetch(url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        redirect: "manual",
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      const text = await readCapped(res, ANSWER_BYTES);
      let json: unknown = undefined;
      try {
        json = text ? JSON.parse(text) : undefined;
      } catch {
        // Not JSON: the caller decides what that means.
      }
      reply = { ok: true, status: res.status, json, retryAfter: res.headers.get("retry-after") };
    } catch (err) {
      const timedOut = timeout.aborted && !signal?.aborted;
      const error = timedOut ? "timeout" : `network error: ${(err as Error).name}`;
      reply = { ok: false, error, timeout: timedOut };
    }
    const ok = reply.ok && reply.status < 500;
    this.contact = {
      at,
      ok,
      ...(ok ? {} : { error: reply.ok ? `answered ${reply.status}` : reply.error }),
    };
    return reply;
  }

  /**
   * One push request (the attempt of an upstream delivery): `delivered` for a `2xx` with the
   * topics of its `no-subscribers`; `retry` when there was no answer, or `401` (this relay's
   * credential, which an operator can correct while the messages wait), `408`, `429` or `5xx`
   * (but `508`),
   * honouring `Retry-After`; `failed` for any other refusal (a `508` loop among them).
   */
  async push(
    url: string,
    body: Record<string, unknown>,
    via: readonly ViaHop[],
    signal: AbortSignal,
  ): Promise<UpstreamPushResult> {
    if (!(await this.slots.acquire(signal))) {
      return { outcome: { kind: "retry", reason: "shutdown", local: true }, noSubscribers: [] };
    }
    try {
      const reply = await this.post(url, body, via, signal);
      if (!reply.ok) {
        const local = signal.aborted ? { local: true as const } : {};
        return { outcome: { kind: "retry", reason: reply.error, ...local }, noSubscribers: [] };
      }
      const { status } = reply;
      if (status >= 200 && status <= 299) {
        const noSubscribers = noSubscribersOf(reply.json);
        return { outcome: { kind: "delivered", status }, noSubscribers };
      }
      const code = isObject(reply.json) && isObject(reply.json.error)
        ? reply.json.error.code
        : undefined;
      const reason = `upstream answered ${status}` +
        (typeof code === "string" ? ` ${code.slice(0, 64)}` : "");
      // A 508 is a loop (RFC 5842 §7.2): sending again cannot help.
      if (status === 401 || status === 408 || status === 429 || (status >= 500 && status !== 508)) {
        const retryAfterMs = parseRetryAfter(reply.retryAfter, this.o.now());
        const wait = retryAfterMs !== undefined ? { retryAfterMs } : {};
        return { outcome: { kind: "retry", status, reason, ...wait }, noSubscribers: [] };
      }
      return { outcome: { kind: "failed", status, reason }, noSubscribers: [] };
    } finally {
      this.slots.release();
    }
  }
}
