/**
 * `POST /push/{id}`: the RFC 8030 push resource of the Web Push ingress (README "Using the
 * relay with WebDAV-Push servers"). This module parses the request's headers; lib/ingress.ts
 * decides.
 *
 * Checks run in the README's error order, after the resource itself: `404`/`410` (unknown or
 * gone push resource), `415` (Content-Encoding other than aes128gcm; Content-Type is never
 * looked at: servers send application/octet-stream, application/xml or nothing), `413` (over
 * 4096 bytes, or too large for the device's push service), `400` (too short for an aes128gcm
 * header), `401` (VAPID missing or invalid), `400` (TTL, Urgency, Topic), `403` (VAPID of
 * another key), `429` (flood), then `201 Created` with `Location` and `TTL`.
 *
 * @module
 */

import { Hono } from "hono";
import { RelayError } from "../lib/errors.ts";
import {
  checkAes128gcm,
  type Ingress,
  type IngressMessage,
  MAX_INGRESS_BODY_BYTES,
  MAX_INGRESS_TTL,
} from "../lib/ingress.ts";
import type { Registration } from "../lib/model.ts";
import { isPushTopic } from "../lib/rfc8030.ts";
import type { Clock } from "../lib/time.ts";
import type { Urgency } from "../lib/transports/types.ts";
import { readBodyLimited } from "./body.ts";
import { rateLimit } from "./rate_limit.ts";

/**
 * Parses the RFC 8030 §5.2 `TTL` header: required, delta-seconds; values over 28 days are
 * lowered to 28 days.
 *
 * @throws {RelayError} 400 when it is missing or not a non-negative integer
 */
export function parseTtl(value: string | undefined): number {
  if (value === undefined) {
    throw new RelayError(400, "missing-ttl", "The TTL header is required (RFC 8030 §5.2)");
  }
  const trimmed = value.trim();
  if (!/^\d{1,20}$/.test(trimmed)) {
    throw new RelayError(
      400,
      "invalid-ttl",
      `TTL must be a whole number of seconds, got "${trimmed.slice(0, 40)}"`,
    );
  }
  return Math.min(MAX_INGRESS_TTL, Number(trimmed));
}

/**
 * Parses the RFC 8030 §5.3 `Urgency` header; absent means `normal`.
 *
 * @throws {RelayError} 400 for a value other than very-low, low, normal or high
 */
export function parseUrgency(value: string | undefined): Urgency {
  if (value === undefined) return "normal";
  const u = value.trim().toLowerCase();
  if (u === "very-low" || u === "low" || u === "normal" || u === "high") return u;
  throw new RelayError(
    400,
    "invalid-urgency",
    `Urgency must be very-low, low, normal or high, got "${value.trim().slice(0, 40)}"`,
  );
}

/**
 * Parses the RFC 8030 §5.4 `Topic` header; absent means no replacement.
 *
 * @throws {RelayError} 400 unless it is 1 to 32 base64url characters
 */
export function parseTopic(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const topic = value.trim();
  if (!isPushTopic(topic)) {
    throw new RelayError(
      400,
      "invalid-topic",
      "Topic must be 1 to 32 characters of the URL-safe base64 alphabet (RFC 8030 §5.4)",
    );
  }
  return topic;
}

/**
 * RFC 8291 §4: only aes128gcm bodies; the relay never sees plaintext.
 *
 * @throws {RelayError} 415 `unsupported-content-encoding` for any other Content-Encoding
 */
export function checkContentEncoding(value: string | undefined): void {
  if (value !== undefined && value.trim().toLowerCase() === "aes128gcm") return;
  throw new RelayError(
    415,
    "unsupported-content-encoding",
    `Content-Encoding must be aes128gcm, got ${
      value === undefined ? "none" : `"${value.trim().slice(0, 40)}"`
    }`,
  );
}

/** The `t` and `k` parameters of `Authorization: vapid t=..., k=...` (RFC 8292 §3). */
export function parseVapidAuthorization(header: string): { t: string; k: string } | null {
  const m = /^\s*vapid\s+(.+)$/is.exec(header);
  if (!m) return null;
  const params = new Map<string, string>();
  for (const part of m[1]!.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) return null;
    const name = part.slice(0, eq).trim().toLowerCase();
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
      value = value.slice(1, -1);
    }
    if (!name || !value || params.has(name)) return null;
    params.set(name, value);
  }
  const t = params.get("t");
  const k = params.get("k");
  return t && k ? { t, k } : null;
}

/** The VAPID parameters of a request, or why it has none. */
function vapidOf(header: string | undefined): { t: string; k: string } | string {
  if (header === undefined) return "missing Authorization: vapid";
  return parseVapidAuthorization(header) ?? "not a vapid t=..., k=... header";
}

type Vars = { Variables: { registration: Registration; message: IngressMessage } };

export function ingressRoutes(ingress: Ingress, now: Clock): Hono<Vars> {
  const app = new Hono<Vars>();

  app.post(
    "/push/:id",
    async function parsePushMessage(c, next) {
      const reg = await ingress.resolve(c.req.param("id"));
      checkContentEncoding(c.req.header("content-encoding"));
      const body = await readBodyLimited(c.req.raw, MAX_INGRESS_BODY_BYTES);
      ingress.checkForwardable(reg, body);
      checkAes128gcm(body);
      const vapid = await ingress.checkVapid(reg, vapidOf(c.req.header("authorization")));
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
      c.set("registration", reg);
      c.set("message", { body, ttl, urgency, ...(topic !== undefined ? { topic } : {}) });
      await next();
    },
    rateLimit({
      limit: ingress.ratePerMinute,
      subject: (c) => `ingress:${(c.get("registration") as Registration).clientId}`,
      hit: (subject, window) => ingress.hit(subject, window),
      now,
      message: `More than ${ingress.ratePerMinute} messages a minute for this push resource`,
    }),
    async function acceptPushMessage(c) {
      const accepted = await ingress.accept(c.get("registration"), c.get("message"));
      // RFC 8030 §5: 201 with the push message's URI; §5.2: TTL says the value used.
      return c.body(null, 201, { Location: accepted.location, TTL: String(accepted.ttl) });
    },
  );

  return app;
}
