/**
 * The client address a registration is counted against (README "The client API", rate limit
 * subject): the connection's remote address, an IPv6 address counted per /64 (one subscriber
 * line usually holds a whole /64, so counting single addresses would let one client use 2^64
 * of them); IPv4-mapped IPv6 addresses count as their IPv4 address. Behind a reverse proxy,
 * `RELAY_CLIENT_IP_HEADER` names the header the proxy sets: the last entry of
 * `X-Forwarded-For` (what the proxy itself appended; earlier entries come from the client), or
 * the single value of e.g. `CF-Connecting-IP`. The header is never read when unset, so clients
 * cannot choose their own subject; a request without a usable value counts against the
 * connection's address.
 *
 * @module
 */

import type { Context } from "hono";
import { parseIp } from "../lib/address_policy.ts";

export interface ClientAddressOptions {
  /** `RELAY_CLIENT_IP_HEADER`, lower case; null: only the connection's address counts. */
  header: string | null;
}

/** The connection's remote address as Deno.serve reports it, or null (e.g. in `app.request`). */
function remoteAddress(c: Context): string | null {
  const env = c.env as { remoteAddr?: { hostname?: unknown } } | undefined;
  const host = env?.remoteAddr?.hostname;
  return typeof host === "string" ? host : null;
}

/** The rate-limit subject of a request: a normalised address (`v4:…` or `v6:…/64`). */
export function clientAddress(c: Context, options: ClientAddressOptions): string {
  if (options.header !== null) {
    const value = c.req.header(options.header);
    const last = value?.split(",").at(-1)?.trim();
    const subject = last ? addressSubject(last) : null;
    if (subject) return subject;
  }
  const remote = remoteAddress(c);
  return (remote ? addressSubject(remote) : null) ?? "unknown";
}

/**
 * An address as a rate-limit subject: IPv4 as is, IPv6 cut to its /64, IPv4-mapped IPv6 as
 * IPv4. Accepts a port (`192.0.2.1:443`, `[2001:db8::1]:443`) and a zone (`fe80::1%eth0`),
 * as some proxies write them; null for anything that is not an address.
 */
export function addressSubject(text: string): string | null {
  let s = text.trim();
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) return null;
    s = s.slice(1, end);
  } else if (/^[\d.]+:\d+$/.test(s)) {
    s = s.slice(0, s.indexOf(":"));
  }
  s = s.replace(/%.*$/, "");
  const bytes = parseIp(s);
  if (!bytes) return null;
  if (bytes.length === 4) return `v4:${bytes.join(".")}`;
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff &&
    bytes[11] === 0xff;
  if (mapped) return `v4:${[...bytes.slice(12)].join(".")}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return `v6:${groups.join(":")}::/64`;
}
