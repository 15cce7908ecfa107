/**
 * HTTP details of README "Errors and operations" and "The client API": 405 with Allow (HEAD
 * wherever GET), 415 for compressed JSON, RELAY_METRICS_TOKEN, request logs that mask every
 * capability wherever it stands, a body broken off mid-way (400, no error line), and CORS
 * headers as a browser sees them (the browser itself: tests/cors_browser_test.ts).
 */

import assert from "node:assert/strict";
import { APP_TOKEN, type Harness, harness, PATH_APP } from "./_harness.ts";

const METRICS_TOKEN = "metrics-token-0123456789abcdef";

function errorLines(h: Harness) {
  return h.logger.lines.filter((l) => l.level === "error" || l.level === "warn");
}

Deno.test("A known path with a method it does not serve is 405 with Allow; HEAD is served wherever GET is", async () => {
  const h = await harness();
  try {
    const cases: [string, string, string][] = [
      ["GET", "/gateway", "POST"],
      ["PUT", `/gateway/${PATH_APP}`, "POST"],
      ["GET", "/registrations", "POST"],
      ["GET", "/registrations/some-client", "DELETE"],
      ["POST", "/transports", "GET, HEAD"],
      ["DELETE", "/healthz", "GET, HEAD"],
      ["POST", "/metrics", "GET, HEAD"],
      ["GET", "/push/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "POST"],
      ["OPTIONS", "/registrations", "POST"],
      ["HEAD", "/gateway", "POST"],
    ];
    for (const [method, path, allow] of cases) {
      const res = await h.request(path, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get("allow"), allow, `${method} ${path}`);
      if (method !== "HEAD") assert.equal((await res.json()).error.code, "method-not-allowed");
      else assert.equal(await res.text(), "");
    }
    for (const path of ["/healthz", "/metrics", "/transports"]) {
      const head = await h.request(path, { method: "HEAD" });
      assert.equal(head.status, 200, path);
      assert.equal(await head.text(), "");
    }
    assert.equal((await h.request("/nope", { method: "GET" })).status, 404);
    assert.equal((await h.request("/gateway/a/b", { method: "POST" })).status, 404);
  } finally {
    await h.close();
  }
});

Deno.test("A JSON body with a Content-Encoding other than identity is 415, and changes nothing", async () => {
  const h = await harness();
  try {
    const before = await h.dump();
    const body = JSON.stringify({ "push-transports": [] });
    for (const encoding of ["gzip", "br", "deflate", "gzip, identity", "x-unknown"]) {
      for (const path of ["/gateway", "/registrations"]) {
        const res = await h.request(path, {
          method: "POST",
          headers: { "content-type": "application/json", "content-encoding": encoding },
          body,
        });
        assert.equal(res.status, 415, `${path} ${encoding}`);
        assert.equal((await res.json()).error.code, "unsupported-content-encoding");
      }
    }
    const identity = await h.request("/gateway", {
      method: "POST",
      headers: { "content-type": "application/json", "content-encoding": "Identity" },
      body,
    });
    assert.equal(identity.status, 200);
    assert.deepEqual(await h.dump(), before);
  } finally {
    await h.close();
  }
});

Deno.test("RELAY_METRICS_TOKEN: /metrics needs its bearer token (401 with WWW-Authenticate otherwise); unset, /metrics is public", async () => {
  const open = await harness();
  try {
    assert.equal((await open.request("/metrics")).status, 200);
  } finally {
    await open.close();
  }
  const h = await harness({ RELAY_METRICS_TOKEN: METRICS_TOKEN });
  try {
    for (const auth of [undefined, "Bearer wrong-token", `Bearer ${APP_TOKEN}`, METRICS_TOKEN]) {
      const res = await h.request("/metrics", auth ? { headers: { authorization: auth } } : {});
      assert.equal(res.status, 401, String(auth));
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
      assert.equal((await res.text()).includes(METRICS_TOKEN), false);
    }
    const ok = await h.request("/metrics", {
      headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    });
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /relay_http_requests_total/);
    assert.equal(JSON.stringify(h.logger.lines).includes(METRICS_TOKEN), false);
  } finally {
    await h.close();
  }
});

