/**
 * `createApp(deps)`: the Hono app. Middleware (request log, security headers, body deadline,
 * CORS), the route mounts, `404`/`405`, and one error handler that turns `RelayError`,
 * `StorageError` and everything else into the error bodies of the README ("Errors and
 * operations").
 *
 * @module
 */

import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { AppConfig, Config } from "../lib/config.ts";
import { RelayError, StorageError } from "../lib/errors.ts";
import type { Gateway, TransportInfo } from "../lib/gateway.ts";
import type { Ingress } from "../lib/ingress.ts";
import type { Logger } from "../lib/log.ts";
import type { Metrics } from "../lib/metrics.ts";
import type { Registrations } from "../lib/registrations.ts";
import type { Clock } from "../lib/time.ts";
import { type AdminRouteOptions, adminRoutes } from "./admin.ts";
import { bodyDeadline } from "./body.ts";
import { addCors } from "./cors.ts";
import { gatewayRoutes } from "./gateway.ts";
import { healthRoutes } from "./health.ts";
import { ingressRoutes } from "./ingress.ts";
import { KnownPaths, logMethod, logPattern } from "./known_paths.ts";
import { registrationRoutes } from "./registrations.ts";

/** What the routes call: the domain services, and the few storage reads they need. */
export interface AppDeps {
  config: Pick<
    Config,
    | "registrationRateLimit"
    | "clientIpHeader"
    | "corsOrigins"
    | "metricsToken"
    | "requestTimeoutMs"
  >;
  apps: AppConfig[];
  transports: TransportInfo[];
  gateway: Gateway;
  registrations: Registrations;
  ingress: Ingress;
  /** Counts one hit of a rate-limited subject in a window; returns the window's count. */
  hit: (subject: string, window: number) => Promise<number>;
  status: {
    /** Throws `StorageError` when storage does not answer. */
    ping: () => Promise<void>;
    subscriptionCount: () => Promise<number>;
  };
  logger: Logger;
  metrics: Metrics;
  now: Clock;
  /** The admin API and page (off, every `/admin` path `404`, while its token is null). */
  admin?: AdminRouteOptions;
}

function errorBody(code: string, message: string, extra: Record<string, unknown> = {}) {
  return { error: { code, message, ...extra } };
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();

  const known = new KnownPaths(app);

  app.use(async function requestLog(c, next) {
    const start = performance.now();
    await next();
    const ms = Math.round((performance.now() - start) * 10) / 10;
    deps.metrics.httpRequests.inc({ code: `${Math.floor(c.res.status / 100)}xx` });
    // README "Errors and operations": paths are logged as route patterns, capabilities masked.
    deps.logger.log("info", "request", {
      method: logMethod(c.req.method),
      path: logPattern(known.patternOf(c)),
      status: c.res.status,
      ms,
    });
  });

  app.use(async function securityHeaders(c, next) {
    await next();
    c.res.headers.set("X-Content-Type-Options", "nosniff");
    c.res.headers.set("Cache-Control", "no-store");
  });

  app.use(bodyDeadline(deps.config.requestTimeoutMs));
  addCors(app, { origins: deps.config.corsOrigins });

  app.route("/", healthRoutes(deps));
  app.route("/", gatewayRoutes(deps));
  app.route("/", registrationRoutes(deps));
  app.route("/", ingressRoutes(deps.ingress, deps.now));
  if (deps.admin) app.route("/", adminRoutes(deps.admin));

  app.notFound((c) => {
    // RFC 9110 §15.5.6: a known path with a method it does not serve names the methods.
    const path = known.match(c.req.path);
    if (path) {
      return c.json(
        errorBody("method-not-allowed", `This path serves ${path.allow.join(", ")}`),
        405,
        { Allow: path.allow.join(", ") },
      );
    }
    return c.json(errorBody("not-found", "No such resource"), 404);
  });

  app.onError((err, c) => {
    if (err instanceof RelayError) {
      return c.json(errorBody(err.code, err.message, err.extra), err.status, err.headers);
    }
    if (err instanceof StorageError) {
      deps.logger.log("error", "storage.error", {
        error: String(err.cause ?? err.message).slice(0, 300),
      });
      return c.json(
        errorBody("storage-unavailable", "Storage is unavailable; try again later"),
        503,
        {
          "Retry-After": "5",
        },
      );
    }
    if (err instanceof HTTPException) {
      return err.getResponse();
    }
    // Never a stack trace or internal detail in the body.
    deps.logger.log("error", "internal.error", {
      name: (err as Error).name,
      error: String((err as Error).message).slice(0, 300),
    });
    return c.json(errorBody("internal-error", "Internal error"), 500);
  });
  return app;
}
