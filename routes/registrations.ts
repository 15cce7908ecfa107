/**
 * `POST /registrations` and `DELETE /registrations/{client-id}` (README "The client API"):
 * the request's JSON into a typed request for lib/registrations.ts, or a `400`.
 *
 * @module
 */

import { Hono } from "hono";
import { RelayError } from "../lib/errors.ts";
import type { RegistrationRequest } from "../lib/registrations.ts";
import type { TransportId } from "../lib/model.ts";
import type { AppDeps } from "./mod.ts";
import { parseBearer, unauthorized } from "./auth.ts";
import { isPlainObject, readJson } from "./body.ts";
import { clientAddress } from "./client_address.ts";
import { rateLimit } from "./rate_limit.ts";

const MAX_ENDPOINT_CHARS = 4096;

function invalidRequest(message: string): RelayError {
  return new RelayError(400, "invalid-request", message);
}

/** The body of `POST /registrations` as a typed request (shapes only; lib checks the rest). */
function parseRegistration(body: unknown, transportOf: (v: string) => TransportId | null) {
  if (!isPlainObject(body)) throw invalidRequest("The body must be a JSON object");
  if (typeof body.transport !== "string") throw invalidRequest("transport must be a string");
  const transport = transportOf(body.transport);
  if (!transport) {
    throw new RelayError(
      400,
      "unknown-transport",
      `Unknown or disabled transport: ${body.transport.slice(0, 200)}`,
    );
  }
  if (body.ingress !== undefined && typeof body.ingress !== "boolean") {
    throw invalidRequest("ingress must be a boolean");
  }
  const ingressKey = body["ingress-vapid-public-key"];
  if (ingressKey !== undefined) {
    if (body.ingress !== true) {
      throw invalidRequest('ingress-vapid-public-key needs "ingress": true');
    }
    if (typeof ingressKey !== "string") {
      throw invalidRequest("ingress-vapid-public-key must be a base64url 65-byte P-256 point");
    }
  }
  const req: RegistrationRequest = {
    transport,
    ingress: body.ingress === true,
    ...(typeof ingressKey === "string" ? { ingressVapidKey: ingressKey } : {}),
    ...(body.payload !== undefined ? { payload: body.payload } : {}),
  };
  if (transport === "web-push") {
    const sub = body.subscription;
    const keys = isPlainObject(sub) ? sub.keys : undefined;
    if (!isPlainObject(sub) || typeof sub.endpoint !== "string" || !isPlainObject(keys)) {
      throw new RelayError(
        400,
        "invalid-subscription",
        "subscription must be PushSubscription.toJSON(): {endpoint, keys: {p256dh, auth}}",
      );
    }
    if (sub.endpoint.length > MAX_ENDPOINT_CHARS) {
      throw new RelayError(
        400,
        "invalid-subscription",
        `endpoint is longer than ${MAX_ENDPOINT_CHARS} characters`,
      );
    }
    req.subscription = { endpoint: sub.endpoint, p256dh: keys.p256dh, auth: keys.auth };
  } else {
    req.token = body.token;
    req.environment = body.environment;
  }
  return req;
}

export function registrationRoutes(deps: AppDeps): Hono {
  const app = new Hono();
  const transportOf = (value: string): TransportId | null =>
    deps.transports.find((t) => t.id === value || t.uri === value)?.id ?? null;
  const limit = deps.config.registrationRateLimit;

  app.post(
    "/registrations",
    // Per client address, before any other work.
    rateLimit({
      limit,
      subject: (c) => `reg:${clientAddress(c, { header: deps.config.clientIpHeader })}`,
      hit: deps.hit,
      now: deps.now,
      message: `More than ${limit} registrations a minute from this address`,
    }),
    async function register(c) {
      const req = parseRegistration(await readJson(c), transportOf);
      return c.json(await deps.registrations.register(req), 201);
    },
  );

  app.delete("/registrations/:clientId", async function unregister(c) {
    const clientData = parseBearer(c.req.header("authorization"));
    if (clientData === null) throw unauthorized("Authorization: Bearer <client-data> is required");
    await deps.registrations.unregister(c.req.param("clientId"), clientData);
    return c.body(null, 204);
  });
  return app;
}
