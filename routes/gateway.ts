/**
 * `POST /gateway` and `POST /gateway/{app}` (README "The gateway protocol"): one handler
 * dispatching on the body's single top-level member, and `GET /transports`. Subscribe and push
 * pass the request's `Via` list on (README "Relaying to another gateway").
 *
 * @module
 */

import { type Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { AppDeps } from "./mod.ts";
import { authenticateApp } from "./auth.ts";
import { isPlainObject, readJson } from "./body.ts";
import { RelayError } from "../lib/errors.ts";
import type { ViaHop } from "../lib/model.ts";
import { UpstreamAnswer } from "../lib/upstream.ts";
import { parsePushMessages, parsePushSubscribe } from "./validate.ts";

// RFC 9110 §5.6.2 token, and received-by (a host with port, or a pseudonym).
const VIA_ELEMENT =
  /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\/[!#$%&'*+\-.^_`|~0-9A-Za-z]+)?)[ \t]+([^\s(),]+)(?:[ \t]+\(.*\))?$/s;

function malformedVia(): RelayError {
  return new RelayError(400, "invalid-request", "The Via header is malformed (RFC 9110 §7.6.3)");
}

/** The list elements of a header value: split at commas outside comments (RFC 9110 §5.6.5). */
function listElements(value: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (depth > 0 && c === "\\") i++; // a quoted-pair inside a comment
    else if (c === "(") depth++;
    else if (c === ")" && depth > 0) depth--;
    else if (c === "," && depth === 0) {
      out.push(value.slice(start, i));
      start = i + 1;
    }
  }
  if (depth !== 0) throw malformedVia();
  out.push(value.slice(start));
  return out;
}

/**
 * Parses `Via` (RFC 9110 §7.6.3; several header lines arrive joined by commas) into its hops,
 * oldest first; comments are dropped. Empty list elements are skipped; any other element that
 * is not `received-protocol received-by [comment]` is `400`.
 */
export function parseVia(value: string | undefined | null): ViaHop[] {
  if (value === undefined || value === null) return [];
  const hops: ViaHop[] = [];
  for (const raw of listElements(value)) {
    const element = raw.trim();
    if (element === "") continue;
    const m = VIA_ELEMENT.exec(element);
    if (!m) throw malformedVia();
    hops.push({ protocol: m[1]!, receivedBy: m[2]! });
  }
  return hops;
}

export function gatewayRoutes(deps: AppDeps): Hono {
  const app = new Hono();
  // Only a relay that forwards requests reads Via (to extend it, and to refuse loops).
  const via = (c: Context) => deps.gateway.relaying ? parseVia(c.req.header("via")) : [];

  const handle = async (c: Context, pathApp: string | undefined) => {
    const body = await readJson(c);
    const keys = isPlainObject(body) ? Object.keys(body) : [];
    if (keys.length !== 1) {
      throw new RelayError(
        400,
        "unknown-operation",
        "The body must have exactly one member: push-transports, push-subscribe or push",
      );
    }
    const op = keys[0]!;
    const value = (body as Record<string, unknown>)[op];
    switch (op) {
      case "push-transports":
        // §5.1 bootstrap needs no authentication: it only lists public transport data.
        if (!Array.isArray(value)) {
          throw new RelayError(400, "invalid-request", "push-transports must be an array");
        }
        return c.json(deps.gateway.bootstrap());
      case "push-subscribe": {
        const caller = authenticateApp(c, deps.apps, pathApp);
        const req = parsePushSubscribe(value);
        return c.json(await deps.gateway.subscribe(caller.id, req, { via: via(c) }));
      }
      case "push": {
        const caller = authenticateApp(c, deps.apps, pathApp);
        const messages = parsePushMessages(value, deps.now());
        return c.json(await deps.gateway.push(caller.id, messages, { via: via(c) }));
      }
      default:
        throw new RelayError(400, "unknown-operation", `Unknown operation: ${op.slice(0, 64)}`);
    }
  };

  /** Answers of the relaying path (the upstream's own, or a 502/504/508) go out as they are. */
  const answered = async (c: Context, pathApp: string | undefined) => {
    try {
      return await handle(c, pathApp);
    } catch (err) {
      if (!(err instanceof UpstreamAnswer)) throw err;
      return c.json(err.body, err.status as ContentfulStatusCode, err.headers);
    }
  };

  app.post("/gateway", (c) => answered(c, undefined));
  app.post("/gateway/:app", (c) => answered(c, c.req.param("app")));
  app.get("/transports", (c) => c.json(deps.gateway.bootstrap()));
  return app;
}
