/**
 * The Push Gateway protocol core (CC/CD 70025 §5.1, §5.3, §5.4, §6.1) on plain, already
 * validated values: bootstrap, subscribe / refresh / unsubscribe, and push. Routes parse
 * HTTP into these calls; this module never sees a request.
 *
 * @module
 */

import type { Config } from "./config.ts";
import type { DeliveryEngine } from "./delivery/engine.ts";
import { RelayError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { PushMessage, Subscriber, ViaHop } from "./model.ts";
import type { Sealer } from "./seal.ts";
import type { Store } from "./store/mod.ts";
import { type Clock, formatRfc3339 } from "./time.ts";
import type { TransportId } from "./transports/types.ts";
import type { Upstream } from "./upstream.ts";

/** One transport as bootstrap lists it (CC/CD 70025 §6.1.1). */
export interface TransportInfo {
  id: TransportId;
  /** `<RELAY_PUBLIC_URL>/transports/<id>`. */
  uri: string;
  /** Flat map of strings: §6.1.1 forbids structured transport-data. */
  data: Record<string, string>;
}

export interface GatewayOptions {
  config: Pick<Config, "publicUrl" | "refreshInterval">;
  transports: TransportInfo[];
  store: Store;
  sealer: Sealer;
  engine: DeliveryEngine;
  now: Clock;
  logger: Logger;
  /** How an app appears in logs: path-authenticated app ids are secrets (README "Configuration"). */
  appLabel?: (app: string) => string;
  /** The gateway this relay relays to (README "Relaying to another gateway"); null: none. */
  upstream?: Upstream | null;
}

/** What a request's route read besides its body. */
export interface RequestContext {
  /** The request's `Via` list (RFC 9110 §7.6.3); empty when it had none. */
  via?: ViaHop[];
}

export interface SubscribeRequest {
  topics: string[];
  transportUri: string;
  clientData: string;
  /** Epoch ms. */
  expires: number;
}

/** Tolerated clock skew between application server and relay, on `expires`. */
export const CLOCK_SKEW_MS = 300_000;

/** Largest acknowledging payload: well under every push service's 4 KiB limit. */
export const ACK_MAX_BYTES = 3072;

/**
 * The acknowledging push payload (CC/CD 70025 §5.3; README "The gateway protocol"), cut to fit
 * 3 KiB with `truncated: true`.
 */
export function ackPayload(topics: string[], expires: string): Record<string, unknown> {
  const size = (p: unknown) => new TextEncoder().encode(JSON.stringify(p)).length;
  const full = { type: "subscribed", topics, expires };
  if (size(full) <= ACK_MAX_BYTES) return full;
  let lo = 0;
  let hi = topics.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (size({ ...full, topics: topics.slice(0, mid), truncated: true }) <= ACK_MAX_BYTES) lo = mid;
    else hi = mid - 1;
  }
  return { type: "subscribed", topics: topics.slice(0, lo), expires, truncated: true };
}

export class Gateway {
  private readonly label: (app: string) => string;
  constructor(private readonly o: GatewayOptions) {
    this.label = o.appLabel ?? ((app) => app);
  }

  /**
   * CC/CD 70025 §5.1: the transports this gateway offers, then those of the gateway it relays
   * to, as that one listed them (§4).
   */
  bootstrap(): { "push-transports": unknown[] } {
    return {
      "push-transports": [
        ...this.o.transports.map((t) => ({
          transport: {
            "transport-uri": t.uri,
            "refresh-interval": this.o.config.refreshInterval,
            "transport-data": t.data,
          },
        })),
        ...(this.o.upstream?.transports() ?? []),
      ],
    };
  }

  /** True when this relay relays to an upstream gateway (and so reads `Via`). */
  get relaying(): boolean {
    return Boolean(this.o.upstream);
  }

  /** The transport a transport-uri names, or null. */
  transportForUri(uri: string): TransportId | null {
    return this.o.transports.find((t) => t.uri === uri)?.id ?? null;
  }

  pushUrl(app: string): string {
    return `${this.o.config.publicUrl}/gateway/${app}`;
  }