Deno.test("Request logs mask every capability wherever it stands in a path: //gateway/<id>, /GATEWAY/<id>, percent-encoded forms, unknown paths", async () => {
  const h = await harness();
  try {
    const ingressId = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3Jh";
    const enc = encodeURIComponent;
    const paths = [
      `/gateway/${PATH_APP}`,
      `//gateway/${PATH_APP}`,
      `/GATEWAY/${PATH_APP}`,
      `/Gateway/${PATH_APP}/`,
      `/gateway%2f${PATH_APP}`,
      `/gateway%2F${PATH_APP}`,
      `/${enc(`gateway/${PATH_APP}`)}`,
      `/gateway/${enc(PATH_APP).replace(/-/g, "%2D")}`,
      `/gateway/${PATH_APP}/extra`,
      `/x/${PATH_APP}`,
      `/${PATH_APP}`,
      `/push/${ingressId}`,
      `/PUSH/${ingressId}`,
      `//push//${ingressId}`,
      `/push/${ingressId}/messages/abc`,
      `/registrations/${ingressId}`,
      `/.well-known/${ingressId}?q=${PATH_APP}`,
    ];
    for (const path of paths) {
      for (const method of ["POST", "GET", "DELETE", PATH_APP.slice(0, 20).toUpperCase()]) {
        const res = await h.request(path, {
          method,
          headers: { "content-type": "application/json" },
          ...(method === "POST" ? { body: JSON.stringify({ push: [{ topic: "t" }] }) } : {}),
        });
        await res.body?.cancel();
      }
    }
    const log = JSON.stringify(h.logger.lines);
    for (const secret of [PATH_APP, ingressId, PATH_APP.slice(0, 20).toUpperCase()]) {
      assert.equal(log.includes(secret), false, secret);
      assert.equal(log.toLowerCase().includes(secret.toLowerCase()), false, secret);
    }
    const logged = new Set(
      h.logger.lines.filter((l) => l.event === "request").map((l) => l.fields.path),
    );
    assert.deepEqual([...logged].sort(), [
      "/gateway/<app>",
      "/push/<id>",
      "/registrations/<client-id>",
      "<unmatched>",
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("A client that breaks off its body mid-way gets 400 (or nothing), logged at info, never a 500 or an error line", async () => {
  const h = await harness();
  try {
    const before = await h.dump();
    const brokenOff = () => {
      let sent = false;
      return new ReadableStream<Uint8Array>({
        pull(controller) {
          if (!sent) {
            sent = true;
            controller.enqueue(new TextEncoder().encode('{"push": [{"topic": '));
          } else controller.error(new TypeError("connection reset"));
        },
      });
    };
    for (const declared of [true, false]) {
      const headers: Record<string, string> = {
        "content-type": "application/json",
        authorization: `Bearer ${APP_TOKEN}`,
      };
      if (declared) headers["content-length"] = "200";
      for (const path of ["/gateway", "/registrations"]) {
        const res = await h.request(path, {
          method: "POST",
          headers,
          body: brokenOff(),
          duplex: "half",
        } as RequestInit);
        assert.equal(res.status, 400, `${path} declared=${declared}`);
        assert.equal((await res.json()).error.code, "incomplete-body");
      }
    }
    assert.deepEqual(errorLines(h), []);
    const statuses = h.logger.lines.filter((l) => l.event === "request").map((l) => [
      l.level,
      l.fields.status,
    ]);
    assert.deepEqual(statuses, Array(4).fill(["info", 400]));
    assert.deepEqual(await h.dump(), before);
  } finally {
    await h.close();
  }
});

Deno.test("CORS: a preflight from an allowed origin is 204 with Allow-Origin, -Methods, -Headers and -Max-Age; other origins get no CORS headers", async () => {
  const allowed = "https://app.example.org";
  const h = await harness({ RELAY_CORS_ORIGINS: `${allowed},https://other.example.org` });
  try {
    for (
      const [path, methods] of [
        ["/registrations", "POST"],
        ["/registrations/some-client", "DELETE"],
        ["/transports", "GET, HEAD"],
      ]
    ) {
      const pre = await h.request(path!, {
        method: "OPTIONS",
        headers: {
          origin: allowed,
          "access-control-request-method": methods!.split(",")[0]!,
          "access-control-request-headers": "content-type, authorization",
        },
      });
      assert.equal(pre.status, 204, path);
      assert.equal(pre.headers.get("access-control-allow-origin"), allowed);
      assert.equal(pre.headers.get("access-control-allow-methods"), methods);
      assert.equal(pre.headers.get("access-control-allow-headers"), "Content-Type, Authorization");
      assert.ok(Number(pre.headers.get("access-control-max-age")) > 0);
      assert.match(pre.headers.get("vary") ?? "", /Origin/);

      const foreign = await h.request(path!, {
        method: "OPTIONS",
        headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
      });
      for (const [name] of foreign.headers) assert.equal(name.startsWith("access-control-"), false);
    }
    const get = await h.request("/transports", { headers: { origin: allowed } });
    assert.equal(get.headers.get("access-control-allow-origin"), allowed);
    const refused = await h.request("/registrations", {
      method: "POST",
      headers: { origin: allowed },
      json: { transport: "nope" },
    });
    assert.equal(refused.status, 400);
    assert.equal(refused.headers.get("access-control-allow-origin"), allowed);
    const other = await h.request("/transports", { headers: { origin: "https://evil.example" } });
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    // The gateway is for application servers, not pages: never CORS.
    const gw = await h.request("/gateway", {
      method: "POST",
      headers: { origin: allowed },
      json: { "push-transports": [] },
    });
    assert.equal(gw.headers.get("access-control-allow-origin"), null);
  } finally {
    await h.close();
  }
  const star = await harness({ RELAY_CORS_ORIGINS: "*" });
  try {
    const pre = await star.request("/registrations", {
      method: "OPTIONS",
      headers: { origin: "https://any.example", "access-control-request-method": "POST" },
    });
    assert.equal(pre.headers.get("access-control-allow-origin"), "*");
  } finally {
    await star.close();
  }
  const off = await harness();
  try {
    const pre = await off.request("/registrations", {
      method: "OPTIONS",
      headers: { origin: allowed, "access-control-request-method": "POST" },
    });
    assert.equal(pre.status, 405);
    assert.equal(pre.headers.get("access-control-allow-origin"), null);
  } finally {
    await off.close();
  }
});
