/**
 * The breaker key's origin (lib/delivery/sender.ts `endpointOrigin`), read off the endpoint
 * string without parsing it: always what the URL parser gives (RFC 6454 origins, WHATWG URL).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { endpointOrigin } from "../../lib/delivery/sender.ts";

const parsed = (s: string) => {
  try {
    return new URL(s).origin;
  } catch {
    return null;
  }
};

Deno.test("endpointOrigin() equals new URL().origin for push service endpoints and odd hosts", () => {
  for (
    const e of [
      "https://fcm.googleapis.com/fcm/send/abc:def",
      "https://updates.push.services.mozilla.com:443/wpush/v2/x",
      "https://web.push.apple.com/QGk?x=1",
      "http://a.example:80/x",
      "https://a.example:8443?x",
      "https://A.Example/x",
      "https://127.0.0.1:9/x",
      "https://0x7f.1/",
      "https://1.2.3.4.5/",
      "https://a.example.:1/",
      "https://a.example:0443/",
      "https://a.example:65536/",
      "https://xn--nxasmq6b.example/",
      "https://user:pw@a.example/",
      "https://[::1]:8/x",
      "https://a.example#x",
      "not a url",
      "mailto:x@a.example",
    ]
  ) assert.equal(endpointOrigin(e), parsed(e), e);
});

Deno.test("endpointOrigin() equals new URL().origin for generated http(s) URLs", () => {
  const host = fc.stringMatching(/^[a-zA-Z0-9.-]{0,20}$/);
  const url = fc.tuple(
    fc.constantFrom("http", "https", "HTTPS", "ftp"),
    host,
    fc.option(fc.integer({ min: 0, max: 70000 })),
    fc.constantFrom("", "/", "/p?q", "?q", "#f", "/a/b"),
  ).map(([scheme, h, port, rest]) => `${scheme}://${h}${port === null ? "" : `:${port}`}${rest}`);
  fc.assert(fc.property(url, (e) => endpointOrigin(e) === parsed(e)), { numRuns: 2000 });
});
