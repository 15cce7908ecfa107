/**
 * Web Push ingress (CONTRACT §2.1): the relay as an RFC 8030 push service towards WebDAV-Push
 * servers (Nextcloud dav_push, RustiCal, Xandikos), which deliver only over Web Push. A
 * registration made with `"ingress": true` gets a push resource `<RELAY_PUBLIC_URL>/push/<id>`;
 * what a server `POST`s there is forwarded, still encrypted, over the registration's own
 * transport (Web Push, FCM, APNs) through the normal delivery path.
 *
 * - The id is 24 random bytes (192 bits, base64url): it reveals nothing about the device and
 *   cannot be guessed or enumerated. It is a capability, so it is never logged.
 * - The relay never decrypts: it checks only that the body can carry an RFC 8188 `aes128gcm`
 *   header with the RFC 8291 sender key, and forwards the bytes unchanged.
 * - RFC 8030 §5.4 replacement: the newest accepted message per (client, Topic) is indexed in
 *   the store; a queued (not yet delivered) older message with the same Topic is dropped when
 *   its turn comes ({@linkcode ingressSuperseded}, called by the delivery engine). The Topic
 *   also goes out as the Web Push `Topic`, the FCM `collapse_key` and the `apns-collapse-id`,
 *   so the push services replace what they still hold too.
 *
 * @module
 */

import { MAX_TTL } from "./config.ts";
import { isP256Point } from "./crypto/ece.ts";
import type { DeliveryEngine } from "./delivery.ts";
import { decodeBase64Url, encodeBase64Url, randomToken, utf8 } from "./encoding.ts";
import { RelayError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { QueuedDelivery, Registration, Store } from "./store.ts";
import type { Clock } from "./time.ts";
import { APNS_MAX_PAYLOAD_BYTES, apnsPayload } from "./transports/apns.ts";
import { fcmData } from "./transports/fcm.ts";
import type { OutboundMessage, Urgency } from "./transports/types.ts";

/** RFC 8030 §7.2 / CONTRACT §2.1: push services accept bodies of at least 4096 bytes; we take no more. */
export const MAX_INGRESS_BODY_BYTES = 4096;

/**
 * RFC 8188 §2.1 header: salt (16) + rs (4) + idlen (1) + keyid; RFC 8291 §4 puts the sender's
 * 65-byte uncompressed P-256 point in keyid, so the header is 86 bytes.
 */
const AES128GCM_HEADER_BYTES = 16 + 4 + 1 + 65;

/**
 * The shortest body that can be an RFC 8291 message: the 86-byte header plus one record,
 * which holds at least the padding delimiter octet (RFC 8188 §2: every record carries one)
 * encrypted, followed by the 16-byte AEAD_AES_128_GCM tag: 86 + 1 + 16 = 103 (an empty
 * plaintext). Anything shorter cannot be decrypted by any receiver.
 */
export const MIN_INGRESS_BODY_BYTES = AES128GCM_HEADER_BYTES + 1 + 16;

/** CONTRACT §2.1: TTLs above 28 days are lowered to 28 days. */
const MAX_INGRESS_TTL = MAX_TTL;

/**
 * RFC 8030 §5.3 Urgency → CC/CD 70025 priority, chosen in the middle of each band of
 * `urgencyFor()` (CONTRACT §1.3), so the urgency survives the round trip to Web Push unchanged,
 * and only `high` becomes FCM `high` priority (75-100).
 */
export const URGENCY_PRIORITY: Readonly<Record<Urgency, number>> = {
  "very-low": 10,
  low: 30,
  normal: 50,
  high: 90,
};

/** Accepted messages per push resource per minute; above it `429` with `Retry-After`. */
export const DEFAULT_INGRESS_RATE_PER_MINUTE = 120;

/** RFC 8292 §2: a VAPID JWT's `exp` is at most 24 h after the request. */
const VAPID_MAX_LIFETIME_MS = 24 * 3600_000;
/** Clock skew tolerated on the 24 h bound only (an expired JWT is always refused). */
const VAPID_SKEW_MS = 60_000;

/**
 * FCM's data-message limit is 4096 bytes; Google counts keys and values plus a fixed envelope
 * (measured: a single-field message fits at most 4051 key+value bytes, each further field costs
 * its key and 6 more bytes). The relay refuses at ingress what FCM would refuse later.
 */
const FCM_MAX_DATA_BYTES = 4096;
const FCM_ENVELOPE_BYTES = 45;
const FCM_FIELD_OVERHEAD_BYTES = 6;

/** RFC 8030 §5.4: a Topic is 1 to 32 characters of the URL-safe base64 alphabet. */
const TOPIC_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;
/** Ingress ids are 32 base64url characters; other shapes are never looked up. */
const ID_PATTERN = /^[A-Za-z0-9_-]{16,64}$/;
/** Topic index entries outlive any message they can replace (TTLs are at most 28 days). */
const TOPIC_INDEX_LIFETIME_MS = MAX_INGRESS_TTL * 1000;

// --- header and body checks (pure) ---------------------------------------------------------

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
  if (!TOPIC_PATTERN.test(topic)) {
    throw new RelayError(
      400,
      "invalid-topic",
      "Topic must be 1 to 32 characters of the URL-safe base64 alphabet (RFC 8030 §5.4)",
    );
  }
  return topic;
}

