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

/** One send in flight: what its deadline or an outer abort must do to it. */
interface InFlight {
  readonly deadline: number;
  readonly controller: AbortController;
  /** Ends the caller's wait (the first call wins). */
  settle: (outcome: DeliveryOutcome) => void;
  done: boolean;
}

/** Stops a send: aborts the transport's signal with `why` and ends the caller's wait. */
function stop(entry: InFlight, why: unknown, outcome: DeliveryOutcome): void {
  entry.controller.abort(why);
  entry.settle(outcome);
}

/**
 * The deadlines of one transport's sends. Every send has the same time limit, so deadlines
 * come in the order the sends start: a FIFO with one timer, armed for the oldest send still in
 * flight, replaces a timer per send (and a send that ends is only marked; the timer skips it).
 */
class Deadlines {
  private readonly queue: InFlight[] = [];
  private head = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  add(entry: InFlight): void {
    this.queue.push(entry);
    if (this.timer === undefined) this.arm();
  }

  private arm(): void {
    while (this.head < this.queue.length && this.queue[this.head]!.done) this.head++;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    const next = this.queue[this.head];
    if (!next) {
      this.queue.length = this.head = 0;
      return;
    }
    this.timer = setTimeout(() => this.fire(), Math.max(0, next.deadline - performance.now()));
  }

  private fire(): void {
    this.timer = undefined;
    const now = performance.now();
    while (this.head < this.queue.length) {
      const entry = this.queue[this.head]!;
      if (!entry.done && entry.deadline > now) break;
      this.head++;
      if (entry.done) continue;
      stop(entry, new DOMException("Push service did not answer in time", "TimeoutError"), {
        kind: "retry",
        reason: "timeout",
      });
    }
    this.arm();
  }

  /** Nothing is in flight any more: stops the timer, so the process (or a test) may end. */
  idle(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = this.head = 0;
  }
}

/**
 * Outer signals (usually the relay's one shutdown signal) and the sends they reach: one
 * listener per signal, not an `addEventListener`/`removeEventListener` pair per send.
 */
const watched = new WeakMap<AbortSignal, Set<InFlight>>();

function watch(signal: AbortSignal, entry: InFlight): void {
  let sends = watched.get(signal);
  if (!sends) {
    const set = new Set<InFlight>();
    sends = set;
    watched.set(signal, set);
    signal.addEventListener("abort", () => {
      for (const e of set) stop(e, signal.reason, { kind: "retry", reason: "aborted" });
      set.clear();
    }, { once: true });
  }
  sends.add(entry);
}

/** Wraps `transport` with a per-transport semaphore and a timeout on every send. */
export function bounded(transport: Transport, options: BoundedOptions): BoundedTransport {
  const slots = new Semaphore(Math.max(1, Math.floor(options.concurrency)));
  const timeoutMs = options.timeoutMs;
  const maxQueue = options.maxQueue ?? 10_000;
  const deadlines = new Deadlines();

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
    let entry!: InFlight;
    // Settles when the send ends, times out or is aborted from outside, whichever comes first,
    // whether or not the transport honours the signal.
    const outcome = new Promise<DeliveryOutcome>((resolve) => {
      entry = {
        deadline: performance.now() + timeoutMs,
        controller,
        settle: (o) => {
          if (entry.done) return;
          entry.done = true;
          resolve(o);
        },
        done: false,
      };
    });
    deadlines.add(entry);
    if (signal) {
      watch(signal, entry);
      // An outer signal that fired while this send waited for its slot has no event left.
      if (signal.aborted) stop(entry, signal.reason, { kind: "retry", reason: "aborted" });
    }
    transport.send(target, message, controller.signal).then(
      entry.settle,
      (_e) => entry.settle({ kind: "retry", reason: "transport-error" }),
    );
    try {
      return await outcome;
    } finally {
      if (signal) watched.get(signal)?.delete(entry);
      // The last send in flight ends: no deadline is left to watch.
      if (slots.held === 1) deadlines.idle();
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
