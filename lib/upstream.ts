/**
 * Relaying to another gateway (CC/CD 70025 §4, §4.2, §5.3; README "Relaying to another
 * gateway"): the upstream's bootstrap, kept in KV and listed after this relay's own
 * transports; subscribe requests for its transports, forwarded with this relay's credentials
 * there (§5.3 MUST), and the topic-to-gateway map they feed (§4.2 MUST); the push requests
 * of the delivery queue (lib/delivery/upstream.ts), sent to the push-url the upstream gave;
 * loops refused by `Via` (RFC 9110 §7.6.3); and a status for operators.
 *
 * @module
 */

import type { UpstreamConfig } from "./config.ts";
import type { UpstreamPusher, UpstreamPushResult } from "./delivery/upstream.ts";
import { isObject, type Reply, UpstreamClient, viaNames } from "./delivery/upstream_client.ts";
import { encodeBase64Url } from "./encoding.ts";
import type { SubscribeRequest } from "./gateway.ts";
import type { Logger } from "./log.ts";
import type { ViaHop } from "./model.ts";
import type { Store } from "./store/mod.ts";
import { type Clock, formatRfc3339 } from "./time.ts";

export { appendVia, formatVia, viaNames } from "./delivery/upstream_client.ts";

/** How often the bootstrap is fetched again; after a failed fetch, every minute. */
export const BOOTSTRAP_REFRESH_MS = 3600_000;
export const BOOTSTRAP_RETRY_MS = 60_000;
/** A request that has passed this many gateways is refused as a loop. */
export const MAX_VIA_HOPS = 32;
/** Upstream transports kept at most (the list is stored in one KV value). */
const MAX_TRANSPORTS = 100;

/**
 * An answer to give exactly as it is: the upstream's own (its status and body), or one of this
 * relay's for the relaying path (`502`, `504`, `508`). Routes turn it into the response.
 */
export class UpstreamAnswer extends Error {
  override name = "UpstreamAnswer";
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly headers: Record<string, string> = {},
  ) {
    super(`Answer ${status} on the relaying path`);
  }
}

function refusal(status: 502 | 504 | 508, code: string, message: string): UpstreamAnswer {
  return new UpstreamAnswer(status, { error: { code, message } });
}

/** What an operator sees of the upstream (the admin API's status). */
export interface UpstreamStatus {
  /**
   * Whether the last request to the upstream got an answer that was not a `5xx`: this
   * process's last request, or the last bootstrap fetch of any process, whichever is newer;
   * null before the first.
   */
  reachable: boolean | null;
  /** RFC 3339 time of that request; null before the first. */
  lastContact: string | null;
  /** RFC 3339 time of the last successful bootstrap fetch; null if there never was one. */
  lastBootstrap: string | null;
  /** The upstream transports bootstrap lists. */
  transports: number;
  /** Unexpired entries of the topic-to-gateway map, all apps together. */
  mapSize: number;
  /** What went wrong last, when `reachable` is false (no URLs, no secrets). */
  lastError?: string;
}

export interface UpstreamOptions {
  config: UpstreamConfig;
  /** This relay's name in `Via`, stable across restarts. */
  relayId: string;
  /** This relay's own transport-uris: never listed, never forwarded. */
  ownUris: readonly string[];
  store: Store;
  fetch: typeof fetch;
  now: Clock;
  logger: Logger;
  /** Longest time one upstream request may take. */
  timeoutMs: number;
  /** Push requests in flight at most. @default 16 */
  concurrency?: number;
}

/**
 * The JSON object of a `2xx` answer to a forwarded request. Anything else is thrown as the
 * answer to give: the upstream's status and body (with its `Retry-After`), or this relay's
 * `502`/`504` when the upstream did not answer, refused this relay's own credentials, or sent
 * something that is not a gateway's answer.
 */
