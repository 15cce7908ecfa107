/**
 * Bulk seeding (lib/store/bulk.ts) writes exactly what registering and subscribing new clients
 * one by one writes (`registrations.put`, `subscriptions.upsert`): the same keys, values and
 * counters, so the benchmarks' million subscriptions are the relay's own data.
 */

import assert from "node:assert/strict";
import type { Registration } from "../lib/model.ts";
import { createStore } from "../lib/store/mod.ts";
import { targetHash } from "../lib/targets.ts";

// The stores run on a fixed clock at the moment the test starts.
const NOW = Date.now();
const EXP = NOW + 47 * 3600_000;

function registrations(n: number): Registration[] {
  return Array.from({ length: n }, (_, i) => ({
    clientId: `client-${String(i).padStart(4, "0")}`,
    target: {
      transport: "web-push" as const,
      endpoint: `https://push.example.com/wpush/${i}`,
      p256dh:
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
      auth: `auth${String(i).padStart(18, "0")}`,
    },
    createdAt: NOW,
    ...(i % 3 === 0 ? { ingress: { id: `ingress-${i}` } } : {}),
  }));
}

/** Every key and value, with the expiry KV will collect it at left out. */
async function dump(db: Deno.Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const e of db.list({ prefix: [] })) {
    const v = e.value instanceof Deno.KvU64 ? `u64:${e.value.value}` : JSON.stringify(e.value);
    out.push(`${JSON.stringify(e.key)} = ${v}`);
  }
  return out;
}

Deno.test("Bulk seeding writes the keys, values and counters that registering and subscribing each client writes", async () => {
  const regs = registrations(450);
  const hashes = await Promise.all(regs.map((r) => targetHash(r.target)));
  const one = await Deno.openKv(":memory:");
  const bulk = await Deno.openKv(":memory:");
  try {
    const a = createStore(one, { now: () => NOW });
    for (let i = 0; i < regs.length; i++) await a.registrations.put(regs[i]!, hashes[i]!);
    for (const r of regs) {
      await a.subscriptions.upsert("app1", r.clientId, "web-push", ["all"], EXP, NOW);
    }
    const b = createStore(bulk, { now: () => NOW });
    await b.bulk.registrations(regs.map((reg, i) => ({ reg, targetHash: hashes[i]! })));
    await b.bulk.subscriptions({
      app: "app1",
      topic: "all",
      clientIds: regs.map((r) => r.clientId),
      transport: "web-push",
      exp: EXP,
      now: NOW,
    });
    const expected = await dump(one);
    assert.ok(expected.length > 450 * 8);
    assert.deepEqual(await dump(bulk), expected);
    assert.equal(await b.subscriptions.count(), 450);
    assert.deepEqual(
      await b.subscriptions.appCounts(["app1"]),
      await a.subscriptions.appCounts(["app1"]),
    );
  } finally {
    one.close();
    bulk.close();
  }
});
