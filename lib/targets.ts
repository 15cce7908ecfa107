/**
 * Device targets: their identity hash (one registration per device) and the Web Push endpoint
 * policy (https on a public address, README "The client API"), which keeps the relay from being used to
 * reach private networks (SSRF).
 *
 * @module
 */

import { encodeBase64Url, utf8 } from "./encoding.ts";
import type { Target } from "./transports/types.ts";

/** A stable hash of where a device receives pushes: same endpoint or token, same hash. */
export async function targetHash(target: Target): Promise<string> {
  const identity = target.transport === "web-push"
    ? `w\u0000${target.endpoint}`
    : target.transport === "fcm"
    ? `f\u0000${target.token}`
    : `a\u0000${target.environment}\u0000${target.token}`;
  const digest = await crypto.subtle.digest("SHA-256", utf8(identity) as BufferSource);
  return encodeBase64Url(new Uint8Array(digest));
}

/** Resolves a host name to its IP addresses (injected so tests need no DNS). */
export type Resolver = (hostname: string) => Promise<string[]>;

/** Resolves A and AAAA records with Deno's resolver. */
export const denoResolver: Resolver = async (hostname) => {
  const results = await Promise.allSettled([
    Deno.resolveDns(hostname, "A"),
    Deno.resolveDns(hostname, "AAAA"),
  ]);
  return results.flatMap((r) => (r.status === "fulfilled" ? r.value : []));
};

function parseIpv4(s: string): number[] | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  return parts.every((p) => p <= 255) ? parts : null;
}

function expandIpv6(s: string): number[] | null {
  let addr = s.replace(/^\[|\]$/g, "").toLowerCase();
  const zone = addr.indexOf("%");
  if (zone >= 0) addr = addr.slice(0, zone);
  // Embedded IPv4 (::ffff:1.2.3.4).
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(addr);
  if (v4) {
    const p = parseIpv4(v4[1]!);
    if (!p) return null;
    addr = addr.slice(0, -v4[1]!.length) +
      `${((p[0]! << 8) | p[1]!).toString(16)}:${((p[2]! << 8) | p[3]!).toString(16)}`;
  }
  const halves = addr.split("::");
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  const out: number[] = [];
  for (const g of groups) {
    if (!/^[0-9a-f]{1,4}$/.test(g)) return null;
    out.push(parseInt(g, 16));
  }
  return out.length === 8 ? out : null;
}

/**
 * True when an IP address is not publicly routable: loopback, private (RFC 1918), link-local,
 * CGNAT, unique-local (RFC 4193), unspecified, multicast, documentation and similar ranges.
 * Unparsable input counts as private (refuse rather than guess).
 */
export function isPrivateAddress(ip: string): boolean {
  const v4 = parseIpv4(ip);
  if (v4) {
    const [a, b] = v4 as [number, number, number, number];
    return a === 0 || a === 10 || a === 127 || (a === 169 && b === 254) ||
      (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) ||
      (a === 100 && b >= 64 && b <= 127) || (a === 192 && b === 0 && v4[2] === 0) ||
      (a === 198 && (b === 18 || b === 19)) || a >= 224;
  }
  const v6 = expandIpv6(ip);
  if (!v6) return true;
  const [g0] = v6 as [number];
  if (v6.every((g) => g === 0)) return true; // ::
  if (v6.slice(0, 7).every((g) => g === 0) && v6[7] === 1) return true; // ::1
  // IPv4-mapped ::ffff:a.b.c.d and NAT64 64:ff9b::/96 carry an IPv4 address.
  if (v6.slice(0, 5).every((g) => g === 0) && v6[5] === 0xffff) {
    return isPrivateAddress(`${v6[6]! >> 8}.${v6[6]! & 255}.${v6[7]! >> 8}.${v6[7]! & 255}`);
  }
  if ((g0 & 0xfe00) === 0xfc00) return true; // fc00::/7 unique-local
  if ((g0 & 0xffc0) === 0xfe80) return true; // fe80::/10 link-local
  if ((g0 & 0xffc0) === 0xfec0) return true; // fec0::/10 site-local (deprecated)
  if ((g0 & 0xff00) === 0xff00) return true; // multicast
  if (g0 === 0x2001 && v6[1] === 0x0db8) return true; // documentation
  return false;
}

/** Why an endpoint is refused, or null when it is allowed. */
export async function endpointRefusal(
  endpoint: string,
  options: { allowPrivate: boolean; resolve: Resolver },
): Promise<string | null> {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return "the endpoint is not an absolute URL";
  }
  if (url.username || url.password) return "the endpoint must not carry credentials";
  if (options.allowPrivate) {
    return url.protocol === "https:" || url.protocol === "http:"
      ? null
      : "the endpoint must be an http: or https: URL";
  }
  if (url.protocol !== "https:") return "the endpoint must be an https: URL";
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (parseIpv4(host) || host.includes(":")) {
    return isPrivateAddress(host) ? "the endpoint's address is not public" : null;
  }
  if (host === "localhost" || host.endsWith(".localhost") || !host.includes(".")) {
    return "the endpoint's host is not a public name";
  }
  let addresses: string[];
  try {
    addresses = await options.resolve(host);
  } catch {
    addresses = [];
  }
  if (addresses.length === 0) return "the endpoint's host name does not resolve";
  if (addresses.some(isPrivateAddress)) {
    return "the endpoint's host resolves to a non-public address";
  }
  return null;
}
