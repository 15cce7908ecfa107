/**
 * What a device receives, and how a message's `client-id` is matched against subscribers.
 *
 * @module
 */

/** The device payload of an update (README "The gateway protocol"). */
export function updatePayload(
  m: { topic: string; timestamp: string; priority: number },
): Record<string, unknown> {
  return { type: "update", topic: m.topic, timestamp: m.timestamp, priority: m.priority };
}

/** Percent-decodes a client id; one that is not valid percent-encoding is taken as is. */
export function decodeClientId(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * CC/CD 70025 §7.1: compares a message's `client-id` with a subscriber's client id after
 * percent-decoding both (`Push-Client-Id` is RFC 3986 percent-encoded).
 */
export function sameClient(subscriber: string, messageClientId: string | undefined): boolean {
  if (messageClientId === undefined) return false;
  return decodeClientId(subscriber) === decodeClientId(messageClientId);
}
