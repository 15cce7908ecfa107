import assert from "node:assert/strict";
import {
  davPushProperties,
  invalidTopics,
  invalidTopicsXml,
  isUnsubscribe,
  multistatusXml,
  parseDiscovery,
  parsePropfind,
  parseRfc3339,
  parseSubscribe,
  propfindResponse,
  PUSH,
  toPushSubscribe,
} from "./dav_push.ts";
import { childElement, NS, parseXml, XmlError, type XmlNode } from "./xml.ts";

const P = NS.PUSH;
const transports = [
  {
    transportUri: "https://relay.example/transports/web-push",
    refreshInterval: 172800,
    transportData: { "vapid-public-key": "BNc_key" },
  },
  { transportUri: "https://relay.example/transports/fcm", refreshInterval: 172800 },
];

function subscribeXml(opts: { prefix?: string; topics?: string[]; expires?: string } = {}) {
  const p = opts.prefix === undefined ? "P:" : opts.prefix;
  const decl = p === "" ? `xmlns="${P}"` : `xmlns:${p.slice(0, -1)}="${P}"`;
  const topics = (opts.topics ?? ["t1", "t2"]).map((t) => `<${p}topic>${t}</${p}topic>`).join("");
  return `<${p}subscribe ${decl}>${topics}<${p}selected-transport>` +
    `<${p}transport-uri>https://relay.example/transports/web-push</${p}transport-uri>` +
    `<${p}client-data>opaque.client-data</${p}client-data></${p}selected-transport>` +
    `<${p}expires>${opts.expires ?? "2026-07-03T08:00:00Z"}</${p}expires></${p}subscribe>`;
}

