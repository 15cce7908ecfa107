/**
 * `Via` (RFC 9110 §7.6.3): parsing at the edge (routes/gateway.ts), and the list a forwarded
 * request carries (lib/upstream.ts).
 */

import assert from "node:assert/strict";
import { RelayError } from "../../lib/errors.ts";
import { appendVia, formatVia, viaNames } from "../../lib/upstream.ts";
import { parseVia } from "../../routes/gateway.ts";

Deno.test("parseVia() reads each hop's protocol and received-by, oldest first, and drops comments", () => {
  assert.deepEqual(
    parseVia("1.0 fred, 1.1 p.example.net (Apache/1.1), HTTP/2 [2001:db8::1]:8443"),
    [
      { protocol: "1.0", receivedBy: "fred" },
      { protocol: "1.1", receivedBy: "p.example.net" },
      { protocol: "HTTP/2", receivedBy: "[2001:db8::1]:8443" },
    ],
  );
});

Deno.test("parseVia() keeps commas and parentheses inside comments, and skips empty list elements", () => {
  assert.deepEqual(parseVia(" , 1.1 a (one, two (nested \\) ,) three),,1.1 b:8080 ,"), [
    { protocol: "1.1", receivedBy: "a" },
    { protocol: "1.1", receivedBy: "b:8080" },
  ]);
});

Deno.test("parseVia() of no header is an empty list", () => {
  assert.deepEqual(parseVia(undefined), []);
  assert.deepEqual(parseVia(null), []);
  assert.deepEqual(parseVia(""), []);
});

Deno.test("parseVia() refuses an element without received-by, an unclosed comment or stray text with 400 invalid-request", () => {
  for (const bad of ["1.1", "1.1 a (unclosed", "1.1 a b", "1.1 a, ??? b", "1.1 (x) a"]) {
    assert.throws(() => parseVia(bad), (err: unknown) => {
      assert.ok(err instanceof RelayError, bad);
      assert.equal(err.status, 400);
      assert.equal(err.code, "invalid-request");
      return true;
    });
  }
});

Deno.test("appendVia() adds `1.1 <id>` after the incoming hops; formatVia() writes the list back", () => {
  const incoming = parseVia("1.0 fred, 1.1 p.example.net (Apache/1.1)");
  const out = appendVia(incoming, "relay-abc");
  assert.equal(formatVia(out), "1.0 fred, 1.1 p.example.net, 1.1 relay-abc");
  assert.deepEqual(parseVia(formatVia(out)), out);
  assert.equal(formatVia(appendVia([], "relay-abc")), "1.1 relay-abc");
  // The input is not changed.
  assert.equal(incoming.length, 2);
});

Deno.test("viaNames() finds the relay's own id among the hops, case-insensitively, and nothing else", () => {
  const hops = parseVia("1.1 proxy, HTTP/1.1 Relay-AbC");
  assert.equal(viaNames(hops, "relay-abc"), true);
  assert.equal(viaNames(hops, "relay-abd"), false);
  assert.equal(viaNames(parseVia("1.1 relay-abc.example"), "relay-abc"), false);
  assert.equal(viaNames([], "relay-abc"), false);
});
