/**
 * The endpoint policy (lib/address_policy.ts): the table of refused ranges, each probed just
 * inside and just outside, the strict IP parsers, the port rule, and registration through
 * `POST /registrations`. Connections are in endpoint_rebinding_test.ts.
 */

import assert from "node:assert/strict";
import {
  checkHost,
  endpointRefusal,
  isAllowedPort,
  isPublicAddress,
  parseIpv4,
  parseIpv6,
  REFUSED_RANGES,
  refusedRange,
} from "../lib/address_policy.ts";
import { harness, testSubscriptionKeys } from "./_harness.ts";

/**
 * Per refused range: addresses inside it (it is the narrowest range they are in), and
 * neighbours just outside it with the range they fall in instead (null: public).
 */
const PROBES: Record<string, { inside: string[]; outside: [string, string | null][] }> = {
  "0.0.0.0/8": { inside: ["0.0.0.0", "0.255.255.255"], outside: [["1.0.0.0", null]] },
  "10.0.0.0/8": {
    inside: ["10.0.0.0", "10.255.255.255"],
    outside: [["9.255.255.255", null], ["11.0.0.0", null]],
  },
  "100.64.0.0/10": {
    inside: ["100.64.0.0", "100.127.255.255"],
    outside: [["100.63.255.255", null], ["100.128.0.0", null]],
  },
  "127.0.0.0/8": {
    inside: ["127.0.0.1", "127.255.255.255"],
    outside: [["126.255.255.255", null], ["128.0.0.0", null]],
  },
  "169.254.0.0/16": {
    inside: ["169.254.0.0", "169.254.169.254"],
    outside: [["169.253.255.255", null], ["169.255.0.0", null]],
  },
  "172.16.0.0/12": {
    inside: ["172.16.0.0", "172.31.255.255"],
    outside: [["172.15.255.255", null], ["172.32.0.0", null]],
  },
  "192.0.0.0/24": {
    inside: ["192.0.0.0", "192.0.0.255"],
    outside: [["191.255.255.255", null], ["192.0.1.0", null]],
  },
  "192.0.2.0/24": {
    inside: ["192.0.2.0", "192.0.2.255"],
    outside: [["192.0.1.255", null], ["192.0.3.0", null]],
  },
  "192.88.99.0/24": {
    inside: ["192.88.99.0", "192.88.99.255"],
    outside: [["192.88.98.255", null], ["192.88.100.0", null]],
  },
  "192.168.0.0/16": {
    inside: ["192.168.0.0", "192.168.255.255"],
    outside: [["192.167.255.255", null], ["192.169.0.0", null]],
  },
  "198.18.0.0/15": {
    inside: ["198.18.0.0", "198.19.255.255"],
    outside: [["198.17.255.255", null], ["198.20.0.0", null]],
  },
  "198.51.100.0/24": {
    inside: ["198.51.100.0", "198.51.100.255"],
    outside: [["198.51.99.255", null], ["198.51.101.0", null]],
  },
  "203.0.113.0/24": {
    inside: ["203.0.113.0", "203.0.113.255"],
    outside: [["203.0.112.255", null], ["203.0.114.0", null]],
  },
  "224.0.0.0/4": {
    inside: ["224.0.0.0", "239.255.255.255"],
    outside: [["223.255.255.255", null], ["240.0.0.0", "240.0.0.0/4"]],
  },
  "240.0.0.0/4": {
    inside: ["240.0.0.0", "255.255.255.254"],
    outside: [["239.255.255.255", "224.0.0.0/4"], ["255.255.255.255", "255.255.255.255/32"]],
  },
  "255.255.255.255/32": {
    inside: ["255.255.255.255"],
    outside: [["255.255.255.254", "240.0.0.0/4"]],
  },
  "::/128": { inside: ["::"], outside: [["::1", "::1/128"]] },
  "::1/128": { inside: ["::1"], outside: [["::2", "::/96"]] },
  "::/96": {
    inside: ["::2", "::7f00:1", "::127.0.0.1", "::ffff:ffff"],
    outside: [["::1:0:0", "::/3"]],
  },
  "::ffff:0:0/96": {
    inside: ["::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:8.8.8.8", "::ffff:0:0"],
    outside: [["::fffe:ffff:ffff", "::/3"], ["::1:0:0:0", "::/3"]],
  },
  "::ffff:0:0:0/96": {
    inside: ["::ffff:0:7f00:1", "::ffff:0:808:808"],
    outside: [["::ffff:1:0:0", "::/3"], ["::fffe:ffff:ffff:ffff", "::/3"]],
  },
  "64:ff9b::/96": {
    inside: ["64:ff9b::7f00:1", "64:ff9b::127.0.0.1", "64:ff9b::8.8.8.8"],
    outside: [["64:ff9b::1:0:0", "::/3"], ["64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", "::/3"]],
  },
  "64:ff9b:1::/48": {
    inside: ["64:ff9b:1::a00:1", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"],
    outside: [["64:ff9b:2::", "::/3"], ["64:ff9b:0:ffff:ffff:ffff:ffff:ffff", "::/3"]],
  },
  "100::/64": {
    inside: ["100::", "100::ffff:ffff:ffff:ffff"],
    outside: [["100:0:0:1::", "::/3"], ["ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/3"]],
  },
  "2001::/32": {
    inside: ["2001::", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:ffff:ffff:ffff:ffff::"],
    outside: [["2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", null], ["2001:1::", null]],
  },
  "2001:2::/48": {
    inside: ["2001:2::", "2001:2:0:ffff:ffff:ffff:ffff:ffff"],
    outside: [["2001:1:ffff:ffff:ffff:ffff:ffff:ffff", null], ["2001:2:1::", null]],
  },
  "2001:db8::/32": {
    inside: ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", null], ["2001:db9::", null]],
  },
  "2002::/16": {
    inside: ["2002::", "2002:7f00:1::1", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", null], ["2003::", null]],
  },
  "3fff::/20": {
    inside: ["3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", null], ["3fff:1000::", null]],
  },
  "fc00::/7": {
    inside: ["fc00::", "fd00::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::/1"], ["fe00::", "8000::/1"]],
  },
  "fe80::/10": {
    inside: ["fe80::", "fe80::1", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::/1"], ["fec0::", "fec0::/10"]],
  },
  "fec0::/10": {
    inside: ["fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::/10"], ["ff00::", "ff00::/8"]],
  },
  "ff00::/8": {
    inside: ["ff00::", "ff02::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fec0::/10"]],
  },
  "::/3": {
    inside: ["1::", "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["2000::", null]],
  },
  "4000::/2": {
    inside: ["4000::", "5f00::1", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    outside: [["3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", null], ["8000::", "8000::/1"]],
  },
  "8000::/1": {
    inside: ["8000::", "fbff::1"],
    outside: [["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "4000::/2"]],
  },
};

Deno.test("Endpoint policy: every refused range refuses the address just inside it and not the one just outside", () => {
  assert.deepEqual(Object.keys(PROBES).sort(), REFUSED_RANGES.map((r) => r.cidr).sort());
  for (const { cidr, source } of REFUSED_RANGES) {
    assert.match(source, /RFC \d+/, cidr);
    const { inside, outside } = PROBES[cidr]!;
    for (const ip of inside) {
      assert.equal(refusedRange(ip)?.cidr, cidr, `${ip} in ${cidr}`);
      assert.equal(isPublicAddress(ip), false, ip);
    }
    for (const [ip, other] of outside) {
      assert.equal(refusedRange(ip)?.cidr ?? null, other, `${ip} outside ${cidr}`);
      assert.equal(isPublicAddress(ip), other === null, ip);
    }
  }
});

Deno.test("Endpoint policy: ordinary public addresses of push services are allowed", () => {
  for (
    const ip of [
      "93.184.216.34",
      "8.8.8.8",
      "1.1.1.1",
      "142.250.74.106",
      "223.255.255.255",
      "2001:4860:4860::8888",
      "2a00:1450:4001:82b::200a",
      "2606:4700::6810:85e5",
      "2000::",
    ]
  ) {
    assert.equal(refusedRange(ip), null, ip);
    assert.equal(isPublicAddress(ip), true, ip);
  }
});

Deno.test("Endpoint policy: IP addresses are parsed strictly, and what does not parse is not public", () => {
  assert.deepEqual([...parseIpv4("192.0.2.1")!], [192, 0, 2, 1]);
  assert.deepEqual(
    [...parseIpv6("::ffff:1.2.3.4")!],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
  );
  assert.deepEqual([...parseIpv6("1:2:3:4:5:6:7::")!].slice(12), [0, 7, 0, 0]);
  assert.deepEqual([...parseIpv6("1:2:3:4:5:6:1.2.3.4")!].slice(10), [0, 6, 1, 2, 3, 4]);
  assert.deepEqual([...parseIpv6("::")!], Array(16).fill(0));
  for (
    const bad of [
      "010.0.0.1",
      "1.2.3",
      "1.2.3.4.5",
      "256.0.0.1",
      "0x7f.0.0.1",
      " 1.2.3.4",
      "1.2.3.-1",
      "",
    ]
  ) {
    assert.equal(parseIpv4(bad), null, bad);
    assert.equal(isPublicAddress(bad), false, bad);
  }
  for (
    const bad of [
      "1::2::3",
      ":1::",
      "1:::2",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "12345::",
      "fe80::1%eth0",
      "::ffff:1.2.3",
      "::ffff:1.2.3.4:1",
      "1.2.3.4::",
      "g::1",
    ]
  ) {
    assert.equal(parseIpv6(bad), null, bad);
    assert.equal(isPublicAddress(bad), false, bad);
  }
});

Deno.test("Endpoint policy: the port must be 443 or 1024-65535", () => {
  for (const port of [443, 1024, 8443, 65535]) assert.equal(isAllowedPort(port), true, `${port}`);
  for (const port of [0, 22, 25, 80, 442, 444, 1023, 65536, 1.5]) {
    assert.equal(isAllowedPort(port), false, `${port}`);
  }
});

const publicResolver = (host: string) =>
  Promise.resolve(host === "mixed.example.com" ? ["93.184.216.34", "10.0.0.1"] : ["93.184.216.34"]);

Deno.test("Endpoint policy at registration: scheme, credentials, port and every address of the host", async () => {
  const refusal = (endpoint: string) =>
    endpointRefusal(endpoint, { allowPrivate: false, resolve: publicResolver });
  for (
    const endpoint of [
      "https://push.example.com/x",
      "https://push.example.com:443/x",
      "https://push.example.com:1024/x",
      "https://push.example.com:65535/x",
      "https://93.184.216.34/x",
      "https://[2001:4860::1]/x",
    ]
  ) {
    assert.equal(await refusal(endpoint), null, endpoint);
  }
  const refused: [string, RegExp][] = [
    ["https://push.example.com:22/x", /port/],
    ["https://push.example.com:0/x", /port/],
    ["https://push.example.com:1023/x", /port/],
    ["https://push.example.com:80/x", /port/],
    ["http://push.example.com/x", /https:/],
    ["ftp://push.example.com/x", /https:/],
    ["https://user:pw@push.example.com/x", /credentials/],
    ["https://user@push.example.com/x", /credentials/],
    ["https://mixed.example.com/x", /non-public address/],
    ["https://localhost/x", /not a public name/],
    ["https://printer/x", /not a public name/],
    ["https://[::1]/x", /not public/],
    ["https://[::ffff:127.0.0.1]/x", /not public/],
    ["https://[::ffff:0:7f00:1]/x", /not public/],
    ["https://[::7f00:1]/x", /not public/],
    ["https://[64:ff9b::7f00:1]/x", /not public/],
    ["https://[64:ff9b:1::a00:1]/x", /not public/],
    ["https://[2002:7f00:1::1]/x", /not public/],
    ["https://[2001::1]/x", /not public/],
    ["https://[100::1]/x", /not public/],
    ["https://[2001:db8::1]/x", /not public/],
    ["https://[ff02::1]/x", /not public/],
    ["https://192.0.2.1/x", /not public/],
    ["https://198.51.100.1/x", /not public/],
    ["https://203.0.113.10/x", /not public/],
    ["https://192.88.99.1/x", /not public/],
    ["https://255.255.255.255/x", /not public/],
    ["https://0.0.0.0/x", /not public/],
    ["https://240.0.0.1/x", /not public/],
    ["https://198.18.0.1/x", /not public/],
    ["https://192.0.0.1/x", /not public/],
    // The URL parser reads these as 127.0.0.1.
    ["https://2130706433/x", /not public/],
    ["https://0x7f.1/x", /not public/],
    ["not a url", /absolute URL/],
  ];
  for (const [endpoint, reason] of refused) {
    const why = await refusal(endpoint);
    assert.match(why ?? "allowed", reason, endpoint);
    // Reasons name the rule, never the endpoint or its address.
    assert.equal(/example\.com|\d+\.\d+\.\d+|::/.test(why!), false, why!);
  }
});

Deno.test("Endpoint policy: a host with no address is unresolved, not refused, and a failing resolver is no address", async () => {
  assert.deepEqual(await checkHost("gone.example.com", () => Promise.resolve([])), {
    ok: false,
    kind: "unresolved",
    reason: "the endpoint's host name does not resolve",
  });
  assert.equal(
    (await checkHost("gone.example.com", () => Promise.reject(new Error("SERVFAIL")))).ok,
    false,
  );
  // One unparsable answer is enough to refuse.
  const odd = await checkHost("odd.example.com", () => Promise.resolve(["93.184.216.34", "x"]));
  assert.equal(odd.ok === false && odd.kind, "refused");
});

Deno.test("Endpoint policy through POST /registrations: the ranges and ports accepted before are refused with 400 endpoint-not-allowed", async () => {
  const h = await harness();
  try {
    const { publicKey } = await testSubscriptionKeys();
    const register = (endpoint: string) =>
      h.request("/registrations", {
        method: "POST",
        json: {
          transport: "web-push",
          subscription: { endpoint, keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" } },
        },
      });
    for (
      const endpoint of [
        "https://[64:ff9b::7f00:1]/x",
        "https://[64:ff9b:1::7f00:1]/x",
        "https://[2002:7f00:1::1]/x",
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
        "https://[::7f00:1]/x",
        "https://[::ffff:0:7f00:1]/x",
        "https://[100::1]/x",
        "https://192.0.2.1/x",
        "https://198.51.100.1/x",
        "https://203.0.113.1/x",
        "https://192.88.99.1/x",
        "https://push.example.com:22/x",
        "https://push.example.com:0/x",
      ]
    ) {
      const res = await register(endpoint);
      assert.equal(res.status, 400, endpoint);
      const body = await res.json();
      assert.equal(body.error.code, "endpoint-not-allowed", endpoint);
    }
    for (const port of ["", ":443", ":1024", ":65535"]) {
      const res = await register(`https://push.example.com${port}/wpush/${port.slice(1)}`);
      assert.equal(res.status, 201, port);
      await res.body?.cancel();
    }
  } finally {
    await h.close();
  }
});
