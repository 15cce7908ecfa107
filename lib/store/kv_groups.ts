/**
 * Group commit and grouped reads for the KV wrapper (lib/store/kv.ts): what callers ask for
 * while a commit (or read) of theirs is in flight goes into the next one together, so a busy
 * relay makes one KV commit (one SQLite transaction, one fsync) for many small writes, and one
 * read for many small ones, where every call waited in the one SQLite thread's queue before.
 *
 * Each part of a group keeps its own checks, and the group behaves as the parts committed one
 * after another in the order they came: a part that checks a key an earlier part of the group
 * writes waits for the next group (in one atomic its check would see the value from before
 * that write), and keys several parts write get the last one's value (KV applies an atomic's
 * mutations in order). When the group's commit fails, because a check failed or for any other
 * reason, each part is committed again on its own, in order: only a part whose own check fails
 * gets `ok: false`, and only a part whose own commit throws rejects.
 *
 * A part may also wait a few milliseconds for company (`lingerMs`): nothing waits on it but
 * its own caller (the deletion of a finished message, say), so rather than a commit of its own
 * it goes with the next part that cannot wait, or alone once its time is up. On a relay taking
 * a steady stream of small pushes, each new push's record then carries the deletion of the
 * one before it: one commit per push instead of two.
 *
 * @module
 */

/** One part of a group commit: its own checks and mutations. */
export interface CommitPart {
  checks: readonly Deno.AtomicCheck[];
  mutations: readonly Deno.KvMutation[];
}

/** A part's outcome: ok with the versionstamp of the commit that carried it, or its check failed. */
export interface CommitResult {
  ok: boolean;
  versionstamp: string;
}

/**
 * How much one group may hold. Deno KV allows 100 checks, 1000 mutations, 800 KiB of mutations
 * (keys and values) and 80 KiB of mutation keys per atomic; the byte figures here are estimates
 * and keep half of that in reserve.
 */
export interface GroupLimits {
  checks: number;
  mutations: number;
  bytes: number;
  keyBytes: number;
}

export const GROUP_LIMITS: GroupLimits = {
  checks: 100,
  mutations: 1000,
  bytes: 400 * 1024,
  keyBytes: 40 * 1024,
};

export interface GroupCommitOptions {
  atomic: () => Deno.AtomicOperation;
  commit: (op: Deno.AtomicOperation) => Promise<CommitResult>;
  limits?: GroupLimits;
}

/** How long a part may wait for company, and how long at most (milliseconds). */
export interface SubmitOptions {
  lingerMs?: number;
}

interface Queued {
  part: CommitPart;
  /** `performance.now()` time by which it goes, with company or alone (0: at once). */
  due: number;
  cost: GroupLimits;
  checked: string[];
  written: string[];
  resolve: (r: CommitResult) => void;
  reject: (err: unknown) => void;
}

/** Commits parts in groups (module documentation). */
export class GroupCommit {
  private readonly queue: Queued[] = [];
  private running = false;
  /** Armed while only lingering parts wait: it commits them when the first one is due. */
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** When that timer fires (`performance.now()` time; Infinity when none is armed). */
  private timerDue = Infinity;
  /** Queued parts that may not wait. */
  private urgent = 0;
  private readonly limits: GroupLimits;
  /** Groups committed and parts they carried, for tests and the benchmarks. */
  readonly stats = { groups: 0, parts: 0 };

  constructor(private readonly o: GroupCommitOptions) {
    this.limits = o.limits ?? GROUP_LIMITS;
  }

  submit(part: CommitPart, options: SubmitOptions = {}): Promise<CommitResult> {
    const linger = options.lingerMs ?? 0;
    const due = linger > 0 ? performance.now() + linger : 0;
    return new Promise<CommitResult>((resolve, reject) => {
      this.queue.push({
        part,
        due,
        cost: costOf(part),
        checked: part.checks.map((c) => keyId(c.key)),
        written: part.mutations.map((m) => keyId(m.key)),
        resolve,
        reject,
      });
      if (due === 0) this.urgent++;
      // A lingering part waits for the timer already armed for an earlier one.
      if (!this.running && !(due > 0 && due >= this.timerDue)) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDue = Infinity;
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const wait = this.untilDue();
        if (wait > 0) {
          // Only parts that may wait are queued: the next part that cannot (or the first
          // lingering one's time) starts the commit.
          this.timerDue = performance.now() + wait;
          this.timer = setTimeout(() => void this.drain(), wait);
          return;
        }
        await this.commitGroup(this.take());
      }
    } finally {
      this.running = false;
    }
  }

  /** Milliseconds until some queued part must go (0: one must go now). */
  private untilDue(): number {
    if (this.urgent > 0) return 0;
    let due = Infinity;
    for (const q of this.queue) due = Math.min(due, q.due);
    return Math.max(0, due - performance.now());
  }

