/**
 * Group commit and grouped reads (lib/store/kv_groups.ts, through `Kv.commitGrouped` and
 * `Kv.getManyGrouped`): parts handed in while a commit is in flight share the next one within
 * KV's limits, each keeps its own checks, a failed part fails alone, and the outcome is that of
 * committing the parts one after another in the order they came.
 */

import assert from "node:assert/strict";
import { Kv } from "../../lib/store/kv.ts";
import {
  type CommitPart,
  type CommitResult,
  GROUP_LIMITS,
  GroupCommit,
  type GroupLimits,
} from "../../lib/store/kv_groups.ts";

const set = (key: Deno.KvKey, value: unknown): Deno.KvMutation => ({ type: "set", key, value });

async function withKv(fn: (kv: Kv, db: Deno.Kv) => Promise<void>): Promise<void> {
  const db = await Deno.openKv(":memory:");
  try {
    await fn(new Kv(db), db);
  } finally {
    db.close();
  }
}

/** A GroupCommit on `db` that records the checks and mutations of every atomic it commits. */
function recording(db: Deno.Kv, limits?: GroupLimits) {
  const atomics: { checks: number; mutations: number }[] = [];
  const group = new GroupCommit({
    atomic: () => {
      const op = db.atomic();
      const seen = { checks: 0, mutations: 0 };
      atomics.push(seen);
      const check = op.check.bind(op);
      const mutate = op.mutate.bind(op);
      op.check = (...c) => (seen.checks += c.length, check(...c));
      op.mutate = (...m) => (seen.mutations += m.length, mutate(...m));
      return op;
    },
    commit: async (op) => {
      const r = await op.commit();
      return r.ok ? { ok: true, versionstamp: r.versionstamp } : { ok: false, versionstamp: "" };
    },
    ...(limits ? { limits } : {}),
  });
  return { group, atomics };
}

Deno.test("Group commit: parts handed in while a commit is in flight share the next commit, each with its versionstamp, resolving in order", async () => {
  await withKv(async (kv, db) => {
    const first = kv.commitGrouped({ checks: [], mutations: [set(["a", 0], 0)] });
    const order: number[] = [];
    const rest = Array.from({ length: 20 }, (_, i) =>
      kv.commitGrouped({
        checks: [{ key: ["a", i + 1], versionstamp: null }],
        mutations: [set(["a", i + 1], i + 1)],
      }).then((r) => (order.push(i), r)));
    const results = await Promise.all([first, ...rest]);
    assert.ok(results.every((r) => r.ok));
    assert.deepEqual(kv.groupStats, { groups: 2, parts: 21 });
    // The 20 shared one commit, after the first one's.
    assert.equal(new Set(results.slice(1).map((r) => r.versionstamp)).size, 1);
    assert.ok(results[1]!.versionstamp > results[0]!.versionstamp);
    assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => i));
    for (let i = 0; i <= 20; i++) {
      const e = await db.get(["a", i]);
      assert.equal(e.value, i);
      assert.equal(e.versionstamp, results[i]!.versionstamp);
    }
  });
});

Deno.test("Group commit: no atomic holds more than KV allows (100 checks, 1000 mutations, the byte budgets)", async () => {
  await withKv(async (_kv, db) => {
    const { group, atomics } = recording(db);
    const parts: CommitPart[] = [];
    // 300 parts of one check and three mutations, then 300 of nine mutations, then 40 of 30 KiB.
    for (let i = 0; i < 300; i++) {
      parts.push({
        checks: [{ key: ["c", i], versionstamp: null }],
        mutations: [set(["c", i], i), set(["d", i], i), set(["e", i], i)],
      });
    }
    for (let i = 0; i < 300; i++) {
      parts.push({
        checks: [],
        mutations: Array.from({ length: 9 }, (_, j) => set(["m", i, j], j)),
      });
    }
    for (let i = 0; i < 40; i++) {
      parts.push({ checks: [], mutations: [set(["big", i], "x".repeat(30_000))] });
    }
    const results = await Promise.all(parts.map((p) => group.submit(p)));
    assert.ok(results.every((r) => r.ok));
    assert.ok(atomics.length < parts.length / 4, `${atomics.length} atomics`);
    for (const a of atomics) {
      assert.ok(a.checks <= 100, `${a.checks} checks`);
      assert.ok(a.mutations <= 1000, `${a.mutations} mutations`);
    }
    // The 30 KiB values: at most the byte budget's worth per atomic (13 of 30 KiB in 400 KiB).
    assert.ok(group.stats.groups >= 4);
    assert.equal((await db.get(["big", 39])).value, "x".repeat(30_000));
  });
});

