/**
 * One attempt through a registration's transport, behind the per-service circuit breaker,
 * counted in the metrics and logged without secrets; and its follow-up: prune the client, plan
 * the retry, or keep a dead letter.
 *
 * @module
 */

import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { DeadLetter, QueuedDelivery, Registration } from "../model.ts";
import type { Store } from "../store/mod.ts";
import type { Clock } from "../time.ts";
import type {
  DeliveryOutcome,
  OutboundMessage,
  Transport,
  TransportId,
} from "../transports/types.ts";
import type { Breakers } from "./breaker.ts";
import { newId } from "./ids.ts";
import { nextStep, type RetryPolicy } from "./retry.ts";

/** An attempt's outcome; `attempted` is false when the breaker short-circuited it. */
export interface Sent {
  outcome: DeliveryOutcome;
  attempted: boolean;
}

/** The delivery an attempt was for, as its follow-up needs it. */
export type Attempted = Omit<QueuedDelivery, "id" | "dueAt" | "clientId" | "ttl" | "lease"> & {
  /** The TTL a first attempt carries; `RELAY_TTL` when absent. */
  ttl?: number;
};

/** What makes and follows up single attempts, to local transports or to the upstream. */
export interface AttemptContext {
  store: Store;
  breakers: Breakers;
  now: Clock;
  logger: Logger;
  metrics: Metrics;
  /** Backoff (the upstream retries until the TTL, whatever `maxAttempts` says). */
  retry: RetryPolicy;
  random: () => number;
  /** `RELAY_TTL` in seconds: also how long a relayed message is worth retrying. */
  ttl: number;
  /** Aborts every request in flight (shutdown). */
  signal: AbortSignal;
}

export interface SenderOptions extends AttemptContext {
  transports: Partial<Record<TransportId, Transport>>;
}