/** True when `Content-Encoding` is exactly `aes128gcm` (RFC 8188 §2, RFC 8291 §4). */
export function isAes128gcm(value: string | undefined): boolean {
  return value !== undefined && value.trim().toLowerCase() === "aes128gcm";
}

/**
 * RFC 8291 §4 / CONTRACT §2.1: only aes128gcm bodies; the relay never sees plaintext.
 *
 * @throws {RelayError} 415 `unsupported-content-encoding` for any other Content-Encoding
 */
export function checkContentEncoding(value: string | undefined): void {
  if (isAes128gcm(value)) return;
  throw new RelayError(
    415,
    "unsupported-content-encoding",
    `Content-Encoding must be aes128gcm, got ${
      value === undefined ? "none" : `"${value.trim().slice(0, 40)}"`
    }`,
  );
}

/** @throws {RelayError} 400 `invalid-encryption` when `body` has no valid aes128gcm header */
export function checkAes128gcm(body: Uint8Array): void {
  const problem = aes128gcmProblem(body);
  if (problem) throw new RelayError(400, "invalid-encryption", problem);
}

/**
 * Returns why `body` cannot be an RFC 8291 `aes128gcm` message, or null when its header is
 * well-formed. Only the unencrypted header is read; the relay never decrypts.
 */
export function aes128gcmProblem(body: Uint8Array): string | null {
  if (body.length < MIN_INGRESS_BODY_BYTES) {
    return `The body is ${body.length} bytes; an aes128gcm message has at least ${MIN_INGRESS_BODY_BYTES} (86-byte header, delimiter, 16-byte tag)`;
  }
  const rs = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(16);
  // RFC 8188 §2.1: a record needs the delimiter octet and the 16-byte tag, so rs >= 18.
  if (rs < 18) return `The aes128gcm record size is ${rs}; it must be at least 18`;
  // RFC 8291 §4: keyid is the sender's 65-byte uncompressed P-256 point.
  if (body[20] !== 65 || body[21] !== 0x04) {
    return "The aes128gcm keyid must be the sender's 65-byte uncompressed P-256 key (RFC 8291 §4)";
  }
  return null;
}

/**
 * The size of `body` once wrapped for the registration's transport, and that transport's limit,
 * or null when the transport sends the body as is (Web Push).
 */
export function forwardedSize(
  transport: Registration["target"]["transport"],
  body: Uint8Array,
): { size: number; limit: number } | null {
  const message: OutboundMessage = {
    payload: { kind: "encrypted", body },
    ttl: 0,
    urgency: "normal",
    priority: 50,
  };
  if (transport === "apns") {
    // CONTRACT §2.1: APNs payloads are at most 4 KiB once encoded.
    const size = utf8(JSON.stringify(apnsPayload(message))).length;
    return { size, limit: APNS_MAX_PAYLOAD_BYTES };
  }
  if (transport === "fcm") {
    const fields = Object.entries(fcmData(message));
    let size = FCM_ENVELOPE_BYTES + FCM_FIELD_OVERHEAD_BYTES * (fields.length - 1);
    for (const [k, v] of fields) size += utf8(k).length + utf8(v).length;
    return { size, limit: FCM_MAX_DATA_BYTES };
  }
  return null;
}

// --- VAPID (RFC 8292) ------------------------------------------------------------------------

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

type VapidCheck =
  | { ok: true; publicKey: Uint8Array }
  | { ok: false; reason: string };

