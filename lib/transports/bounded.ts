/**
 * Failure isolation per push service: at most `concurrency` sends in flight per transport, a
 * bounded wait queue, and a timeout on every send (the only one: transports honour the signal
 * this aborts, and a transport that ignores it is left behind all the same). A push service that hangs then holds only
 * its own slots for at most `timeoutMs` each; the other transports never wait for it (the
 * lesson of Sygnal #104/#117, where one slow service starved the rest).
 *
 * @module
 */

import { Semaphore } from "../async/semaphore.ts";
import type { DeliveryOutcome, OutboundMessage, Target, Transport } from "./types.ts";

export interface BoundedOptions {
  /** Sends in flight at once (at least 1). */
  concurrency: number;
  /** Each send is aborted after this long and becomes a `retry` with reason `timeout`. */
  timeoutMs: number;
  /**
   * Sends allowed to wait for a slot; beyond this a send answers `retry` with reason
   * `saturated` at once, so a stalled service cannot pile up work in memory (default 10 000).
   */
  maxQueue?: number;
}

/** A bounded transport, with gauges for metrics. */
export interface BoundedTransport extends Transport {
  /** Sends holding a slot. */
  readonly inFlight: number;
  /** Sends waiting for a slot. */
  readonly queued: number;
  /** Closes the wrapped transport. */
  close(): void | Promise<void>;
}

/** Wraps `transport` with a per-transport semaphore and a timeout on every send. */
export function bounded(transport: Transport, options: BoundedOptions): BoundedTransport {
  const slots = new Semaphore(Math.max(1, Math.floor(options.concurrency)));
  const timeoutMs = options.timeoutMs;
  const maxQueue = options.maxQueue ?? 10_000;

  async function send(
    target: Target,
    message: OutboundMessage,
    signal?: AbortSignal,
  ): Promise<DeliveryOutcome> {
    if (signal?.aborted) return { kind: "retry", reason: "aborted", local: true };
    if (!slots.available && slots.waiting >= maxQueue) {
      return { kind: "retry", reason: "saturated", local: true };
    }
    if (!(await slots.acquire(signal))) return { kind: "retry", reason: "aborted", local: true };

    const controller = new AbortController();
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const onOuterAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", onOuterAbort, { once: true });
    // Settles when the send must stop waiting, whether or not the transport honours the signal.
    const stop = new Promise<DeliveryOutcome>((resolve) => {
      timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new DOMException("Push service did not answer in time", "TimeoutError"));
        resolve({ kind: "retry", reason: "timeout" });
      }, timeoutMs);
      controller.signal.addEventListener(
        "abort",
        () => resolve({ kind: "retry", reason: timedOut ? "timeout" : "aborted" }),
        { once: true },
      );
    });
    try {
      const outcome = await Promise.race([
        transport.send(target, message, controller.signal).catch((_e): DeliveryOutcome => ({
          kind: "retry",
          reason: "transport-error",
        })),
        stop,
      ]);
      return timedOut ? { kind: "retry", reason: "timeout" } : outcome;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onOuterAbort);
      slots.release();
    }
  }

  return {
    id: transport.id,
    send,
    close: () => transport.close?.(),
    get inFlight() {
      return slots.held;
    },
    get queued() {
      return slots.waiting;
    },
  };
}
