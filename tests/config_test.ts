/**
 * Configuration (README "Configuration"): parsed once, validated, with errors naming the variable.
 */

import assert from "node:assert/strict";
import { ConfigError, loadConfig, parseApps } from "../lib/config.ts";

function refused(env: Record<string, string>, variable: string) {
  assert.throws(() => loadConfig(env), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.variable, variable);
    assert.ok(err.message.startsWith(`${variable}:`));
    return true;
  });
}

Deno.test("loadConfig() with no environment gives the contract's defaults (dev mode)", () => {
  const c = loadConfig({});
  assert.equal(c.port, 8000);
  assert.equal(c.publicUrl, "http://localhost:8000");
  assert.equal(c.kvPath, undefined);
  assert.equal(c.apps, null);
  assert.equal(c.secret, null);
  assert.equal(c.vapid, null);
  assert.equal(c.vapidSubject, "mailto:relay@localhost");
  assert.equal(c.refreshInterval, 604800);
  assert.equal(c.clientIpHeader, null);
  assert.equal(c.corsOrigins, null);
  assert.equal(c.metricsToken, null);
  assert.equal(c.adminToken, null);
  assert.equal(c.requestTimeoutMs, 10_000);
  assert.equal(c.upstream, null);
  assert.equal(loadConfig({ DENO_DEPLOYMENT_ID: "x" }).encryptionWorkers, 0);
  assert.ok(c.encryptionWorkers >= 1 && c.encryptionWorkers <= 4);
  assert.equal(c.ttl, 86400);
  assert.equal(c.coalesceMs, 2000);
  assert.equal(c.registrationRateLimit, 60);
  assert.equal(c.allowPrivateEndpoints, false);
  assert.equal(c.fcm, null);
  assert.equal(c.apns, null);
  assert.equal(c.leaseMs, 15_000);
  const https = loadConfig({ RELAY_PUBLIC_URL: "https://push.example.org/", PORT: "9000" });
  assert.equal(https.publicUrl, "https://push.example.org");
  assert.equal(https.vapidSubject, "https://push.example.org");
});

Deno.test("loadConfig() notes an outbound proxy (for fetch) and Deno Deploy (for one log record per line)", () => {
  assert.equal(loadConfig({}).outboundProxy, false);
  assert.equal(loadConfig({ HTTPS_PROXY: "" }).outboundProxy, false);
  for (const name of ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"]) {
    assert.equal(loadConfig({ [name]: "http://proxy.internal:3128" }).outboundProxy, true, name);
  }
  assert.equal(loadConfig({}).onDenoDeploy, false);
  assert.equal(loadConfig({ DENO_DEPLOYMENT_ID: "abc123" }).onDenoDeploy, true);
});

Deno.test("parseApps() reads id:token pairs and path-authenticated apps with an empty token", () => {
  const id = "a".repeat(32);
  assert.deepEqual(parseApps(`ox:${"t".repeat(16)}, ${id}:`), [
    { id: "ox", token: "t".repeat(16) },
    { id, token: null },
  ]);
});

Deno.test("A bad RELAY_APPS stops the relay with a message naming the variable", () => {
  for (
    const apps of [
      "no-colon",
      "short:",
      `dup:${"t".repeat(16)},dup:${"u".repeat(16)}`,
      `same1:${"t".repeat(16)},same2:${"t".repeat(16)}`,
      "weak:short",
      `bad/id:${"t".repeat(16)}`,
      ",",
    ]
  ) refused({ RELAY_APPS: apps }, "RELAY_APPS");
});