  /**
   * CC/CD 70025 §5.3 / §6.1.2: creates or refreshes (app, topic, client) for every topic, or
   * unsubscribes them when `expires` has passed (§5.2.2). All checks happen before any write.
   */
  async subscribe(
    app: string,
    req: SubscribeRequest,
    ctx: RequestContext = {},
  ): Promise<{ "push-url": string }> {
    const upstream = this.o.upstream;
    upstream?.refuseLoop(ctx.via ?? []);
    const transport = this.transportForUri(req.transportUri);
    if (!transport && upstream?.offers(req.transportUri)) {
      // CC/CD 70025 §5.3 MUST: a proxy forwards the subscribe to the proxied gateway; its
      // refusals come back as they are (thrown), its success with this relay's push-url.
      await upstream.subscribe(app, req, ctx.via ?? []);
      this.o.logger.log("info", "subscribe.upstream", {
        app: this.label(app),
        topics: req.topics.length,
        unsubscribe: req.expires <= this.o.now(),
      });
      return { "push-url": this.pushUrl(app) };
    }
    if (!transport) {
      throw new RelayError(
        400,
        "unknown-transport",
        `Unknown transport-uri: ${req.transportUri.slice(0, 200)}`,
      );
    }
    const now = this.o.now();
    const ri = this.o.config.refreshInterval;
    // §6.2.1.6 MUST NOT accept an expiration beyond the refresh interval (no clamping: the
    // response has no way to report a clamped expiry).
    if (req.expires > now + ri * 1000 + CLOCK_SKEW_MS) {
      throw new RelayError(
        400,
        "expires-exceeds-refresh-interval",
        `expires lies more than the refresh interval (${ri} s) ahead`,
        { "refresh-interval": ri },
      );
    }
    // §8.3 SHOULD: client-data authenticates the client; a forged, altered or foreign one is
    // refused.
    const claims = await this.o.sealer.open(req.clientData);
    if (!claims || claims.transport !== transport) {
      throw new RelayError(
        403,
        "invalid-client-data",
        "client-data was not issued by this relay for this transport",
      );
    }
    const pushUrl = { "push-url": this.pushUrl(app) };
    if (req.expires <= now) {
      // §5.2.2 MUST: a subscription whose expiry has passed removes the client from those
      // topics; it succeeds even for a revoked registration, since the client-data is authentic.
      const removed = await this.o.store.subscriptions.remove(app, claims.clientId, req.topics);
      this.o.logger.log("info", "unsubscribe", {
        app: this.label(app),
        client: claims.clientId,
        topics: removed,
      });
      return pushUrl;
    }
    const reg = await this.o.store.registrations.get(claims.clientId);
    if (!reg) {
      throw new RelayError(
        403,
        "invalid-client-data",
        "The registration behind this client-data was revoked; the device must register again",
      );
    }
    const topics = [...new Set(req.topics)];
    const created = await this.o.store.subscriptions.upsert(
      app,
      claims.clientId,
      transport,
      topics,
      req.expires,
      now,
    );
    this.o.logger.log("info", "subscribe", {
      app: this.label(app),
      client: claims.clientId,
      topics: topics.length,
      created: created.length,
    });
    // README "The client API": a webdav-push device understands only the WebDAV-Push
    // push-message, so it gets no acknowledging push.
    if (created.length > 0 && reg.payload !== "webdav-push") {
      // §5.3 SHOULD acknowledge with an initial push; §8.2 lets it arrive before this answer.
      await this.o.engine.enqueue(
        claims.clientId,
        { kind: "json", data: ackPayload(created, formatRfc3339(req.expires)) },
        { reason: "ack", priority: 50, app },
      );
    }
    return pushUrl;
  }

  /**
   * CC/CD 70025 §5.4 / §6.1.3: records the messages for delivery and answers which topics
   * have no active subscription of this app. Unlisted topics count as delivered, so the
   * outbox write must succeed before this returns (or the whole request fails).
   */
  async push(
    app: string,
    messages: PushMessage[],
    ctx: RequestContext = {},
  ): Promise<{ "push-response": Record<string, unknown> }> {
    const upstream = this.o.upstream;
    upstream?.refuseLoop(ctx.via ?? []);
    const now = this.o.now();
    const topics = [...new Set(messages.map((m) => m.topic))];
    const active = new Set<string>();
    // A small topic's look-up lists its subscribers: its fan-out starts from that list.
    const listed = new Map<string, readonly Subscriber[]>();
    const CONCURRENCY = 16;
    for (let i = 0; i < topics.length; i += CONCURRENCY) {
      const chunk = topics.slice(i, i + CONCURRENCY);
      const found = await Promise.all(
        chunk.map((t) => this.o.store.subscriptions.lookUp(app, t, now)),
      );
      chunk.forEach((t, j) => {
        if (!found[j]!.active) return;
        active.add(t);
        if (found[j]!.subscribers) listed.set(t, found[j]!.subscribers!);
      });
    }
    // CC/CD 70025 §4.2: topics the topic-to-gateway map routes upstream go there (as well).
    const relayed = upstream ? await upstream.relayed(app, topics, now) : new Set<string>();
    const upward = messages.filter((m) => relayed.has(m.topic));
    await Promise.all([
      this.o.engine.accept(app, messages.filter((m) => active.has(m.topic)), { listed }),
      this.o.engine.relay(app, upward, {
        via: ctx.via ?? [],
        // Those also delivered here are counted as received once, by the local accept.
        received: upward.filter((m) => !active.has(m.topic)).length,
      }),
    ]);
    const missing = topics.filter((t) => !active.has(t) && !relayed.has(t));
    // §5.4 MUST omit the list when every topic had a subscriber.
    return {
      "push-response": missing.length > 0
        ? { "no-subscribers": missing.map((topic) => ({ topic })) }
        : {},
    };
  }
}
