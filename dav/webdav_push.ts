/**
 * WebDAV-Push (draft-bitfire-webdav-push, namespace `https://bitfire.at/webdav-push`) for
 * servers and proxies: the discovery properties (§Discovery), the `push-register` request
 * (§Subscription Registration) as real clients send it, its `D:error` answers, the
 * `push-message` (§Push Message), the `Push-Dont-Notify` header and the HTTP dates the protocol
 * carries (`expires`, `Expires`: RFC 9110 §5.6.7).
 *
 * Parsing is namespace-aware: DAVx⁵'s serialiser invents prefixes (`n0:`, `n1:`), others use the
 * default namespace; both mean the same.
 *
 * @module
 */

import {
  childElement,
  childElements,
  el,
  NS,
  parseXml,
  type ParseXmlOptions,
  serializeXml,
  type XmlElement,
  XmlError,
  type XmlNode,
} from "./xml.ts";

/** The WebDAV-Push namespace. */
export const WEBDAV_PUSH_NS = "https://bitfire.at/webdav-push";

const P = (local: string) => `{${WEBDAV_PUSH_NS}}${local}`;

/** Clark names of the WebDAV-Push elements used here. */
export const WP = {
  transports: P("transports"),
  webPush: P("web-push"),
  vapidPublicKey: P("vapid-public-key"),
  topic: P("topic"),
  supportedTriggers: P("supported-triggers"),
  contentUpdate: P("content-update"),
  propertyUpdate: P("property-update"),
  pushRegister: P("push-register"),
  subscription: P("subscription"),
  webPushSubscription: P("web-push-subscription"),
  pushResource: P("push-resource"),
  contentEncoding: P("content-encoding"),
  subscriptionPublicKey: P("subscription-public-key"),
  authSecret: P("auth-secret"),
  trigger: P("trigger"),
  expires: P("expires"),
  pushMessage: P("push-message"),
} as const;

const DEPTH = `{${NS.DAV}}depth`;
const SYNC_TOKEN = `{${NS.DAV}}sync-token`;
const PREFIXES = { [WEBDAV_PUSH_NS]: "P" };

/** The three discovery properties (§Discovery), by Clark name. */
export const PUSH_PROPERTIES: readonly string[] = [WP.transports, WP.topic, WP.supportedTriggers];

/** What a push-capable collection advertises. */
export interface PushDiscovery {
  /** The VAPID public key pushes are signed with (RFC 8292: base64url, uncompressed P-256). */
  vapidPublicKey?: string | undefined;
  /** The collection's topic, matched byte for byte by clients. */
  topic: string;
}

/**
 * The discovery properties as XML fragments that declare their own namespaces, so each can be
 * put into any upstream `D:prop` whatever prefixes that document binds: `P:transports` (with
 * `web-push` and its `vapid-public-key type="p256ecdsa"`; left out while the key is unknown),
 * `P:topic`, and `P:supported-triggers` (`content-update` with `D:depth` 1: changes of the
 * collection's members).
 */
export function pushPropertyFragments(d: PushDiscovery): Map<string, string> {
  const frag = (node: XmlNode) => serializeXml(node, { declaration: false, prefixes: PREFIXES });
  const out = new Map<string, string>();
  if (d.vapidPublicKey !== undefined) {
    const key = {
      name: WP.vapidPublicKey,
      attributes: { type: "p256ecdsa" },
      children: [d.vapidPublicKey],
    };
    out.set(WP.transports, frag(el(WP.transports, el(WP.webPush, key))));
  }
  out.set(WP.topic, frag(el(WP.topic, d.topic)));
  out.set(
    WP.supportedTriggers,
    frag(el(WP.supportedTriggers, el(WP.contentUpdate, el(DEPTH, "1")))),
  );
  return out;
}

/** The WebDAV-Push property names a `PROPFIND` body asks for in its `D:prop`, if any. */
export function requestedPushProperties(propfind: XmlElement): string[] {
  if (propfind.name !== `{${NS.DAV}}propfind`) return [];
  const prop = childElement(propfind, `{${NS.DAV}}prop`);
  return prop ? prop.children.map((c) => c.name).filter((n) => PUSH_PROPERTIES.includes(n)) : [];
}

// ---------------------------------------------------------------------------------------------
// push-register

/** A Web Push subscription from `web-push-subscription` (RFC 8030, RFC 8291 keys). */
export interface WebPushSubscription {
  /** The push resource, an absolute `https:` or `http:` URL. */
  pushResource: string;
  /** base64url (no padding), a 65-byte uncompressed P-256 point. */
  p256dh: string;
  /** base64url (no padding), 16 bytes. */
  auth: string;
}

/** The 403 preconditions of §Subscription Registration. */
export type PushCondition = "invalid-subscription" | "push-not-available" | "no-supported-trigger";

