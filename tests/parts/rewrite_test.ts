/**
 * The bridge's in-place rewriting of upstream XML (bridge/rewrite.ts): the WebDAV-Push
 * properties moved into the `200` propstat of watched collections, absolute upstream hrefs
 * given the bridge's origin, and every other byte left as the upstream sent it.
 */

import assert from "node:assert/strict";
import { rewriteUrl, rewriteXml } from "../../bridge/rewrite.ts";
import { pushPropertyFragments, WP } from "../../dav/webdav_push.ts";
import { parseXml } from "../../dav/xml.ts";

const UP = "http://127.0.0.1:5232";
const frags = pushPropertyFragments({ vapidPublicKey: "BKEY", topic: "TOPIC" });
const asked = (...names: string[]) => new Map([...frags].filter(([n]) => names.includes(n)));
const options = (props = asked(WP.transports, WP.topic), watched = "/alice/cal1/") => ({
  upstreamOrigin: UP,
  publicOrigin: "https://bridge.example",
  // The bridge matches a watched collection with or without its trailing slash.
  pushProperties: (path: string) => path === watched || `${path}/` === watched ? props : undefined,
});
const INSERTED = frags.get(WP.transports)! + frags.get(WP.topic)!;

// Radicale 3.1.8's answer to DAVx⁵'s Depth 1 PROPFIND on the home set (trimmed).
const HOME = `<?xml version='1.0' encoding='utf-8'?>
<multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav" xmlns:ns1="https://bitfire.at/webdav-push">` +
  `<response><href>/alice/</href><propstat><prop><resourcetype><principal /><collection /></resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat><propstat><prop><displayname /><ns1:transports /><ns1:topic /></prop><status>HTTP/1.1 404 Not Found</status></propstat></response>` +
  `<response><href>/alice/cal1/</href><propstat><prop><displayname>Cal</displayname><resourcetype><C:calendar /><collection /></resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat><propstat><prop><ns1:transports /><ns1:topic /><C:calendar-description /></prop><status>HTTP/1.1 404 Not Found</status></propstat></response>` +
  `</multistatus>`;

Deno.test("rewriteXml(): a watched collection's push properties move from the 404 propstat into the 200 one; every other byte stays", () => {
  const out = rewriteXml(HOME, options());
  const expected = HOME
    .replace(
      "<collection /></resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat><propstat><prop><ns1:transports /><ns1:topic /><C:calendar-description />",
      `<collection /></resourcetype>${INSERTED}</prop><status>HTTP/1.1 200 OK</status></propstat><propstat><prop><C:calendar-description />`,
    );
  assert.notEqual(expected, HOME);
  assert.equal(out, expected);
  // The home set (not watched) is left as the upstream sent it, 404s and all.
  assert.ok(out.includes("<displayname /><ns1:transports /><ns1:topic /></prop>"));
});

Deno.test("rewriteXml(): Xandikos' form (prefixes everywhere, status before prop, no 200 propstat): a 200 propstat is made and the emptied 404 one goes", () => {
  const xan =
    `<ns0:multistatus xmlns:ns0="DAV:" xmlns:ns2="https://bitfire.at/webdav-push"><ns0:response><ns0:href>/alice/cal1</ns0:href>` +
    `<ns0:propstat><ns0:status>HTTP/1.1 404 Not Found</ns0:status><ns0:prop><ns2:transports /><ns2:topic /></ns0:prop></ns0:propstat>` +
    `</ns0:response></ns0:multistatus>`;
  const out = rewriteXml(xan, options());
  assert.equal(
    out,
    `<ns0:multistatus xmlns:ns0="DAV:" xmlns:ns2="https://bitfire.at/webdav-push"><ns0:response><ns0:href>/alice/cal1</ns0:href>` +
      `<D:propstat xmlns:D="DAV:"><D:prop>${INSERTED}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>` +
      `</ns0:response></ns0:multistatus>`,
  );
  // Namespace-correct: the new elements read back under their names.
  const prop = parseXml(out).children[0]!.children[1]!.children[0]!;
  assert.deepEqual(prop.children.map((c) => c.name), [WP.transports, WP.topic]);
});

Deno.test("rewriteXml(): an empty <D:prop/> in the 200 propstat is opened; only the properties asked for are added", () => {
  const body =
    `<d:multistatus xmlns:d="DAV:"><d:response><d:href>/alice/cal1/</d:href><d:propstat><d:prop/><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>`;
  const out = rewriteXml(body, options(asked(WP.topic)));
  assert.equal(
    out,
    body.replace("<d:prop/>", `<d:prop>${frags.get(WP.topic)}</d:prop>`),
  );
});

Deno.test("rewriteXml(): push properties an upstream answered itself are replaced by the bridge's", () => {
  const body =
    `<multistatus xmlns="DAV:" xmlns:P="https://bitfire.at/webdav-push"><response><href>/alice/cal1/</href><propstat><prop><P:topic>theirs</P:topic></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>`;
  const out = rewriteXml(body, options(asked(WP.topic)));
  assert.equal(out, body.replace("<P:topic>theirs</P:topic>", frags.get(WP.topic)!));
});

Deno.test("rewriteXml(): absolute hrefs of the upstream's origin get the bridge's; paths, other origins and relative hrefs stay", () => {
  const body = `<multistatus xmlns="DAV:"><response><href>
    ${UP}/alice/a%20b.ics?x=1&amp;y=2</href><propstat><prop><owner><href>HTTP://127.0.0.1:5232/alice/</href></owner>` +
    `<current-user-principal><href>http://other.example/alice/</href></current-user-principal></prop>` +
    `<status>HTTP/1.1 200 OK</status></propstat></response><response><href>/alice/x</href><status>HTTP/1.1 404 Not Found</status></response></multistatus>`;
  const out = rewriteXml(body, { upstreamOrigin: UP, publicOrigin: "https://bridge.example" });
  assert.equal(
    out,
    body.replace(`${UP}/alice/a%20b`, "https://bridge.example/alice/a%20b")
      .replace("HTTP://127.0.0.1:5232/alice/", "https://bridge.example/alice/"),
  );
  assert.equal(rewriteUrl(`${UP}/x/`, options()), "https://bridge.example/x/");
  assert.equal(rewriteUrl("/x/", options()), "/x/");
  assert.equal(rewriteUrl("http://127.0.0.1:5233/x/", options()), "http://127.0.0.1:5233/x/");
});

Deno.test("rewriteXml(): a document it cannot read (malformed, DOCTYPE) is passed on as it is", () => {
  for (
    const body of [
      `<multistatus xmlns="DAV:"><response>`,
      `<!DOCTYPE x><multistatus xmlns="DAV:"/>`,
    ]
  ) {
    assert.equal(rewriteXml(body, options()), body);
  }
  // Nothing to change: the very same string.
  const plain = `<multistatus xmlns="DAV:"><response><href>/bob/</href></response></multistatus>`;
  assert.equal(rewriteXml(plain, options()), plain);
});
