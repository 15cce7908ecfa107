/**
 * Web Push ingress (README "Using the relay with WebDAV-Push servers"): the relay as an
 * RFC 8030 push service towards WebDAV-Push servers (Nextcloud dav_push, RustiCal, Xandikos),
 * which deliver only over Web Push. A registration made with `"ingress": true` gets a push
 * resource `<RELAY_PUBLIC_URL>/push/<id>`; what a server `POST`s there is forwarded, still
 * encrypted, over the registration's own transport (Web Push, FCM, APNs) through the normal
 * delivery path. routes/ingress.ts parses the request's headers; this module decides.
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
import { HEADER_BYTES } from "./crypto/ece_record.ts";
import { verifyVapid } from "./crypto/vapid.ts";
import { importVerifyKey } from "./crypto/vapid.ts";
import type { DeliveryEngine } from "./delivery/engine.ts";
import { bytesEqual, decodeBase64Url, encodeBase64Url, randomToken, utf8 } from "./encoding.ts";
import { RelayError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { QueuedDelivery, Registration } from "./model.ts";
import type { Store } from "./store/mod.ts";
import type { Clock } from "./time.ts";
import { APNS_MAX_PAYLOAD_BYTES, apnsPayload } from "./transports/apns.ts";
import { fcmData } from "./transports/fcm.ts";
import type { OutboundMessage, Urgency } from "./transports/types.ts";

/** RFC 8030 §7.2: push services accept bodies of at least 4096 bytes; we take no more. */
export const MAX_INGRESS_BODY_BYTES = 4096;

/** TTLs above 28 days are lowered to 28 days (README, Web Push ingress). */
export const MAX_INGRESS_TTL = MAX_TTL;

/**
 * The shortest body that can be an RFC 8291 message: the 86-byte header plus one record,
 * which holds at least the padding delimiter octet (RFC 8188 §2: every record carries one)
 * encrypted, followed by the 16-byte AEAD_AES_128_GCM tag: 86 + 1 + 16 = 103 (an empty
 * plaintext). Anything shorter cannot be decrypted by any receiver.
 */
export const MIN_INGRESS_BODY_BYTES = HEADER_BYTES + 1 + 16;

/**
 * RFC 8030 §5.3 Urgency → CC/CD 70025 priority, chosen in the middle of each band of
 * `urgencyFor()`, so the urgency survives the round trip to Web Push unchanged, and only
 * `high` becomes FCM `high` priority (75-100).
 */
export const URGENCY_PRIORITY: Readonly<Record<Urgency, number>> = {
  "very-low": 10,
  low: 30,
  normal: 50,
  high: 90,
};

/** Accepted messages per push resource per minute; above it `429` with `Retry-After`. */
export const DEFAULT_INGRESS_RATE_PER_MINUTE = 120;

/**
 * FCM's data-message limit is 4096 bytes; Google counts keys and values plus a fixed envelope
 * (measured: a single-field message fits at most 4051 key+value bytes, each further field costs
 * its key and 6 more bytes). The relay refuses at ingress what FCM would refuse later.
 */
const FCM_MAX_DATA_BYTES = 4096;
const FCM_ENVELOPE_BYTES = 45;
const FCM_FIELD_OVERHEAD_BYTES = 6;

/** Ingress ids are 32 base64url characters; other shapes are never looked up. */
const ID_PATTERN = /^[A-Za-z0-9_-]{16,64}$/;
/** Topic index entries outlive any message they can replace (TTLs are at most 28 days). */
const TOPIC_INDEX_LIFETIME_MS = MAX_INGRESS_TTL * 1000;

// --- body checks (pure) ---------------------------------------------------------------------

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
    // APNs payloads are at most 4 KiB once encoded.
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

// --- replacement (RFC 8030 §5.4) -------------------------------------------------------------

/**
 * The delivery engine's hook: true when `d` is an ingress message whose Topic has since been
 * used by a newer accepted message for the same client, so `d` must not be sent (RFC 8030
 * §5.4: a newer message with the same Topic replaces an undelivered one). Compares acceptance
 * times, which retries keep (`createdAt`), so a message never replaces itself.
 */
export async function ingressSuperseded(store: Store, d: QueuedDelivery): Promise<boolean> {
  if (d.reason !== "ingress" || d.collapseKey === undefined) return false;
  const newest = await store.ingress.topicAcceptedAt(d.clientId, d.collapseKey);
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

/** The push-resource side of the ingress; routes/ingress.ts calls it step by step. */
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
    const entry = await this.o.store.ingress.get(id);
    if (!entry) throw notFound();
    const reg = entry.gone ? null : await this.o.store.registrations.get(entry.clientId);
    // A device that registered again without "ingress" no longer has this push resource.
    if (!reg || reg.ingress?.id !== id) {
      throw new RelayError(410, "gone", "This push resource is gone; drop the subscription");
    }
    return reg;
  }

  /**
   * A body that would exceed the transport's payload limit once wrapped (APNs 4 KiB; FCM's
   * 4096-byte data limit likewise) is refused now rather than lost later.
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
   * RFC 8292 for a restricted push resource; unrestricted resources ignore `Authorization`.
   * `vapid` is the header's `t` and `k`, or a string saying why the header is not one.
   *
   * @returns `"ok"`, or `"other-key"` for a valid JWT of a key other than the registered one
   * (the caller answers 403 after the 400 checks)
   * @throws {RelayError} 401 when the header is missing or invalid
   */
  async checkVapid(
    reg: Registration,
    vapid: { t: string; k: string } | string,
  ): Promise<"ok" | "other-key"> {
    const registered = reg.ingress?.vapidPublicKey;
    if (registered === undefined) return "ok";
    const check = typeof vapid === "string"
      ? { ok: false as const, reason: vapid }
      : await verifyVapid(vapid, {
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

  /** Verification keys by `k`, so a server's key is imported once (at most 256 kept). */
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

  /** Counts one accepted message for the push resource in its rate-limit window. */
  hit(subject: string, window: number): Promise<number> {
    return this.o.store.limits.hit(subject, window);
  }

  /**
   * Records the message durably as one queued delivery and starts sending it at once
   * (`201` once recorded). Returns the message's `Location` and the TTL used.
   */
  async accept(reg: Registration, m: IngressMessage): Promise<{ location: string; ttl: number }> {
    const acceptedAt = this.o.now();
    await this.o.engine.enqueue(reg.clientId, { kind: "encrypted", body: m.body }, {
      reason: "ingress",
      priority: URGENCY_PRIORITY[m.urgency],
      ttl: m.ttl,
      ...(m.topic !== undefined ? { collapseKey: m.topic } : {}),
    });
    if (m.topic !== undefined) {
      // After the enqueue, so a failed enqueue never makes an older message look replaced.
      await this.o.store.ingress.markTopic(
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
