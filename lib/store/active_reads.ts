/**
 * The shared "has this topic an active subscriber?" read of a push (CC/CD 70025 §5.4
 * `no-subscribers`): concurrent calls for one topic share a read instead of one read each. A
 * small topic's read is its whole subscriber list, which the push hands to its fan-out as the
 * first page (lib/delivery/fan_out.ts), so a push to a few devices lists them once.
 *
 * @module
 */

import type { Subscriber, SubscriptionValue } from "../model.ts";
import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";

/** A topic with at most this many subscriptions is listed whole by its look-up. */
export const LISTED_TOPIC_MAX = 64;

/** What a look-up found. */
export interface TopicLookUp {
  /** At least one subscription has not expired at the caller's `now`. */
  active: boolean;
  /**
   * Every subscription of the topic (expired ones too, in client-id order) as read after the
   * call was made, when there are at most {@link LISTED_TOPIC_MAX}; else null. Shared by the
   * callers of one read: do not change it.
   */
  subscribers: readonly Subscriber[] | null;
}

interface ActiveWaiter {
  now: number;
  resolve: (found: TopicLookUp) => void;
  reject: (err: unknown) => void;
}

export class ActiveReads {
  /** Callers waiting for the next shared read of a topic (see `lookUp`). */
  private readonly activeReads = new Map<string, ActiveWaiter[]>();

  constructor(private readonly kv: Kv) {}

  /**
   * Whether (app, topic) has an unexpired subscription, with a small topic's subscriber list.
   * Concurrent calls for one topic share a read that starts after all of them were made (so
   * none sees older data than a read of its own would) instead of one read each: under load
   * every KV read waits for the commit in progress.
   */
  lookUp(app: string, topic: string, now: number): Promise<TopicLookUp> {
    const key = `${app}\u0000${topic}`;
    return new Promise<TopicLookUp>((resolve, reject) => {
      const waiter = { now, resolve, reject };
      const running = this.activeReads.get(key);
      if (running) running.push(waiter);
      else {
        this.activeReads.set(key, []);
        void this.readActive(key, app, topic, [waiter]);
      }
    });
  }

  private async readActive(key: string, app: string, topic: string, batch: ActiveWaiter[]) {
    try {
      const latest = Math.max(...batch.map((w) => w.now));
      let maxExp = -Infinity;
      const listed: Subscriber[] = [];
      const prefix = keys.topicSubscriptions(app, topic);
      const batchSize = LISTED_TOPIC_MAX + 1;
      for await (const e of this.kv.list<SubscriptionValue>({ prefix }, { batchSize })) {
        maxExp = Math.max(maxExp, e.value.exp);
        if (listed.length <= LISTED_TOPIC_MAX) {
          listed.push({ clientId: e.key[3] as string, value: e.value });
        }
        // A large topic: read on only until an active subscription shows.
        if (listed.length > LISTED_TOPIC_MAX && maxExp > latest) break;
      }
      const subscribers = listed.length <= LISTED_TOPIC_MAX ? listed : null;
      for (const w of batch) w.resolve({ active: maxExp > w.now, subscribers });
    } catch (err) {
      for (const w of batch) w.reject(err);
    }
    const next = this.activeReads.get(key) ?? [];
    if (next.length === 0) this.activeReads.delete(key);
    else {
      this.activeReads.set(key, []);
      void this.readActive(key, app, topic, next);
    }
  }
}
