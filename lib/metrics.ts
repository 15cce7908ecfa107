/**
 * In-process metrics in the Prometheus text exposition format (version 0.0.4): counters and
 * gauges with labels, and histograms. Per isolate: on Deno Deploy each isolate reports its own,
 * except `relay_subscriptions_active`, which is read from KV (one key) at each scrape.
 *
 * @module
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(",");
}

/** Label sets remembered per metric at most (a metric has a few dozen). */
const MAX_CACHED_KEYS = 1000;

/**
 * {@link labelKey} remembered per label set as given (names and values in their order): a
 * delivery counts under one of a few label sets, so the sorting and escaping are done once.
 */
class LabelKeys {
  private readonly known = new Map<string, string>();
  of(labels: Labels): string {
    let raw = "";
    // Length-prefixed, so no two label sets give one string.
    for (const k in labels) raw += `${k.length}:${k}${labels[k]!.length}:${labels[k]}`;
    let key = this.known.get(raw);
    if (key === undefined) {
      key = labelKey(labels);
      if (this.known.size < MAX_CACHED_KEYS) this.known.set(raw, key);
    }
    return key;
  }
}

/** Prometheus text format: a label value escapes `\`, `"` and newlines. */
function escapeLabel(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

/** Prometheus text format: HELP text escapes `\` and newlines. */
function escapeHelp(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}

/** A number as Prometheus writes it (`+Inf`, `-Inf`, `NaN`). */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

function renderSeries(name: string, values: Map<string, number>): string[] {
  if (values.size === 0) return [`${name} 0`];
  return [...values].map(([k, v]) => `${name}${k ? `{${k}}` : ""} ${formatValue(v)}`);
}

export class Counter implements Metric {
  readonly type = "counter" as const;
  private values = new Map<string, number>();
  private readonly keys = new LabelKeys();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    const k = this.keys.of(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  /** Makes a series exist at 0, so that `rate()` sees it before its first increment. */
  declare(labels: Labels): void {
    const k = labelKey(labels);
    if (!this.values.has(k)) this.values.set(k, 0);
  }
  get(labels: Labels = {}): number {
    return this.values.get(this.keys.of(labels)) ?? 0;
  }
  render(): string[] {
    return renderSeries(this.name, this.values);
  }
}

export class Gauge implements Metric {
  readonly type = "gauge" as const;
  private values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string, private collect?: () => number) {}
  set(value: number, labels: Labels = {}): void {
    this.values.set(labelKey(labels), value);
  }
  render(): string[] {
    if (this.collect) return [`${this.name} ${formatValue(this.collect())}`];
    return renderSeries(this.name, this.values);
  }
}

export class Histogram implements Metric {
  readonly type = "histogram" as const;
  private series = new Map<string, { counts: number[]; sum: number; count: number }>();
  private readonly keys = new LabelKeys();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}
  observe(value: number, labels: Labels = {}): void {
    const k = this.keys.of(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    // Buckets are cumulative: a value counts in every bucket whose bound it does not exceed.
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  render(): string[] {
    const lines: string[] = [];
    const series = this.series.size === 0
      ? new Map([["", { counts: this.buckets.map(() => 0), sum: 0, count: 0 }]])
      : this.series;
    for (const [k, s] of series) {
      const sep = k ? `${k},` : "";
      this.buckets.forEach((b, i) =>
        lines.push(`${this.name}_bucket{${sep}le="${formatValue(b)}"} ${s.counts[i]}`)
      );
      lines.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`);
      lines.push(`${this.name}_sum${k ? `{${k}}` : ""} ${formatValue(s.sum)}`);
      lines.push(`${this.name}_count${k ? `{${k}}` : ""} ${s.count}`);
    }
    return lines;
  }
}

/** Delivery outcomes every configured transport reports from the start (at 0). */
const DELIVERY_OUTCOMES = [
  "delivered",
  "pruned",
  "retried",
  "dead_lettered",
  "failed",
] as const;

/** Resident memory of this process, or NaN where the platform does not say. */
function residentBytes(): number {
  try {
    return Deno.memoryUsage().rss;
  } catch {
    return NaN;
  }
}

/** The relay's metrics. */
export class Metrics {
  readonly pushesReceived = new Counter(
    "relay_pushes_received_total",
    "Push messages accepted from application servers.",
  );
  readonly deliveries = new Counter(
    "relay_deliveries_total",
    "Deliveries by transport and outcome: delivered, pruned (the push service said the device is gone), retried, dead_lettered, failed, replaced (an ingress message superseded by a newer one with its Topic), short_circuited (an open circuit breaker), coalesced (transport any). Transport upstream counts the push requests relayed to an upstream gateway.",
  );
  readonly subscriptionsActive = new Gauge(
    "relay_subscriptions_active",
    "Subscriptions stored across all apps and processes (a counter kept in KV); expired ones count until the expiry sweep removes them.",
  );
  readonly deliveryLatency = new Histogram(
    "relay_delivery_latency_seconds",
    "Seconds from a push being accepted to the push service accepting the delivery.",
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  );
  readonly httpRequests = new Counter(
    "relay_http_requests_total",
    "HTTP requests by status class.",
  );
  readonly residentMemory = new Gauge(
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
    residentBytes,
  );

  /** `transports`: the configured transports, whose delivery series exist from the start. */
  constructor(transports: readonly string[] = []) {
    for (const transport of transports) {
      for (const outcome of DELIVERY_OUTCOMES) this.deliveries.declare({ transport, outcome });
    }
  }

  render(): string {
    const out: string[] = [];
    for (
      const m of [
        this.pushesReceived,
        this.deliveries,
        this.subscriptionsActive,
        this.deliveryLatency,
        this.httpRequests,
        this.residentMemory,
      ] as Metric[]
    ) {
      out.push(
        `# HELP ${m.name} ${escapeHelp(m.help)}`,
        `# TYPE ${m.name} ${m.type}`,
        ...m.render(),
      );
    }
    return out.join("\n") + "\n";
  }
}
