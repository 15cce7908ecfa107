/**
 * Scanning and claiming: what a background pass picks up. New work starts at once when it is
 * accepted; a scan only finds what a crash, a retry, a closed coalescing window or a restart
 * left. Takeover claims check the record and the previous holder's heartbeat in one atomic, so
 * two processes never work on one message at once. It also runs the expiry sweep (CC/CD 70025
 * §6.2.1.6 MUST: subscriptions not refreshed in time are removed) and the registration
 * lifetime sweep (lib/store/lifetimes.ts).
 *
 * @module
 */

import type { Logger } from "../log.ts";
import type { Entry, Lease, OutboxMessage, QueuedDelivery, WorkerBeat } from "../model.ts";
import type { Store } from "../store/mod.ts";
import type { Clock } from "../time.ts";
import type { Leases } from "./leases.ts";
import { queuedKey } from "./queued.ts";

/** Outbox messages one scan claims at most (each fans out with its own sends in flight). */
const MAX_CLAIMS_PER_SCAN = 64;
/** Outbox messages one scan reads at most. */
const OUTBOX_PER_SCAN = 1000;
/** Due queued deliveries one scan reads at most. */
const DUE_PER_SCAN = 500;
/** Registration lifetime checks (and gone push-resource markers) one scan handles at most. */
const LIFETIMES_PER_SCAN = 200;

export interface ScannerOptions {
  store: Store;
  leases: Leases;
  now: Clock;
  logger: Logger;
  /** Subscriptions the expiry sweep removes per scan at most. */
  sweepLimit: number;
  stopping: () => boolean;
  fanOut: (entry: Entry<OutboxMessage>) => Promise<void>;
  deliver: (entry: Entry<QueuedDelivery>) => Promise<void>;
}

/** Whether a lease can be taken, and which heartbeat the claim must check. */
type Claimable = { ok: false } | { ok: true; holder?: Deno.KvEntryMaybe<WorkerBeat> };

export class Scanner {
  constructor(private readonly o: ScannerOptions) {}

  /**
   * Claims and starts what nobody alive holds. Returns the work started, and whether there
   * was more than one scan may claim.
   */
  async scan(): Promise<{ work: Promise<void>[]; more: boolean }> {
    const { store, leases } = this.o;
    const now = this.o.now();
    const work: Promise<void>[] = [];
    const outbox = (await store.outbox.list(OUTBOX_PER_SCAN)).filter((e) =>
      (e.value.notBefore ?? 0) <= now
    );
    const due = await store.queue.listDue(now, DUE_PER_SCAN);
    const claimable = await this.claimability([...outbox, ...due], now);
    let beaten = false;
    const beatOnce = async () => {
      if (beaten) return;
      beaten = true;
      const b = leases.heartbeat();
      await store.workers.beat(b.owner, b.value);
      leases.beaten(b);
    };
    let more = false;
    for (const e of outbox) {
      if (this.o.stopping()) break;
      if (work.length >= MAX_CLAIMS_PER_SCAN) {
        more = true;
        break;
      }
      const c = claimable(e.value.lease, `o:${e.value.id}`);
      if (!c.ok) continue;
      await beatOnce();
      const claimed = await store.workers.claim(e, leases.claim(), c.holder);
      if (!claimed) continue;
      if (e.value.lease.owner !== "" && e.value.lease.owner !== leases.owner) {
        this.o.logger.log("info", "fanout.takeover", { message: e.value.id });
      }
      work.push(this.o.fanOut(claimed));
    }
    for (const e of due) {
      if (this.o.stopping()) break;
      const c = claimable(e.value.lease, queuedKey(e.value));
      if (!c.ok) continue;
      await beatOnce();
      const claimed = await store.workers.claim(e, leases.claim(), c.holder);
      if (claimed) work.push(this.o.deliver(claimed));
    }
    if (due.length >= DUE_PER_SCAN) more = true;
    // Bounded per run; the next scan goes on.
    const swept = await store.subscriptions.sweepExpired(now, this.o.sweepLimit);
    if (swept > 0) this.o.logger.log("info", "sweep", { removed: swept });
    // README "The client API": registrations idle for one refresh-interval go, then the
    // markers of their push resources; bounded per run like the expiry sweep.
    const life = await store.lifetimes.sweep(now, LIFETIMES_PER_SCAN);
    if (life.removed + life.forgotten > 0) this.o.logger.log("info", "lifetime.sweep", { ...life });
    return { work, more };
  }

  /** Reads the heartbeats of the records' other holders, once, and judges each lease by them. */
  private async claimability(
    records: Entry<{ lease?: Lease }>[],
    now: number,
  ): Promise<(lease: Lease | undefined, key: string) => Claimable> {
    const { leases, store } = this.o;
    const owners = new Set<string>();
    for (const e of records) {
      const l = e.value.lease;
      if (l && l.owner !== "" && l.owner !== leases.owner && l.until > now) owners.add(l.owner);
    }
    const workers = owners.size > 0
      ? await store.workers.getMany([...owners])
      : new Map<string, Deno.KvEntryMaybe<WorkerBeat>>();
    return (lease, key) => {
      if (lease?.owner === leases.owner && leases.holds(key)) return { ok: false };
      if (!lease || lease.owner === "" || lease.owner === leases.owner || lease.until <= now) {
        return { ok: true };
      }
      const w = workers.get(lease.owner);
      if (w?.value && w.value.until > now) return { ok: false };
      return { ok: true, ...(w ? { holder: w } : {}) };
    };
  }
}