/** A plain `scheme://host[:port]` start of an absolute http(s) URL (lower-case ASCII host). */
const PLAIN_ORIGIN = /^(https?):\/\/([a-z0-9.-]+)(?::([1-9]\d{0,4}))?(?=[/?#]|$)/;

/**
 * The origin of a Web Push endpoint (RFC 6454), as `new URL(endpoint).origin` gives it, read
 * straight off the string when it is plain (the usual case, once per send), parsed otherwise.
 */
export function endpointOrigin(endpoint: string): string | null {
  const m = PLAIN_ORIGIN.exec(endpoint);
  // Not when a label could be read as a number (an IPv4 address) or needs IDNA checks.
  if (m && !m[2]!.split(".").some((l) => l === "" || /^(\d+|0x[\da-f]*|xn--.*)$/.test(l))) {
    const port = m[3] === undefined || m[3] === (m[1] === "https" ? "443" : "80") ? "" : m[3];
    if (port === "" || Number(port) <= 65535) return `${m[1]}://${m[2]}${port ? `:${port}` : ""}`;
  }
  try {
    return new URL(endpoint).origin;
  } catch {
    return null;
  }
}

/** The breaker key of a registration's push service: a Web Push origin, or the transport. */
function serviceKey(reg: Registration): string {
  if (reg.target.transport !== "web-push") return reg.target.transport;
  const origin = endpointOrigin(reg.target.endpoint);
  return origin === null ? "web-push" : `web-push ${origin}`;
}

export class Sender {
  constructor(private readonly o: SenderOptions) {}

  /** One attempt; `acceptedAt` is when the message was accepted, for the latency metric. */
  async send(reg: Registration, message: OutboundMessage, acceptedAt: number): Promise<Sent> {
    const tid = reg.target.transport;
    const transport = this.o.transports[tid];
    if (!transport) {
      return {
        outcome: { kind: "failed", reason: `transport ${tid} is not configured` },
        attempted: true,
      };
    }
    const key = serviceKey(reg);
    const openFor = this.o.breakers.openFor(key, this.o.now());
    if (openFor > 0) {
      this.o.metrics.deliveries.inc({ transport: tid, outcome: "short_circuited" });
      return {
        outcome: { kind: "retry", reason: "circuit open", retryAfterMs: openFor },
        attempted: false,
      };
    }
    let outcome: DeliveryOutcome;
    try {
      outcome = await transport.send(reg.target, message, this.o.signal);
    } catch (err) {
      outcome = { kind: "retry", reason: `transport error: ${(err as Error).name}` };
    }
    // Our own shutdown aborted it: that says nothing about the service.
    if (!this.o.signal.aborted) this.o.breakers.record(key, tid, outcome, this.o.now());
    this.log(reg, outcome);
    if (outcome.kind === "delivered") {
      this.o.metrics.deliveries.inc({ transport: tid, outcome: "delivered" });
      this.o.metrics.deliveryLatency.observe(Math.max(0, this.o.now() - acceptedAt) / 1000, {
        transport: tid,
      });
    }
    return { outcome, attempted: true };
  }

  private log(reg: Registration, outcome: DeliveryOutcome): void {
    const status = "status" in outcome ? outcome.status : undefined;
    this.o.logger.log(outcome.kind === "delivered" ? "debug" : "warn", "delivery", {
      transport: reg.target.transport,
      outcome: outcome.kind,
      ...(status !== undefined ? { status } : {}),
      ...(outcome.kind !== "delivered" ? { reason: outcome.reason } : {}),
      client: reg.clientId,
    });
  }

  /**
   * Acts on an attempt's outcome: prunes the client when the push service says the device is
   * gone, and returns the retry or the dead letter to record (nothing when it is done).
   * `d.attempts` counts the attempts before this one.
   */
  async followUp(
    reg: Registration,
    sent: Sent,
    d: Attempted,
  ): Promise<{ retry?: QueuedDelivery; dead?: DeadLetter }> {
    const tid = reg.target.transport;
    const attempts = d.attempts + (sent.attempted ? 1 : 0);
    const now = this.o.now();
    const step = nextStep({
      outcome: sent.outcome,
      attempted: sent.attempted,
      attempts,
      now,
      expiresAt: d.expiresAt,
      policy: this.o.retry,
      random: this.o.random,
    });
    // A queued delivery's lease ends with this attempt; its last status is this attempt's.
    const { lease: _lease, lastStatus: _before, ...rest } = d as Attempted & { lease?: unknown };
    const status = "status" in sent.outcome ? sent.outcome.status : undefined;
    const base = {
      ...rest,
      clientId: reg.clientId,
      attempts,
      ...(status !== undefined ? { lastStatus: status } : {}),
    };
    switch (step.kind) {
      case "done":
        return {};
      case "prune":
        await this.prune(reg, sent.outcome);
        return {};
      case "retry":
        this.o.metrics.deliveries.inc({ transport: tid, outcome: "retried" });
        return {
          retry: {
            ...base,
            id: newId(now),
            dueAt: step.dueAt,
            ttl: d.ttl ?? this.o.ttl,
            lastError: step.lastError,
          },
        };
      case "dead": {
        if (step.why === "refused") {
          this.o.metrics.deliveries.inc({ transport: tid, outcome: "failed" });
        }
        this.o.metrics.deliveries.inc({ transport: tid, outcome: "dead_lettered" });
        this.o.logger.log("warn", "delivery.dead_lettered", {
          client: reg.clientId,
          transport: tid,
          attempts,
          why: step.why,
        });
        return {
          dead: {
            ...base,
            id: newId(now),
            dueAt: now,
            ttl: 0,
            deadAt: now,
            why: step.why,
            lastError: step.lastError,
            transport: tid,
          },
        };
      }
    }
  }

  /**
   * The push service says the device is gone: remove every subscription of the client and
   * revoke its registration, so its topics then show in `no-subscribers`.
   */
  private async prune(reg: Registration, outcome: DeliveryOutcome): Promise<void> {
    const tid = reg.target.transport;
    this.o.metrics.deliveries.inc({ transport: tid, outcome: "pruned" });
    await this.o.store.registrations.remove(reg.clientId);
    this.o.logger.log("info", "client.pruned", {
      client: reg.clientId,
      transport: tid,
      ...("status" in outcome ? { status: outcome.status } : {}),
    });
  }
}
