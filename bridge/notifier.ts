/**
 * Pushing a collection's topic to the relay (CC/CD 70025 §5.4), for changes found by polling
 * and for writes through the bridge. Until the relay takes a push, it stays pending and the
 * next poll retries it (an unanswered push was not delivered).
 *
 * A push names the clients not to notify (CC/CD 70025 §7.1 `client-id`; the relay takes
 * several: README, "The gateway protocol") and the collection's sync-token when known. Two
 * pending pushes of one collection merge into one that spares only the clients both spared
 * (§6.1.3: a merged message names no client that another change must reach), with the newer
 * sync-token.
 *
 * @module
 */

import { formatRfc3339 } from "../dav/dav_push.ts";
import type { GatewayClient } from "../dav/gateway_client.ts";
import type { BridgeCollection } from "./config.ts";
import type { Logger } from "./log.ts";

/** One change to push. */
export interface Change {
  /** Relay client-ids not to notify; none or empty: everyone is. */
  exclude?: readonly string[] | undefined;
  /** The collection's sync-token after the change, when known. */
  syncToken?: string | undefined;
}

interface Pending {
  exclude: string[];
  syncToken: string | undefined;
  /** Being sent right now; a poll does not send it a second time. */
  inFlight: boolean;
}

export interface NotifierOptions {
  gateway: GatewayClient;
  now: () => number;
  logger: Logger;
  /** Called after the relay took a push of `c`. */
  onPushed?: (c: BridgeCollection) => void;
}

export class Notifier {
  readonly #pending = new Map<number, Pending>();
  constructor(private readonly o: NotifierOptions) {}

  /** Sends the push waiting for `c`, if any. */
  async retry(c: BridgeCollection): Promise<void> {
    const p = this.#pending.get(c.index);
    if (p && !p.inFlight) await this.push(c, { exclude: p.exclude, syncToken: p.syncToken });
  }

  /** Pushes the topic of `c` for `change`. Never throws. */
  async push(c: BridgeCollection, change: Change): Promise<void> {
    const { gateway, logger } = this.o;
    const before = this.#pending.get(c.index);
    let exclude = [...new Set(change.exclude ?? [])];
    if (before) exclude = exclude.filter((id) => before.exclude.includes(id));
    // The newer change's token names the newer state; without one, an older token is stale.
    const syncToken = change.syncToken;
    const entry: Pending = { exclude, syncToken, inFlight: true };
    this.#pending.set(c.index, entry);
    if (!gateway.shouldPush(c.topic)) {
      // §6.1.3: the relay said nobody listens; wait for a new subscription.
      logger.log("debug", "push-skipped", { collection: c.index, reason: "no-subscribers" });
      this.#pending.delete(c.index);
      return;
    }
    try {
      const clientId = exclude.length === 0
        ? undefined
        : exclude.length === 1
        ? exclude[0]
        : exclude;
      const { noSubscribers } = await gateway.push([{
        topic: c.topic,
        timestamp: formatRfc3339(new Date(this.o.now())),
        clientId,
        syncToken,
      }]);
      // A newer entry (set while this push was in flight) is that newer push's business.
      if (this.#pending.get(c.index) === entry) this.#pending.delete(c.index);
      logger.log("info", "push-sent", {
        collection: c.index,
        "self-suppressed": clientId !== undefined,
        "no-subscribers": noSubscribers.length > 0,
      });
      this.o.onPushed?.(c);
    } catch (err) {
      entry.inFlight = false;
      logger.log("warn", "push-failed", { collection: c.index, error: (err as Error).message });
    }
  }
}