Deno.test("Group commit: a part whose own check fails fails alone; the other parts of its group are committed", async () => {
  await withKv(async (kv, db) => {
    await db.set(["k"], "old");
    const stale = await db.get(["k"]);
    await db.set(["k"], "changed");
    const first = kv.commitGrouped({ checks: [], mutations: [set(["x"], 1)] });
    const parts = [
      kv.commitGrouped({ checks: [], mutations: [set(["p", 1], 1)] }),
      kv.commitGrouped({ checks: [stale], mutations: [set(["k"], "lost"), set(["p", 2], 2)] }),
      kv.commitGrouped({
        checks: [{ key: ["p", 3], versionstamp: null }],
        mutations: [set(["p", 3], 3)],
      }),
    ];
    const results = await Promise.all([first, ...parts]);
    assert.deepEqual(results.map((r) => r.ok), [true, true, false, true]);
    assert.equal((await db.get(["k"])).value, "changed");
    assert.equal((await db.get(["p", 1])).value, 1);
    assert.equal((await db.get(["p", 2])).value, null);
    assert.equal((await db.get(["p", 3])).value, 3);
    assert.equal(results[2]!.versionstamp, "");
  });
});

Deno.test("Group commit: a part checking a key an earlier part writes behaves as committed after it (its stale check fails)", async () => {
  await withKv(async (kv, db) => {
    await db.set(["k"], 0);
    const read = await db.get(["k"]);
    const first = kv.commitGrouped({ checks: [], mutations: [set(["x"], 1)] });
    // Both read ["k"] before either wrote: one after the other, the second one's check fails.
    const a = kv.commitGrouped({ checks: [read], mutations: [set(["k"], "a")] });
    const b = kv.commitGrouped({ checks: [read], mutations: [set(["k"], "b")] });
    const [, ra, rb] = await Promise.all([first, a, b]);
    assert.equal(ra.ok, true);
    assert.equal(rb.ok, false);
    assert.equal((await db.get(["k"])).value, "a");
  });
});

Deno.test("Group commit: a key several parts write blindly ends with the last part's value", async () => {
  await withKv(async (kv, db) => {
    const first = kv.commitGrouped({ checks: [], mutations: [set(["x"], 1)] });
    const parts = [1, 2, 3].map((n) =>
      kv.commitGrouped({ checks: [], mutations: [set(["beat"], n), set(["own", n], n)] })
    );
    await Promise.all([first, ...parts]);
    assert.equal((await db.get(["beat"])).value, 3);
    assert.equal(kv.groupStats.groups, 2);
  });
});

Deno.test("Group commit: when the group's commit throws, each part is committed alone and only the failing one rejects", async () => {
  await withKv(async (_kv, db) => {
    // A budget that lets KV refuse the group itself (over 800 KiB of mutations).
    const { group } = recording(db, { ...GROUP_LIMITS, bytes: 10 * 1024 * 1024 });
    const first = group.submit({ checks: [], mutations: [set(["x"], 1)] });
    const big = (key: string): CommitPart => ({
      checks: [],
      mutations: Array.from({ length: 7 }, (_, i) => set([key, i], "y".repeat(60_000))),
    });
    const outcomes: (CommitResult | Error)[] = await Promise.all(
      [
        first,
        group.submit(big("a")),
        group.submit(big("b")),
        group.submit({
          checks: [],
          mutations: Array.from({ length: 15 }, (_, i) => set(["too-big", i], "z".repeat(60_000))),
        }),
      ].map((p) => p.catch((e: Error) => e)),
    );
    assert.equal((outcomes[0] as CommitResult).ok, true);
    assert.equal((outcomes[1] as CommitResult).ok, true);
    assert.equal((outcomes[2] as CommitResult).ok, true);
    assert.ok(outcomes[3] instanceof Error);
    assert.equal((await db.get(["a", 6])).value, "y".repeat(60_000));
    assert.equal((await db.get(["too-big", 0])).value, null);
  });
});

