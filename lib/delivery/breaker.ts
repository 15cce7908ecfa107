/**
 * A circuit breaker per push service (a Web Push origin, FCM, APNs): after `threshold`
 * consecutive retryable failures its sends are short-circuited for `cooldownMs`, then one
 * success closes it again. Failures of the relay's own making (`local` outcomes: its shutdown,
 * its own queue limit) say nothing about the service and are not counted.
 *
 * @module
 */

import type { Logger } from "../log.ts";
import type { DeliveryOutcome } from "../transports/types.ts";

export interface BreakerPolicy {
  /** Consecutive retryable failures of one push service that open its breaker. @default 20 */
  threshold: number;
  /** How long an open breaker short-circuits sends. @default 30000 */
  cooldownMs: number;
}

export const DEFAULT_BREAKER: BreakerPolicy = { threshold: 20, cooldownMs: 30_000 };

interface State {
  failures: number;
  openUntil: number;
}

export class Breakers {
  private readonly states = new Map<string, State>();

  constructor(private readonly policy: BreakerPolicy, private readonly logger: Logger) {}

  /** Milliseconds until the breaker of `key` half-opens; 0 when it is closed. */
  openFor(key: string, now: number): number {
    const s = this.states.get(key);
    return s && s.openUntil > now ? s.openUntil - now : 0;
  }

  /** Records an attempt's outcome for the service `key` (`service` names it in logs). */
  record(key: string, service: string, outcome: DeliveryOutcome, now: number): void {
    const s = this.states.get(key);
    if (outcome.kind === "retry") {
      if (outcome.local) return;
      const b = s ?? { failures: 0, openUntil: 0 };
      b.failures++;
      if (b.failures >= this.policy.threshold) {
        b.openUntil = now + this.policy.cooldownMs;
        if (b.failures === this.policy.threshold) {
          this.logger.log("warn", "breaker.open", { service, failures: b.failures });
        }
      }
      this.states.set(key, b);
    } else if (s) {
      this.states.delete(key);
      if (s.failures >= this.policy.threshold) {
        this.logger.log("info", "breaker.closed", { service });
      }
    }
  }

  /** Services whose breaker is open now, with the milliseconds until each half-opens. */
  open(now: number): { key: string; forMs: number }[] {
    return [...this.states].filter(([, s]) => s.openUntil > now).map(([key, s]) => ({
      key,
      forMs: s.openUntil - now,
    }));
  }
}