function decodeJson(part: string): Record<string, unknown> | null {
  try {
    const value = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(decodeBase64Url(part)),
    );
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/**
 * Verifies a VAPID `Authorization` header (RFC 8292): an ES256 JWT signed by the key in `k`,
 * whose `aud` is `audience` (our origin, RFC 8292 §2) and whose `exp` lies in the future but
 * no more than 24 hours ahead. Returns the signer's public key; whether it is the key the
 * subscription is restricted to is the caller's question (RFC 8292 §4.2).
 */
async function verifyVapid(
  header: string | undefined,
  options: {
    audience: string;
    now: number;
    importKey: (raw: Uint8Array) => Promise<CryptoKey | null>;
  },
): Promise<VapidCheck> {
  if (header === undefined) return { ok: false, reason: "missing Authorization: vapid" };
  const parsed = parseVapidAuthorization(header);
  if (!parsed) return { ok: false, reason: "not a vapid t=..., k=... header" };
  let publicKey: Uint8Array;
  try {
    publicKey = decodeBase64Url(parsed.k);
  } catch {
    return { ok: false, reason: "k is not base64url" };
  }
  if (!isP256Point(publicKey)) {
    return { ok: false, reason: "k is not an uncompressed P-256 point" };
  }
  const parts = parsed.t.split(".");
  if (parts.length !== 3) return { ok: false, reason: "t is not a compact JWS" };
  const [h, p, s] = parts as [string, string, string];
  const jwtHeader = decodeJson(h);
  const claims = decodeJson(p);
  if (!jwtHeader || !claims) return { ok: false, reason: "t is not a JWT" };
  if (jwtHeader.alg !== "ES256") return { ok: false, reason: "the JWT alg is not ES256" };
  let signature: Uint8Array;
  try {
    signature = decodeBase64Url(s);
  } catch {
    return { ok: false, reason: "the JWT signature is not base64url" };
  }
  if (signature.length !== 64) return { ok: false, reason: "the JWT signature is not 64 bytes" };
  const key = await options.importKey(publicKey);
  if (!key) return { ok: false, reason: "k cannot be imported" };
  const valid = await crypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    key,
    signature as BufferSource,
    utf8(`${h}.${p}`) as BufferSource,
  );
  if (!valid) return { ok: false, reason: "the JWT signature does not verify with k" };
  // RFC 8292 §2: aud is the origin of the push resource.
  const aud = claims.aud;
  if (aud !== options.audience && aud !== `${options.audience}/`) {
    return { ok: false, reason: "the JWT aud is not this relay's origin" };
  }
  const exp = claims.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp)) {
    return { ok: false, reason: "the JWT has no numeric exp" };
  }
  if (exp * 1000 <= options.now) return { ok: false, reason: "the JWT has expired" };
  if (exp * 1000 > options.now + VAPID_MAX_LIFETIME_MS + VAPID_SKEW_MS) {
    return { ok: false, reason: "the JWT exp is more than 24 hours ahead" };
  }
  return { ok: true, publicKey };
}

async function importVerifyKey(raw: Uint8Array): Promise<CryptoKey | null> {
  try {
    return await crypto.subtle.importKey(
      "raw",
      raw as BufferSource,
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["verify"],
    );
  } catch {
    return null;
  }
}

// --- replacement (RFC 8030 §5.4) -------------------------------------------------------------

/**
 * The delivery engine's hook: true when `d` is an ingress message whose Topic has since been
 * used by a newer accepted message for the same client, so `d` must not be sent (RFC 8030
 * §5.4: a newer message with the same Topic replaces an undelivered one). Compares acceptance
 * times, which retries keep (`createdAt`), so a message never replaces itself.
 */
export async function ingressSuperseded(store: Store, d: QueuedDelivery): Promise<boolean> {
  if (d.reason !== "ingress" || d.collapseKey === undefined) return false;
  const newest = await store.getIngressTopic(d.clientId, d.collapseKey);
  return newest !== null && newest > d.createdAt;
}

// --- the push resource -------------------------------------------------------------------------

export interface IngressOptions {
  store: Store;
  engine: DeliveryEngine;
  /** `RELAY_PUBLIC_URL`: the base of push-resource URLs; its origin is the VAPID `aud`. */
  publicUrl: string;
  now: Clock;
  logger: Logger;
  /** Accepted messages per push resource per minute. @default 120 */
  ratePerMinute?: number;
}

/** One validated message for a push resource. */
export interface IngressMessage {
  body: Uint8Array;
  /** Seconds, already capped at 28 days. */
  ttl: number;
  urgency: Urgency;
  topic?: string;
}

/** The push-resource side of the ingress; `routes/ingress.ts` calls it step by step. */
export class Ingress {
  /** The VAPID `aud` every restricted message must carry (RFC 8292 §2). */
  readonly audience: string;
  readonly ratePerMinute: number;
  private readonly keys = new Map<string, Promise<CryptoKey | null>>();

  constructor(private readonly o: IngressOptions) {
    this.audience = new URL(o.publicUrl).origin;
    this.ratePerMinute = o.ratePerMinute ?? DEFAULT_INGRESS_RATE_PER_MINUTE;
  }

