/**
 * What the bridge knows of the relay's transports (CC/CD 70025 §5.1 bootstrap), fetched on
 * demand and reused for a while; a stale list is kept when the relay cannot be reached.
 *
 * @module
 */

import type { PushTransport } from "../dav/dav_push.ts";
import type { GatewayClient } from "../dav/gateway_client.ts";
import type { Logger } from "./log.ts";

/** The relay's Web Push transport, from its bootstrap. */
export interface RelayWebPush {
  transportUri: string;
  /** Seconds: the longest subscription the relay accepts. */
  refreshInterval: number;
  /** The key the relay signs pushes with (RFC 8292), advertised as WebDAV-Push's. */
  vapidPublicKey: string;
}

export class RelayInfo {
  #cached: { list: PushTransport[]; at: number } | undefined;
  constructor(
    private readonly o: {
      gateway: GatewayClient;
      now: () => number;
      logger: Logger;
      /** How long a bootstrap is reused, in ms. */
      ttlMs: number;
    },
  ) {}

  /** The relay's transports, or undefined while it was never reached. */
  async transports(): Promise<PushTransport[] | undefined> {
    const { now } = this.o;
    if (this.#cached && now() - this.#cached.at < this.o.ttlMs) return this.#cached.list;
    try {
      this.#cached = { list: await this.o.gateway.bootstrap(), at: now() };
    } catch (err) {
      this.o.logger.log("warn", "relay-bootstrap-failed", { error: (err as Error).message });
      // A stale list beats none; the next request tries again.
    }
    return this.#cached?.list;
  }

  /** The relay's Web Push transport: the one whose transport-data has a VAPID key. */
  async webPush(): Promise<RelayWebPush | undefined> {
    for (const t of await this.transports() ?? []) {
      const data = typeof t.transportData === "object" ? t.transportData : undefined;
      const key = data?.["vapid-public-key"];
      if (key !== undefined && t.refreshInterval !== undefined) {
        return {
          transportUri: t.transportUri,
          refreshInterval: t.refreshInterval,
          vapidPublicKey: key,
        };
      }
    }
    return undefined;
  }
}
