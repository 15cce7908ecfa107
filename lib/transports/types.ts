/**
 * The one interface every push service sits behind (Web Push, FCM, APNs). A transport knows
 * nothing about apps or topics: it gets a target (where the device is) and an outbound
 * message (what to send), makes one request, and classifies the answer.
 *
 * @module
 */

/** Short transport ids, as used in `POST /registrations` and in transport-uris. */
export type TransportId = "web-push" | "fcm" | "apns";

export const TRANSPORT_IDS: readonly TransportId[] = ["web-push", "fcm", "apns"];

/** A Web Push subscription, as `PushSubscription.toJSON()` gives it. */
export interface WebPushTarget {
  transport: "web-push";
  endpoint: string;
  /** base64url, 65-byte uncompressed P-256 point. */
  p256dh: string;
  /** base64url, 16 bytes. */
  auth: string;
}

export interface FcmTarget {
  transport: "fcm";
  token: string;
}

export interface ApnsTarget {
  transport: "apns";
  /** Hexadecimal device token. */
  token: string;
  environment: "production" | "sandbox";
}

/** Where a device receives its pushes. */
export type Target = WebPushTarget | FcmTarget | ApnsTarget;

/** RFC 8030 §5.3 urgency. */
export type Urgency = "very-low" | "low" | "normal" | "high";

/**
 * What to send. `json` is a relay payload (the contract's `update` / `subscribed` objects):
 * Web Push encrypts it (RFC 8291), FCM turns its fields into strings, APNs puts them beside
 * `aps`. `text` is a plaintext sent as its UTF-8 bytes (the WebDAV-Push `push-message` of a
 * `webdav-push` registration, which is always a Web Push one). `encrypted` is an
 * already-encrypted RFC 8291 `aes128gcm` body (Web Push ingress): it is forwarded without
 * being decrypted.
 */
export type OutboundPayload =
  | { kind: "json"; data: Record<string, unknown> }
  | { kind: "text"; text: string }
  | { kind: "encrypted"; body: Uint8Array };

export interface OutboundMessage {
  payload: OutboundPayload;
  /** Seconds the push service should keep an undelivered message (RFC 8030 §5.2). */
  ttl: number;
  urgency: Urgency;
  /** CC/CD 70025 priority 0..100, for FCM/APNs priority mapping. */
  priority: number;
  /**
   * Replacement key: the Web Push `Topic` header (at most 32 base64url characters), the FCM
   * `collapse_key`, the `apns-collapse-id`. Reveals nothing about the DAV topic.
   */
  collapseKey?: string;
  /**
   * Part of a large fan-out: Web Push may encrypt it in a worker (lib/crypto/ece_pool.ts). A
   * message on its own is encrypted where it is sent.
   */
  bulk?: boolean;
}

/**
 * How one delivery attempt ended.
 * - `delivered`: the push service accepted the message (Web Push `201`/`202`, FCM/APNs `200`).
 * - `gone`: the device is gone for good (Web Push `404`/`410`, FCM `UNREGISTERED`, APNs
 *   `410 Unregistered`/`400 BadDeviceToken`...): the relay prunes the client.
 * - `retry`: a transient failure (timeout, network, `429`, `5xx`); `retryAfterMs` honours
 *   `Retry-After`. `local` marks one of the relay's own making (its own queue limit, its own
 *   shutdown before the request went out): it says nothing about the push service.
 * - `failed`: permanent for this message but the device stays (e.g. `400`, `413`).
 */
export type DeliveryOutcome =
  | { kind: "delivered"; status: number }
  | { kind: "gone"; status: number; reason: string }
  | { kind: "retry"; status?: number; retryAfterMs?: number; reason: string; local?: true }
  | { kind: "failed"; status?: number; reason: string };

export interface Transport {
  readonly id: TransportId;
  /**
   * Sends one message to one target. Never throws for push-service answers or network
   * errors: those become outcomes. `signal` aborts the request (shutdown, timeouts).
   */
  send(target: Target, message: OutboundMessage, signal?: AbortSignal): Promise<DeliveryOutcome>;
  /** Releases what the transport holds (kept-alive connections); called at shutdown. */
  close?(): void | Promise<void>;
}

/** Maps a CC/CD 70025 priority to an RFC 8030 urgency: 0-24, 25-49, 50-74, 75-100. */
export function urgencyFor(priority: number): Urgency {
  if (priority < 25) return "very-low";
  if (priority < 50) return "low";
  if (priority < 75) return "normal";
  return "high";
}

/**
 * Parses a `Retry-After` header (delta-seconds or an HTTP-date, RFC 9110 §10.2.3) into
 * milliseconds from `now`; undefined when absent or unparsable.
 */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}