  /** The next group: parts from the head of the queue, in order, within the limits. */
  private take(): Queued[] {
    const first = this.queue[0]!;
    const used = { ...first.cost };
    const written = new Set(first.written);
    let n = 1;
    for (; n < this.queue.length; n++) {
      const q = this.queue[n]!;
      const l = this.limits;
      if (
        used.checks + q.cost.checks > l.checks ||
        used.mutations + q.cost.mutations > l.mutations ||
        used.bytes + q.cost.bytes > l.bytes ||
        used.keyBytes + q.cost.keyBytes > l.keyBytes ||
        q.checked.some((k) => written.has(k))
      ) break;
      used.checks += q.cost.checks;
      used.mutations += q.cost.mutations;
      used.bytes += q.cost.bytes;
      used.keyBytes += q.cost.keyBytes;
      for (const k of q.written) written.add(k);
    }
    const group = this.queue.splice(0, n);
    for (const q of group) if (q.due === 0) this.urgent--;
    return group;
  }

  private async commitOne(parts: Queued[]): Promise<CommitResult> {
    const op = this.o.atomic();
    for (const { part } of parts) op.check(...part.checks).mutate(...part.mutations);
    this.stats.groups++;
    this.stats.parts += parts.length;
    return await this.o.commit(op);
  }

  private async commitGroup(group: Queued[]): Promise<void> {
    if (group.length > 1) {
      let result: CommitResult | undefined;
      try {
        result = await this.commitOne(group);
      } catch {
        result = undefined;
      }
      if (result?.ok) {
        for (const q of group) q.resolve(result);
        return;
      }
    }
    // One part, or a group that failed: each part on its own, in order.
    for (const q of group) {
      try {
        q.resolve(await this.commitOne([q]));
      } catch (err) {
        q.reject(err);
      }
    }
  }
}

interface Reader {
  keys: readonly Deno.KvKey[];
  resolve: (entries: Deno.KvEntryMaybe<unknown>[]) => void;
  reject: (err: unknown) => void;
}

/** Keys one grouped read asks for at most (KV's `getMany` takes 10; these go in parallel). */
const READ_KEYS = 100;

/**
 * Reads in groups: `getMany`s asked for while one is in flight go into the next read together
 * (each key once). A read starts after every request it serves was made, so none sees older
 * data than a read of its own would. Callers share the entries: they must not change them.
 */
export class ReadGroup {
  private readonly queue: Reader[] = [];
  private running = false;

  constructor(
    private readonly getMany: (keys: Deno.KvKey[]) => Promise<Deno.KvEntryMaybe<unknown>[]>,
  ) {}

  read<T>(keys: readonly Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
    return new Promise<Deno.KvEntryMaybe<T>[]>((resolve, reject) => {
      this.queue.push({ keys, resolve: resolve as Reader["resolve"], reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        let n = 0;
        let count = 0;
        while (
          n < this.queue.length && (n === 0 || count + this.queue[n]!.keys.length <= READ_KEYS)
        ) {
          count += this.queue[n]!.keys.length;
          n++;
        }
        const batch = this.queue.splice(0, n);
        const index = new Map<string, number>();
        const unique: Deno.KvKey[] = [];
        const slots = batch.map((r) =>
          r.keys.map((key) => {
            const id = keyId(key);
            let i = index.get(id);
            if (i === undefined) {
              index.set(id, i = unique.length);
              unique.push(key);
            }
            return i;
          })
        );
        try {
          const entries = await this.getMany(unique);
          batch.forEach((r, j) => r.resolve(slots[j]!.map((i) => entries[i]!)));
        } catch (err) {
          for (const r of batch) r.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }
}

/**
 * A string naming a key: equal keys give equal strings (distinct keys may rarely share one,
 * which only makes a group end early).
 */
function keyId(key: Deno.KvKey): string {
  let s = "";
  for (const p of key) {
    if (typeof p === "string") s += `s${p.length}:${p}`;
    else if (p instanceof Uint8Array) s += `u${p.join(",")};`;
    else s += `${typeof p}${String(p)};`;
  }
  return s;
}

function stringBytes(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
  }
  return n;
}

function keyBytes(key: Deno.KvKey): number {
  let n = 2;
  for (const p of key) {
    n += typeof p === "string" ? stringBytes(p) + 2 : p instanceof Uint8Array ? p.length + 2 : 9;
  }
  return n;
}

/**
 * About the serialised size of a value: its JSON's length in UTF-16 units. V8 serialises text
 * with one byte per character, or two when a string holds any beyond Latin-1, so the true size
 * is at most about twice this, which the limits' reserve covers.
 */
function valueBytes(value: unknown): number {
  if (value === null || value === undefined || typeof value !== "object") {
    return typeof value === "string" ? value.length + 8 : 16;
  }
  if (value instanceof Uint8Array) return value.length + 8;
  if (value instanceof Deno.KvU64) return 16;
  try {
    return JSON.stringify(value).length + 16;
  } catch {
    return 64 * 1024; // (a BigInt inside) the most one value may be
  }
}

function costOf(part: CommitPart): GroupLimits {
  let bytes = 0;
  let keys = 0;
  for (const m of part.mutations) {
    const k = keyBytes(m.key);
    keys += k;
    bytes += k + ("value" in m ? valueBytes(m.value) : 0);
  }
  return { checks: part.checks.length, mutations: part.mutations.length, bytes, keyBytes: keys };
}