Deno.test("Group commit: a lingering part goes with the next part that cannot wait, in one commit and in order", async () => {
  await withKv(async (_kv, db) => {
    const { group, atomics } = recording(db);
    // Nothing in flight: without lingering this part would be committed at once, alone.
    const lingering = group.submit({ checks: [], mutations: [set(["l", 1], "end")] }, {
      lingerMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(atomics.length, 0, "a lingering part alone waits");
    assert.equal((await db.get(["l", 1])).versionstamp, null);
    const urgent = group.submit({
      checks: [{ key: ["l", 2], versionstamp: null }],
      mutations: [set(["l", 2], "record")],
    });
    const [a, b] = await Promise.all([lingering, urgent]);
    assert.ok(a.ok && b.ok);
    assert.equal(a.versionstamp, b.versionstamp, "one commit carried both");
    assert.deepEqual(atomics, [{ checks: 1, mutations: 2 }]);
    assert.equal((await db.get(["l", 1])).value, "end");
    assert.equal((await db.get(["l", 2])).value, "record");
  });
});

Deno.test("Group commit: a lingering part with no company is committed alone once its time is up", async () => {
  await withKv(async (_kv, db) => {
    const { group, atomics } = recording(db);
    const parts = [1, 2, 3].map((i) =>
      group.submit({ checks: [], mutations: [set(["l", i], i)] }, { lingerMs: 30 })
    );
    // Microtasks run, no timer can fire: nothing is committed yet.
    for (let i = 0; i < 10; i++) await Promise.resolve();
    assert.equal(atomics.length, 0);
    const results = await Promise.all(parts);
    // The first part's time decides: all three go together then, in one commit.
    assert.ok(results.every((r) => r.ok && r.versionstamp === results[0]!.versionstamp));
    assert.deepEqual(atomics, [{ checks: 0, mutations: 3 }]);
    for (const i of [1, 2, 3]) assert.equal((await db.get(["l", i])).value, i);
  });
});

Deno.test("Group commit: a lingering part queued behind a commit in flight waits for company again, not for that commit's end", async () => {
  await withKv(async (_kv, db) => {
    const { group, atomics } = recording(db);
    const inFlight = group.submit({ checks: [], mutations: [set(["f", 0], 0)] });
    const lingering = group.submit({ checks: [], mutations: [set(["f", 1], 1)] }, {
      lingerMs: 60_000,
    });
    await inFlight;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(atomics.length, 1, "the lingering part did not follow the first commit alone");
    const next = group.submit({ checks: [], mutations: [set(["f", 2], 2)] });
    const [a, b] = await Promise.all([lingering, next]);
    assert.equal(a.versionstamp, b.versionstamp);
    assert.deepEqual(atomics, [{ checks: 0, mutations: 1 }, { checks: 0, mutations: 2 }]);
  });
});

Deno.test("Grouped reads: getMany calls made while one is in flight share the next read, each key once, each caller in its own order", async () => {
  await withKv(async (kv, db) => {
    for (let i = 0; i < 30; i++) await db.set(["r", i], `v${i}`);
    let reads = 0;
    const getMany = db.getMany.bind(db);
    db.getMany = ((keys: Deno.KvKey[]) => (reads++, getMany(keys))) as typeof db.getMany;
    const first = kv.getManyGrouped<string>([["r", 0]]);
    const asks = Array.from(
      { length: 30 },
      (_, i) => kv.getManyGrouped<string>([["r", (i * 7) % 30], ["r", 29 - i], ["none"]]),
    );
    const answers = await Promise.all(asks);
    assert.equal((await first)[0]!.value, "v0");
    answers.forEach((entries, i) => {
      assert.deepEqual(entries.map((e) => e.value), [`v${(i * 7) % 30}`, `v${29 - i}`, null]);
    });
    // 31 distinct keys after the first read: 4 getMany calls of at most 10, not 30.
    assert.equal(reads, 1 + 4);
    // A read asked after a write sees it.
    await db.set(["r", 0], "new");
    assert.equal((await kv.getManyGrouped<string>([["r", 0]]))[0]!.value, "new");
  });
});
