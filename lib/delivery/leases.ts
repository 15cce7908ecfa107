/**
 * Leases and the heartbeat (README "Delivery guarantees"). A lease on outbox or queue work is
 * valid while its owner's heartbeat (`["worker", owner]`, renewed every `leaseMs / 3` while the
 * process holds work) is fresh, so a live process is never overtaken however slow its push
 * services are, and a dead one's work is taken over `leaseMs` after its last beat.
 *
 * @module
 */

import { describeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { type Beat, FREE_LEASE, type Lease } from "../model.ts";
import type { Store } from "../store/mod.ts";
import type { Clock } from "../time.ts";

/** Upper bound on one claim without progress, even for a live worker. */
const HOLD_MS = 600_000;

export interface LeasesOptions {
  owner: string;
  leaseMs: number;
  store: Store;
  now: Clock;
  logger: Logger;
}

export class Leases {
  readonly owner: string;
  readonly leaseMs: number;
  private readonly holdMs: number;
  /** Work this process holds: `o:<outbox id>` and `q:<dq key>`. */
  private readonly held = new Set<string>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private stopped = false;
  /** Until when this process's last written heartbeat keeps its leases valid. */
  private beatUntil = 0;

  constructor(private readonly o: LeasesOptions) {
    this.owner = o.owner;
    this.leaseMs = o.leaseMs;
    this.holdMs = Math.max(o.leaseMs, HOLD_MS);
  }

  /** A lease held by this process. */
  claim(): Lease {
    return { owner: this.owner, until: this.o.now() + this.holdMs };
  }

  /** The lease for new work: this process's, or none once it is stopping. */
  forNewWork(): Lease {
    return this.stopped ? FREE_LEASE : this.claim();
  }

  /** A heartbeat to write with this process's next commit. */
  heartbeat(): Beat {
    return { owner: this.owner, value: { until: this.o.now() + this.o.leaseMs } };
  }

  /** Notes a heartbeat that was written. */
  beaten(b: Beat): void {
    this.beatUntil = Math.max(this.beatUntil, b.value.until);
  }

  /** True when the last written heartbeat has run out (another process may take over). */
  lapsed(): boolean {
    return this.o.now() >= this.beatUntil;
  }

  /** Whether this process holds `key` right now. */
  holds(key: string): boolean {
    return this.held.has(key);
  }

  /** Marks work as held by this process and keeps the heartbeat going while any is held. */
  hold(key: string): void {
    this.held.add(key);
    if (this.timer !== undefined || this.stopped) return;
    this.timer = setInterval(() => {
      if (this.held.size === 0) {
        clearInterval(this.timer);
        this.timer = undefined;
        return;
      }
      const b = this.heartbeat();
      this.o.store.workers.beat(b.owner, b.value).then(
        () => this.beaten(b),
        (err) => this.o.logger.log("error", "heartbeat.error", { error: describeError(err) }),
      );
    }, Math.max(100, Math.floor(this.o.leaseMs / 3)));
  }

  unhold(key: string): void {
    this.held.delete(key);
  }

  /** Stops taking new work: new leases are free from now on. */
  stop(): void {
    this.stopped = true;
  }

  /** Stops the heartbeat and removes it, so anything still held can be taken over at once. */
  async release(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    try {
      await this.o.store.workers.remove(this.owner);
    } catch {
      // Storage gone: the heartbeat runs out by itself after leaseMs.
    }
  }
}
