/**
 * Waiting for work that a signal may cut short.
 *
 * @module
 */

/**
 * Settles with `work`, or rejects with `signal`'s reason as soon as it aborts (the work itself
 * goes on, and may stay shared). For work that holds no resource; a connection that arrives
 * late must be closed instead (lib/transports/http1_socket.ts `abortable`).
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
