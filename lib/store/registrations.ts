/**
 * Registrations: `["reg", clientId]`, the device index `["regt", targetHash]` (one client per
 * device), and the push-resource marker `["ingress", id]` of a registration that asked for
 * Web Push ingress, all written in one atomic.
 *
 * @module
 */

import type { Registration } from "../model.ts";
import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import type { IngressMarker } from "./ingress.ts";
import type { SubscriptionStore } from "./subscriptions.ts";

export class RegistrationStore {
  constructor(private readonly kv: Kv, private readonly subscriptions: SubscriptionStore) {}

  async get(clientId: string): Promise<Registration | null> {
    return (await this.kv.get<Registration>(keys.registration(clientId))).value;
  }

  /** Registrations by client id (missing ones are absent from the map). */
  async getMany(clientIds: string[]): Promise<Map<string, Registration>> {
    const entries = await this.kv.getMany<Registration>(clientIds.map((c) => keys.registration(c)));
    const out = new Map<string, Registration>();
    for (const e of entries) if (e.value) out.set(e.value.clientId, e.value);
    return out;
  }

  /** The client id already registered for this device (same endpoint or token), if any. */
  async findByTarget(targetHash: string): Promise<string | null> {
    return (await this.kv.get<string>(keys.registrationByTarget(targetHash))).value;
  }

  /** Creates or replaces a registration and its device index in one atomic. */
  async put(reg: Registration, targetHash: string): Promise<void> {
    const op = this.kv.atomic()
      .set(keys.registration(reg.clientId), reg)
      .set(keys.registrationByTarget(targetHash), reg.clientId);
    if (reg.ingress) {
      const marker: IngressMarker = { clientId: reg.clientId, gone: false };
      op.set(keys.ingress(reg.ingress.id), marker);
    }
    await this.kv.commit(op);
  }

  /**
   * Removes a client: every subscription in bounded atomics, then the registration and its
   * device index. Returns the (app, topic) pairs it removed. Idempotent.
   */
  async remove(
    clientId: string,
    targetHash: string | null,
  ): Promise<{ app: string; topic: string }[]> {
    const removed = await this.subscriptions.removeAllOf(clientId);
    const reg = await this.kv.get<Registration>(keys.registration(clientId));
    const op = this.kv.atomic().delete(keys.registration(clientId));
    if (targetHash) {
      const idx = await this.kv.get<string>(keys.registrationByTarget(targetHash));
      if (idx.value === clientId) op.check(idx).delete(keys.registrationByTarget(targetHash));
    }
    if (reg.value?.ingress) {
      // A removed registration's push resource answers 410 from then on (RFC 8030 §7.3).
      const marker: IngressMarker = { clientId, gone: true };
      op.set(keys.ingress(reg.value.ingress.id), marker);
    }
    await this.kv.commit(op);
    return removed;
  }
}
