/**
 * The WebDAV binding of CC/CD 70025 (draft-gajda-dav-push-00 §5.2.3, §6.2), for application
 * servers: the discovery properties a client reads with `PROPFIND` (§6.2.1), the `subscribe`
 * request it `POST`s to the subscribe URL (§6.2.2), its translation into the gateway's JSON
 * `push-subscribe` (§6.1.2), and the `invalid-topics` error (§5.2.3.2).
 *
 * Names follow the draft's example and OX App Suite (`subscribe-URL`, `version`); the names of
 * the §6.2.1 definitions (`push-subscribe-URL`, `push-version`) are accepted wherever this
 * module reads XML.
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

/** The DAV-Push protocol version this module implements (§6.2.1.8: `1`). */
export const DAV_PUSH_VERSION = "1";

/** Clark names of the DAV-Push properties and elements (namespace `urn:ietf:params:xml:ns:dav-push`). */
export const PUSH = {
  subscribeUrl: `{${NS.PUSH}}subscribe-URL`,
  /** §6.2.1 definition's name for `subscribe-URL`. */
  pushSubscribeUrl: `{${NS.PUSH}}push-subscribe-URL`,
  supportedTransportSet: `{${NS.PUSH}}supported-transport-set`,
  transport: `{${NS.PUSH}}transport`,
  transportUri: `{${NS.PUSH}}transport-uri`,
  transportData: `{${NS.PUSH}}transport-data`,
  refreshInterval: `{${NS.PUSH}}refresh-interval`,
  topic: `{${NS.PUSH}}topic`,
  version: `{${NS.PUSH}}version`,
  /** §6.2.1 definition's name for `version`. */
  pushVersion: `{${NS.PUSH}}push-version`,
  subscribe: `{${NS.PUSH}}subscribe`,
  selectedTransport: `{${NS.PUSH}}selected-transport`,
  clientData: `{${NS.PUSH}}client-data`,
  expires: `{${NS.PUSH}}expires`,
  invalidTopics: `{${NS.PUSH}}invalid-topics`,
} as const;

/** Clark names of the RFC 4918 elements used here. */
export const DAV = {
  multistatus: `{${NS.DAV}}multistatus`,
  response: `{${NS.DAV}}response`,
  href: `{${NS.DAV}}href`,
  propstat: `{${NS.DAV}}propstat`,
  prop: `{${NS.DAV}}prop`,
  status: `{${NS.DAV}}status`,
  error: `{${NS.DAV}}error`,
  propfind: `{${NS.DAV}}propfind`,
  allprop: `{${NS.DAV}}allprop`,
  propname: `{${NS.DAV}}propname`,
} as const;

/** The alternative property names of §6.2.1, mapped to the names this module emits. */
export const ALTERNATIVE_NAMES: Readonly<Record<string, string>> = {
  [PUSH.pushSubscribeUrl]: PUSH.subscribeUrl,
  [PUSH.pushVersion]: PUSH.version,
};

/** One transport of a gateway, as its bootstrap (§5.1, §6.1.1) describes it. */
export interface PushTransport {
  /** The transport's identifier; clients match it against the transports they support. */
  transportUri: string;
  /** Seconds within which a client must re-subscribe (§6.2.1.6). */
  refreshInterval?: number | undefined;
  /**
   * What a client needs to subscribe, e.g. `{"vapid-public-key": "..."}`. §6.1.1: no structured
   * data, so a flat map of strings (or one string, as OX reads it).
   */
  transportData?: Readonly<Record<string, string>> | string | undefined;
}

// ---------------------------------------------------------------------------------------------
// Discovery (§5.2.3.1, §6.2.1)

