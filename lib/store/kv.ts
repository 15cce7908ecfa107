/**
 * The one wrapper around `Deno.Kv`: every read, write and commit goes through {@linkcode Kv},
 * which tries a call again while SQLite answers "database is locked" and turns any other KV
 * failure into a `StorageError` (a `503` at the edge). Errors of the relay's own code are not
 * touched: a bug stays a bug.
 *
 * Also the KV limits (README "Architecture"): 10 keys per `getMany` (chunked here), and the
 * size-aware batches that keep one atomic within 1000 mutations, 100 checks and KV's key-size
 * budget; {@linkcode untilCommitted}, the one loop for optimistic-concurrency retries; and group
 * commit and grouped reads across callers (lib/store/kv_groups.ts): `commitGrouped` and
 * `getManyGrouped`.
 *
 * @module
 */

import { StorageError } from "../errors.ts";
import {
  type CommitPart,
  type CommitResult,
  GroupCommit,
  ReadGroup,
  type SubmitOptions,
} from "./kv_groups.ts";

export { type CommitPart, type CommitResult } from "./kv_groups.ts";

/**
 * The local SQLite backend answers "database is locked" (SQLITE_BUSY) when another process on
 * the same file holds the write lock for longer than KV's own short wait, which happens with
 * two relay processes on one file on a loaded machine. SQLite guarantees the statement did not
 * take effect, so trying again is safe, even for atomics with `sum` mutations. Without this, a
 * fan-out whose cursor commit failed gave its page back and the next holder sent it again.
 */
const BUSY = /database is (locked|busy)/i;

/** Attempts per KV call; with the backoff below a call waits up to about 3 s in total. */
export const BUSY_ATTEMPTS = 12;

export function isBusy(err: unknown): boolean {
  return err instanceof Error && BUSY.test(err.message);
}

function busyPause(attempt: number): Promise<void> {
  const ms = Math.min(500, 5 * 2 ** attempt) * (0.5 + Math.random() / 2);
  return new Promise((r) => setTimeout(r, ms));
}

function storageError(what: string, err: unknown): StorageError {
  const said = err instanceof Error ? err.message : String(err);
  return new StorageError(`Storage ${what} failed: ${said.slice(0, 200)}`, { cause: err });
}

/** `Deno.Kv` with busy retries and `StorageError`s; see the module documentation. */
export class Kv {
  private readonly groups: GroupCommit;
  private readonly reads: ReadGroup;

  constructor(private readonly kv: Deno.Kv) {
    this.groups = new GroupCommit({
      atomic: () => this.kv.atomic(),
      commit: (op) => this.commitWith(op),
    });
    this.reads = new ReadGroup((keys) => this.getMany(keys));
  }

  /**
   * Commits `part` (its checks and mutations) in one atomic with the parts other callers hand
   * in meanwhile, as if each were committed on its own in turn (lib/store/kv_groups.ts): one
   * KV commit for many small writes. Resolves with the carrying commit's versionstamp, or
   * `ok: false` when the part's own check failed. Each part must fit one atomic by itself.
   * With `lingerMs`, the part waits up to that long for a part that cannot wait, to share its
   * commit (for writes nobody but their caller waits on).
   */
  commitGrouped(part: CommitPart, options: SubmitOptions = {}): Promise<CommitResult> {
    return this.groups.submit(part, options);
  }

  /** Groups committed so far and the parts they carried. */
  get groupStats(): { groups: number; parts: number } {
    return { ...this.groups.stats };
  }