function successOf(reply: Reply): Record<string, unknown> {
  if (!reply.ok) {
    throw reply.timeout
      ? refusal(504, "upstream-timeout", "The upstream gateway did not answer in time")
      : refusal(
        502,
        "upstream-unavailable",
        `The upstream gateway is unreachable (${reply.error})`,
      );
  }
  if (reply.status === 401) {
    // This relay's own credential at the upstream, not the caller's: passing the 401 on would
    // tell the application server that its token is wrong.
    throw refusal(
      502,
      "upstream-refused-credentials",
      "The upstream refused this relay's credentials",
    );
  }
  const { status } = reply;
  // A redirect is not followed (it would carry the token elsewhere), nor passed on.
  if (!isObject(reply.json) || (status > 299 && status < 400)) {
    const message = `The upstream gateway answered ${status} without a gateway's JSON answer`;
    throw refusal(502, "upstream-invalid-answer", message);
  }
  if (status > 299) {
    const headers: Record<string, string> = reply.retryAfter
      ? { "Retry-After": reply.retryAfter }
      : {};
    throw new UpstreamAnswer(status, reply.json, headers);
  }
  return reply.json;
}

/** The key of one upstream subscriber in the map: a hash of its client-data (opaque here). */
async function subscriberKey(clientData: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(clientData));
  return encodeBase64Url(new Uint8Array(digest)).slice(0, 22);
}

export class Upstream implements UpstreamPusher {
  private listed: Record<string, unknown>[] = [];
  private uris = new Set<string>();
  private pushUrlCache: string | null = null;
  private lastAttempt = -Infinity;
  private lastOk = false;
  private refreshing: Promise<boolean> | null = null;
  private readonly own: Set<string>;
  private readonly client: UpstreamClient;

  constructor(private readonly o: UpstreamOptions) {
    this.own = new Set(o.ownUris);
    this.client = new UpstreamClient({
      config: o.config,
      relayId: o.relayId,
      fetch: o.fetch,
      now: o.now,
      timeoutMs: o.timeoutMs,
      ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
    });
  }

  /** Reads the stored bootstrap and push-url: after a restart, bootstrap lists them at once. */
  async load(): Promise<void> {
    const stored = await this.o.store.upstream.bootstrap(this.o.config.url);
    if (stored) this.show(stored.transports);
    this.pushUrlCache = await this.o.store.upstream.pushUrl(this.o.config.url);
  }

  /** The upstream's transports, for bootstrap after this relay's own (their URIs unchanged). */
  transports(): Record<string, unknown>[] {
    return this.listed;
  }

  /** True when `uri` is one of the upstream's transports. */
  offers(uri: string): boolean {
    return this.uris.has(uri);
  }

  /** Refuses a request that has already passed this relay (`508`), or far too many gateways. */
  refuseLoop(via: readonly ViaHop[]): void {
    if (viaNames(via, this.o.relayId)) {
      throw refusal(508, "loop-detected", "The request has already passed this relay (Via)");
    }
    if (via.length >= MAX_VIA_HOPS) {
      throw refusal(508, "loop-detected", `The request has passed ${via.length} gateways (Via)`);
    }
  }

  /** Fetches the bootstrap again when the last fetch is old enough (called with every tick). */
  async refreshIfDue(signal?: AbortSignal): Promise<void> {
    const wait = this.lastOk ? BOOTSTRAP_REFRESH_MS : BOOTSTRAP_RETRY_MS;
    if (this.o.now() - this.lastAttempt >= wait) await this.refresh(signal);
  }