/** What {@linkcode davPushProperties} describes. */
export interface DiscoveryOptions {
  /** Absolute URL clients `POST` their `subscribe` to (§6.2.1.1). */
  subscribeUrl: string;
  /** The transports on offer, normally a gateway's bootstrap. */
  transports: readonly PushTransport[];
  /** The resource's topic (§6.2.1.7); left out when the resource has none. */
  topic?: string | undefined;
  /** Highest protocol version supported; default {@linkcode DAV_PUSH_VERSION}. */
  version?: string | undefined;
  /**
   * Add one empty `transport` element: §6.2.1.2, the client may bring its own (HTTPS)
   * transport. Default false.
   */
  allowClientTransport?: boolean | undefined;
}

// XML names a transport-data key may be written as; other keys use <P:data name="...">.
const NC_NAME = /^[A-Za-z_][A-Za-z0-9._-]*$/;

function transportNode(t: PushTransport): XmlNode {
  const children: XmlNode[] = [el(PUSH.transportUri, t.transportUri)];
  if (typeof t.transportData === "string") {
    children.push(el(PUSH.transportData, t.transportData));
  } else if (t.transportData) {
    // §6.2.1.3: transport-data is ANY. Each member becomes an element of the DAV-Push
    // namespace, like WebDAV-Push's vapid-public-key.
    const entries = Object.entries(t.transportData).map(([k, v]) =>
      NC_NAME.test(k) ? el(`{${NS.PUSH}}${k}`, v) : {
        name: `{${NS.PUSH}}data`,
        attributes: { name: k },
        children: [v],
      }
    );
    children.push(el(PUSH.transportData, ...entries));
  }
  if (t.refreshInterval !== undefined) {
    children.push(el(PUSH.refreshInterval, String(t.refreshInterval)));
  }
  return el(PUSH.transport, ...children);
}

/**
 * The DAV-Push properties of a resource (§6.2.1), by Clark name, ready for a `PROPFIND`
 * answer: `subscribe-URL` (one `D:href`), `supported-transport-set`, `topic` (when given) and
 * `version`. Pass the map to {@linkcode propfindResponse}, which also answers the
 * alternative names.
 */
export function davPushProperties(options: DiscoveryOptions): Map<string, XmlNode> {
  const seen = new Set<string>();
  const transports: XmlNode[] = [];
  for (const t of options.transports) {
    // §6.2.1.2: transport-uri values are unique within the set.
    if (seen.has(t.transportUri)) continue;
    seen.add(t.transportUri);
    transports.push(transportNode(t));
  }
  if (options.allowClientTransport) transports.push(el(PUSH.transport));
  const props = new Map<string, XmlNode>([
    [PUSH.subscribeUrl, el(PUSH.subscribeUrl, el(DAV.href, options.subscribeUrl))],
    [PUSH.supportedTransportSet, el(PUSH.supportedTransportSet, ...transports)],
  ]);
  if (options.topic !== undefined) props.set(PUSH.topic, el(PUSH.topic, options.topic));
  props.set(PUSH.version, el(PUSH.version, options.version ?? DAV_PUSH_VERSION));
  return props;
}

/** A parsed `PROPFIND` body (RFC 4918 §9.1). */
export type PropfindRequest =
  | { kind: "allprop" }
  | { kind: "propname" }
  | { kind: "prop"; names: string[] };

/**
 * Parses a `PROPFIND` body. An empty body means `allprop` (RFC 4918 §9.1).
 *
 * @throws {XmlError} for malformed XML or a root other than `D:propfind`
 */
export function parsePropfind(
  body: string | Uint8Array | null | undefined,
  options?: ParseXmlOptions,
): PropfindRequest {
  if (body === null || body === undefined || body.length === 0) return { kind: "allprop" };
  if (typeof body === "string" && body.trim() === "") return { kind: "allprop" };
  const root = parseXml(body, options);
  if (root.name !== DAV.propfind) {
    throw new XmlError(`Expected root element ${DAV.propfind}, got ${root.name}`);
  }
  if (childElement(root, DAV.propname)) return { kind: "propname" };
  const prop = childElement(root, DAV.prop);
  if (prop) return { kind: "prop", names: prop.children.map((c) => c.name) };
  if (childElement(root, DAV.allprop)) return { kind: "allprop" };
  throw new XmlError("PROPFIND body has none of prop, propname or allprop");
}

