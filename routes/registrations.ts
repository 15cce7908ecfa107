/**
 * `POST /registrations` and `DELETE /registrations/{client-id}` (CONTRACT §2).
 *
 * @module
 */

import { Hono } from "hono";
import type { Context } from "hono";
import type { AppDeps } from "./mod.ts";
import { isPlainObject, readJson } from "./body.ts";
import { RelayError } from "../lib/errors.ts";
import { isP256Point, validateSubscriptionKeys } from "../lib/crypto/ece.ts";
import { endpointRefusal } from "../lib/targets.ts";
import { validateFcmToken } from "../lib/transports/fcm.ts";
import { validateApnsEnvironment, validateApnsToken } from "../lib/transports/apns.ts";
import type { Target, TransportId } from "../lib/transports/types.ts";
import { decodeBase64Url } from "../lib/encoding.ts";

const MAX_ENDPOINT_CHARS = 4096;

function remoteAddress(c: Context): string {
  const env = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  return env?.remoteAddr?.hostname ?? "unknown";
}

export function registrationRoutes(deps: AppDeps): Hono {
  const app = new Hono();

  const transportId = (value: unknown): TransportId | null => {
    if (typeof value !== "string") return null;
    const info = deps.transports.find((t) => t.id === value || t.uri === value);
    return info?.id ?? null;
  };

  app.post("/registrations", async (c) => {
    // Rate limit per client address before doing any work (CONTRACT §2).
    const limit = deps.config.registrationRateLimit;
    if (limit > 0) {
      const now = deps.now();
      const window = Math.floor(now / 60_000);
      const count = await deps.store.hit(`reg:${remoteAddress(c)}`, window);
      if (count > limit) {
        const retryAfter = Math.max(1, Math.ceil(((window + 1) * 60_000 - now) / 1000));
        throw new RelayError(
          429,
          "rate-limited",
          `More than ${limit} registrations a minute from this address`,
          {},
          {
            "Retry-After": String(retryAfter),
          },
        );
      }
    }
    const body = await readJson(c);
    if (!isPlainObject(body)) {
      throw new RelayError(400, "invalid-request", "The body must be a JSON object");
    }
    if (typeof body.transport !== "string") {
      throw new RelayError(400, "invalid-request", "transport must be a string");
    }
    const id = transportId(body.transport);
    if (!id) {
      throw new RelayError(
        400,
        "unknown-transport",
        `Unknown or disabled transport: ${body.transport.slice(0, 200)}`,
      );
    }
    if (body.ingress !== undefined && typeof body.ingress !== "boolean") {
      throw new RelayError(400, "invalid-request", "ingress must be a boolean");
    }
    const ingressKey = body["ingress-vapid-public-key"];
    if (ingressKey !== undefined) {
      if (body.ingress !== true) {
        throw new RelayError(
          400,
          "invalid-request",
          'ingress-vapid-public-key needs "ingress": true',
        );
      }
      let ok = false;
      try {
        // RFC 8292 §3.2: an uncompressed P-256 point (a 65-byte string that is not one would
        // make every message to the push resource fail VAPID).
        ok = typeof ingressKey === "string" && isP256Point(decodeBase64Url(ingressKey));
      } catch { /* refused below */ }
      if (!ok) {
        throw new RelayError(
          400,
          "invalid-request",
          "ingress-vapid-public-key must be a base64url 65-byte P-256 point",
        );
      }
    }

    let target: Target;
    if (id === "web-push") {
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
      const check = await validateSubscriptionKeys({ p256dh: keys.p256dh, auth: keys.auth });
      if (!check.ok) {
        throw new RelayError(
          400,
          "invalid-subscription",
          `Invalid subscription keys: ${check.reason}`,
        );
      }
      const refusal = await endpointRefusal(sub.endpoint, {
        allowPrivate: deps.config.allowPrivateEndpoints,
        resolve: deps.resolve,
      });
      if (refusal) {
        throw new RelayError(400, "endpoint-not-allowed", `Endpoint refused: ${refusal}`);
      }
      target = {
        transport: "web-push",
        endpoint: sub.endpoint,
        p256dh: keys.p256dh as string,
        auth: keys.auth as string,
      };
    } else if (id === "fcm") {
      const token = validateFcmToken(body.token);
      if (token === null) {
        throw new RelayError(
          400,
          "invalid-token",
          "An FCM token must be 1 to 4096 printable characters",
        );
      }
      target = { transport: "fcm", token };
    } else {
      const token = validateApnsToken(body.token);
      const environment = validateApnsEnvironment(body.environment);
      if (token === null || environment === null) {
        throw new RelayError(
          400,
          "invalid-token",
          "An APNs token must be an even number (64 or more) of hex digits, and environment production or sandbox",
        );
      }
      target = { transport: "apns", token, environment };
    }
    const result = await deps.registrations.register(target, {
      ingress: body.ingress === true,
      ...(typeof ingressKey === "string" ? { ingressVapidKey: ingressKey } : {}),
    });
    return c.json(result, 201);
  });

  app.delete("/registrations/:clientId", async (c) => {
    const header = c.req.header("authorization");
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      throw new RelayError(
        401,
        "unauthorized",
        "Authorization: Bearer <client-data> is required",
        {},
        {
          "WWW-Authenticate": 'Bearer realm="dav-push-relay"',
        },
      );
    }
    await deps.registrations.unregister(c.req.param("clientId"), m[1]!);
    return c.body(null, 204);
  });
  return app;
}
