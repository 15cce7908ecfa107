/**
 * The endpoint policy: which Web Push endpoints the relay may connect to, so that it cannot be
 * used to reach private networks (SSRF). An endpoint is allowed when its scheme is `https:`, it
 * has no credentials, its port is 443 or 1024-65535, and every address its host resolves to is
 * public: in none of the `REFUSED_RANGES` below.
 *
 * The policy holds at registration (`endpointRefusal`) and at every connection: the HTTP/1.1
 * client (lib/transports/http1.ts) checks a URL with `connectionRefusal` and its host with
 * `checkHost`, then connects to one of the addresses that passed, never to the name, so a name
 * that later resolves to a private address (DNS rebinding) is never reached. Registration also
 * refuses `localhost` and single-label names outright; at connection time the addresses decide.
 *
 * Embedding ranges (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo) are
 * refused whole, whatever IPv4 address they carry: the simple reading that needs no decoding.
 * A consequence: behind DNS64 (RFC 6147), a name with only an A record also gets a synthesized
 * `64:ff9b::/96` AAAA answer and is refused.
 *
 * Pure: no I/O; names are resolved by an injected `Resolver`. Reasons never contain the
 * endpoint or an address (Web Push endpoints are secrets).
 *
 * @module
 */

/** Resolves a host name to its IP addresses (injected so tests need no DNS). */
export type Resolver = (hostname: string) => Promise<string[]>;

/** One refused block of addresses, with the document that sets it apart. */
export interface RefusedRange {
  /** `address/prefix-length`. */
  cidr: string;
  what: string;
  source: string;
}

/**
 * Every refused range. The IANA special-purpose registries (RFC 6890) list most of them as not
 * globally reachable; the others carry another network's address (embedding) or no host at
 * all. Outside 2000::/3, all IPv6 space is unallocated (IANA IPv6 Address Space registry).
 */
export const REFUSED_RANGES: readonly RefusedRange[] = [
  { cidr: "0.0.0.0/8", what: "this network (0.0.0.0 unspecified)", source: "RFC 791, RFC 6890" },
  { cidr: "10.0.0.0/8", what: "private", source: "RFC 1918" },
  { cidr: "100.64.0.0/10", what: "shared address space (CGNAT)", source: "RFC 6598" },
  { cidr: "127.0.0.0/8", what: "loopback", source: "RFC 1122 §3.2.1.3" },
  { cidr: "169.254.0.0/16", what: "link-local", source: "RFC 3927" },
  { cidr: "172.16.0.0/12", what: "private", source: "RFC 1918" },
  { cidr: "192.0.0.0/24", what: "IETF protocol assignments", source: "RFC 6890 §2.2.2" },
  { cidr: "192.0.2.0/24", what: "documentation (TEST-NET-1)", source: "RFC 5737" },
  { cidr: "192.88.99.0/24", what: "6to4 relay anycast", source: "RFC 3068, RFC 7526" },
  { cidr: "192.168.0.0/16", what: "private", source: "RFC 1918" },
  { cidr: "198.18.0.0/15", what: "benchmarking", source: "RFC 2544" },
  { cidr: "198.51.100.0/24", what: "documentation (TEST-NET-2)", source: "RFC 5737" },
  { cidr: "203.0.113.0/24", what: "documentation (TEST-NET-3)", source: "RFC 5737" },
  { cidr: "224.0.0.0/4", what: "multicast", source: "RFC 5771" },
  { cidr: "240.0.0.0/4", what: "reserved", source: "RFC 1112 §4, RFC 6890" },
  { cidr: "255.255.255.255/32", what: "limited broadcast", source: "RFC 919, RFC 8190" },
  { cidr: "::/128", what: "unspecified", source: "RFC 4291 §2.5.2" },
  { cidr: "::1/128", what: "loopback", source: "RFC 4291 §2.5.3" },
  { cidr: "::/96", what: "IPv4-compatible (deprecated)", source: "RFC 4291 §2.5.5.1" },
  { cidr: "::ffff:0:0/96", what: "IPv4-mapped", source: "RFC 4291 §2.5.5.2" },
  { cidr: "::ffff:0:0:0/96", what: "IPv4-translated", source: "RFC 2765 §2.1" },
  { cidr: "64:ff9b::/96", what: "NAT64 well-known prefix", source: "RFC 6052 §2.1" },
  { cidr: "64:ff9b:1::/48", what: "NAT64 local-use prefix", source: "RFC 8215" },
  { cidr: "100::/64", what: "discard-only", source: "RFC 6666" },
  { cidr: "2001::/32", what: "Teredo", source: "RFC 4380 §2.6" },
  { cidr: "2001:2::/48", what: "benchmarking", source: "RFC 5180" },
  { cidr: "2001:db8::/32", what: "documentation", source: "RFC 3849" },
  { cidr: "2002::/16", what: "6to4", source: "RFC 3056 §2" },
  { cidr: "3fff::/20", what: "documentation", source: "RFC 9637" },
  { cidr: "fc00::/7", what: "unique local", source: "RFC 4193" },
  { cidr: "fe80::/10", what: "link-local", source: "RFC 4291 §2.5.6" },
  { cidr: "fec0::/10", what: "site-local (deprecated)", source: "RFC 3879" },
  { cidr: "ff00::/8", what: "multicast", source: "RFC 4291 §2.7" },
  { cidr: "::/3", what: "outside global unicast 2000::/3", source: "RFC 4291 §2.4, IANA" },
  { cidr: "4000::/2", what: "outside global unicast 2000::/3", source: "RFC 4291 §2.4, IANA" },
  { cidr: "8000::/1", what: "outside global unicast 2000::/3", source: "RFC 4291 §2.4, IANA" },
];

