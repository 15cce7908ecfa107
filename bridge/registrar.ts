/**
 * WebDAV-Push registrations through the bridge (README, "Push for DAVx⁵ on Radicale (or any
 * CalDAV server)"): registering a client's push subscription at the relay for a watched
 * collection's topic, refreshing it, removing it, and noticing when the relay pruned it.
 *
 * Each registration is a relay registration with `"payload": "webdav-push"` subscribed to the
 * collection's topic with the granted expiry. Several registrations (one push resource on
 * several collections, as DAVx⁵ does per account) share the relay registration of that push
 * resource; it is deleted with the last of them.
 *
 * The relay prunes a client whose push service said `404`/`410` and then refuses its
 * client-data with `403 invalid-client-data`. The bridge learns of it by refreshing: at
 * `DELETE` (so a pruned registration answers `404`), and some time after each push of a
 * collection, for every registration of that collection.
 *
 * @module
 */

import { type GatewayClient, GatewayError } from "../dav/gateway_client.ts";
import type { WebPushSubscription } from "../dav/webdav_push.ts";
import { base64Url, type BridgeCollection } from "./config.ts";
import type { Logger } from "./log.ts";
import type { PushStore, Registration } from "./push_store.ts";
import { type RelayApi, RelayApiError } from "./relay_api.ts";
import type { RelayWebPush } from "./relay_info.ts";

const DAY_MS = 86_400_000;

/**
 * The granted expiry: the requested one, but at least 3 days (the draft's SHOULD; DAVx⁵ asks
 * for 3 and renews within 2) when the relay's refresh-interval allows it, never more than that
 * interval; 7 days (or the interval) when none was requested. Whole seconds, as `Expires`
 * carries them.
 */
export function grantedExpiry(now: number, requested: number | undefined, riSeconds: number) {
  const ri = riSeconds * 1000;
  const want = requested ?? now + Math.min(7 * DAY_MS, ri);
  const at = Math.min(Math.max(want, now + Math.min(3 * DAY_MS, ri)), now + ri);
  return Math.floor(at / 1000) * 1000;
}

/** What a registration came to. */
export type RegisterOutcome =
  | { kind: "registered"; id: string; expires: number }
  | { kind: "refused"; reason: string }
  | { kind: "unavailable"; status: 502 | 503; retryAfter?: string };

export interface RegistrarOptions {
  store: PushStore;
  relay: RelayApi;
  gateway: GatewayClient;
  webPush: () => Promise<RelayWebPush | undefined>;
  /** `BRIDGE_PUBLIC_URL` (read each time: it may be learnt at start). */
  publicUrl: () => string;
  now: () => number;
  logger: Logger;
  /** How long after a push its collection's registrations are checked, in ms. */
  verifyDelayMs: number;
}

/** A past expiry: the unsubscribe of CC/CD 70025 §5.2.2, whatever the clocks' skew. */
const PAST = new Date(0);

export class Registrar {
  readonly #timers = new Map<number, ReturnType<typeof setTimeout>>();
  readonly #running = new Set<Promise<void>>();
  constructor(private readonly o: RegistrarOptions) {}

  /** The registration URL of an id: absolute, as DAVx⁵ keeps it verbatim. */
  location(id: string): string {
    return `${this.o.publicUrl()}/push-subscriptions/${id}`;
  }

  /** Registers (or renews) `sub` for collection `c`. */
  async register(
    c: BridgeCollection,
    sub: WebPushSubscription,
    requested: number | undefined,
  ): Promise<RegisterOutcome> {
    const { logger } = this.o;
    const wp = await this.o.webPush();
    if (!wp) return { kind: "unavailable", status: 502 };
    const now = this.o.now();
    const expires = grantedExpiry(now, requested, wp.refreshInterval);
    let relayReg;
    try {
      relayReg = await this.o.relay.register(sub);
    } catch (err) {
      const e = err as RelayApiError;
      if (
        e.status === 400 && (e.code === "endpoint-not-allowed" || e.code === "invalid-subscription")
      ) {
        // The relay's refusal of the endpoint or keys is the client's invalid subscription.
        return { kind: "refused", reason: e.code };
      }
      logger.log("warn", "relay-registration-failed", { status: e.status, code: e.code });
      if (e.status === 429) {
        return {
          kind: "unavailable",
          status: 503,
          ...(e.retryAfter ? { retryAfter: e.retryAfter } : {}),
        };
      }
      return { kind: "unavailable", status: 502 };
    }
    try {
      await this.o.gateway.subscribe({
        topics: [c.topic],
        transportUri: wp.transportUri,
        clientData: relayReg.clientData,
        expires: new Date(expires),
      });
    } catch (err) {
      const e = err as GatewayError;
      logger.log("warn", "relay-subscribe-failed", { status: e.status, code: e.code });
      return { kind: "unavailable", status: 502 };
    }
    // The same push resource on the same collection is one registration, however often it is
    // registered (the draft's update rule; DAVx⁵ registers again without deleting).
    for (let attempt = 0; attempt < 8; attempt++) {
      const previous = await this.o.store.byResource(c.topic, sub.pushResource) ?? undefined;
      const id = previous?.id ?? newId();
      const saved = await this.o.store.save({
        id,
        pushResource: sub.pushResource,
        topic: c.topic,
        relayClientId: relayReg.clientId,
        clientData: relayReg.clientData,
        transportUri: wp.transportUri,
        expires,
        now,
        ...(previous ? { previous } : {}),
      });
      if (!saved) continue;
      if (previous && previous.relayClientId !== relayReg.clientId) {
        // New keys for the same push resource: a new relay client; the old one goes.
        await this.release(previous);
      }
      logger.log("info", "webdav-push-registered", { collection: c.index, renewed: !!previous });
      return { kind: "registered", id, expires };
    }
    return { kind: "unavailable", status: 503 };
  }