/** A parsed `push-register`, or the precondition it fails. */
export type PushRegisterResult =
  | { ok: true; subscription: WebPushSubscription; expires?: number }
  | { ok: false; condition: PushCondition; reason: string };

/** Largest `push-register` body accepted: 64 KiB. */
export const MAX_PUSH_REGISTER_BYTES = 64 * 1024;

/** RFC 4648 §5 base64url, normalised: `+/` and `=` padding of plain base64 are accepted. */
function base64UrlBytes(text: string): { text: string; length: number } | undefined {
  const t = text.trim().replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
  if (!/^[A-Za-z0-9_-]*$/.test(t) || t.length % 4 === 1) return undefined;
  return { text: t, length: Math.floor(t.length * 3 / 4) };
}

function onlyChild(parent: XmlElement, name: string): XmlElement | undefined | null {
  const found = childElements(parent, name);
  if (found.length > 1) return null;
  return found[0];
}

function subscriptionOf(root: XmlElement): WebPushSubscription | string {
  const sub = onlyChild(root, WP.subscription);
  if (!sub) return "exactly one subscription is required";
  const wp = onlyChild(sub, WP.webPushSubscription);
  if (!wp) return "exactly one web-push-subscription is required";
  const resource = onlyChild(wp, WP.pushResource)?.text.trim();
  let url: URL | undefined;
  try {
    url = resource ? new URL(resource) : undefined;
  } catch { /* reported below */ }
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:")) {
    return "push-resource must be an absolute http(s) URL";
  }
  // §Subscription Registration: aes128gcm is the only encoding; without the element, it is it.
  const encoding = onlyChild(wp, WP.contentEncoding);
  if (encoding === null || (encoding && encoding.text.trim() !== "aes128gcm")) {
    return "content-encoding must be aes128gcm";
  }
  const keyEl = onlyChild(wp, WP.subscriptionPublicKey);
  const type = keyEl?.attributes["type"] ?? "p256dh";
  const key = keyEl ? base64UrlBytes(keyEl.text) : undefined;
  if (!key || type !== "p256dh" || key.length !== 65) {
    return "subscription-public-key must be a base64url 65-byte P-256 point (type p256dh)";
  }
  const authEl = onlyChild(wp, WP.authSecret);
  const auth = authEl ? base64UrlBytes(authEl.text) : undefined;
  if (!auth || auth.length !== 16) return "auth-secret must be 16 bytes, base64url";
  return { pushResource: resource!, p256dh: key.text, auth: auth.text };
}

/**
 * Whether a `trigger` can be served: a `content-update` (any depth is served as depth 1, the
 * lowest supported value the draft falls back to). No `trigger` at all is `content-update`
 * depth 1: DAVx⁵ up to 4.5.19 sends none.
 */
function triggerRefusal(root: XmlElement): string | undefined {
  const triggers = childElements(root, WP.trigger);
  if (triggers.length === 0) return undefined;
  if (triggers.length > 1) return "at most one trigger is allowed";
  if (childElement(triggers[0]!, WP.contentUpdate)) return undefined;
  return "only content-update triggers are supported";
}

/**
 * Parses a `push-register` body (the element, or the body itself). Accepts exactly what DAVx⁵
 * sends (no `trigger`, no `content-encoding`) as well as the draft's full form.
 *
 * @throws {XmlError} `400` for malformed XML, a `DOCTYPE`, an unbound prefix, a root other
 * than `push-register`, or an `expires` that is not an HTTP date; `413` above 64 KiB
 */
export function parsePushRegister(
  body: string | Uint8Array | XmlElement,
  options: ParseXmlOptions & { now?: number } = {},
): PushRegisterResult {
  const root = typeof body === "object" && "name" in body
    ? body
    : parseXml(body, { maxBytes: MAX_PUSH_REGISTER_BYTES, maxDepth: 16, ...options });
  if (root.name !== WP.pushRegister) {
    throw new XmlError(`Expected root element ${WP.pushRegister}, got ${root.name}`);
  }
  let expires: number | undefined;
  const expiresEl = onlyChild(root, WP.expires);
  if (expiresEl === null) throw new XmlError(`Element ${WP.expires} appears more than once`);
  if (expiresEl) {
    expires = parseHttpDate(expiresEl.text, options.now);
    if (expires === undefined) {
      throw new XmlError(
        `expires is not an HTTP date: ${JSON.stringify(expiresEl.text.slice(0, 64))}`,
      );
    }
  }
  const subscription = subscriptionOf(root);
  if (typeof subscription === "string") {
    return { ok: false, condition: "invalid-subscription", reason: subscription };
  }
  const refused = triggerRefusal(root);
  if (refused !== undefined) {
    return { ok: false, condition: "no-supported-trigger", reason: refused };
  }
  return { ok: true, subscription, ...(expires !== undefined ? { expires } : {}) };
}

/**
 * The `D:error` body of a refused registration (RFC 4918 §16; send it with `403` and
 * `Content-Type: application/xml; charset=utf-8`).
 */
