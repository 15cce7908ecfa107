/**
 * DAV-Push for application servers written in TypeScript: everything a CalDAV/CardDAV (or any
 * WebDAV) server needs to adopt CalConnect CC/CD 70025 (draft-gajda-dav-push-00) with a Push
 * Gateway such as this relay.
 *
 * - **Discovery** (§5.2.3.1, §6.2.1): {@linkcode davPushProperties},
 *   {@linkcode parsePropfind}, {@linkcode propfindResponse}, {@linkcode multistatusXml}; and
 *   {@linkcode parseDiscovery} for the client side.
 * - **Subscribe** (§5.2.3.2, §6.2.2): {@linkcode parseSubscribe} (namespace-correct, any
 *   prefix), {@linkcode toPushSubscribe} (the gateway's JSON), {@linkcode invalidTopics} and
 *   {@linkcode invalidTopicsXml} (the `D:error` for refused topics).
 * - **Gateway client** (§5.1, §5.3, §5.4): {@linkcode GatewayClient} (bootstrap, subscribe,
 *   push in chunks of at most 100), {@linkcode TopicGatewayMap} (learns from
 *   `no-subscribers`), {@linkcode clientIdFromHeader} (`Push-Client-Id` → `client-id`, §7.1).
 * - **WebDAV-Push** (draft-bitfire-webdav-push): {@linkcode pushPropertyFragments} (discovery),
 *   {@linkcode parsePushRegister} (what DAVx⁵ sends, any prefix), {@linkcode pushErrorXml},
 *   {@linkcode pushMessageXml} and {@linkcode parsePushMessage}, {@linkcode parsePushDontNotify},
 *   {@linkcode parseHttpDate} and {@linkcode formatHttpDate} (RFC 9110 §5.6.7).
 * - **XML hygiene**: {@linkcode parseXml} (saxes; refuses DOCTYPE; size, depth and element
 *   limits; throws {@linkcode XmlError} with the HTTP status to answer) and
 *   {@linkcode serializeXml} (fixed prefixes, escaped text, no characters outside XML 1.0).
 *
 * @example A subscribe endpoint
 * ```ts
 * import { GatewayClient, GatewayError, invalidTopics, invalidTopicsXml, parseSubscribe,
 *   XmlError } from "./mod.ts";
 *
 * const gateway = new GatewayClient({ url: "https://relay.example/gateway", token: "..." });
 * const myTopics = new Set(["q9Xc1vLrT0mJ2aBdZk3m8P"]);
 *
 * async function handleSubscribe(req: Request): Promise<Response> {
 *   try {
 *     const sub = parseSubscribe(new Uint8Array(await req.arrayBuffer()));
 *     const refused = invalidTopics(sub.topics, (t) => myTopics.has(t));
 *     if (refused.length > 0) {
 *       return new Response(invalidTopicsXml(refused), {
 *         status: 403,
 *         headers: { "content-type": "application/xml; charset=utf-8" },
 *       });
 *     }
 *     await gateway.subscribe(sub);
 *     return new Response(null, { status: 200 });
 *   } catch (err) {
 *     if (err instanceof XmlError) return new Response(err.message, { status: err.status });
 *     if (err instanceof GatewayError && (err.status === 400 || err.status === 403)) {
 *       return Response.json(err.body, { status: err.status });
 *     }
 *     return new Response("Push gateway unavailable", { status: 502 });
 *   }
 * }
 * ```
 *
 * @module
 */

export {
  ALTERNATIVE_NAMES,
  DAV,
  DAV_PUSH_VERSION,
  davPushProperties,
  type DavSubscription,
  type DiscoveredPush,
  type DiscoveryOptions,
  formatRfc3339,
  invalidTopics,
  invalidTopicsXml,
  isUnsubscribe,
  MAX_SUBSCRIBE_BYTES,
  multistatusXml,
  parseDiscovery,
  parsePropfind,
  parseRfc3339,
  parseSubscribe,
  type PropfindRequest,
  propfindResponse,
  PUSH,
  type PushSubscribeJson,
  type PushTransport,
  toPushSubscribe,
} from "./dav_push.ts";
export {
  clientIdFromHeader,
  GatewayClient,
  type GatewayClientOptions,
  GatewayError,
  type GatewaySubscription,
  MAX_PUSH_CHUNK,
  type PushMessage,
  TopicGatewayMap,
} from "./gateway_client.ts";
export {
  type DontNotify,
  formatHttpDate,
  MAX_PUSH_REGISTER_BYTES,
  parseHttpDate,
  parsePushDontNotify,
  parsePushMessage,
  parsePushRegister,
  PUSH_PROPERTIES,
  type PushCondition,
  pushErrorXml,
  type PushMessageContent,
  pushMessageXml,
  pushPropertyFragments,
  type PushRegisterResult,
  requestedPushProperties,
  WEBDAV_PUSH_NS,
  type WebPushSubscription,
  WP,
} from "./webdav_push.ts";
export {
  childElement,
  childElements,
  clark,
  DEFAULT_PREFIXES,
  el,
  escapeXmlAttribute,
  escapeXmlText,
  NS,
  parseXml,
  type ParseXmlOptions,
  serializeXml,
  type SerializeXmlOptions,
  splitClark,
  stripInvalidXmlChars,
  type XmlElement,
  XmlError,
  type XmlNode,
} from "./xml.ts";
