import assert from "node:assert/strict";
import {
  el,
  escapeXmlText,
  parseXml,
  serializeXml,
  stripInvalidXmlChars,
  XmlError,
} from "./xml.ts";

function refused(input: string | Uint8Array, status: 400 | 413, pattern: RegExp) {
  assert.throws(
    () => parseXml(input, { maxBytes: 1024, maxDepth: 8, maxElements: 50 }),
    (err: unknown) => {
      assert.ok(err instanceof XmlError, `expected XmlError, got ${err}`);
      assert.equal(err.status, status);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

Deno.test("parseXml() gives the same Clark names for a prefix and the default namespace", () => {
  const prefixed = parseXml('<D:prop xmlns:D="DAV:"><D:getetag/></D:prop>');
  const defaulted = parseXml('<prop xmlns="DAV:"><getetag/></prop>');
  const other = parseXml('<a:prop xmlns:a="DAV:"><a:getetag/></a:prop>');
  for (const root of [prefixed, defaulted, other]) {
    assert.equal(root.name, "{DAV:}prop");
    assert.equal(root.children[0]!.name, "{DAV:}getetag");
  }
});

Deno.test("parseXml() does not read a DAV: local name bound to another namespace as DAV:", () => {
  const root = parseXml('<D:prop xmlns:D="urn:not-dav"/>');
  assert.equal(root.name, "{urn:not-dav}prop");
});

Deno.test("parseXml() collects text, CDATA and predefined entities, and Clark-named attributes", () => {
  const root = parseXml('<x a="1" xmlns:q="urn:q" q:b="2">t<![CDATA[<c>]]>&amp;&#x41;</x>');
  assert.equal(root.text, "t<c>&A");
  assert.deepEqual(root.attributes, { a: "1", "{urn:q}b": "2" });
});

Deno.test("parseXml() refuses any DOCTYPE, with or without entities (no XXE, no billion laughs)", () => {
  refused("<!DOCTYPE x><x/>", 400, /DOCTYPE/);
  refused('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', 400, /DOCTYPE/);
  refused('<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/hostname">]><x>&xxe;</x>', 400, /DOCTYPE/);
});

Deno.test("parseXml() refuses malformed XML with 400 and never another error type", () => {
  refused("<D:x/>", 400, /unbound namespace prefix/);
  refused("<x></y>", 400, /Malformed/);
  refused("<x/><y/>", 400, /only one root/);
  refused("<x>", 400, /unclosed/);
  refused("garbage", 400, /Malformed/);
  refused("", 400, /empty/);
  refused("<x>&undefined;</x>", 400, /undefined entity/);
  refused(new Uint8Array([0x3c, 0x78, 0x3e, 0xff, 0x3c, 0x2f, 0x78, 0x3e]), 400, /UTF-8/);
});

Deno.test("parseXml() refuses a body over the size limit with 413", () => {
  refused(`<x>${"a".repeat(2000)}</x>`, 413, /larger than 1024 bytes/);
  refused(new Uint8Array(1025).fill(0x20), 413, /larger than 1024 bytes/);
  // A string of few UTF-16 units but many UTF-8 bytes is measured in bytes.
  refused(`<x>${"€".repeat(400)}</x>`, 413, /larger than 1024 bytes/);
});

Deno.test("parseXml() refuses nesting deeper than maxDepth and more than maxElements", () => {
  refused("<a>".repeat(9) + "</a>".repeat(9), 400, /deeper than 8/);
  parseXml("<a>".repeat(8) + "</a>".repeat(8), { maxDepth: 8 });
  refused(`<r>${"<e/>".repeat(60)}</r>`, 400, /more than 50 elements/);
});

Deno.test("serializeXml() declares fixed prefixes once on the root and escapes text", () => {
  const xml = serializeXml(
    el("{DAV:}multistatus", el("{DAV:}href", 'a&b <c> "q" ]]>'), el("{urn:x}foo"), el("bar")),
  );
  assert.equal(
    xml,
    '<?xml version="1.0" encoding="UTF-8"?>\n<D:multistatus xmlns:D="DAV:" xmlns:ns0="urn:x">' +
      '<D:href>a&amp;b &lt;c&gt; "q" ]]&gt;</D:href><ns0:foo/><bar/></D:multistatus>',
  );
  // What we write, we can read back.
  const back = parseXml(xml);
  assert.equal(back.children[0]!.text, 'a&b <c> "q" ]]>');
  assert.equal(back.children[2]!.name, "bar");
});

Deno.test("serializeXml() drops characters outside XML 1.0 so the output stays well-formed", () => {
  const nasty = "ok\u0000\u0001\u0008\u000B\u000C\u001F\uFFFE\uFFFF\uD800end\u{1F600}\t\n";
  assert.equal(stripInvalidXmlChars(nasty), "okend\u{1F600}\t\n");
  const xml = serializeXml(
    { name: "{DAV:}x", attributes: { a: 'v"\u0001\n' }, children: [nasty] },
    { declaration: false },
  );
  const back = parseXml(xml);
  assert.equal(back.text, "okend\u{1F600}\t\n");
  assert.equal(back.attributes["a"], 'v"\n');
  assert.equal(escapeXmlText("\r"), "&#13;");
});

Deno.test("serializeXml() refuses an element name that is not an XML name", () => {
  assert.throws(() => serializeXml(el("{DAV:}bad name")), TypeError);
  assert.throws(() => serializeXml(el("{DAV:}<x>")), TypeError);
});
