/**
 * What follows an attempt, as a pure function (lib/delivery/retry.ts): done, prune, retry with
 * backoff honouring Retry-After, or a dead letter once the attempts or the lifetime run out.
 */

import assert from "node:assert/strict";
import { DEFAULT_RETRY, nextStep, type StepInput } from "../../lib/delivery/retry.ts";

const NOW = 1_000_000;
const base: Omit<StepInput, "outcome"> = {
  attempted: true,
  attempts: 1,
  now: NOW,
  expiresAt: NOW + 3600_000,
  policy: DEFAULT_RETRY,
  random: () => 0.5,
};

Deno.test("nextStep(): delivered is done, gone prunes, failed is dead at once as refused", () => {
  assert.deepEqual(nextStep({ ...base, outcome: { kind: "delivered", status: 201 } }), {
    kind: "done",
  });
  assert.deepEqual(nextStep({ ...base, outcome: { kind: "gone", status: 410, reason: "410" } }), {
    kind: "prune",
  });
  assert.deepEqual(nextStep({ ...base, outcome: { kind: "failed", status: 400, reason: "400" } }), {
    kind: "dead",
    why: "refused",
    lastError: "400",
  });
});

Deno.test("nextStep(): a retry waits the jittered backoff, or Retry-After when that is longer", () => {
  const retry = { kind: "retry", status: 503, reason: "503" } as const;
  // Attempt 1: 1000 ms, equal jitter at 0.5 → 750 ms.
  assert.deepEqual(nextStep({ ...base, outcome: retry }), {
    kind: "retry",
    dueAt: NOW + 750,
    lastError: "503",
  });
  assert.deepEqual(nextStep({ ...base, outcome: { ...retry, retryAfterMs: 30_000 } }), {
    kind: "retry",
    dueAt: NOW + 30_000,
    lastError: "503",
  });
});

Deno.test("nextStep(): too many attempts, or a next attempt past the lifetime, is a dead letter", () => {
  const retry = { kind: "retry", reason: "timeout" } as const;
  assert.deepEqual(nextStep({ ...base, attempts: DEFAULT_RETRY.maxAttempts, outcome: retry }), {
    kind: "dead",
    why: "too many attempts",
    lastError: "timeout",
  });
  assert.deepEqual(nextStep({ ...base, expiresAt: NOW + 700, outcome: retry }), {
    kind: "dead",
    why: "expired",
    lastError: "timeout",
  });
});

Deno.test("nextStep(): after an open breaker (no attempt made) the retry comes when it half-opens", () => {
  const step = nextStep({
    ...base,
    attempted: false,
    random: () => 0,
    outcome: { kind: "retry", reason: "circuit open", retryAfterMs: 12_000 },
  });
  assert.deepEqual(step, { kind: "retry", dueAt: NOW + 12_000, lastError: "circuit open" });
});
