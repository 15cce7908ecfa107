/**
 * CORS for the client API (README "The client API", browsers): with `RELAY_CORS_ORIGINS` set,
 * web apps on those origins may call `POST /registrations`, `DELETE /registrations/{client-id}`
 * and `GET /transports` from a page. A preflight `OPTIONS` is answered `204` with
 * `Access-Control-Allow-Origin`, `-Methods`, `-Headers` and `-Max-Age` (Fetch standard, CORS
 * protocol); other origins get no CORS headers, so their browsers refuse the call. Unset:
 * nothing is added and `OPTIONS` is not served.
 *
 * @module
 */

import type { Context, Hono, MiddlewareHandler } from "hono";

/** How long a browser may cache a preflight answer (Chromium caps it at 2 hours). */
const CORS_MAX_AGE_SECONDS = 7200;

/** The client API paths browsers may call, and the methods of each. */
const CORS_PATHS: readonly { path: string; methods: string[] }[] = [
  { path: "/registrations", methods: ["POST"] },
  { path: "/registrations/:clientId", methods: ["DELETE"] },
  { path: "/transports", methods: ["GET", "HEAD"] },
];

export interface CorsOptions {
  /** `RELAY_CORS_ORIGINS`: origins, `"*"`, or null for no CORS at all. */
  origins: readonly string[] | "*" | null;
}

/** The `Access-Control-Allow-Origin` value for `origin`, or null when it is not allowed. */
function allowedOrigin(options: CorsOptions, origin: string | undefined): string | null {
  if (options.origins === null || origin === undefined) return null;
  if (options.origins === "*") return "*";
  return options.origins.includes(origin) ? origin : null;
}

function varyOnOrigin(c: Context, options: CorsOptions): void {
  if (Array.isArray(options.origins)) c.res.headers.append("Vary", "Origin");
}

/** Middleware for one client API path: the CORS headers of an actual (not preflight) request. */
function corsHeaders(options: CorsOptions): MiddlewareHandler {
  return async function corsHeaders(c, next) {
    await next();
    if (c.req.method === "OPTIONS") return;
    varyOnOrigin(c, options);
    const allow = allowedOrigin(options, c.req.header("origin"));
    if (allow === null) return;
    c.res.headers.set("Access-Control-Allow-Origin", allow);
    c.res.headers.set("Access-Control-Expose-Headers", "Retry-After");
  };
}

/** The preflight answer for a path serving `methods`. */
function preflight(options: CorsOptions, methods: string[]) {
  return function preflight(c: Context): Response {
    const headers = new Headers({ Allow: [...methods, "OPTIONS"].join(", ") });
    if (Array.isArray(options.origins)) headers.set("Vary", "Origin");
    const allow = allowedOrigin(options, c.req.header("origin"));
    if (allow !== null) {
      headers.set("Access-Control-Allow-Origin", allow);
      headers.set("Access-Control-Allow-Methods", methods.join(", "));
      headers.set("Access-Control-Allow-Headers", "Content-Type, Authorization");
      headers.set("Access-Control-Max-Age", String(CORS_MAX_AGE_SECONDS));
    }
    return new Response(null, { status: 204, headers });
  };
}

/** Adds the CORS middleware and preflight routes to `app`; nothing when CORS is off. */
export function addCors(app: Hono, options: CorsOptions): void {
  if (options.origins === null) return;
  for (const { path, methods } of CORS_PATHS) {
    app.use(path, corsHeaders(options));
    app.options(path, preflight(options, methods));
  }
}