  /** `DELETE <registration URL>`: `deleted`, `unknown` (or expired, or pruned), `unavailable`. */
  async unregister(id: string): Promise<"deleted" | "unknown" | "unavailable"> {
    const reg = await this.o.store.byId(id);
    if (!reg) return "unknown";
    if (reg.expires <= this.o.now()) {
      await this.discard(reg);
      return "unknown";
    }
    const alive = await this.alive(reg);
    if (alive === "unknown") return "unavailable";
    if (!alive) {
      await this.o.store.remove(reg);
      this.o.logger.log("info", "webdav-push-pruned", {});
      return "unknown";
    }
    try {
      await this.unsubscribe(reg);
    } catch (err) {
      this.o.logger.log("warn", "relay-unsubscribe-failed", {
        status: (err as GatewayError).status,
      });
      return "unavailable";
    }
    await this.o.store.remove(reg);
    await this.dropRelayClient(reg);
    this.o.logger.log("info", "webdav-push-unregistered", {});
    return "deleted";
  }

  /**
   * The relay client-ids of the registrations of `c` that `urls` name (the `Push-Dont-Notify`
   * values, compared exactly with the registration URLs issued); other values are ignored.
   */
  async excluded(c: BridgeCollection, urls: readonly string[]): Promise<string[]> {
    const prefix = `${this.o.publicUrl()}/push-subscriptions/`;
    const out: string[] = [];
    for (const url of urls) {
      const id = url.startsWith(prefix) ? url.slice(prefix.length) : "";
      if (!/^[A-Za-z0-9_-]{22,}$/.test(id)) continue;
      const reg = await this.o.store.byId(id);
      if (reg && reg.topic === c.topic && reg.expires > this.o.now()) out.push(reg.relayClientId);
    }
    return out;
  }

  /** Checks the registrations of `c` in a while (once, however many pushes ask for it). */
  verifyLater(c: BridgeCollection): void {
    if (this.#timers.has(c.index)) return;
    this.#timers.set(
      c.index,
      setTimeout(() => {
        this.#timers.delete(c.index);
        this.#track(this.verify(c));
      }, this.o.verifyDelayMs),
    );
  }

  /** Removes the registrations of `c` that expired or that the relay pruned. Never throws. */
  async verify(c: BridgeCollection): Promise<void> {
    try {
      for (const reg of await this.o.store.ofCollection(c.topic)) {
        if (reg.expires <= this.o.now()) await this.discard(reg);
        else if ((await this.alive(reg)) === false) {
          await this.o.store.remove(reg);
          this.o.logger.log("info", "webdav-push-pruned", { collection: c.index });
        }
      }
    } catch (err) {
      this.o.logger.log("warn", "webdav-push-verify-failed", { error: (err as Error).message });
    }
  }

  /** Removes expired registrations. Never throws. */
  async sweep(): Promise<void> {
    try {
      for (const reg of await this.o.store.expired(this.o.now())) await this.discard(reg);
    } catch (err) {
      this.o.logger.log("warn", "webdav-push-sweep-failed", { error: (err as Error).message });
    }
  }

  /** Stops the checks still waiting and waits for those running. */
  async close(): Promise<void> {
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    await Promise.allSettled([...this.#running]);
  }

  #track(p: Promise<void>): void {
    this.#running.add(p);
    p.finally(() => this.#running.delete(p));
  }

  /**
   * Whether the relay still has the registration: a refresh of its subscription with the same
   * expiry (no new subscription, so nothing is sent) is refused with `403` once it was pruned.
   */
  private async alive(reg: Registration): Promise<boolean | "unknown"> {
    try {
      await this.o.gateway.subscribe({
        topics: [reg.topic],
        transportUri: reg.transportUri,
        clientData: reg.clientData,
        expires: new Date(reg.expires),
      });
      return true;
    } catch (err) {
      const status = err instanceof GatewayError ? err.status : 0;
      if (status === 403) return false;
      return status === 0 || status === 401 || status >= 500 ? "unknown" : true;
    }
  }

  private unsubscribe(reg: Registration): Promise<unknown> {
    return this.o.gateway.subscribe({
      topics: [reg.topic],
      transportUri: reg.transportUri,
      clientData: reg.clientData,
      expires: PAST,
    });
  }

  /** An expired registration: gone here, and at the relay once nothing else uses its client. */
  private async discard(reg: Registration): Promise<void> {
    if (await this.o.store.remove(reg)) await this.dropRelayClient(reg);
  }

  /** A replaced relay client: unsubscribed from the topic, deleted once nothing uses it. */
  private async release(old: Registration): Promise<void> {
    try {
      await this.unsubscribe(old);
    } catch { /* it expires at the relay in any case */ }
    await this.dropRelayClient(old);
  }

  private async dropRelayClient(reg: Registration): Promise<void> {
    if ((await this.o.store.usersOf(reg.relayClientId)) > 0) return;
    try {
      await this.o.relay.unregister(reg.relayClientId, reg.clientData);
    } catch (err) {
      // The relay removes a registration without subscriptions after one refresh-interval.
      this.o.logger.log("warn", "relay-unregister-failed", {
        status: (err as RelayApiError).status,
      });
    }
  }
}

/** A registration id: 192 random bits, base64url. */
function newId(): string {
  return base64Url(crypto.getRandomValues(new Uint8Array(24)));
}
