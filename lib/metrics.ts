/**
 * In-process metrics in the Prometheus text exposition format (version 0.0.4): counters and
 * gauges with labels, and histograms. Per isolate: on Deno Deploy each isolate reports its own.
 *
 * @module
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(",");
}

function escapeLabel(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

export class Counter implements Metric {
  readonly type = "counter" as const;
  private values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(): string[] {
    if (this.values.size === 0) return [`${this.name} 0`];
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ""} ${v}`);
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
    if (this.collect) return [`${this.name} ${this.collect()}`];
    if (this.values.size === 0) return [`${this.name} 0`];
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ""} ${v}`);
  }
}

export class Histogram implements Metric {
  readonly type = "histogram" as const;
  private series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}
  observe(value: number, labels: Labels = {}): void {
    const k = labelKey(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
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
        lines.push(`${this.name}_bucket{${sep}le="${b}"} ${s.counts[i]}`)
      );
      lines.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`);
      lines.push(`${this.name}_sum${k ? `{${k}}` : ""} ${s.sum}`);
      lines.push(`${this.name}_count${k ? `{${k}}` : ""} ${s.count}`);
    }
    return lines;
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
    "Delivery attempts by transport and outcome (delivered, pruned, retried, failed, dead_lettered, coalesced).",
  );
  readonly subscriptionsActive = new Gauge(
    "relay_subscriptions_active",
    "Active subscriptions, as last counted by the expiry sweep.",
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

  render(): string {
    const out: string[] = [];
    for (
      const m of [
        this.pushesReceived,
        this.deliveries,
        this.subscriptionsActive,
        this.deliveryLatency,
        this.httpRequests,
      ] as Metric[]
    ) {
      out.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, ...m.render());
    }
    return out.join("\n") + "\n";
  }
}
