/**
 * Web Push ingress state: the client behind each push-resource id (`["ingress", id]`, written
 * with the registration in registrations.ts) and the RFC 8030 §5.4 replacement index
 * (`["ingress-topic", clientId, topic]` → when the newest message with that `Topic` was
 * accepted; a queued older one with the same `Topic` is then dropped).
 *
 * @module
 */

import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv, untilCommitted } from "./kv.ts";

/** The client behind a push-resource id, and whether its registration is gone. */
export interface IngressMarker {
  clientId: string;
  gone: boolean;
}

export class IngressStore {
  constructor(private readonly kv: Kv) {}

  async get(id: string): Promise<IngressMarker | null> {
    return (await this.kv.get<IngressMarker>(keys.ingress(id))).value;
  }

  /** Records `at` as the newest acceptance for (client, topic); never moves backwards. */
  async markTopic(clientId: string, topic: string, at: number, lifetimeMs: number): Promise<void> {
    const key = keys.ingressTopic(clientId, topic);
    await untilCommitted(async () => {
      const e = await this.kv.get<number>(key);
      if (e.value !== null && e.value >= at) return true;
      const op = this.kv.atomic().check(e).set(key, at, { expireIn: lifetimeMs + GC_MARGIN_MS });
      return (await this.kv.commit(op)) ? true : undefined;
    }, () => false);
  }

  /** When the newest ingress message with this Topic was accepted for the client, if ever. */
  async topicAcceptedAt(clientId: string, topic: string): Promise<number | null> {
    return (await this.kv.get<number>(keys.ingressTopic(clientId, topic))).value;
  }
}
