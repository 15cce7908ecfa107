/**
 * `GET /healthz` (README "Errors and operations") and `GET /metrics` (Prometheus text format),
 * which needs `Authorization: Bearer <RELAY_METRICS_TOKEN>` when that is set.
 *
 * @module
 */

import { Hono } from "hono";
import type { AppDeps } from "./mod.ts";
import { requireBearer } from "./auth.ts";

export function healthRoutes(deps: AppDeps): Hono {
  const app = new Hono();
  app.get("/healthz", async function healthz(c) {
    await deps.status.ping(); // throws StorageError → 503 via onError
    return c.json({ status: "ok" });
  });
  const token = deps.config.metricsToken;
  app.get("/metrics", async function metrics(c) {
    if (token !== null) {
      requireBearer(c, token, "/metrics requires Authorization: Bearer <RELAY_METRICS_TOKEN>");
    }
    // One KV read per scrape (a counter kept with the records), never a scan. When storage
    // does not answer, the other metrics are still served, with the last count.
    try {
      deps.metrics.subscriptionsActive.set(await deps.status.subscriptionCount());
    } catch { /* storage trouble shows in /healthz and the request log */ }
    return c.body(deps.metrics.render(), 200, {
      "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });
  return app;
}
