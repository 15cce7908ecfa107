/**
 * `POST /gateway` and `POST /gateway/{app}` (README "The gateway protocol"): one handler
 * dispatching on the body's single top-level member, and `GET /transports`.
 *
 * @module
 */

import { type Context, Hono } from "hono";
import type { AppDeps } from "./mod.ts";
import { authenticateApp } from "./auth.ts";
import { isPlainObject, readJson } from "./body.ts";
import { RelayError } from "../lib/errors.ts";
import { parsePushMessages, parsePushSubscribe } from "./validate.ts";

export function gatewayRoutes(deps: AppDeps): Hono {
  const app = new Hono();

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
        return c.json(await deps.gateway.subscribe(caller.id, req));
      }
      case "push": {
        const caller = authenticateApp(c, deps.apps, pathApp);
        const messages = parsePushMessages(value, deps.now());
        return c.json(await deps.gateway.push(caller.id, messages));
      }
      default:
        throw new RelayError(400, "unknown-operation", `Unknown operation: ${op.slice(0, 64)}`);
    }
  };

  app.post("/gateway", (c) => handle(c, undefined));
  app.post("/gateway/:app", (c) => handle(c, c.req.param("app")));
  app.get("/transports", (c) => c.json(deps.gateway.bootstrap()));
  return app;
}
