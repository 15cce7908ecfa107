/**
 * The admin API and page (README "Admin API and page"). With `RELAY_ADMIN_TOKEN` unset nothing
 * is mounted, so every `/admin` path is a `404`. Set, each API path needs
 * `Authorization: Bearer <RELAY_ADMIN_TOKEN>` (RFC 6750 §2.1; app tokens are never accepted),
 * and `GET /admin` serves the page, which holds no data and loads without it.
 *
 * @module
 */

import { type Context, Hono, type MiddlewareHandler } from "hono";
import type { Admin, DeadLetterQuery } from "../lib/admin.ts";
import { RelayError } from "../lib/errors.ts";
import { TRANSPORT_IDS, type TransportId } from "../lib/transports/types.ts";
import { adminPage } from "./admin_page.ts";
import { requireBearer } from "./auth.ts";

export interface AdminRouteOptions {
  /** `RELAY_ADMIN_TOKEN`; null: the admin API is off. */
  token: string | null;
  admin: Admin;
}

/** Requires `Authorization: Bearer <token>`, or answers `401` with `WWW-Authenticate`. */
function adminAuth(options: { token: string }): MiddlewareHandler {
  return async function adminAuth(c, next) {
    requireBearer(
      c,
      options.token,
      "Authorization: Bearer <admin token> is required",
      "Wrong admin token",
    );
    await next();
  };
}

function invalid(message: string): RelayError {
  return new RelayError(400, "invalid-request", message);
}

/** The query of `GET /admin/dead-letters` (empty parameters count as absent), or a `400`. */
function parseQuery(c: Context): DeadLetterQuery {
  const param = (name: string) => {
    const v = c.req.query(name);
    return v === undefined || v === "" ? undefined : v;
  };
  const app = param("app");
  const transport = param("transport");
  const limit = param("limit") ?? "20";
  const cursor = param("cursor");
  if (app !== undefined && app.length > 300) throw invalid("app is longer than 300 characters");
  if (transport !== undefined && !TRANSPORT_IDS.includes(transport as TransportId)) {
    throw invalid(`transport must be one of ${TRANSPORT_IDS.join(", ")}`);
  }
  if (!/^\d{1,3}$/.test(limit) || Number(limit) < 1 || Number(limit) > 100) {
    throw invalid("limit must be an integer from 1 to 100");
  }
  if (cursor !== undefined && cursor.length > 200) throw invalid("cursor is too long");
  return {
    limit: Number(limit),
    ...(app !== undefined ? { app } : {}),
    ...(transport !== undefined ? { transport: transport as TransportId } : {}),
    ...(cursor !== undefined ? { cursor } : {}),
  };
}

export function adminRoutes(options: AdminRouteOptions): Hono {
  const app = new Hono();
  if (options.token === null) return app;
  const { admin } = options;
  const auth = adminAuth({ token: options.token });

  app.get("/admin", async function adminPageRoute(c) {
    const page = await adminPage();
    return c.body(page.html, 200, page.headers);
  });

  app.get("/admin/status", auth, async function adminStatus(c) {
    return c.json(await admin.status());
  });

  app.get("/admin/dead-letters", auth, async function listDeadLetters(c) {
    return c.json(await admin.deadLetters(parseQuery(c)));
  });

  app.post("/admin/dead-letters/:id/retry", auth, async function retryDeadLetter(c) {
    const result = await admin.retry(c.req.param("id"));
    switch (result.kind) {
      case "queued":
        return c.json({ queued: result.id }, 202);
      case "unknown":
        throw new RelayError(404, "not-found", "No dead letter with this id");
      case "not-retryable":
        return c.json({ error: { code: "not-retryable", message: result.message } }, 409);
    }
  });

  app.delete("/admin/dead-letters/:id", auth, async function deleteDeadLetter(c) {
    if (!(await admin.remove(c.req.param("id")))) {
      throw new RelayError(404, "not-found", "No dead letter with this id");
    }
    return c.body(null, 204);
  });
  return app;
}
