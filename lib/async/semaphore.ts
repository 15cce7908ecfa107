/**
 * A counting semaphore: at most `max` holders at once, the rest wait in order. Used for the
 * sends in flight of one fan-out and per transport (lib/transports/bounded.ts).
 *
 * @module
 */

export class Semaphore {
  private free: number;
  private readonly waiters: (() => void)[] = [];

  /** @throws {RangeError} unless `max` is a whole number of at least 1 */
  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(
        `Cannot create a semaphore: max must be a whole number >= 1, got ${max}`,
      );
    }
    this.free = max;
  }

  /** Holders right now. */
  get held(): number {
    return this.max - this.free;
  }

  /** Callers waiting for a permit. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** True when a permit can be taken without waiting. */
  get available(): boolean {
    return this.free > 0;
  }

  /**
   * Resolves once a permit is held; with `signal`, resolves false (holding nothing) when it
   * aborts first.
   */
  acquire(signal?: AbortSignal): Promise<boolean> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve(true);
    }
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve(true);
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(grant);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(false);
      };
      this.waiters.push(grant);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Gives a permit back; it passes straight to the next waiter, if any. */
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}
