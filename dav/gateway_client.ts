/**
 * The application server's client for a CC/CD 70025 Push Gateway (§5.1 bootstrap, §5.3
 * subscribe, §5.4 push; JSON syntax §6.1), shaped after the one known application server,
 * OX App Suite's `DavPushGateway`: pushes go out in chunks of at most 100
 * messages, and a topic-to-gateway map (§4.1) learns from `no-subscribers`.
 *
 * @module
 */

import { formatRfc3339, type PushTransport } from "./dav_push.ts";

/** One update notification (§6.1.3). */
export interface PushMessage {
  /** The topic of the changed resource. */
  topic: string;
  /** 0 (lowest) to 100 (highest); the gateway takes 50 when left out (§6.1.3). */
  priority?: number | undefined;
  /** RFC 3339 UTC time of the (latest) change (§6.1.3). */
  timestamp: string;
  /**
   * The originating client's `Push-Client-Id` (§7.1), so the gateway can skip it. Leave it
   * out when the message merges changes of different clients (§6.1.3). This relay also takes
   * an array of at most 100 client-ids, none of which is notified (README, "The gateway
   * protocol").
   */
  clientId?: string | readonly string[] | undefined;
  /**
   * The collection's sync-token after the change (at most 1024 characters), which this relay
   * carries into WebDAV-Push payloads (README, "The gateway protocol").
   */
  syncToken?: string | undefined;
}

/** A subscription to forward (§6.1.2). */
export interface GatewaySubscription {
  topics: readonly string[];
  transportUri: string;
  /** Forwarded unchanged (§6.2.2.3 MUST). */
  clientData: string;
  /** RFC 3339 UTC string or a date; at or before now means unsubscribe (§5.2.2). */
  expires: string | Date;
}

/**
 * A gateway answered with a non-2xx status, answered garbage, or could not be reached
 * (`status` 0). The message never holds a credential.
 */
export class GatewayError extends Error {
  /** The gateway's HTTP status, or 0 when there was no answer. */
  readonly status: number;
  /** `error.code` of the gateway's JSON error body, when there was one. */
  readonly code: string | undefined;
  /** The gateway's parsed JSON body, when there was one. */
  readonly body: unknown;
  /** For a failed push: how many messages earlier chunks had already delivered. */
  sent: number | undefined = undefined;
  constructor(
    message: string,
    init: { status: number; code?: string | undefined; body?: unknown; cause?: unknown },
  ) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "GatewayError";
    this.status = init.status;
    this.code = init.code;
    this.body = init.body;
  }
}

/**
 * The application server's topic-to-gateway map (§4.1): which gateways have subscribers for a
 * topic. Updated when a subscription is forwarded, and from the `no-subscribers` of push
 * answers (§5.4 SHOULD).
 */
export class TopicGatewayMap {
  #subscribed = new Map<string, Set<string>>();
  #silenced = new Map<string, Set<string>>();

  /** Records that `gateway` accepted a subscription to `topic` (§4.1). */
  subscribed(topic: string, gateway: string): void {
    let set = this.#subscribed.get(topic);
    if (!set) this.#subscribed.set(topic, set = new Set());
    set.add(gateway);
    this.#silenced.get(topic)?.delete(gateway);
  }

  /** Records that `gateway` listed `topic` in `no-subscribers` (§5.4, §6.1.3). */
  noSubscribers(topic: string, gateway: string): void {
    const set = this.#subscribed.get(topic);
    set?.delete(gateway);
    if (set?.size === 0) this.#subscribed.delete(topic);
    let silenced = this.#silenced.get(topic);
    if (!silenced) this.#silenced.set(topic, silenced = new Set());
    silenced.add(gateway);
  }

