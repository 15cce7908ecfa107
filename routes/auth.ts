/**
 * Bearer credentials (RFC 6750 §2.1) and application-server authentication (README "The
 * gateway protocol"): a bearer token, or, for apps configured without one, the app id in the
 * path as the secret (how OX App Suite calls a gateway: `<gatewayUrl><applicationId>`).
 *
 * @module
 */

import type { Context } from "hono";
import type { AppConfig } from "../lib/config.ts";
import { timingSafeEqual } from "../lib/encoding.ts";
import { RelayError } from "../lib/errors.ts";

/** A `401` with `WWW-Authenticate: Bearer` (RFC 6750 §3). */
export function unauthorized(message: string): RelayError {
  return new RelayError(401, "unauthorized", message, {}, {
    "WWW-Authenticate": 'Bearer realm="dav-push-relay"',
  });
}

/**
 * The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), or null when the
 * header is absent or not of that form.
 */
export function parseBearer(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}

/**
 * Requires `Authorization: Bearer <token>`, or throws `401` with `WWW-Authenticate`:
 * `missingMessage` without a bearer token, `wrongMessage` with another one.
 */
export function requireBearer(
  c: Context,
  token: string,
  missingMessage: string,
  wrongMessage: string = missingMessage,
): void {
  const presented = parseBearer(c.req.header("authorization"));
  if (presented === null) throw unauthorized(missingMessage);
  if (!timingSafeEqual(presented, token)) throw unauthorized(wrongMessage);
}

/** Returns the calling app, or throws 401 with `WWW-Authenticate: Bearer`. */
export function authenticateApp(
  c: Context,
  apps: AppConfig[],
  pathApp: string | undefined,
): AppConfig {
  const header = c.req.header("authorization");
  if (header !== undefined) {
    const token = parseBearer(header);
    if (token === null) throw unauthorized("Authorization must be a Bearer token");
    // Compare against every token so timing does not tell which prefix matched.
    let found: AppConfig | undefined;
    for (const app of apps) {
      if (app.token !== null && timingSafeEqual(app.token, token)) found = app;
    }
    if (!found) throw unauthorized("Unknown bearer token");
    if (pathApp !== undefined && pathApp !== found.id) {
      throw unauthorized("The bearer token does not belong to the app in the path");
    }
    return found;
  }
  if (pathApp !== undefined) {
    let found: AppConfig | undefined;
    for (const app of apps) {
      if (app.token === null && timingSafeEqual(app.id, pathApp)) found = app;
    }
    if (found) return found;
  }
  throw unauthorized("Missing or wrong credentials");
}
