import assert from "node:assert/strict";
import {
  formatHttpDate,
  parseHttpDate,
  parsePushDontNotify,
  parsePushMessage,
  parsePushRegister,
  pushErrorXml,
  pushMessageXml,
  pushPropertyFragments,
  requestedPushProperties,
  WP,
} from "./webdav_push.ts";
import { parseXml, XmlError } from "./xml.ts";

const P256DH =
  "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH = "BTBZMqHH6r4Tts7J_aSIgg";

// DAVx⁵ 4.5.19's body: no trigger, no content-encoding.
const DAVX5 =
  `<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><n0:push-register xmlns:n0="https://bitfire.at/webdav-push"><n0:subscription><n0:web-push-subscription><n0:push-resource>https://ntfy.example/upAbC123?up=1</n0:push-resource><n0:subscription-public-key type="p256dh">${P256DH}</n0:subscription-public-key><n0:auth-secret>${AUTH}</n0:auth-secret></n0:web-push-subscription></n0:subscription><n0:expires>Sun, 06 Dec 2026 12:47:00 GMT</n0:expires></n0:push-register>`;
// The draft's sample (default namespace, both triggers, infinity depth).
const DRAFT = `<push-register xmlns="https://bitfire.at/webdav-push" xmlns:D="DAV:">
  <subscription><web-push-subscription>
    <push-resource>https://up.example.net/yohd4yai5Phiz1wi</push-resource>
    <content-encoding>aes128gcm</content-encoding>
    <subscription-public-key type="p256dh">${P256DH}</subscription-public-key>
    <auth-secret>${AUTH}</auth-secret>
  </web-push-subscription></subscription>
  <trigger>
    <content-update><D:depth>infinity</D:depth></content-update>
    <property-update><D:depth>0</D:depth><D:prop><D:displayname/><D:owner/></D:prop></property-update>
  </trigger>
  <expires>Wed, 20 Dec 2023 10:03:31 GMT</expires>
</push-register>`;

Deno.test("parsePushRegister() takes DAVx⁵ 4.5.19's body as sent: any prefix, no trigger, no content-encoding, IMF-fixdate expires", () => {
  assert.deepEqual(parsePushRegister(DAVX5), {
    ok: true,
    subscription: {
      pushResource: "https://ntfy.example/upAbC123?up=1",
      p256dh: P256DH,
      auth: AUTH,
    },
    expires: Date.UTC(2026, 11, 6, 12, 47),
  });
  assert.deepEqual(
    parsePushRegister(DAVX5.replaceAll("n0:", "x:").replace("xmlns:n0", "xmlns:x")),
    parsePushRegister(DAVX5),
  );
});

Deno.test("parsePushRegister() takes the draft's form: default namespace, content-update among the triggers, any depth", () => {
  const r = parsePushRegister(DRAFT);
  assert.equal(r.ok, true);
  assert.equal(r.ok && r.expires, Date.UTC(2023, 11, 20, 10, 3, 31));
  // No expires is allowed (the server picks one).
  const none = parsePushRegister(DRAFT.replace(/<expires>.*<\/expires>/, ""));
  assert.equal(none.ok && none.expires, undefined);
});

Deno.test("parsePushRegister(): a trigger without content-update is no-supported-trigger", () => {
  for (
    const trigger of [
      "<trigger/>",
      "<trigger><property-update><D:depth>0</D:depth></property-update></trigger>",
    ]
  ) {
    const body = DRAFT.replace(/<trigger>[\s\S]*<\/trigger>/, trigger);
    const r = parsePushRegister(body);
    assert.equal(!r.ok && r.condition, "no-supported-trigger");
  }
});

Deno.test("parsePushRegister(): a missing or invalid subscription is invalid-subscription", () => {
  const cases: [string, string][] = [
    [
      "<content-encoding>aes128gcm</content-encoding>",
      "<content-encoding>aesgcm</content-encoding>",
    ],
    ["https://up.example.net/yohd4yai5Phiz1wi", "ftp://up.example.net/x"],
    ["https://up.example.net/yohd4yai5Phiz1wi", "not a url"],
    [`type="p256dh"`, `type="p384"`],
    [P256DH, P256DH.slice(0, 40)],
    [AUTH, "c2hvcnQ"],
    ["<web-push-subscription>", "<other-subscription>"],
  ];
  for (const [from, to] of cases) {
    const body = DRAFT.replace(from, to).replace(
      "</web-push-subscription>",
      to === "<other-subscription>" ? "</other-subscription>" : "</web-push-subscription>",
    );
    const r = parsePushRegister(body);
    assert.equal(!r.ok && r.condition, "invalid-subscription", to);
  }
  const twice = DRAFT.replace("</subscription>", "</subscription><subscription/>");
  assert.equal(!parsePushRegister(twice).ok, true);
});