  /** The gateways known to have subscribers for `topic`. */
  gatewaysFor(topic: string): string[] {
    return [...(this.#subscribed.get(topic) ?? [])];
  }

  /**
   * Whether to push `topic` to `gateway`. §6.1.3: not after the gateway reported no
   * subscribers, until a new subscription arrives. A topic the map knows nothing of (say,
   * after a restart) is pushed: the answer then teaches the map.
   */
  shouldPush(topic: string, gateway: string): boolean {
    return !(this.#silenced.get(topic)?.has(gateway) ?? false);
  }
}

/** Options of {@linkcode GatewayClient}. */
export interface GatewayClientOptions {
  /** The gateway's URL, e.g. `https://relay.example/gateway`. Bootstrap goes here. */
  url: string;
  /** Bearer token of this application server at the gateway. */
  token?: string | undefined;
  /**
   * OX-style path authentication: subscribe and push go to `<url>/<appId>`. Never logged or
   * put in error messages.
   */
  appId?: string | undefined;
  /** Messages per push request, 1 to 100; default 100 (OX `transportChunkSize`). */
  chunkSize?: number | undefined;
  /** Per-request timeout in milliseconds; default 30000 (OX's read timeout). */
  timeoutMs?: number | undefined;
  /** A topic-to-gateway map to keep up to date; the key for this gateway is `url`. */
  topicMap?: TopicGatewayMap | undefined;
  /** Injected `fetch`; default `globalThis.fetch`. */
  fetch?: typeof fetch | undefined;
  /** Clock (epoch ms) that decides whether an `expires` is past; default `Date.now`. */
  now?: (() => number) | undefined;
}

/** Largest chunk {@linkcode GatewayClient.push} sends: 100 messages, as OX App Suite does. */
export const MAX_PUSH_CHUNK = 100;

/**
 * A client for one Push Gateway.
 *
 * ```ts
 * import { GatewayClient, TopicGatewayMap } from "./gateway_client.ts";
 *
 * const topicMap = new TopicGatewayMap();
 * const gateway = new GatewayClient({ url: "https://relay.example/gateway", token: "…", topicMap });
 * const [transport] = await gateway.bootstrap();
 * await gateway.subscribe({
 *   topics: ["q9Xc1vLrT0mJ2aBd"],
 *   transportUri: transport!.transportUri,
 *   clientData: "<client-data the client got from the relay>",
 *   expires: new Date(Date.now() + 86_400_000),
 * });
 * const { noSubscribers } = await gateway.push([
 *   { topic: "q9Xc1vLrT0mJ2aBd", timestamp: "2026-11-24T09:15:02Z", clientId: "c-5e0a17" },
 * ]);
 * ```
 */
export class GatewayClient {
  /** This gateway's key in the topic map: its URL. */
  readonly id: string;
  /** The `push-url` the gateway returned from the last subscribe, if any (§5.3). */
  pushUrl: string | undefined;
  readonly #opUrl: string;
  readonly #token: string | undefined;
  readonly #chunkSize: number;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;
  readonly #now: () => number;
  readonly #map: TopicGatewayMap | undefined;

  constructor(options: GatewayClientOptions) {
    this.#now = options.now ?? Date.now;
    const url = new URL(options.url);
    if (url.username || url.password) {
      throw new TypeError("Gateway URL must not hold credentials: pass a token instead");
    }
    this.id = url.href;
    this.#opUrl = options.appId === undefined
      ? url.href
      : url.href.replace(/\/*$/, "/") + encodeURIComponent(options.appId);
    this.#token = options.token;
    const chunk = options.chunkSize ?? MAX_PUSH_CHUNK;
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > MAX_PUSH_CHUNK) {
      throw new RangeError(`Chunk size must be an integer from 1 to 100, got ${chunk}`);
    }
    this.#chunkSize = chunk;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#map = options.topicMap;
  }

  async #post(op: string, url: string, body: unknown, auth: boolean): Promise<unknown> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/json",
    };
    if (auth && this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    let res: Response;
    try {
      res = await this.#fetch(url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (err) {
      // The fetch error text can carry the URL, hence the app id: keep it out of the message.
      const origin = new URL(url).origin;
      const kind = err instanceof Error ? err.name : "Error";
      throw new GatewayError(`Gateway at ${origin} is unreachable (${kind}) for ${op}`, {
        status: 0,
        cause: err,
      });
    }
    const text = await res.text().catch(() => "");
    let json: unknown = undefined;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      // not JSON: reported below when it matters
    }
    if (!res.ok) {
      const err = (json as { error?: { code?: unknown } } | undefined)?.error;
      const code = typeof err?.code === "string" ? err.code : undefined;
      throw new GatewayError(
        `Gateway answered ${res.status} to ${op}${code ? ` with code ${code}` : ""}`,
        { status: res.status, code, body: json },
      );
    }
    if (json === undefined || typeof json !== "object" || json === null) {
      throw new GatewayError(`Gateway answered ${op} with a body that is not a JSON object`, {
        status: res.status,
      });
    }
    return json;
  }

  /**
   * Bootstrap (§5.1, §6.1.1): the gateway's transports. Reads `transport-data` as a flat map
   * of strings or as one string (§6.1.1), and skips entries without a `transport-uri`.
   */
  async bootstrap(): Promise<PushTransport[]> {
    const json = await this.#post("bootstrap", this.id, { "push-transports": [] }, false);
    const list = (json as { "push-transports"?: unknown })["push-transports"];
    if (!Array.isArray(list)) {
      throw new GatewayError("Gateway bootstrap answer has no push-transports array", {
        status: 200,
        body: json,
      });
    }
    const out: PushTransport[] = [];
    for (const entry of list) {
      const t = (entry as { transport?: Record<string, unknown> } | null)?.transport ??
        (entry as Record<string, unknown> | null);
      const uri = t?.["transport-uri"];
      if (typeof uri !== "string" || uri === "") continue;
      const transport: PushTransport = { transportUri: uri };
      const ri = t?.["refresh-interval"];
      if (typeof ri === "number" && Number.isFinite(ri)) transport.refreshInterval = ri;
      else if (typeof ri === "string" && /^\d+$/.test(ri)) transport.refreshInterval = Number(ri);
      const data = t?.["transport-data"];
      if (typeof data === "string") transport.transportData = data;
      else if (data && typeof data === "object" && !Array.isArray(data)) {
        const flat: Record<string, string> = {};
        for (const [k, v] of Object.entries(data)) {
          // §6.1.1: no structured data; scalar values are kept as text.
          if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") {
            flat[k] = String(v);
          }
        }
        transport.transportData = flat;
      }
      out.push(transport);
    }
    return out;
  }

  /**
   * Forwards a subscription (§5.3, §6.1.2). With an `expires` in the past it is the
   * unsubscribe of §5.2.2 (forwarded too). Returns the gateway's `push-url`, if given.
   *
   * @throws {GatewayError} on a non-2xx answer (`400`/`403` are refusals of the client's data)
   */
  async subscribe(sub: GatewaySubscription): Promise<{ pushUrl?: string }> {
    const expires = typeof sub.expires === "string" ? sub.expires : formatRfc3339(sub.expires);
    const json = await this.#post("push-subscribe", this.#opUrl, {
      "push-subscribe": {
        topics: [...sub.topics],
        "selected-transport": { "transport-uri": sub.transportUri, "client-data": sub.clientData },
        expires,
      },
    }, true);
    const expiresAt = Date.parse(expires);
    if (this.#map && !(expiresAt <= this.#now())) {
      for (const topic of sub.topics) this.#map.subscribed(topic, this.id);
    }
    const pushUrl = (json as { "push-url"?: unknown })["push-url"];
    if (typeof pushUrl === "string") {
      this.pushUrl = pushUrl;
      return { pushUrl };
    }
    return {};
  }

  /**
   * Pushes update notifications (§5.4, §6.1.3), at most `chunkSize` (100) per request, in
   * `{"push": {"messages": [...]}}` form. Returns every topic the gateway listed in
   * `no-subscribers`, once, and updates the topic map from them (§5.4). Every other topic counts
   * as delivered (§5.4 MUST).
   *
   * @throws {GatewayError} on the first failing chunk; `sent` on the error says how many
   * messages earlier chunks delivered
   */
  async push(messages: readonly PushMessage[]): Promise<{ noSubscribers: string[] }> {
    const noSubscribers = new Set<string>();
    for (let i = 0; i < messages.length; i += this.#chunkSize) {
      const chunk = messages.slice(i, i + this.#chunkSize).map((m) => {
        const out: Record<string, unknown> = { topic: m.topic };
        if (m.priority !== undefined) out.priority = m.priority;
        out.timestamp = m.timestamp;
        if (m.clientId !== undefined) out["client-id"] = m.clientId;
        if (m.syncToken !== undefined) out["sync-token"] = m.syncToken;
        return out;
      });
      let json: unknown;
      try {
        json = await this.#post("push", this.#opUrl, { push: { messages: chunk } }, true);
      } catch (err) {
        if (err instanceof GatewayError) err.sent = i;
        throw err;
      }
      // {"push-response": {"no-subscribers": [{"topic": ...}]}} as in the draft's examples;
      // the grammar's bare form and plain strings are read too (README, "Protocol decisions").
      const response = (json as { "push-response"?: unknown })["push-response"] ?? json;
      const list = (response as { "no-subscribers"?: unknown })["no-subscribers"];
      if (Array.isArray(list)) {
        for (const item of list) {
          const topic = typeof item === "string"
            ? item
            : (item as { topic?: unknown } | null)?.topic;
          if (typeof topic === "string") noSubscribers.add(topic);
        }
      }
    }
    for (const topic of noSubscribers) this.#map?.noSubscribers(topic, this.id);
    return { noSubscribers: [...noSubscribers] };
  }

  /** Whether the topic map says to push `topic` here (see {@linkcode TopicGatewayMap.shouldPush}). */
  shouldPush(topic: string): boolean {
    return this.#map?.shouldPush(topic, this.id) ?? true;
  }
}

// RFC 7230 §3.2.6 token = 1*tchar.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The `client-id` for a push from a request's `Push-Client-Id` header (§7.1): the header's
 * token as sent (it is already percent-encoded, §7.1 MUST), or undefined when the header is
 * missing, is not an RFC 7230 token, or is longer than 256 characters. The application server
 * SHOULD copy it into the message it pushes for that change (§7.1).
 */
export function clientIdFromHeader(value: string | null | undefined): string | undefined {
  if (value === null || value === undefined) return undefined;
  const v = value.trim();
  if (v.length === 0 || v.length > 256 || !TOKEN.test(v)) return undefined;
  return v;
}
