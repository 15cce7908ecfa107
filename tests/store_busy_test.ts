/**
 * The local SQLite backend answers "database is locked" when several processes (or handles)
 * write one KV file at once. Such a call did not take effect, so the store tries it again
 * (lib/store/kv.ts). Before this, a fan-out whose cursor commit failed this way gave its page
 * back and the page was sent twice.
 */

import assert from "node:assert/strict";
import { createStore, isBusy, Kv } from "../lib/store/mod.ts";
import { StorageError } from "../lib/errors.ts";

/** The store's KV wrapper around `kv` (retries "database is locked"). */
const retryingKv = (kv: Deno.Kv) => new Kv(kv);

const busy = () => new TypeError("database is locked");

/**
 * `kv` that throws "database is locked" from the next `n[method]` calls of each method; a
 * failing list yields `listAfter` entries first. Counts the calls that reached `kv`.
 */
function flaky(kv: Deno.Kv, n: Record<string, number>, listAfter = 2) {
  const calls: Record<string, number> = {};
  const failing = (method: string) => {
    calls[method] = (calls[method] ?? 0) + 1;
    if ((n[method] ?? 0) > 0) {
      n[method]!--;
      return true;
    }
    return false;
  };
  const fake = {
    get: (...args: Parameters<Deno.Kv["get"]>) =>
      failing("get") ? Promise.reject(busy()) : kv.get(...args),
    getMany: (keys: Deno.KvKey[]) => failing("getMany") ? Promise.reject(busy()) : kv.getMany(keys),
    set: (...args: Parameters<Deno.Kv["set"]>) =>
      failing("set") ? Promise.reject(busy()) : kv.set(...args),
    delete: (key: Deno.KvKey) => failing("delete") ? Promise.reject(busy()) : kv.delete(key),
    list: (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
      const it = kv.list(selector, options);
      const failAt = failing("list") ? listAfter : Infinity;
      let yielded = 0;
      return {
        get cursor() {
          return it.cursor;
        },
        async next() {
          if (yielded === failAt) throw busy();
          yielded++;
          return await it.next();
        },
        [Symbol.asyncIterator]() {
          return this;
        },
      };
    },
    atomic: () => {
      const op = kv.atomic();
      const commit = op.commit.bind(op);
      op.commit = () => failing("commit") ? Promise.reject(busy()) : commit();
      return op;
    },
    close: () => kv.close(),
  };
  return { kv: fake as unknown as Deno.Kv, calls };
}

Deno.test("busy: only SQLite's 'database is locked' counts as busy", () => {
  assert.equal(isBusy(new TypeError("database is locked")), true);
  assert.equal(isBusy(new TypeError("Database is busy")), true);
  assert.equal(isBusy(new TypeError("Database closed")), false);
  assert.equal(isBusy("database is locked"), false);
});

Deno.test("busy: get, getMany, set, delete and atomic commits are tried again", async () => {
  const real = await Deno.openKv(":memory:");
  try {
    const { kv: fake, calls } = flaky(real, { get: 2, getMany: 1, set: 3, delete: 1, commit: 2 });
    const kv = retryingKv(fake);
    await kv.set(["a"], 1);
    assert.equal((await kv.get(["a"])).value, 1);
    assert.deepEqual((await kv.getMany<number>([["a"], ["b"]])).map((e) => e.value), [1, null]);
    // A sum applied once although its commit failed twice: the failed tries did not happen.
    const ok = await kv.commit(
      kv.atomic().check({ key: ["n"], versionstamp: null }).sum(["n"], 5n),
    );
    assert.equal(ok, true);
    assert.equal((await real.get<Deno.KvU64>(["n"])).value?.value, 5n);
    await kv.delete(["a"]);
    assert.equal((await real.get(["a"])).versionstamp, null);
    assert.deepEqual(calls, { set: 4, get: 3, getMany: 2, commit: 3, delete: 2 });
  } finally {
    real.close();
  }
});

Deno.test("busy: a list that fails part way resumes after the last entry, within its limit", async () => {
  const real = await Deno.openKv(":memory:");
  try {
    for (let i = 0; i < 7; i++) await real.set(["x", i], i);
    const { kv: fake } = flaky(real, { list: 2 }, 3);
    const kv = retryingKv(fake);
    const all: number[] = [];
    for await (const e of kv.list<number>({ prefix: ["x"] })) all.push(e.value);
    assert.deepEqual(all, [0, 1, 2, 3, 4, 5, 6]);
    const { kv: fake2 } = flaky(real, { list: 1 }, 2);
    const limited: number[] = [];
    for await (const e of retryingKv(fake2).list<number>({ prefix: ["x"] }, { limit: 5 })) {
      limited.push(e.value);
    }
    assert.deepEqual(limited, [0, 1, 2, 3, 4]);
  } finally {
    real.close();
  }
});

Deno.test("busy: other errors are not retried, and a lock that never clears ends as StorageError", async () => {
  const real = await Deno.openKv(":memory:");
  try {
    let calls = 0;
    const broken = new Proxy(real, {
      get(target, prop) {
        if (prop === "get") {
          return () => {
            calls++;
            return Promise.reject(new TypeError("Database closed"));
          };
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    await assert.rejects(retryingKv(broken).get(["a"]), /Database closed/);
    assert.equal(calls, 1);

    const { kv: locked, calls: tries } = flaky(real, { get: Infinity });
    const store = createStore(locked);
    await assert.rejects(store.registrations.get("c1"), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.match(String((err as Error).cause), /database is locked/);
      return true;
    });
    assert.equal(tries.get, 12);
  } finally {
    real.close();
  }
});

Deno.test("busy: three KV handles on one SQLite file write concurrently without a lost or doubled commit", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/kv.sqlite3`;
  const handles = [await Deno.openKv(path), await Deno.openKv(path), await Deno.openKv(path)];
  let busyErrors = 0;
  // Counts the busy answers the raw handles give (what callers saw before the retry).
  const counted = handles.map((kv) =>
    new Proxy(kv, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target);
        if (prop === "atomic") {
          return () => {
            const op = target.atomic();
            const commit = op.commit.bind(op);
            op.commit = () =>
              commit().catch((err) => {
                if (isBusy(err)) busyErrors++;
                throw err;
              });
            return op;
          };
        }
        return typeof v === "function" ? v.bind(target) : v;
      },
    })
  );
  try {
    const kvs = counted.map((kv) => retryingKv(kv));
    let committed = 0;
    await Promise.all(kvs.flatMap((kv, h) =>
      [...Array(150).keys()].map(async (i) => {
        for (;;) {
          const e = await kv.get(["hot", i % 10]);
          const op = kv.atomic().check(e).set(["hot", i % 10], `${h}:${i}`)
            .set(["row", h, i], "v".repeat(1500)).sum(["count"], 1n);
          if (await kv.commit(op)) break; // a lost check (another writer went first): read again
        }
        committed++;
      })
    ));
    console.log(`450 checked commits on 3 handles; busy answers retried: ${busyErrors}`);
    assert.equal(committed, 450);
    assert.equal((await handles[0]!.get<Deno.KvU64>(["count"])).value?.value, 450n);
    let rows = 0;
    for await (const _ of handles[0]!.list({ prefix: ["row"] })) rows++;
    assert.equal(rows, 450);
  } finally {
    for (const kv of handles) kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});