export function pushErrorXml(condition: PushCondition): string {
  return serializeXml(el(`{${NS.DAV}}error`, el(P(condition))), { prefixes: PREFIXES });
}

// ---------------------------------------------------------------------------------------------
// push-message

/**
 * The `push-message` of a content update: `topic` exactly as given, then `content-update` with
 * `D:sync-token` when known (§Push Message).
 */
export function pushMessageXml(topic: string, syncToken?: string): string {
  const update = syncToken === undefined
    ? el(WP.contentUpdate)
    : el(WP.contentUpdate, el(SYNC_TOKEN, syncToken));
  return serializeXml(el(WP.pushMessage, el(WP.topic, topic), update), { prefixes: PREFIXES });
}

/** What a client reads from a `push-message`. */
export interface PushMessageContent {
  /** The `topic` text as sent (absent in a VAPID key-rotation message). */
  topic?: string;
  contentUpdate: boolean;
  syncToken?: string;
  propertyUpdate: boolean;
}

/**
 * Reads a decrypted `push-message` as a client does (namespace-aware; `push-message` must be
 * the root element).
 *
 * @throws {XmlError} for malformed XML or another root
 */
export function parsePushMessage(body: string | Uint8Array): PushMessageContent {
  const root = parseXml(body, { maxBytes: 8192, maxDepth: 8 });
  if (root.name !== WP.pushMessage) {
    throw new XmlError(`Expected root element ${WP.pushMessage}, got ${root.name}`);
  }
  const topic = childElement(root, WP.topic);
  const update = childElement(root, WP.contentUpdate);
  const token = update ? childElement(update, SYNC_TOKEN) : undefined;
  return {
    ...(topic ? { topic: topic.text } : {}),
    contentUpdate: update !== undefined,
    ...(token ? { syncToken: token.text } : {}),
    propertyUpdate: childElement(root, WP.propertyUpdate) !== undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Push-Dont-Notify and HTTP dates

/** The registrations a `Push-Dont-Notify` header names, or `all` for `*`. */
export type DontNotify = { all: true } | { all: false; urls: string[] };

/**
 * Parses `Push-Dont-Notify` (§Push-Dont-Notify: `1#quoted-registration-url / "*"`), given as
 * one string (repeated headers joined with commas, as `Headers.get` does) or several. Quoted
 * strings are unescaped (RFC 9110 §5.6.4); an unquoted URL is taken too (an older DAVx⁵ sent
 * one); `*` anywhere means everyone; empty elements are ignored.
 */
export function parsePushDontNotify(value: string | readonly string[] | null): DontNotify {
  const text = typeof value === "string" ? value : (value ?? []).join(",");
  const urls: string[] = [];
  let i = 0;
  while (i < text.length) {
    while (i < text.length && /[\s,]/.test(text[i]!)) i++;
    if (i >= text.length) break;
    if (text[i] === '"') {
      let out = "";
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === "\\" && i + 1 < text.length) i++;
        out += text[i++];
      }
      i++; // the closing quote
      urls.push(out);
    } else {
      const end = text.indexOf(",", i);
      const item = text.slice(i, end < 0 ? text.length : end).trim();
      i = end < 0 ? text.length : end;
      if (item === "*") return { all: true };
      if (item !== "") urls.push(item);
    }
  }
  return { all: false, urls };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const IMF =
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const RFC850 =
  /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d{2})-([A-Z][a-z]{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const ASCTIME =
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/;

function utc(y: number, mon: string, d: number, h: number, mi: number, s: number) {
  const m = MONTHS.indexOf(mon);
  if (m < 0 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return undefined;
  const ms = Date.UTC(y, m, d, h, mi, s);
  return new Date(ms).getUTCDate() === d ? ms : undefined;
}

/**
 * Parses an HTTP date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime
 * forms, which recipients MUST accept. Returns epoch ms, or undefined. `now` (epoch ms) places
 * RFC 850's two-digit years; without it they are taken as 20yy.
 */
export function parseHttpDate(text: string, now?: number): number | undefined {
  const s = text.trim();
  let m = IMF.exec(s);
  if (m) return utc(+m[3]!, m[2]!, +m[1]!, +m[4]!, +m[5]!, +m[6]!);
  m = RFC850.exec(s);
  if (m) {
    // RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is in the past century.
    let y = 2000 + +m[3]!;
    if (now !== undefined && y > new Date(now).getUTCFullYear() + 50) y -= 100;
    return utc(y, m[2]!, +m[1]!, +m[4]!, +m[5]!, +m[6]!);
  }
  m = ASCTIME.exec(s);
  if (m) return utc(+m[6]!, m[1]!, +m[2]!.trim(), +m[3]!, +m[4]!, +m[5]!);
  return undefined;
}

/** Formats epoch ms as an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`. */
export function formatHttpDate(ms: number): string {
  return new Date(ms).toUTCString();
}