function refused(body: string, pattern: RegExp) {
  assert.throws(() => parseSubscribe(body), (err: unknown) => {
    assert.ok(err instanceof XmlError, String(err));
    assert.equal(err.status, 400);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("§6.2.2 subscribe parses the same with any prefix or the default namespace", () => {
  const expected = {
    topics: ["t1", "t2"],
    transportUri: "https://relay.example/transports/web-push",
    clientData: "opaque.client-data",
    expires: new Date("2026-07-03T08:00:00Z"),
  };
  assert.deepEqual(parseSubscribe(subscribeXml({ prefix: "P:" })), expected);
  assert.deepEqual(parseSubscribe(subscribeXml({ prefix: "push:" })), expected);
  assert.deepEqual(parseSubscribe(subscribeXml({ prefix: "" })), expected);
  assert.deepEqual(parseSubscribe(new TextEncoder().encode(subscribeXml())), expected);
});

Deno.test("§6.2.2 subscribe ignores elements of other namespaces and drops duplicate topics", () => {
  const body = subscribeXml({ topics: ["t1", "t1", " t2 "] }).replace(
    "<P:selected-transport>",
    '<X:extra xmlns:X="urn:other">ignored</X:extra><P:selected-transport>',
  );
  assert.deepEqual(parseSubscribe(body).topics, ["t1", "t2"]);
});

Deno.test("§6.2.2 subscribe refuses an unbound prefix, a DOCTYPE and malformed XML", () => {
  refused(subscribeXml().replace(` xmlns:P="${P}"`, ""), /unbound namespace prefix/);
  refused(`<!DOCTYPE P:subscribe>${subscribeXml()}`, /DOCTYPE/);
  refused(subscribeXml().slice(0, -5), /Malformed/);
});

Deno.test("§6.2.2 subscribe (topic+, selected-transport, expires) refuses a missing element", () => {
  refused(subscribeXml({ topics: [] }), /Missing element .*topic/);
  refused(subscribeXml().replace(/<P:expires>.*<\/P:expires>/, ""), /Missing element .*expires/);
  refused(
    subscribeXml().replace(/<P:client-data>.*<\/P:client-data>/, ""),
    /Missing element .*client-data/,
  );
  refused(subscribeXml({ topics: ["  "] }), /topic.* is empty/);
  // A DAV:-namespaced subscribe is not a DAV-Push subscribe.
  refused(subscribeXml().replaceAll(P, "DAV:"), /Expected root element/);
});

Deno.test("§6.2.2 subscribe refuses an expires that is not RFC 3339", () => {
  refused(subscribeXml({ expires: "tomorrow" }), /not an RFC 3339 date-time: "tomorrow"/);
  refused(subscribeXml({ expires: "2026-13-01T00:00:00Z" }), /RFC 3339/);
  assert.equal(
    parseRfc3339("2026-07-03T10:00:00+02:00")?.toISOString(),
    "2026-07-03T08:00:00.000Z",
  );
  assert.equal(parseRfc3339("2026-07-03t08:00:00.5z")?.toISOString(), "2026-07-03T08:00:00.500Z");
});

Deno.test("subscribe refuses a body over 64 KiB with 413", () => {
  const body = subscribeXml({ topics: Array.from({ length: 4000 }, (_, i) => `topic-${i}`) });
  assert.throws(() => parseSubscribe(body), (err: unknown) => {
    assert.ok(err instanceof XmlError);
    assert.equal(err.status, 413);
    return true;
  });
});

Deno.test("§6.1.2 toPushSubscribe() gives the gateway's JSON with selected-transport, UTC expires", () => {
  const sub = parseSubscribe(subscribeXml({ expires: "2026-07-03T10:00:00+02:00" }));
  assert.deepEqual(toPushSubscribe(sub), {
    "push-subscribe": {
      topics: ["t1", "t2"],
      "selected-transport": {
        "transport-uri": "https://relay.example/transports/web-push",
        "client-data": "opaque.client-data",
      },
      expires: "2026-07-03T08:00:00Z",
    },
  });
});

Deno.test("§5.2.2 a subscribe with a past expires is an unsubscribe", () => {
  const sub = parseSubscribe(subscribeXml({ expires: "1970-01-01T00:00:00Z" }));
  assert.equal(isUnsubscribe(sub, new Date("2026-01-01T00:00:00Z")), true);
  assert.equal(toPushSubscribe(sub)["push-subscribe"].expires, "1970-01-01T00:00:00Z");
  const later = parseSubscribe(subscribeXml({ expires: "2026-07-03T08:00:00Z" }));
  assert.equal(isUnsubscribe(later, new Date("2026-01-01T00:00:00Z")), false);
});

Deno.test("§5.2.3.2 invalid-topics lists each refused topic in a D:error", () => {
  assert.deepEqual(invalidTopics(["a", "b", "c"], (t) => t !== "b"), ["b"]);
  const xml = invalidTopicsXml(["b", "x<y"]);
  const root = parseXml(xml);
  assert.equal(root.name, "{DAV:}error");
  const list = childElement(root, PUSH.invalidTopics)!;
  assert.deepEqual(list.children.map((c) => [c.name, c.text]), [
    [PUSH.topic, "b"],
    [PUSH.topic, "x<y"],
  ]);
  assert.match(xml, /<D:error xmlns:D="DAV:" xmlns:P="urn:ietf:params:xml:ns:dav-push">/);
});

Deno.test("§6.2.1 discovery properties: subscribe-URL href, transports from bootstrap, topic, version 1", () => {
  const props = davPushProperties({
    subscribeUrl: "https://bridge.example/subscribe",
    transports: [...transports, transports[0]!],
    topic: "q9Xc1vLrT0mJ2aBd",
  });
  const xml = multistatusXml([propfindResponse("/collections/0/", { kind: "allprop" }, props)]);
  const found = parseDiscovery(xml);
  assert.deepEqual(found, {
    subscribeUrl: "https://bridge.example/subscribe",
    // §6.2.1.2: transport-uri values are unique within the set.
    transports,
    topic: "q9Xc1vLrT0mJ2aBd",
    version: "1",
  });
  assert.match(xml, /<P:transport-data><P:vapid-public-key>BNc_key<\/P:vapid-public-key>/);
  assert.match(xml, /<D:status>HTTP\/1.1 200 OK<\/D:status>/);
});

Deno.test("§6.2.1 PROPFIND answers the alternative names push-subscribe-URL and push-version", () => {
  const props = davPushProperties({ subscribeUrl: "https://b.example/subscribe", transports });
  const request = parsePropfind(
    `<propfind xmlns="DAV:" xmlns:x="${P}"><prop><x:push-subscribe-URL/><x:push-version/>` +
      `<x:topic/><getetag/></prop></propfind>`,
  );
  const xml = multistatusXml([propfindResponse("/c/", request, props)]);
  assert.match(xml, /<P:push-subscribe-URL><D:href>https:\/\/b.example\/subscribe<\/D:href>/);
  assert.match(xml, /<P:push-version>1<\/P:push-version>/);
  // Unknown (or absent) properties come back in a 404 propstat, as WebDAV does.
  assert.match(
    xml,
    /<D:propstat><D:prop><P:topic\/><D:getetag\/><\/D:prop><D:status>HTTP\/1.1 404 Not Found/,
  );
  // And a client reading either name gets the same answer.
  const found = parseDiscovery(xml);
  assert.equal(found.subscribeUrl, "https://b.example/subscribe");
  assert.equal(found.version, "1");
});

Deno.test("PROPFIND propname lists names only; an empty body means allprop (RFC 4918 §9.1)", () => {
  assert.deepEqual(parsePropfind(""), { kind: "allprop" });
  assert.deepEqual(parsePropfind(new Uint8Array()), { kind: "allprop" });
  assert.deepEqual(parsePropfind('<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'), {
    kind: "propname",
  });
  const props = davPushProperties({ subscribeUrl: "https://b/s", transports, topic: "t" });
  const xml = multistatusXml([propfindResponse("/c/", { kind: "propname" }, props)]);
  assert.match(xml, /<P:subscribe-URL\/><P:supported-transport-set\/><P:topic\/><P:version\/>/);
  assert.throws(() => parsePropfind('<D:x xmlns:D="DAV:"/>'), XmlError);
});

Deno.test("a property with a status (e.g. 503) gets its own propstat", () => {
  const props = new Map<string, XmlNode | number>(
    davPushProperties({ subscribeUrl: "https://b/s", transports: [] }),
  );
  props.set(PUSH.supportedTransportSet, 503);
  const xml = multistatusXml([propfindResponse("/c/", { kind: "allprop" }, props)]);
  assert.match(
    xml,
    /<P:supported-transport-set\/><\/D:prop><D:status>HTTP\/1.1 503 Service Unavailable/,
  );
});

Deno.test("parseDiscovery() resolves a relative subscribe-URL and reads a string transport-data", () => {
  const xml =
    `<multistatus xmlns="DAV:" xmlns:P="${P}"><response><href>/c/</href><propstat><prop>` +
    `<P:push-subscribe-URL><href>/sub</href></P:push-subscribe-URL><P:supported-transport-set>` +
    `<P:transport><P:transport-uri>urn:x</P:transport-uri><P:transport-data>abc</P:transport-data>` +
    `<P:refresh-interval>60</P:refresh-interval></P:transport><P:transport/></P:supported-transport-set>` +
    `</prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>`;
  assert.deepEqual(parseDiscovery(xml, { baseUrl: "https://h.example/c/" }), {
    subscribeUrl: "https://h.example/sub",
    transports: [{ transportUri: "urn:x", transportData: "abc", refreshInterval: 60 }],
  });
});
