/**
 * Fixed-window hit counters (`["rl", subject, window]`) for rate limits, shared by every
 * process on one KV.
 *
 * @module
 */

import { keys } from "./keys.ts";
import { type Kv, untilCommitted } from "./kv.ts";

/** A window's counter outlives the window by this much, then KV collects it. */
const COUNTER_LIFETIME_MS = 120_000;

export class LimitStore {
  constructor(private readonly kv: Kv) {}

  /**
   * Counts one hit for `subject` in the fixed window `window` and returns the window's count.
   * Under hot contention on one subject the hit counts as over any limit.
   */
  hit(subject: string, window: number): Promise<number> {
    const key = keys.rateLimit(subject, window);
    return untilCommitted(async () => {
      const e = await this.kv.get<number>(key);
      const count = (e.value ?? 0) + 1;
      const op = this.kv.atomic().check(e).set(key, count, { expireIn: COUNTER_LIFETIME_MS });
      return (await this.kv.commit(op)) ? count : undefined;
    }, () => Number.MAX_SAFE_INTEGER);
  }
}