  /**
   * `getMany` for a few keys, read together with the other callers' that ask meanwhile
   * (lib/store/kv_groups.ts). The entries are shared: do not change them.
   */
  getManyGrouped<T>(keys: readonly Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
    return this.reads.read<T>(keys);
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (isBusy(err) && attempt + 1 < BUSY_ATTEMPTS) {
          await busyPause(attempt);
          continue;
        }
        throw storageError(what, err);
      }
    }
  }

  get<T>(key: Deno.KvKey): Promise<Deno.KvEntryMaybe<T>> {
    return this.call("get", () => this.kv.get<T>(key));
  }

  /** Any number of keys, read 10 at a time (KV's `getMany` limit), in parallel. */
  async getMany<T>(keys: readonly Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
    const chunks: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
    for (let i = 0; i < keys.length; i += 10) {
      const chunk = keys.slice(i, i + 10);
      chunks.push(this.call("getMany", () => this.kv.getMany<T[]>(chunk)));
    }
    return (await Promise.all(chunks)).flat();
  }

  async set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): Promise<void> {
    await this.call("set", () => this.kv.set(key, value, options));
  }

  async delete(key: Deno.KvKey): Promise<void> {
    await this.call("delete", () => this.kv.delete(key));
  }

  /** A new atomic operation; commit it with {@linkcode commit}. */
  atomic(): Deno.AtomicOperation {
    return this.kv.atomic();
  }

  /** Commits `op`; true when its checks held and it was applied. */
  async commit(op: Deno.AtomicOperation): Promise<boolean> {
    return (await this.commitWith(op)).ok;
  }

  /** Commits `op`; its versionstamp, or null when a check failed. */
  async commitWith(op: Deno.AtomicOperation): Promise<CommitResult> {
    const res = await this.call("commit", () => op.commit());
    return res.ok ? { ok: true, versionstamp: res.versionstamp } : { ok: false, versionstamp: "" };
  }

  /**
   * The entries of `selector` in key order. A list that fails part way on a busy database
   * resumes after the last entry it yielded, within the same `limit`.
   */
  async *list<T>(
    selector: Deno.KvListSelector,
    options: Deno.KvListOptions = {},
  ): AsyncGenerator<Deno.KvEntry<T>> {
    let cursor = options.cursor;
    let left = options.limit;
    for (let attempt = 0;; attempt++) {
      if (left !== undefined && left <= 0) return;
      const it = this.kv.list<T>(selector, {
        ...options,
        ...(cursor !== undefined ? { cursor } : {}),
        ...(left !== undefined ? { limit: left } : {}),
      });
      try {
        for await (const e of it) {
          yield e;
          cursor = it.cursor;
          if (left !== undefined) left--;
        }
        return;
      } catch (err) {
        if (isBusy(err) && attempt + 1 < BUSY_ATTEMPTS) {
          await busyPause(attempt);
          continue;
        }
        throw storageError("list", err);
      }
    }
  }

  /** Collects up to `limit` entries of `selector` (read in one batch of that size). */
  async listAll<T>(selector: Deno.KvListSelector, limit: number): Promise<Deno.KvEntry<T>[]> {
    const out: Deno.KvEntry<T>[] = [];
    for await (const e of this.list<T>(selector, { limit, batchSize: Math.min(limit, 1000) })) {
      out.push(e);
    }
    return out;
  }

  /** How many entries `selector` holds (a scan: for status and tests, never a hot path). */
  async count(selector: Deno.KvListSelector): Promise<number> {
    let n = 0;
    for await (const _ of this.list(selector, { batchSize: 1000 })) n++;
    return n;
  }

  close(): void {
    this.kv.close();
  }
}

/** Attempts of a read-check-write before it gives up (only under heavy contention). */
export const CONFLICT_ATTEMPTS = 10;

/**
 * The optimistic-concurrency loop: runs `attempt` (read, plan, commit with checks) until it
 * reports a result, i.e. its checks held; `undefined` means another writer went first, so read
 * again. After `attempts` tries, returns `exhausted()`.
 */
export async function untilCommitted<T>(
  attempt: (n: number) => Promise<T | undefined>,
  exhausted: () => T | Promise<T>,
  attempts = CONFLICT_ATTEMPTS,
): Promise<T> {
  for (let n = 0; n < attempts; n++) {
    const result = await attempt(n);
    if (result !== undefined) return result;
  }
  return await exhausted();
}

/**
 * Splits items into batches that respect both a count and a byte budget, so one atomic stays
 * within KV's mutation and key-size limits whatever the items' sizes.
 */
export function sizedBatches<T>(
  items: readonly T[],
  cost: (item: T) => number,
  budget: number,
  maxCount: number,
): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let used = 0;
  for (const item of items) {
    const c = cost(item);
    if (current.length > 0 && (used + c > budget || current.length >= maxCount)) {
      batches.push(current);
      current = [];
      used = 0;
    }
    current.push(item);
    used += c;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}

/** KV garbage-collection margin after a record's logical expiry. */
export const GC_MARGIN_MS = 3600_000;

const encoder = new TextEncoder();

/** UTF-8 length of a string. */
export function utf8Length(s: string): number {
  return encoder.encode(s).length;
}
