/**
 * What follows one delivery attempt, as pure functions: the backoff, the `TTL` an attempt
 * carries, and the decision between done, prune, retry and dead letter.
 *
 * @module
 */

import type { DeliveryOutcome } from "../transports/types.ts";

export interface RetryPolicy {
  /** First backoff; doubles per attempt. @default 1000 */
  baseMs: number;
  /** Backoff ceiling. @default 300000 */
  maxMs: number;
  /** Attempts (first send included) before a delivery is dead-lettered. @default 8 */
  maxAttempts: number;
}

export const DEFAULT_RETRY: RetryPolicy = { baseMs: 1000, maxMs: 300_000, maxAttempts: 8 };

/**
 * Backoff before attempt `attempts + 1`: exponential with "equal jitter" (half fixed, half
 * random), so the retries of one fan-out spread out.
 */
export function backoffMs(attempts: number, policy: RetryPolicy, random: () => number): number {
  const exp = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, attempts - 1));
  return exp / 2 + random() * (exp / 2);
}

/**
 * The RFC 8030 §5.2 `TTL` of one attempt: a first attempt carries the full value it was
 * given (`RELAY_TTL`, or the TTL an ingress message arrived with), so a push service keeps the
 * message as long as configured. A retry carries what is left of the message's lifetime in
 * whole seconds, rounded down, so a push service never keeps it past that lifetime.
 */
export function attemptTtl(
  d: { ttl: number; expiresAt: number; attempts: number },
  now: number,
): number {
  if (d.attempts === 0) return d.ttl;
  return Math.min(d.ttl, Math.max(0, Math.floor((d.expiresAt - now) / 1000)));
}

/** Why a delivery was given up on, as dead letters record it. */
export type DeadReason = "refused" | "too many attempts" | "expired";

/** What follows an attempt. */
export type NextStep =
  | { kind: "done" }
  /** The device is gone: remove the client. */
  | { kind: "prune" }
  | { kind: "retry"; dueAt: number; lastError: string }
  | { kind: "dead"; why: DeadReason; lastError: string };

export interface StepInput {
  outcome: DeliveryOutcome;
  /** False when no request was made (an open circuit breaker): not counted as an attempt. */
  attempted: boolean;
  /** Attempts made, this one included when `attempted`. */
  attempts: number;
  now: number;
  /** The message's lifetime ends here. */
  expiresAt: number;
  policy: RetryPolicy;
  random: () => number;
}

/**
 * Prunes on `gone`; plans a retry, or a dead letter once the attempts or the TTL run out, on
 * `retry`; dead-letters `failed` at once.
 */
export function nextStep(input: StepInput): NextStep {
  const { outcome, now } = input;
  switch (outcome.kind) {
    case "delivered":
      return { kind: "done" };
    case "gone":
      return { kind: "prune" };
    case "failed":
      return { kind: "dead", why: "refused", lastError: outcome.reason };
    case "retry":
      break;
  }
  if (input.attempts >= input.policy.maxAttempts) {
    return { kind: "dead", why: "too many attempts", lastError: outcome.reason };
  }
  const backoff = backoffMs(input.attempts, input.policy, input.random);
  let delay = Math.max(backoff, outcome.retryAfterMs ?? 0);
  if (!input.attempted) {
    // The breaker is open: come back when it half-opens, spread over a few seconds.
    delay = (outcome.retryAfterMs ?? 0) + input.random() * Math.min(5000, delay);
  }
  if (now + delay >= input.expiresAt) {
    return { kind: "dead", why: "expired", lastError: outcome.reason };
  }
  return { kind: "retry", dueAt: Math.ceil(now + delay), lastError: outcome.reason };
}
