/**
 * The circuit breaker per push service (lib/delivery/breaker.ts): it opens after `threshold`
 * consecutive retryable failures, for `cooldownMs`; a success closes it; failures of the relay's
 * own making (`local`) are not counted.
 */

import assert from "node:assert/strict";
import { Breakers } from "../../lib/delivery/breaker.ts";
import { memoryLogger } from "../../lib/log.ts";

const fail = { kind: "retry", status: 503, reason: "503" } as const;

Deno.test("Breakers: open after the threshold, for the cooldown, per service; a success closes", () => {
  const logger = memoryLogger();
  const b = new Breakers({ threshold: 3, cooldownMs: 1000 }, logger);
  for (let i = 0; i < 2; i++) b.record("s1", "web-push", fail, 0);
  assert.equal(b.openFor("s1", 0), 0);
  b.record("s1", "web-push", fail, 10);
  assert.equal(b.openFor("s1", 10), 1000);
  assert.equal(b.openFor("s1", 600), 410);
  assert.equal(b.openFor("s2", 10), 0);
  assert.deepEqual(b.open(600), [{ key: "s1", forMs: 410 }]);
  assert.equal(b.openFor("s1", 1010), 0);
  b.record("s1", "web-push", { kind: "delivered", status: 201 }, 1020);
  b.record("s1", "web-push", fail, 1030);
  assert.equal(b.openFor("s1", 1030), 0, "the count started again after the success");
  assert.deepEqual(logger.lines.map((l) => l.event), ["breaker.open", "breaker.closed"]);
});

Deno.test("Breakers: a local outcome (the relay's own limit or abort) is not a failure of the service", () => {
  const b = new Breakers({ threshold: 2, cooldownMs: 1000 }, memoryLogger());
  for (let i = 0; i < 10; i++) {
    b.record("s", "fcm", { kind: "retry", reason: "saturated", local: true }, 0);
  }
  assert.equal(b.openFor("s", 0), 0);
  b.record("s", "fcm", fail, 0);
  b.record("s", "fcm", fail, 0);
  assert.equal(b.openFor("s", 0), 1000);
});
