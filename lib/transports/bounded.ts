/**
 * Failure isolation per push service: at most `concurrency` sends in flight per transport, a
 * bounded wait queue, and a timeout on every send. A push service that hangs then holds only
 * its own slots for at most `timeoutMs` each; the other transports never wait for it (the
 * lesson of Sygnal #104/#117, where one slow service starved the rest).
 *
 * @module
 */

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
  close(): void;
}

/** Wraps `transport` with a per-transport semaphore and a timeout on every send. */
export function bounded(transport: Transport, options: BoundedOptions): BoundedTransport {
  const concurrency = Math.max(1, Math.floor(options.concurrency));
  const timeoutMs = options.timeoutMs;
  const maxQueue = options.maxQueue ?? 10_000;
  let inFlight = 0;
  const waiters: (() => void)[] = [];

  function release(): void {
    const next = waiters.shift();
    if (next) next(); // the slot passes straight to the next waiter
    else inFlight--;
  }

  /** Resolves true once a slot is held, false when `signal` aborts first. */
  function acquire(signal: AbortSignal | undefined): Promise<boolean> {
    if (inFlight < concurrency) {
      inFlight++;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve(true);
      };
      const onAbort = () => {
        const i = waiters.indexOf(grant);
        if (i >= 0) waiters.splice(i, 1);
        resolve(false);
      };
      waiters.push(grant);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  async function send(
    target: Target,
    message: OutboundMessage,
    signal?: AbortSignal,
  ): Promise<DeliveryOutcome> {
    if (signal?.aborted) return { kind: "retry", reason: "aborted" };
    if (inFlight >= concurrency && waiters.length >= maxQueue) {
      return { kind: "retry", reason: "saturated" };
    }
    if (!(await acquire(signal))) return { kind: "retry", reason: "aborted" };

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
      release();
    }
  }

  return {
    id: transport.id,
    send,
    close: () => transport.close?.(),
    get inFlight() {
      return inFlight;
    },
    get queued() {
      return waiters.length;
    },
  };
}
