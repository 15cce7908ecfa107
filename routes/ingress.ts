/**
 * `POST /push/{id}`: the RFC 8030 push resource of the Web Push ingress (CONTRACT §2.1).
 *
 * Checks run in the CONTRACT §3 order, after the resource itself: `404`/`410` (unknown or gone
 * push resource), `415` (Content-Encoding other than aes128gcm; Content-Type is never looked
 * at: servers send application/octet-stream, application/xml or nothing), `413` (over 4096
 * bytes, or too large for the device's push service), `400` (too short for an aes128gcm header),
 * `401` (VAPID missing or invalid), `400` (TTL, Urgency, Topic), `403` (VAPID of another key),
 * `429` (flood), then `201 Created` with `Location` and `TTL`.
 *
 * @module
 */

import { Hono } from "hono";
import { RelayError } from "../lib/errors.ts";
import {
  checkAes128gcm,
  checkContentEncoding,
  type Ingress,
  MAX_INGRESS_BODY_BYTES,
  parseTopic,
  parseTtl,
  parseUrgency,
} from "../lib/ingress.ts";
import { readBodyLimited } from "./body.ts";

export function ingressRoutes(ingress: Ingress): Hono {
  const app = new Hono();

  app.post("/push/:id", async function pushResource(c) {
    const reg = await ingress.resolve(c.req.param("id"));

    checkContentEncoding(c.req.header("content-encoding"));
    const body = await readBodyLimited(c.req.raw, MAX_INGRESS_BODY_BYTES);
    ingress.checkForwardable(reg, body);
    checkAes128gcm(body);

    const vapid = await ingress.checkVapid(reg, c.req.header("authorization"));
    const ttl = parseTtl(c.req.header("ttl"));
    const urgency = parseUrgency(c.req.header("urgency"));
    const topic = parseTopic(c.req.header("topic"));
    if (vapid === "other-key") {
      // RFC 8292 §4.2: the subscription is restricted to another application server's key.
      throw new RelayError(
        403,
        "vapid-key-mismatch",
        "This push resource is restricted to another VAPID key",
      );
    }

    await ingress.rateLimit(reg);
    const accepted = await ingress.accept(reg, {
      body,
      ttl,
      urgency,
      ...(topic !== undefined ? { topic } : {}),
    });
    // RFC 8030 §5: 201 with the push message's URI; §5.2: TTL says the value used.
    return c.body(null, 201, { Location: accepted.location, TTL: String(accepted.ttl) });
  });

  return app;
}