  /** Fetches the upstream's bootstrap now and keeps it; false when that failed. */
  refresh(signal?: AbortSignal): Promise<boolean> {
    this.refreshing ??= this.fetchBootstrap(signal).finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async fetchBootstrap(signal?: AbortSignal): Promise<boolean> {
    const at = this.o.now();
    this.lastAttempt = at;
    const reply = await this.client.post(this.o.config.url, { "push-transports": [] }, [], signal);
    let error: string | undefined;
    let list: Record<string, unknown>[] | null = null;
    if (!reply.ok) error = reply.error;
    else if (reply.status !== 200) error = `answered ${reply.status}`;
    else if (!(list = this.parseBootstrap(reply.json))) error = "answered no valid push-transports";
    this.lastOk = list !== null;
    if (list) {
      this.show(list);
      await this.o.store.upstream.saveBootstrap({
        url: this.o.config.url,
        transports: list,
        fetchedAt: at,
      });
    }
    await this.o.store.upstream.saveCheck({ at, ok: this.lastOk, ...(error ? { error } : {}) });
    this.o.logger.log(list ? "info" : "warn", "upstream.bootstrap", {
      ok: this.lastOk,
      ...(list ? { transports: list.length } : { error }),
    });
    return this.lastOk;
  }

  /** The entries of a bootstrap answer that name a transport-uri (not one of ours), or null. */
  private parseBootstrap(json: unknown): Record<string, unknown>[] | null {
    const entries = isObject(json) ? json["push-transports"] : undefined;
    if (!Array.isArray(entries)) return null;
    const seen = new Set<string>();
    const out: Record<string, unknown>[] = [];
    for (const e of entries) {
      const uri = isObject(e) && isObject(e.transport) ? e.transport["transport-uri"] : undefined;
      if (typeof uri !== "string" || uri === "" || this.own.has(uri) || seen.has(uri)) continue;
      seen.add(uri);
      out.push(e as Record<string, unknown>);
    }
    return out.slice(0, MAX_TRANSPORTS);
  }

  private show(list: Record<string, unknown>[]): void {
    const uriOf = (e: Record<string, unknown>) =>
      (e.transport as Record<string, unknown>)["transport-uri"] as string;
    this.listed = list.filter((e) => !this.own.has(uriOf(e)));
    this.uris = new Set(this.listed.map(uriOf));
  }

  /**
   * CC/CD 70025 §5.3 MUST: forwards a subscribe for one of the upstream's transports. On
   * success, records (or, for a past `expires`, removes) the topics in the topic-to-gateway
   * map (§4.2 MUST). Any other answer is thrown as an {@linkcode UpstreamAnswer} (see
   * `successOf`).
   */
  async subscribe(app: string, req: SubscribeRequest, via: readonly ViaHop[]): Promise<void> {
    const body = {
      "push-subscribe": {
        topics: req.topics,
        "selected-transport": { "transport-uri": req.transportUri, "client-data": req.clientData },
        expires: formatRfc3339(req.expires),
      },
    };
    const answer = successOf(await this.client.post(this.o.config.url, body, via));
    const pushUrl = answer["push-url"];
    if (typeof pushUrl !== "string" || !/^https?:\/\//i.test(pushUrl) || !URL.canParse(pushUrl)) {
      throw refusal(
        502,
        "upstream-invalid-answer",
        "The upstream gateway answered without a push-url",
      );
    }
    if (pushUrl !== this.pushUrlCache) {
      await this.o.store.upstream.savePushUrl({ url: this.o.config.url, pushUrl });
      this.pushUrlCache = pushUrl;
    }
    const key = await subscriberKey(req.clientData);
    const now = this.o.now();
    // §5.2.2: a past expiry unsubscribes; the entry goes once the upstream accepted that.
    if (req.expires <= now) await this.o.store.upstream.remove(app, key, req.topics);
    else await this.o.store.upstream.record(app, key, req.topics, req.expires, now);
  }

  /** The topics of `topics` that the topic-to-gateway map routes upstream for `app`. */
  relayed(app: string, topics: string[], now: number): Promise<Set<string>> {
    return this.o.store.upstream.active(app, topics, now);
  }

  /** One push request to the upstream's push-url (an attempt of lib/delivery/upstream.ts). */
  push(
    body: Record<string, unknown>,
    via: ViaHop[],
    signal: AbortSignal,
  ): Promise<UpstreamPushResult> {
    // The push-url of the last subscribe answer; the gateway URL takes pushes too.
    return this.client.push(this.pushUrlCache ?? this.o.config.url, body, via, signal);
  }

  /** The status the admin API shows. */
  async status(): Promise<UpstreamStatus> {
    const now = this.o.now();
    const [check, stored, mapSize] = await Promise.all([
      this.o.store.upstream.check(),
      this.o.store.upstream.bootstrap(this.o.config.url),
      this.o.store.upstream.count(now),
    ]);
    const contact = this.client.contact;
    const last = contact && (!check || contact.at >= check.at) ? contact : check;
    return {
      reachable: last ? last.ok : null,
      lastContact: last ? formatRfc3339(last.at) : null,
      lastBootstrap: stored ? formatRfc3339(stored.fetchedAt) : null,
      transports: this.listed.length,
      mapSize,
      ...(last && !last.ok && last.error ? { lastError: last.error } : {}),
    };
  }
}
