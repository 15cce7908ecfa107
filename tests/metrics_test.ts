/**
 * `GET /metrics` in the Prometheus text format (version 0.0.4): pushes
 * received, deliveries by transport and outcome, active subscriptions (a counter kept in KV in
 * the same atomics as the records, so a scrape reads one key) and a delivery latency histogram.
 * The format is checked with `promtool check metrics` (Debian package prometheus) when it is
 * installed; CI installs it.
 */

import assert from "node:assert/strict";
import { Counter, Histogram, Metrics } from "../lib/metrics.ts";
import { type Harness, harness, settle, T0 } from "./_harness.ts";

const HOUR = 3600_000;

async function scrape(h: Harness): Promise<string> {
  const res = await h.request("/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return await res.text();
}

/** The value of one sample line (`name{labels} value`), or undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const promtool = (() => {
  try {
    return new Deno.Command("promtool", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

async function promtoolCheck(text: string): Promise<{ ok: boolean; output: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { ok: out.success, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

Deno.test("GET /metrics counts pushes, deliveries by transport and outcome, subscriptions and latency", async () => {
  const h = await harness();
  try {
    const before = await scrape(h);
    // Every configured transport's outcome series exist from the start, at 0.
    for (const outcome of ["delivered", "pruned", "retried", "dead_lettered", "failed"]) {
      assert.equal(
        sample(before, `relay_deliveries_total{outcome="${outcome}",transport="web-push"}`),
        0,
      );
    }
    assert.equal(sample(before, "relay_subscriptions_active"), 0);
    assert.equal(sample(before, "relay_pushes_received_total"), 0);

    const a = await h.registerDevice();
    const b = await h.registerDevice();
    await h.subscribe(a["client-data"], ["t1", "t2"]);
    await h.subscribe(b["client-data"], ["t1"]);
    await settle(h);
    h.webPush.sent = [];
    h.clock.now += 120; // the deliveries below are accepted 0.12 s before they are sent
    const res = await h.push([{ topic: "t1" }, { topic: "t2" }]);
    assert.equal(res.status, 200);
    await res.body?.cancel();
    await settle(h);
    assert.equal(h.webPush.sent.length, 3);

    const text = await scrape(h);
    assert.equal(sample(text, "relay_pushes_received_total"), 2);
    // 3 updates plus the 2 acknowledging pushes of the subscribes.
    assert.equal(
      sample(text, 'relay_deliveries_total{outcome="delivered",transport="web-push"}'),
      5,
    );
    assert.equal(sample(text, "relay_subscriptions_active"), 3);
    assert.equal(sample(text, 'relay_delivery_latency_seconds_count{transport="web-push"}'), 5);
    assert.match(text, /^# TYPE relay_delivery_latency_seconds histogram$/m);
    assert.ok((sample(text, "process_resident_memory_bytes") ?? 0) > 0);
  } finally {
    await h.close();
  }
});

Deno.test("GET /metrics: pruned, retried and failed deliveries are counted by outcome", async () => {
  const h = await harness();
  try {
    const devs = [await h.registerDevice(), await h.registerDevice(), await h.registerDevice()];
    for (const d of devs) await h.subscribe(d["client-data"], ["t"]);
    await settle(h);
    const endpoints = await Promise.all(devs.map(async (d) => {
      const reg = await h.relay.store.registrations.get(d["client-id"]);
      return reg?.target.transport === "web-push" ? reg.target.endpoint : "";
    }));
    h.webPush.respond = (target) => {
      const i = target.transport === "web-push" ? endpoints.indexOf(target.endpoint) : -1;
      if (i === 0) return { kind: "gone", status: 410, reason: "push service answered 410" };
      if (i === 1) return { kind: "retry", status: 503, reason: "push service answered 503" };
      return { kind: "failed", status: 400, reason: "push service answered 400" };
    };
    const res = await h.push([{ topic: "t" }]);
    await res.body?.cancel();
    await settle(h);
    const text = await scrape(h);
    const count = (outcome: string) =>
      sample(text, `relay_deliveries_total{outcome="${outcome}",transport="web-push"}`);
    assert.equal(count("pruned"), 1);
    assert.equal(count("retried"), 1);
    assert.equal(count("failed"), 1);
    // The pruned client's subscription is gone from the count.
    assert.equal(sample(text, "relay_subscriptions_active"), 2);
  } finally {
    await h.close();
  }
});

Deno.test("Active subscriptions: the KV counter follows subscribe, refresh, unsubscribe, pruning and the sweep, and racing writers do not skew it", async () => {
  const h = await harness();
  try {
    const store = h.relay.store;
    const topics = [...Array(250).keys()].map((i) => `t${i}`);
    await store.subscriptions.upsert("app1", "c1", "web-push", topics, T0 + HOUR, T0);
    assert.equal(await store.subscriptions.count(), 250);
    // A refresh creates nothing.
    await store.subscriptions.upsert("app1", "c1", "web-push", topics, T0 + 2 * HOUR, T0);
    assert.equal(await store.subscriptions.count(), 250);
    // Unsubscribe of some, one of them unknown.
    assert.equal(await store.subscriptions.remove("app1", "c1", ["t0", "t1", "nope"]), 2);
    assert.equal(await store.subscriptions.count(), 248);

    // Two processes subscribing the same new pairs, and removing the same client, at once.
    await Promise.all([
      store.subscriptions.upsert("app2", "c2", "web-push", topics, T0 + HOUR, T0),
      store.subscriptions.upsert("app2", "c2", "web-push", topics, T0 + HOUR, T0),
    ]);
    assert.equal(await store.subscriptions.count(), 498);
    await Promise.all([
      store.registrations.remove("c2"),
      store.registrations.remove("c2"),
    ]);
    assert.equal(await store.subscriptions.count(), 248);
    await Promise.all([
      store.subscriptions.remove("app1", "c1", ["t2", "t3"]),
      store.subscriptions.remove("app1", "c1", ["t2", "t3"]),
    ]);
    assert.equal(await store.subscriptions.count(), 246);

    // The sweep removes expired ones (CC/CD 70025 §6.2.1.6) and the count follows.
    await store.subscriptions.upsert("app1", "c3", "web-push", ["x", "y"], T0 + HOUR, T0);
    assert.equal(await store.subscriptions.count(), 248);
    let swept = 0;
    for (let i = 0; i < 5; i++) {
      swept += await store.subscriptions.sweepExpired(T0 + HOUR + 1, 1000);
    }
    assert.equal(swept, 2);
    assert.equal(await store.subscriptions.count(), 246);

    let stored = 0;
    for await (const _ of h.kv.list({ prefix: ["sub"] })) stored++;
    assert.equal(stored, 246);
  } finally {
    await h.close();
  }
});

Deno.test("Metrics text: label values and help text are escaped, histogram buckets are cumulative", () => {
  const c = new Counter("x_total", 'Help with a \\ and a\nnewline and "quotes".');
  c.inc({ path: 'a"b\\c\nd' }, 2);
  assert.deepEqual(c.render(), ['x_total{path="a\\"b\\\\c\\nd"} 2']);
  const hist = new Histogram("h_seconds", "h", [0.1, 1]);
  hist.observe(0.05);
  hist.observe(0.5);
  hist.observe(5);
  assert.deepEqual(hist.render(), [
    'h_seconds_bucket{le="0.1"} 1',
    'h_seconds_bucket{le="1"} 2',
    'h_seconds_bucket{le="+Inf"} 3',
    "h_seconds_sum 5.55",
    "h_seconds_count 3",
  ]);
  const m = new Metrics(["web-push"]);
  m.httpRequests.inc({ code: "2xx" });
  assert.match(m.render(), /^# HELP relay_deliveries_total .+$/m);
});

Deno.test({
  name: "promtool check metrics accepts GET /metrics (skipped when promtool is not installed)",
  ignore: !promtool,
  async fn() {
    const h = await harness();
    try {
      const dev = await h.registerDevice();
      await h.subscribe(dev["client-data"], ["t"]);
      await settle(h);
      const res = await h.push([{ topic: "t" }, { topic: "none" }]);
      await res.body?.cancel();
      await settle(h);
      await h.request("/nope").then((r) => r.body?.cancel());
      const text = await scrape(h);
      const check = await promtoolCheck(text);
      assert.ok(check.ok, `promtool check metrics:\n${check.output}\n---\n${text}`);
      // promtool lints too (naming, HELP, TYPE); it prints nothing when all is well.
      assert.equal(check.output.trim(), "", check.output);
    } finally {
      await h.close();
    }
  },
});
