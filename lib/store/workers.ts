/**
 * Worker heartbeats (`["worker", owner]`): a process's leases are valid while its heartbeat
 * is fresh, and a claim on another's work checks that heartbeat in the same atomic, so a
 * process that comes back in time is never overtaken.
 *
 * @module
 */

import type { Beat, Entry, Lease, WorkerBeat } from "../model.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv } from "./kv.ts";

/** The write of a heartbeat. */
export function beatMutation(beat: Beat): Deno.KvMutation {
  return { type: "set", key: keys.worker(beat.owner), value: beat.value, expireIn: GC_MARGIN_MS };
}

/** Adds the write of a heartbeat to an atomic. */
export function writeBeat(op: Deno.AtomicOperation, beat: Beat): void {
  op.mutate(beatMutation(beat));
}

export class WorkerStore {
  constructor(private readonly kv: Kv) {}

  /** Writes a worker's heartbeat: its leases stay valid while `until` lies ahead. */
  async beat(owner: string, value: WorkerBeat): Promise<void> {
    await this.kv.set(keys.worker(owner), value, { expireIn: GC_MARGIN_MS });
  }

  /** Heartbeats of the given workers (entries with a null versionstamp when absent). */
  async getMany(owners: string[]): Promise<Map<string, Deno.KvEntryMaybe<WorkerBeat>>> {
    const entries = await this.kv.getMany<WorkerBeat>(owners.map((o) => keys.worker(o)));
    const out = new Map<string, Deno.KvEntryMaybe<WorkerBeat>>();
    owners.forEach((o, i) => out.set(o, entries[i]!));
    return out;
  }

  /** Removes a worker's heartbeat: whatever it still holds can be taken over at once. */
  async remove(owner: string): Promise<void> {
    await this.kv.delete(keys.worker(owner));
  }

  /**
   * Sets a new lease on a record if it, and the previous holder's heartbeat (when given), are
   * unchanged since they were read. Returns the new entry, or null when another process
   * changed either meanwhile.
   */
  async claim<T extends { lease?: Lease }>(
    entry: Entry<T>,
    lease: Lease,
    holder?: Deno.KvEntryMaybe<WorkerBeat>,
  ): Promise<Entry<T> | null> {
    const value = { ...entry.value, lease };
    const op = this.kv.atomic().check(entry);
    if (holder) op.check(holder);
    const res = await this.kv.commitWith(op.set(entry.key, value));
    return res.ok ? { key: entry.key, value, versionstamp: res.versionstamp } : null;
  }
}
