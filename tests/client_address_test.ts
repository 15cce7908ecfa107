/**
 * The rate-limit subject of `POST /registrations` (README "The client API"): the connection's
 * address, IPv6 per /64, IPv4-mapped as IPv4; `RELAY_CLIENT_IP_HEADER` (the last entry of
 * X-Forwarded-For, or the single value of CF-Connecting-IP) only when set.
 */

import assert from "node:assert/strict";
import { type Harness, harness, testSubscriptionKeys } from "./_harness.ts";

async function registerFrom(h: Harness, remote: string, headers: Record<string, string> = {}) {
  const { publicKey } = await testSubscriptionKeys();
  const res = await h.request("/registrations", {
    method: "POST",
    remote,
    headers,
    json: {
      transport: "web-push",
      subscription: {
        endpoint: `https://push.example.com/wpush/${crypto.randomUUID()}`,
        keys: { p256dh: publicKey, auth: "AAECAwQFBgcICQoLDA0ODw" },
      },
    },
  });
  await res.body?.cancel();
  return res.status;
}

Deno.test("addressSubject(): IPv4 as is, IPv6 per /64, IPv4-mapped as IPv4, ports and zones dropped, anything else null", async () => {
  const { addressSubject } = await import("../routes/client_address.ts");
  assert.equal(addressSubject("192.0.2.7"), "v4:192.0.2.7");
  assert.equal(addressSubject("192.0.2.7:4431"), "v4:192.0.2.7");
  assert.equal(addressSubject("2001:db8:1:2:3:4:5:6"), "v6:2001:db8:1:2::/64");
  assert.equal(addressSubject("2001:DB8:1:2::ffff"), "v6:2001:db8:1:2::/64");
  assert.equal(addressSubject("[2001:db8:1:2::1]:443"), "v6:2001:db8:1:2::/64");
  assert.equal(addressSubject("fe80::1%eth0"), "v6:fe80:0:0:0::/64");
  assert.equal(addressSubject("::ffff:192.0.2.7"), "v4:192.0.2.7");
  assert.equal(addressSubject("::1"), "v6:0:0:0:0::/64");
  for (const bad of ["", "unknown", "192.0.2", "1.2.3.4.5", "2001:db8::g", "[::1", "a b"]) {
    assert.equal(addressSubject(bad), null, bad);
  }
});

Deno.test("Rate limit subject: an IPv6 client is counted per /64; IPv4-mapped addresses count as their IPv4 address", async () => {
  const h = await harness({ RELAY_REGISTRATION_RATE_LIMIT: "2" });
  try {
    assert.equal(await registerFrom(h, "2001:db8:aa:bb::1"), 201);
    assert.equal(await registerFrom(h, "2001:db8:aa:bb:ffff:ffff:ffff:ffff"), 201);
    assert.equal(await registerFrom(h, "2001:db8:aa:bb::2"), 429, "same /64");
    assert.equal(await registerFrom(h, "2001:db8:aa:bc::1"), 201, "next /64");
    assert.equal(await registerFrom(h, "192.0.2.9"), 201);
    assert.equal(await registerFrom(h, "::ffff:192.0.2.9"), 201);
    assert.equal(await registerFrom(h, "192.0.2.9"), 429, "the mapped form counted too");
  } finally {
    await h.close();
  }
});

Deno.test("Rate limit subject: RELAY_CLIENT_IP_HEADER unset: the header is never read", async () => {
  const h = await harness({ RELAY_REGISTRATION_RATE_LIMIT: "1" });
  try {
    assert.equal(await registerFrom(h, "192.0.2.1", { "x-forwarded-for": "198.51.100.1" }), 201);
    assert.equal(await registerFrom(h, "192.0.2.1", { "x-forwarded-for": "198.51.100.2" }), 429);
  } finally {
    await h.close();
  }
});

Deno.test("Rate limit subject: RELAY_CLIENT_IP_HEADER=X-Forwarded-For counts the last entry (what the proxy appended)", async () => {
  const h = await harness({
    RELAY_REGISTRATION_RATE_LIMIT: "1",
    RELAY_CLIENT_IP_HEADER: "X-Forwarded-For",
  });
  try {
    const proxy = "10.0.0.2";
    assert.equal(await registerFrom(h, proxy, { "x-forwarded-for": "203.0.113.5" }), 201);
    // A client that forges earlier entries is still the same last entry.
    assert.equal(
      await registerFrom(h, proxy, { "x-forwarded-for": "198.51.100.77, 203.0.113.5" }),
      429,
    );
    assert.equal(await registerFrom(h, proxy, { "x-forwarded-for": "203.0.113.6" }), 201);
    assert.equal(
      await registerFrom(h, proxy, { "x-forwarded-for": "2001:db8:5::1, 2001:db8:7::1" }),
      201,
    );
    assert.equal(await registerFrom(h, proxy, { "x-forwarded-for": "2001:db8:7::2" }), 429);
    // Without a usable value the connection's address counts.
    assert.equal(await registerFrom(h, proxy), 201);
    assert.equal(await registerFrom(h, proxy, { "x-forwarded-for": "garbage" }), 429);
  } finally {
    await h.close();
  }
});

Deno.test("Rate limit subject: RELAY_CLIENT_IP_HEADER=CF-Connecting-IP counts its single value", async () => {
  const h = await harness({
    RELAY_REGISTRATION_RATE_LIMIT: "1",
    RELAY_CLIENT_IP_HEADER: "CF-Connecting-IP",
  });
  try {
    const edge = "172.70.0.1";
    assert.equal(await registerFrom(h, edge, { "cf-connecting-ip": "203.0.113.5" }), 201);
    assert.equal(await registerFrom(h, edge, { "cf-connecting-ip": "203.0.113.6" }), 201);
    assert.equal(await registerFrom(h, edge, { "cf-connecting-ip": "203.0.113.5" }), 429);
  } finally {
    await h.close();
  }
});