const REASONS: Record<number, string> = {
  200: "OK",
  403: "Forbidden",
  404: "Not Found",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

function statusLine(status: number): string {
  return `HTTP/1.1 ${status} ${REASONS[status] ?? ""}`.trimEnd();
}

/**
 * The status code of a `D:status` line (RFC 4918 §14.28: `HTTP/1.1 200 OK`), or undefined
 * when the line is not one.
 */
export function statusCode(line: string | undefined): number | undefined {
  const m = /^\s*HTTP\/\d(?:\.\d)?\s+(\d{3})/.exec(line ?? "");
  return m ? Number(m[1]) : undefined;
}

function rename(node: XmlNode, name: string): XmlNode {
  return { ...node, name };
}

/**
 * One `D:response` of a multistatus: the properties of `href` that `request` asks for.
 * `properties` maps Clark names to a ready element, or to an HTTP status when the property
 * exists but cannot be given now (e.g. `503` while the gateway is unreachable). Requested
 * properties that are not in the map come back in a `404` propstat, as WebDAV does
 * (RFC 4918 §9.1). A request for `push-subscribe-URL` or `push-version` is answered under
 * that name (§6.2.1).
 */
export function propfindResponse(
  href: string,
  request: PropfindRequest,
  properties: ReadonlyMap<string, XmlNode | number>,
): XmlNode {
  const byStatus = new Map<number, XmlNode[]>();
  const add = (status: number, node: XmlNode) => {
    const list = byStatus.get(status) ?? [];
    list.push(node);
    byStatus.set(status, list);
  };
  if (request.kind === "prop") {
    const done = new Set<string>();
    for (const name of request.names) {
      if (done.has(name)) continue;
      done.add(name);
      const value = properties.get(name) ?? properties.get(ALTERNATIVE_NAMES[name] ?? "");
      if (value === undefined) add(404, el(name));
      else if (typeof value === "number") add(value, el(name));
      else add(200, rename(value, name));
    }
  } else {
    for (const [name, value] of properties) {
      if (typeof value === "number") add(value, el(name));
      else add(200, request.kind === "propname" ? el(name) : value);
    }
  }
  const propstats = [...byStatus].sort(([a], [b]) => a - b).map(([status, nodes]) =>
    el(DAV.propstat, el(DAV.prop, ...nodes), el(DAV.status, statusLine(status)))
  );
  return el(DAV.response, el(DAV.href, href), ...propstats);
}

/** Serialises `D:multistatus` around `responses` (send it with status `207`). */
export function multistatusXml(responses: XmlNode[]): string {
  return serializeXml(el(DAV.multistatus, ...responses));
}

/** What a client learns from a DAV-Push `PROPFIND` answer. */
export interface DiscoveredPush {
  subscribeUrl?: string;
  transports: PushTransport[];
  topic?: string;
  version?: string;
}

/**
 * Reads the DAV-Push properties from a `207` multistatus (the client side of §5.2.3.1), from
 * the first `D:response` with a `200` propstat. Accepts `subscribe-URL` or
 * `push-subscribe-URL`, and `version` or `push-version`. A relative `subscribe-URL` is
 * resolved against `baseUrl` when given.
 *
 * @throws {XmlError} for malformed XML or a root other than `D:multistatus`
 */
export function parseDiscovery(
  body: string | Uint8Array,
  options: ParseXmlOptions & { baseUrl?: string } = {},
): DiscoveredPush {
  const root = parseXml(body, options);
  if (root.name !== DAV.multistatus) {
    throw new XmlError(`Expected root element ${DAV.multistatus}, got ${root.name}`);
  }
  const out: DiscoveredPush = { transports: [] };
  for (const response of childElements(root, DAV.response)) {
    for (const propstat of childElements(response, DAV.propstat)) {
      const status = statusCode(childElement(propstat, DAV.status)?.text);
      if (status === undefined || status < 200 || status > 299) continue;
      const prop = childElement(propstat, DAV.prop);
      if (!prop) continue;
      for (const p of prop.children) {
        const name = ALTERNATIVE_NAMES[p.name] ?? p.name;
        if (name === PUSH.subscribeUrl) {
          const href = childElement(p, DAV.href)?.text.trim();
          if (href) {
            out.subscribeUrl = options.baseUrl ? new URL(href, options.baseUrl).href : href;
          }
        } else if (name === PUSH.topic) out.topic = p.text.trim();
        else if (name === PUSH.version) out.version = p.text.trim();
        else if (name === PUSH.supportedTransportSet) {
          for (const t of childElements(p, PUSH.transport)) {
            const uri = childElement(t, PUSH.transportUri)?.text.trim();
            if (!uri) continue; // §6.2.1.2: an empty transport means "bring your own"
            const transport: PushTransport = { transportUri: uri };
            const ri = childElement(t, PUSH.refreshInterval)?.text.trim();
            if (ri && /^\d+$/.test(ri)) transport.refreshInterval = Number(ri);
            const data = childElement(t, PUSH.transportData);
            if (data) {
              if (data.children.length === 0) transport.transportData = data.text.trim();
              else {
                const map: Record<string, string> = {};
                for (const d of data.children) {
                  const key = d.name === `{${NS.PUSH}}data` ? d.attributes["name"] : d.local;
                  if (key !== undefined) map[key] = d.text.trim();
                }
                transport.transportData = map;
              }
            }
            out.transports.push(transport);
          }
        }
      }
    }
    if (out.subscribeUrl || out.topic) break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Subscribe (§5.2.3.2, §6.2.2)

/** A client's `subscribe` request (§6.2.2), parsed and checked. */
export interface DavSubscription {
  /** `topic+`, in request order, duplicates removed. */
  topics: string[];
  /** `selected-transport/transport-uri`. */
  transportUri: string;
  /** `selected-transport/client-data`, forwarded unchanged (§6.2.2.3 MUST). */
  clientData: string;
  /** `expires`, normalised to UTC. */
  expires: Date;
}

/** Largest subscribe body {@linkcode parseSubscribe} accepts by default: 64 KiB. */
export const MAX_SUBSCRIBE_BYTES = 64 * 1024;

// RFC 3339 §5.6 date-time (a space for the T is allowed by its note; lower case too).
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** Parses an RFC 3339 date-time; returns undefined when it is not one. */
export function parseRfc3339(s: string): Date | undefined {
  const m = RFC3339.exec(s.trim());
  if (!m) return undefined;
  const [, , mo, d, h, mi, sec] = m;
  if (Number(mo) < 1 || Number(mo) > 12 || Number(d) < 1 || Number(d) > 31) return undefined;
  if (Number(h) > 23 || Number(mi) > 59 || Number(sec) > 60) return undefined;
  const t = Date.parse(s.trim().replace(" ", "T").toUpperCase());
  return Number.isNaN(t) ? undefined : new Date(t);
}

/** Formats a date as RFC 3339 UTC without fractions (`2026-07-03T08:00:00Z`), as OX sends it. */
export function formatRfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function requiredChild(parent: XmlElement, name: string): XmlElement {
  const found = childElements(parent, name);
  if (found.length === 0) throw new XmlError(`Missing element ${name} in ${parent.name}`);
  if (found.length > 1) throw new XmlError(`Element ${name} appears more than once`);
  return found[0]!;
}

/** The text of an element that must hold non-empty text and no elements. */
function textOf(node: XmlElement): string {
  if (node.children.length > 0) throw new XmlError(`Element ${node.name} must hold text only`);
  // Leading and trailing whitespace is layout, not content: topics and client-data are tokens.
  const text = node.text.trim();
  if (text === "") throw new XmlError(`Element ${node.name} is empty`);
  return text;
}

function requiredText(parent: XmlElement, name: string): string {
  return textOf(requiredChild(parent, name));
}

/**
 * Parses a client's `subscribe` body (§6.2.2), namespace-correctly: any prefix, or the
 * default namespace, means the same. Elements of other namespaces are ignored, as WebDAV
 * does with unknown elements.
 *
 * @throws {XmlError} with status `400` for malformed XML, an unbound prefix, a `DOCTYPE`, a
 * wrong root, a missing, repeated or empty element, or an `expires` that is not RFC 3339;
 * with status `413` for a body over `options.maxBytes` (default 64 KiB)
 */
export function parseSubscribe(
  body: string | Uint8Array,
  options: ParseXmlOptions = {},
): DavSubscription {
  const root = parseXml(body, { maxBytes: MAX_SUBSCRIBE_BYTES, maxDepth: 16, ...options });
  if (root.name !== PUSH.subscribe) {
    throw new XmlError(`Expected root element ${PUSH.subscribe}, got ${root.name}`);
  }
  const topicNodes = childElements(root, PUSH.topic);
  // §6.2.2: subscribe (topic+, selected-transport, expires).
  if (topicNodes.length === 0) throw new XmlError(`Missing element ${PUSH.topic} in subscribe`);
  const topics: string[] = [];
  for (const t of topicNodes) {
    const topic = textOf(t);
    if (!topics.includes(topic)) topics.push(topic);
  }
  const selected = requiredChild(root, PUSH.selectedTransport);
  const transportUri = requiredText(selected, PUSH.transportUri);
  const clientData = requiredText(selected, PUSH.clientData);
  const expiresText = requiredText(root, PUSH.expires);
  const expires = parseRfc3339(expiresText);
  if (!expires) {
    throw new XmlError(
      `Element ${PUSH.expires} is not an RFC 3339 date-time: ${JSON.stringify(expiresText)}`,
    );
  }
  return { topics, transportUri, clientData, expires };
}

/** The gateway's JSON `push-subscribe` request (§6.1.2). */
export interface PushSubscribeJson {
  "push-subscribe": {
    topics: string[];
    "selected-transport": { "transport-uri": string; "client-data": string };
    expires: string;
  };
}

/**
 * Turns a parsed subscription into the gateway's JSON `push-subscribe` (§5.3, §6.1.2), with
 * `selected-transport` (the grammar's name, which OX sends) and `expires` in RFC 3339 UTC.
 * An `expires` in the past stays in the past: the gateway treats it as the unsubscribe it is
 * (§5.2.2: the application server MUST forward it).
 */
export function toPushSubscribe(sub: DavSubscription): PushSubscribeJson {
  return {
    "push-subscribe": {
      topics: [...sub.topics],
      "selected-transport": { "transport-uri": sub.transportUri, "client-data": sub.clientData },
      expires: formatRfc3339(sub.expires),
    },
  };
}

/** True when the subscription is an unsubscribe (§5.2.2: an `expires` at or before `now`). */
export function isUnsubscribe(sub: DavSubscription, now: Date = new Date()): boolean {
  return sub.expires.getTime() <= now.getTime();
}

/**
 * The topics of `topics` that `isValid` refuses. §5.2.3.2: when any topic is invalid the
 * whole request MUST fail and nothing is recorded; topics the user may not access SHOULD be
 * treated as invalid.
 */
export function invalidTopics(
  topics: readonly string[],
  isValid: (topic: string) => boolean,
): string[] {
  return topics.filter((t) => !isValid(t));
}

/**
 * The `D:error` body with the `invalid-topics` precondition (§5.2.3.2, §6.2.2), one `topic`
 * per refused topic. Send it with status `403` and `Content-Type: application/xml;
 * charset=utf-8` (RFC 4918 §16: a precondition is an element inside `D:error`).
 */
export function invalidTopicsXml(topics: readonly string[]): string {
  return serializeXml(
    el(DAV.error, el(PUSH.invalidTopics, ...topics.map((t) => el(PUSH.topic, t)))),
  );
}
