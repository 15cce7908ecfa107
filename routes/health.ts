/**
 * `GET /healthz` (CONTRACT §3) and `GET /metrics` (Prometheus text format).
 *
 * @module
 */

import { Hono } from "hono";
import type { AppDeps } from "./mod.ts";

export function healthRoutes(deps: AppDeps): Hono {
  const app = new Hono();
  app.get("/healthz", async (c) => {
    await deps.store.ping(); // throws StorageError → 503 via onError
    return c.json({ status: "ok" });
  });
  app.get(
    "/metrics",
    (c) =>
      c.body(deps.metrics.render(), 200, {
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
      }),
  );
  return app;
}