Deno.test("parsePushRegister() refuses hostile or malformed XML with XmlError 400 (413 above 64 KiB)", () => {
  const bodies = [
    `<!DOCTYPE x [<!ENTITY a "b">]>${DAVX5.slice(DAVX5.indexOf("<n0:"))}`,
    DAVX5.replace('xmlns:n0="https://bitfire.at/webdav-push"', ""),
    `<D:propfind xmlns:D="DAV:"/>`,
    DAVX5.replace("Sun, 06 Dec 2026 12:47:00 GMT", "tomorrow"),
    "",
    "<n0:push-register",
  ];
  for (const b of bodies) {
    assert.throws(
      () => parsePushRegister(b),
      (e: unknown) => e instanceof XmlError && e.status === 400,
    );
  }
  const huge = DAVX5.replace("<n0:subscription>", `<x>${"y".repeat(70_000)}</x><n0:subscription>`);
  assert.throws(
    () => parsePushRegister(huge),
    (e: unknown) => e instanceof XmlError && e.status === 413,
  );
});

Deno.test("pushErrorXml() is a D:error with the precondition in the WebDAV-Push namespace", () => {
  assert.equal(
    pushErrorXml("no-supported-trigger"),
    '<?xml version="1.0" encoding="UTF-8"?>\n<D:error xmlns:D="DAV:" xmlns:P="https://bitfire.at/webdav-push"><P:no-supported-trigger/></D:error>',
  );
});

Deno.test("pushPropertyFragments() are self-contained: each parses alone with the right namespaces", () => {
  const f = pushPropertyFragments({ vapidPublicKey: "BKey", topic: "T_1" });
  const transports = parseXml(f.get(WP.transports)!);
  assert.equal(transports.children[0]!.name, WP.webPush);
  const key = transports.children[0]!.children[0]!;
  assert.equal(key.name, WP.vapidPublicKey);
  assert.deepEqual(key.attributes, { type: "p256ecdsa" });
  assert.equal(key.text, "BKey");
  assert.equal(parseXml(f.get(WP.topic)!).text, "T_1");
  const triggers = parseXml(f.get(WP.supportedTriggers)!);
  assert.equal(triggers.children[0]!.children[0]!.name, "{DAV:}depth");
  assert.equal(triggers.children[0]!.children[0]!.text, "1");
  // Without a key, no transports.
  assert.equal(pushPropertyFragments({ topic: "T" }).has(WP.transports), false);
});

Deno.test("requestedPushProperties() reads the WebDAV-Push names of a PROPFIND's D:prop, whatever their prefix", () => {
  const body =
    `<propfind xmlns="DAV:"><prop><resourcetype/><n0:transports xmlns:n0="https://bitfire.at/webdav-push"/><n1:topic xmlns:n1="https://bitfire.at/webdav-push"/></prop></propfind>`;
  assert.deepEqual(requestedPushProperties(parseXml(body)), [WP.transports, WP.topic]);
  assert.deepEqual(
    requestedPushProperties(parseXml(`<propfind xmlns="DAV:"><allprop/></propfind>`)),
    [],
  );
});

Deno.test("pushMessageXml() and parsePushMessage() round-trip; push-message must be the root", () => {
  const xml = pushMessageXml("O7M1nQ7cKkKTKsoS_j6Z3w", "http://example.com/sync/10");
  assert.deepEqual(parsePushMessage(xml), {
    topic: "O7M1nQ7cKkKTKsoS_j6Z3w",
    contentUpdate: true,
    syncToken: "http://example.com/sync/10",
    propertyUpdate: false,
  });
  assert.equal(parsePushMessage(pushMessageXml("t")).syncToken, undefined);
  assert.throws(() => parsePushMessage("<x:topic xmlns:x='https://bitfire.at/webdav-push'/>"));
});

Deno.test("parsePushDontNotify(): quoted URLs (escapes undone), repeated headers, unquoted URLs, and * for everyone", () => {
  assert.deepEqual(parsePushDontNotify('"https://b.example/push-subscriptions/a"'), {
    all: false,
    urls: ["https://b.example/push-subscriptions/a"],
  });
  assert.deepEqual(parsePushDontNotify(['"https://b/x", "https://b/y\\"z"', '"https://b/c,d"']), {
    all: false,
    urls: ["https://b/x", 'https://b/y"z', "https://b/c,d"],
  });
  assert.deepEqual(parsePushDontNotify("https://b/raw, ,"), {
    all: false,
    urls: ["https://b/raw"],
  });
  assert.deepEqual(parsePushDontNotify('"https://b/x", *'), { all: true });
  assert.deepEqual(parsePushDontNotify(null), { all: false, urls: [] });
});

Deno.test("RFC 9110 §5.6.7: HTTP dates in IMF-fixdate, RFC 850 and asctime; IMF-fixdate out", () => {
  const t = Date.UTC(1994, 10, 6, 8, 49, 37);
  assert.equal(parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT"), t);
  assert.equal(parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT", Date.UTC(2026, 0, 1)), t);
  assert.equal(parseHttpDate("Sun Nov  6 08:49:37 1994"), t);
  assert.equal(formatHttpDate(t), "Sun, 06 Nov 1994 08:49:37 GMT");
  for (
    const bad of [
      "Sun, 31 Feb 2026 00:00:00 GMT",
      "2026-01-01T00:00:00Z",
      "Sun, 06 Nov 1994 08:49:37 UTC",
    ]
  ) {
    assert.equal(parseHttpDate(bad), undefined, bad);
  }
});