const IPV4_PART = /^(?:0|[1-9]\d{0,2})$/;
const IPV6_GROUP = /^[0-9a-f]{1,4}$/i;

/**
 * Parses dotted-decimal IPv4 strictly: four parts 0-255 without leading zeros (`010.0.0.1`
 * could mean octal to some parsers), nothing else.
 */
export function parseIpv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    if (!IPV4_PART.test(part) || Number(part) > 255) return null;
    bytes[i] = Number(part);
  }
  return bytes;
}

/**
 * Parses an IPv6 address strictly (RFC 4291 §2.2): eight groups of 1-4 hex digits, at most one
 * `::`, a dotted IPv4 tail only in the last 32 bits. No brackets, no zone (`%eth0`).
 */
export function parseIpv6(text: string): Uint8Array | null {
  let rest = text;
  const tail: number[] = [];
  const lastColon = rest.lastIndexOf(":");
  if (lastColon >= 0 && rest.includes(".", lastColon)) {
    const v4 = parseIpv4(rest.slice(lastColon + 1));
    if (!v4) return null;
    tail.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    // Keep the colon: "::1.2.3.4" becomes "::", "1::1.2.3.4" becomes "1::".
    rest = rest.slice(0, lastColon + 1);
    if (!rest.endsWith("::")) rest = rest.slice(0, -1);
  }
  const halves = rest.split("::");
  if (halves.length > 2) return null;
  const groupsOf = (s: string): number[] | null => {
    if (s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (!IPV6_GROUP.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = groupsOf(halves[0]!);
  const after = halves.length === 2 ? groupsOf(halves[1]!) : [];
  if (!head || !after) return null;
  const given = head.length + after.length + tail.length;
  // Without "::" every group is written; with it, "::" stands for one or more zero groups.
  if (halves.length === 1 ? given !== 8 : given > 7) return null;
  const groups = [...head, ...Array(8 - given).fill(0), ...after, ...tail];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 255;
  });
  return bytes;
}

/** An IPv4 or IPv6 literal (IPv6 with or without brackets), or null when it is neither. */
export function parseIp(text: string): Uint8Array | null {
  if (text.includes(":")) {
    const bare = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
    return parseIpv6(bare);
  }
  return parseIpv4(text);
}

interface CompiledRange {
  range: RefusedRange;
  bytes: Uint8Array;
  prefix: number;
}

function compile(range: RefusedRange): CompiledRange {
  const [address, length] = range.cidr.split("/") as [string, string];
  const bytes = parseIp(address);
  const prefix = Number(length);
  if (!bytes || !(prefix >= 0 && prefix <= bytes.length * 8)) {
    throw new RangeError(`Cannot compile the refused range: invalid CIDR ${range.cidr}`);
  }
  return { range, bytes, prefix };
}

// Most specific first, so that `refusedRange` names the narrowest range an address is in.
const COMPILED = REFUSED_RANGES.map(compile).sort((a, b) => b.prefix - a.prefix);

function inRange(address: Uint8Array, r: CompiledRange): boolean {
  if (address.length !== r.bytes.length) return false;
  const whole = r.prefix >> 3;
  for (let i = 0; i < whole; i++) if (address[i] !== r.bytes[i]) return false;
  const bits = r.prefix & 7;
  if (bits === 0) return true;
  const mask = (0xff << (8 - bits)) & 0xff;
  return (address[whole]! & mask) === (r.bytes[whole]! & mask);
}

/** The narrowest refused range `ip` is in; null when it is public or not an IP literal. */
export function refusedRange(ip: string): RefusedRange | null {
  const bytes = parseIp(ip);
  if (!bytes) return null;
  return COMPILED.find((r) => inRange(bytes, r))?.range ?? null;
}

/** True for an IP literal in no refused range. Anything unparsable is not public. */
export function isPublicAddress(ip: string): boolean {
  const bytes = parseIp(ip);
  return bytes !== null && !COMPILED.some((r) => inRange(bytes, r));
}

/** The port rule: 443, or an unprivileged port 1024-65535 (never 22, 25, 0...). */
export function isAllowedPort(port: number): boolean {
  return port === 443 || (Number.isInteger(port) && port >= 1024 && port <= 65535);
}

/** What the policy says of a URL before any name is resolved: scheme, credentials, port. */
export function connectionRefusal(url: URL): string | null {
  if (url.protocol !== "https:") return "the endpoint must be an https: URL";
  if (url.username || url.password) return "the endpoint must not carry credentials";
  if (!isAllowedPort(url.port === "" ? 443 : Number(url.port))) {
    return "the endpoint's port must be 443 or 1024-65535";
  }
  return null;
}

/** The addresses of a host the policy allows, or why there are none. */
export type HostCheck =
  | { ok: true; addresses: string[] }
  | { ok: false; kind: "refused" | "unresolved"; reason: string };

/**
 * Checks a URL's host: an IP literal by itself, a name by every address `resolve` gives. An
 * empty answer or a failing resolver is `unresolved` (possibly transient), not `refused`.
 */
export async function checkHost(hostname: string, resolve: Resolver): Promise<HostCheck> {
  const host = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (parseIpv4(host) || host.includes(":")) {
    return isPublicAddress(host)
      ? { ok: true, addresses: [host] }
      : { ok: false, kind: "refused", reason: "the endpoint's address is not public" };
  }
  let addresses: string[];
  try {
    addresses = await resolve(host);
  } catch {
    addresses = [];
  }
  if (addresses.length === 0) {
    return { ok: false, kind: "unresolved", reason: "the endpoint's host name does not resolve" };
  }
  if (!addresses.every(isPublicAddress)) {
    return {
      ok: false,
      kind: "refused",
      reason: "the endpoint's host resolves to a non-public address",
    };
  }
  return { ok: true, addresses };
}

/** Why an endpoint is refused at registration, or null when it is allowed. */
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
  const refusal = connectionRefusal(url);
  if (refusal) return refusal;
  const host = url.hostname;
  // RFC 6761 §6.3: localhost names are loopback; a single label is no public name either.
  const isLiteral = parseIpv4(host) !== null || host.startsWith("[");
  if (!isLiteral && (host === "localhost" || host.endsWith(".localhost") || !host.includes("."))) {
    return "the endpoint's host is not a public name";
  }
  const check = await checkHost(host, options.resolve);
  return check.ok ? null : check.reason;
}