  /**
   * The registration behind a push resource id.
   *
   * @throws {RelayError} 404 for an id the relay never issued; 410 when its registration was
   * deleted, revoked or pruned (RFC 8030 §7.3: the application server drops the subscription)
   */
  async resolve(id: string): Promise<Registration> {
    const notFound = () => new RelayError(404, "not-found", "No such push resource");
    if (!ID_PATTERN.test(id)) throw notFound();
    const entry = await this.o.store.getIngress(id);
    if (!entry) throw notFound();
    const reg = entry.gone ? null : await this.o.store.getRegistration(entry.clientId);
    // A device that registered again without "ingress" no longer has this push resource.
    if (!reg || reg.ingress?.id !== id) {
      throw new RelayError(410, "gone", "This push resource is gone; drop the subscription");
    }
    return reg;
  }

  /**
   * CONTRACT §2.1: a body that would exceed the transport's payload limit once wrapped (APNs
   * 4 KiB; FCM's 4096-byte data limit likewise) is refused now rather than lost later.
   *
   * @throws {RelayError} 413
   */
  checkForwardable(reg: Registration, body: Uint8Array): void {
    const wrapped = forwardedSize(reg.target.transport, body);
    if (wrapped && wrapped.size > wrapped.limit) {
      throw new RelayError(
        413,
        "payload-too-large",
        `The body is too large for this device's push service: ${wrapped.size} bytes once encoded, limit ${wrapped.limit}`,
      );
    }
  }

  /**
   * RFC 8292 for a restricted push resource. Unrestricted resources ignore `Authorization`.
   *
   * @returns `"ok"`, or `"other-key"` for a valid JWT of a key other than the registered one
   * (the caller answers 403 after the 400 checks, CONTRACT §3 order)
   * @throws {RelayError} 401 when the header is missing or invalid
   */
  async checkVapid(reg: Registration, header: string | undefined): Promise<"ok" | "other-key"> {
    const registered = reg.ingress?.vapidPublicKey;
    if (registered === undefined) return "ok";
    const check = await verifyVapid(header, {
      audience: this.audience,
      now: this.o.now(),
      importKey: (raw) => this.importKey(raw),
    });
    if (!check.ok) {
      this.o.logger.log("info", "ingress.vapid_refused", {
        client: reg.clientId,
        reason: check.reason,
      });
      throw new RelayError(
        401,
        "invalid-vapid",
        `This push resource requires VAPID (RFC 8292): ${check.reason}`,
        {},
        { "WWW-Authenticate": "vapid" },
      );
    }
    return bytesEqual(check.publicKey, decodeBase64Url(registered)) ? "ok" : "other-key";
  }

  private importKey(raw: Uint8Array): Promise<CryptoKey | null> {
    const id = encodeBase64Url(raw);
    let key = this.keys.get(id);
    if (!key) {
      if (this.keys.size >= 256) this.keys.delete(this.keys.keys().next().value!);
      key = importVerifyKey(raw);
      this.keys.set(id, key);
    }
    return key;
  }

  /**
   * At most `ratePerMinute` accepted messages per push resource in each clock minute.
   *
   * @throws {RelayError} 429 with `Retry-After` (seconds to the next minute)
   */
  async rateLimit(reg: Registration): Promise<void> {
    if (this.ratePerMinute <= 0) return;
    const now = this.o.now();
    const window = Math.floor(now / 60_000);
    const count = await this.o.store.hit(`ingress:${reg.clientId}`, window);
    if (count > this.ratePerMinute) {
      const retryAfter = Math.max(1, Math.ceil(((window + 1) * 60_000 - now) / 1000));
      throw new RelayError(
        429,
        "rate-limited",
        `More than ${this.ratePerMinute} messages a minute for this push resource`,
        {},
        { "Retry-After": String(retryAfter) },
      );
    }
  }

  /**
   * Records the message durably as one queued delivery and starts sending it at once
   * (CONTRACT §2.1: `201` once recorded). Returns the message's `Location` and the TTL used.
   */
  async accept(reg: Registration, m: IngressMessage): Promise<{ location: string; ttl: number }> {
    const acceptedAt = this.o.now();
    await this.o.engine.enqueueDirect(reg.clientId, { kind: "encrypted", body: m.body }, {
      reason: "ingress",
      priority: URGENCY_PRIORITY[m.urgency],
      ttl: m.ttl,
      ...(m.topic !== undefined ? { collapseKey: m.topic } : {}),
    });
    if (m.topic !== undefined) {
      // After the enqueue, so a failed enqueue never makes an older message look replaced.
      await this.o.store.markIngressTopic(
        reg.clientId,
        m.topic,
        acceptedAt,
        TOPIC_INDEX_LIFETIME_MS,
      );
    }
    this.o.logger.log("info", "ingress.accepted", {
      client: reg.clientId,
      transport: reg.target.transport,
      bytes: m.body.length,
      ttl: m.ttl,
      urgency: m.urgency,
      topic: m.topic !== undefined,
    });
    return {
      location: `${this.o.publicUrl}/push/${reg.ingress!.id}/messages/${randomToken(12)}`,
      ttl: m.ttl,
    };
  }
}
