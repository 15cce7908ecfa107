/**
 * The shared "has this topic an active subscriber?" read of a push (CC/CD 70025 §5.4
 * `no-subscribers`): concurrent calls for one topic share a read instead of one read each.
 *
 * @module
 */

import type { SubscriptionValue } from "../model.ts";
import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";

interface ActiveWaiter {
  now: number;
  resolve: (active: boolean) => void;
  reject: (err: unknown) => void;
}

export class ActiveReads {
  /** Callers waiting for the next shared read of a topic (see `hasActiveSubscriber`). */
  private readonly activeReads = new Map<string, ActiveWaiter[]>();

  constructor(private readonly kv: Kv) {}

  /**
   * True when (app, topic) has at least one unexpired subscription. Concurrent calls for one
   * topic share a read that starts after all of them were made (so none sees older data than a
   * read of its own would) instead of one read each: under load every KV read waits for the
   * commit in progress.
   */
  hasActiveSubscriber(app: string, topic: string, now: number): Promise<boolean> {
    const key = `${app}\u0000${topic}`;
    return new Promise<boolean>((resolve, reject) => {
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
      const prefix = keys.topicSubscriptions(app, topic);
      for await (const e of this.kv.list<SubscriptionValue>({ prefix }, { batchSize: 100 })) {
        maxExp = Math.max(maxExp, e.value.exp);
        if (maxExp > latest) break;
      }
      for (const w of batch) w.resolve(maxExp > w.now);
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
