/**
 * What a device receives, and how a message's `client-id` is matched against subscribers.
 *
 * @module
 */

import { MAX_PLAINTEXT_BYTES } from "../crypto/ece.ts";
import type { ClientIds, PayloadFormat, Registration } from "../model.ts";

/** The device payload of an update (README "The gateway protocol"). */
export function updatePayload(
  m: { topic: string; timestamp: string; priority: number },
): Record<string, unknown> {
  return { type: "update", topic: m.topic, timestamp: m.timestamp, priority: m.priority };
}

/** The payload format a registration asked for (README "The client API"). */
export function payloadFormat(reg: Registration): PayloadFormat {
  return reg.payload ?? "cc-dav-push";
}

// XML 1.0 §2.2 Char; anything else cannot be carried, not even as a character reference.
const NON_XML_CHAR = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

function xmlText(s: string): string {
  return s.replace(NON_XML_CHAR, "").replaceAll("&", "&amp;").replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;").replaceAll("\r", "&#13;");
}

const encoder = new TextEncoder();

/**
 * The WebDAV-Push `push-message` (draft-bitfire-webdav-push §Push Message) of an update:
 * `topic` exactly as pushed (a client matches it byte for byte with the `P:topic` it
 * discovered, so no whitespace around it), then `content-update`, holding `D:sync-token` when
 * the message carried one. A sync-token that would not let the message fit one Web Push record
 * (RFC 8291 §4) is left out: the topic is what a client acts on, and the draft's
 * `content-update` only SHOULD contain the token.
 */
export function webdavPushMessage(topic: string, syncToken?: string): string {
  const head = '<?xml version="1.0" encoding="utf-8"?>\n' +
    '<push-message xmlns="https://bitfire.at/webdav-push" xmlns:D="DAV:">' +
    `<topic>${xmlText(topic)}</topic>`;
  const tail = "</push-message>";
  if (syncToken !== undefined && syncToken !== "") {
    const full = head +
      `<content-update><D:sync-token>${xmlText(syncToken)}</D:sync-token></content-update>` +
      tail;
    if (encoder.encode(full).length <= MAX_PLAINTEXT_BYTES) return full;
  }
  return head + "<content-update/>" + tail;
}

/** Percent-decodes a client id; one that is not valid percent-encoding is taken as is. */
export function decodeClientId(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The client-ids of a message's `client-id` (none, one, or several). */
export function clientIdList(ids: ClientIds | undefined): string[] {
  if (ids === undefined) return [];
  return typeof ids === "string" ? [ids] : ids;
}

/**
 * CC/CD 70025 §7.1: whether a subscriber is one of the clients a message's `client-id` names
 * (one id, or several: README "The gateway protocol"), comparing after percent-decoding both
 * (`Push-Client-Id` is RFC 3986 percent-encoded).
 */
export function sameClient(subscriber: string, messageClientId: ClientIds | undefined): boolean {
  if (messageClientId === undefined) return false;
  const s = decodeClientId(subscriber);
  if (typeof messageClientId === "string") return s === decodeClientId(messageClientId);
  return messageClientId.some((id) => s === decodeClientId(id));
}