Deno.test("Bad keys, URLs and numbers name their variable", () => {
  refused({ RELAY_SECRET: "too-short" }, "RELAY_SECRET");
  refused({ RELAY_SECRET: "!!!not base64!!!".repeat(4) }, "RELAY_SECRET");
  refused({ RELAY_VAPID_PUBLIC_KEY: "B".repeat(87) }, "RELAY_VAPID_PRIVATE_KEY");
  refused(
    { RELAY_VAPID_PUBLIC_KEY: "AA", RELAY_VAPID_PRIVATE_KEY: "A".repeat(43) },
    "RELAY_VAPID_PUBLIC_KEY",
  );
  refused({ RELAY_PUBLIC_URL: "not a url" }, "RELAY_PUBLIC_URL");
  refused({ RELAY_PUBLIC_URL: "ftp://x.example" }, "RELAY_PUBLIC_URL");
  refused({ PORT: "eighty" }, "PORT");
  refused({ PORT: "70000" }, "PORT");
  refused({ RELAY_TTL: "-1" }, "RELAY_TTL");
  refused({ RELAY_REFRESH_INTERVAL: "0" }, "RELAY_REFRESH_INTERVAL");
  refused({ RELAY_COALESCE_MS: "1.5" }, "RELAY_COALESCE_MS");
  refused({ RELAY_ALLOW_PRIVATE_ENDPOINTS: "yes" }, "RELAY_ALLOW_PRIVATE_ENDPOINTS");
  refused({ RELAY_VAPID_SUBJECT: "someone" }, "RELAY_VAPID_SUBJECT");
  refused({ RELAY_LEASE_MS: "10" }, "RELAY_LEASE_MS");
  refused({ RELAY_FCM_SERVICE_ACCOUNT: "{not json" }, "RELAY_FCM_SERVICE_ACCOUNT");
  refused({ RELAY_APNS_KEY: "x" }, "RELAY_APNS_KEY_ID");
  refused({
    RELAY_APNS_KEY: "not a pem",
    RELAY_APNS_KEY_ID: "K",
    RELAY_APNS_TEAM_ID: "T",
    RELAY_APNS_TOPIC: "b",
  }, "RELAY_APNS_KEY");
});

Deno.test("Config errors never echo a secret value", () => {
  const secret = "s3cr3t-value-that-must-not-leak!";
  try {
    loadConfig({ RELAY_SECRET: secret });
    assert.fail("should throw");
  } catch (err) {
    assert.equal((err as Error).message.includes(secret), false);
  }
  try {
    loadConfig({ RELAY_APPS: `x:${secret} spaces` });
    assert.fail("should throw");
  } catch (err) {
    assert.equal((err as Error).message.includes(secret), false);
  }
});

Deno.test("loadConfig() reads the operator variables: client address header, CORS, tokens, timeouts, workers, upstream", () => {
  const c = loadConfig({
    RELAY_CLIENT_IP_HEADER: "X-Forwarded-For",
    RELAY_CORS_ORIGINS: "https://app.example, http://localhost:5173",
    RELAY_METRICS_TOKEN: "metrics-token-0123456789",
    RELAY_ADMIN_TOKEN: "admin-token-0123456789ab",
    RELAY_REQUEST_TIMEOUT_MS: "5000",
    RELAY_ENCRYPTION_WORKERS: "0",
    RELAY_UPSTREAM_URL: "https://push.example.com/gateway/",
    RELAY_UPSTREAM_TOKEN: "upstream-token-012345",
  });
  assert.equal(c.clientIpHeader, "x-forwarded-for");
  assert.deepEqual(c.corsOrigins, ["https://app.example", "http://localhost:5173"]);
  assert.equal(c.metricsToken, "metrics-token-0123456789");
  assert.equal(c.adminToken, "admin-token-0123456789ab");
  assert.equal(c.requestTimeoutMs, 5000);
  assert.equal(c.encryptionWorkers, 0);
  assert.deepEqual(c.upstream, {
    url: "https://push.example.com/gateway",
    token: "upstream-token-012345",
  });
  assert.equal(loadConfig({ RELAY_CORS_ORIGINS: "*" }).corsOrigins, "*");
  refused({ RELAY_CORS_ORIGINS: "https://app.example/path" }, "RELAY_CORS_ORIGINS");
  refused({ RELAY_METRICS_TOKEN: "short" }, "RELAY_METRICS_TOKEN");
  refused({ RELAY_ADMIN_TOKEN: "has a space in it, long" }, "RELAY_ADMIN_TOKEN");
  refused({ RELAY_UPSTREAM_TOKEN: "upstream-token-012345" }, "RELAY_UPSTREAM_TOKEN");
  refused({ RELAY_UPSTREAM_URL: "ftp://x" }, "RELAY_UPSTREAM_URL");
  refused({ RELAY_REQUEST_TIMEOUT_MS: "soon" }, "RELAY_REQUEST_TIMEOUT_MS");
  refused({ RELAY_CLIENT_IP_HEADER: "bad header" }, "RELAY_CLIENT_IP_HEADER");
});
