/**
 * RFC 8030 rules the relay applies on both sides: as a push service (Web Push ingress) and as
 * a Web Push sender.
 *
 * @module
 */

/** RFC 8030 §5.4: a Topic is 1 to 32 characters of the URL-safe base64 alphabet. */
const TOPIC = /^[A-Za-z0-9_-]{1,32}$/;

/** True when `s` is a valid RFC 8030 §5.4 `Topic` header value. */
export function isPushTopic(s: string): boolean {
  return TOPIC.test(s);
}
