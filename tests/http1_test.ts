/**
 * The relay's HTTP/1.1 client for Web Push (lib/transports/http1.ts), against servers it does
 * not share code with: `Deno.serve` (hyper) for well-formed exchanges over TCP and TLS, and
 * raw sockets scripted byte by byte for framing, keep-alive races and malformed answers.
 */

import assert from "node:assert/strict";
import {
  createHttp1Client,
  type Http1Client,
  type Http1ClientOptions,
  type Post,
} from "../lib/transports/http1.ts";
import { concat } from "../lib/encoding.ts";
import { MOCK_CA_PEM } from "./mocks/apns_mock.ts";

const CERT_DIR = new URL("./mocks/certs/", import.meta.url);
const LEAF_PEM = Deno.readTextFileSync(new URL("leaf.pem", CERT_DIR));
const LEAF_KEY = Deno.readTextFileSync(new URL("leaf.key", CERT_DIR));
const enc = new TextEncoder();
const dec = new TextDecoder();

interface RawRequest {
  head: string;
  body: Uint8Array;
}

/** One accepted connection of a scripted server. */
class RawConn {
  private buf: Uint8Array = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  /** The next request (head and Content-Length body), or null at the end of the connection. */
  async request(): Promise<RawRequest | null> {
    for (;;) {
      const text = dec.decode(this.buf);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        const head = text.slice(0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        const bodyStart = end + 4;
        if (this.buf.length >= bodyStart + length) {
          const body = this.buf.slice(bodyStart, bodyStart + length);
          this.buf = this.buf.slice(bodyStart + length);
          return { head, body };
        }
      }
      const chunk = new Uint8Array(65536);
      let n: number | null;
      try {
        n = await this.conn.read(chunk);
      } catch {
        return null;
      }
      if (n === null) return null;
      this.buf = concat(this.buf, chunk.subarray(0, n));
    }
  }

  async write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

/** A TCP server on 127.0.0.1:0 running `script` for each connection (numbered from 0). */
function rawServer(script: (c: RawConn, index: number) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: RawConn[] = [];
  const done: Promise<void>[] = [];
  const requests: RawRequest[] = [];
  (async () => {
    for await (const conn of listener) {
      const c = new RawConn(conn);
      const original = c.request.bind(c);
      c.request = async () => {
        const r = await original();
        if (r) requests.push(r);
        return r;
      };
      conns.push(c);
      done.push(script(c, conns.length - 1).catch(() => {}).finally(() => c.close()));
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    get connections() {
      return conns.length;
    },
    requests,
    async close() {
      listener.close();
      for (const c of conns) c.close();
      await Promise.all(done);
    },
  };
}

/** Runs `body` against a scripted server with a fresh client, and closes both afterwards. */
async function withRawServer(
  script: (c: RawConn, index: number) => Promise<void>,
  body: (server: ReturnType<typeof rawServer>, client: Http1Client) => Promise<void>,
  options: Http1ClientOptions = {},
): Promise<void> {
  const server = rawServer(script);
  const client = createHttp1Client(options);
  try {
    await body(server, client);
  } finally {
    client.close();
    await server.close();
  }
}

/** Answers every request on the connection with `answer`, until the client closes it. */
const answerAll = (answer: string) => async (c: RawConn) => {
  while (await c.request()) await c.write(answer);
};

const post = (p: Post, url: string, body = "hello", headers: Record<string, string> = {}) =>
  p(new URL(url), headers, enc.encode(body));

Deno.test("RFC 9112 §9.3: consecutive requests to one origin share one kept-alive connection", async () => {
  const seen: { method: string; url: string; headers: Headers; body: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers, body: await req.text() });
    return new Response(null, { status: 201, headers: { "x-answer": String(seen.length) } });
  });
  const client = createHttp1Client();
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    for (let i = 1; i <= 5; i++) {
      const res = await post(client.post, `${base}/wpush/a%20b?x=${i}`, `body ${i}`, {
        TTL: "60",
        Urgency: "normal",
      });
      assert.equal(res.status, 201);
      assert.equal(res.header("x-answer"), String(i));
      assert.equal(res.header("X-Missing"), null);
    }
    assert.equal(client.opened, 1);
    assert.equal(seen.length, 5);
    assert.equal(seen[4]!.method, "POST");
    assert.equal(seen[4]!.url, `${base}/wpush/a%20b?x=5`);
    assert.equal(seen[4]!.headers.get("host"), `127.0.0.1:${server.addr.port}`);
    assert.equal(seen[4]!.headers.get("ttl"), "60");
    assert.equal(seen[4]!.headers.get("urgency"), "normal");
    assert.equal(seen[4]!.headers.get("content-length"), "6");
    assert.equal(seen[4]!.body, "body 5");
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("concurrent requests each get their own connection, then reuse them", async () => {
  let inFlight = 0;
  let most = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    most = Math.max(most, ++inFlight);
    await req.arrayBuffer();
    await new Promise((r) => setTimeout(r, 20));
    inFlight--;
    return new Response("ok", { status: 201 });
  });
  const client = createHttp1Client();
  try {
    const url = `http://127.0.0.1:${server.addr.port}/p`;
    for (let round = 0; round < 3; round++) {
      const answers = await Promise.all(Array.from({ length: 8 }, () => post(client.post, url)));
      assert.deepEqual(answers.map((a) => a.status), Array(8).fill(201));
    }
    assert.equal(most, 8);
    assert.equal(client.opened, 8);
    assert.equal(client.connections, 8);
  } finally {
    client.close();
    await server.shutdown();
  }
  assert.equal(client.connections, 0);
});

Deno.test("RFC 9112 §7.1: a chunked answer (extensions, trailers) is read to its end and the connection reused", async () => {
  await withRawServer(
    answerAll(
      "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n" +
        "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
    ),
    async (server, client) => {
      for (let i = 0; i < 3; i++) {
        const res = await post(client.post, `${server.url}/c`);
        assert.equal(res.status, 201);
        assert.equal(res.header("retry-after"), "7");
      }
      assert.equal(server.connections, 1);
    },
  );
});

Deno.test("RFC 9112 §6.3: a Content-Length body is skipped and the connection reused, even when it arrives in pieces", async () => {
  await withRawServer(async (c) => {
    while (await c.request()) {
      await c.write("HTTP/1.1 404 Not Found\r\nContent-Len");
      await new Promise((r) => setTimeout(r, 5));
      await c.write("gth: 10\r\n\r\n01234");
      await new Promise((r) => setTimeout(r, 5));
      await c.write("56789");
    }
  }, async (server, client) => {
    for (let i = 0; i < 3; i++) assert.equal((await post(client.post, server.url)).status, 404);
    assert.equal(server.connections, 1);
  });
});

Deno.test("RFC 9112 §6.3: bodies that end with the connection or exceed 64 KiB, Connection: close and HTTP/1.0 are not reused", async () => {
  const big = "x".repeat(70_000);
  const cases = [
    `HTTP/1.1 200 OK\r\n\r\nbody until close`,
    `HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n${big}`,
    `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${
      big.length.toString(16)
    }\r\n${big}\r\n0\r\n\r\n`,
    `HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
    `HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n`,
    `HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip\r\n\r\nabc`,
  ];
  for (const answer of cases) {
    await withRawServer(answerAll(answer), async (server, client) => {
      for (let i = 0; i < 2; i++) {
        const res = await post(client.post, server.url);
        assert.ok(res.status === 200 || res.status === 201, answer.slice(0, 40));
      }
      assert.equal(server.connections, 2, answer.slice(0, 40));
    });
  }
});

Deno.test("RFC 9110 §15.2: interim 1xx answers are skipped; 204 has no body", async () => {
  await withRawServer(
    answerAll(
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" +
        "HTTP/1.1 204 No Content\r\n\r\n",
    ),
    async (server, client) => {
      assert.equal((await post(client.post, server.url)).status, 204);
      assert.equal((await post(client.post, server.url)).status, 204);
      assert.equal(server.connections, 1);
    },
  );
});

Deno.test("a kept-alive connection the server closes while idle is dropped, and the next request opens a new one", async () => {
  await withRawServer(async (c) => {
    await c.request();
    await c.write("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    // then closes (the script ends), as a server whose keep-alive timeout ran out
  }, async (server, client) => {
    assert.equal((await post(client.post, server.url)).status, 201);
    // The client's read on the idle connection sees the end.
    for (let i = 0; i < 50 && client.connections > 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(client.connections, 0);
    assert.equal((await post(client.post, server.url)).status, 201);
    assert.equal(server.connections, 2);
    assert.equal(server.requests.length, 2);
  });
});

Deno.test("an idle connection older than idleTimeoutMs is not reused but closed", async () => {
  await withRawServer(
    answerAll("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    async (server, client) => {
      await post(client.post, server.url);
      await post(client.post, server.url);
      assert.equal(server.connections, 1);
      await new Promise((r) => setTimeout(r, 60));
      await post(client.post, server.url);
      assert.equal(server.connections, 2);
      assert.equal(client.connections, 1);
    },
    { idleTimeoutMs: 40 },
  );
});

Deno.test("RFC 9112 §9.3.1: a reused connection closed before any byte of the answer is retried once on a new connection", async () => {
  await withRawServer(async (c, index) => {
    if (index === 0) {
      await c.request();
      await c.write("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
      await c.request(); // the second request arrives; the server closes without answering
      return;
    }
    await answerAll("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")(c);
  }, async (server, client) => {
    assert.equal((await post(client.post, server.url, "one")).status, 201);
    assert.equal((await post(client.post, server.url, "two")).status, 202);
    assert.equal(server.connections, 2);
    assert.deepEqual(server.requests.map((r) => dec.decode(r.body)), ["one", "two", "two"]);
  });
});

Deno.test("a new connection closed without an answer, or with part of one, is an error and not retried", async () => {
  for (
    const partial of [
      "",
      "HTTP/1.1 201 Cre",
      "HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\nabc",
    ]
  ) {
    await withRawServer(async (c) => {
      await c.request();
      if (partial) await c.write(partial);
    }, async (server, client) => {
      await assert.rejects(post(client.post, server.url), /closed before the response/);
      assert.equal(server.requests.length, 1);
      assert.equal(client.connections, 0);
    });
  }
});

Deno.test("RFC 9112 §4, §5, §6.3: malformed answers are errors and the connection is closed", async () => {
  const cases: [string, RegExp][] = [
    ["HTTP/1.1 2x1 Created\r\n\r\n", /malformed status line/],
    ["HTTP/1.1 201 Created\r\nBad Header: x\r\n\r\n", /malformed header/],
    ["HTTP/1.1 201 Created\r\nFolded: a\r\n b\r\n\r\n", /malformed header/],
    ["HTTP/1.1 201 Created\r\nContent-Length: 3, 4\r\n\r\nabcd", /malformed Content-Length/],
    ["HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", /malformed chunked/],
    ["HTTP/1.1 201 Created\r\nX: " + "y".repeat(70_000) + "\r\n\r\n", /response head too large/],
  ];
  for (const [answer, error] of cases) {
    await withRawServer(answerAll(answer), async (server, client) => {
      await assert.rejects(post(client.post, server.url), error);
      assert.equal(client.connections, 0);
    });
  }
});

Deno.test("a server that does not answer in HTTP/1.x is handed to the fallback, from then on", async () => {
  // HTTP/2 frames (a SETTINGS frame), as an h2-only server that ignored ALPN would send.
  const h2Frames = async (c: RawConn) => {
    await c.request();
    await c.write(new Uint8Array([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]));
  };
  const fallbackCalls: string[] = [];
  const fallback: Post = (url, _headers, body) => {
    fallbackCalls.push(`${url.pathname} ${dec.decode(body)}`);
    return Promise.resolve({ status: 201, header: () => null });
  };
  await withRawServer(h2Frames, async (server, client) => {
    assert.equal((await post(client.post, `${server.url}/a`, "1")).status, 201);
    assert.equal((await post(client.post, `${server.url}/b`, "2")).status, 201);
    assert.deepEqual(fallbackCalls, ["/a 1", "/b 2"]);
    assert.equal(server.connections, 1);
  }, { fallback });
  const ssh = async (c: RawConn) => {
    await c.request();
    await c.write("SSH-2.0-OpenSSH\r\n");
  };
  await withRawServer(ssh, async (server, client) => {
    await assert.rejects(post(client.post, server.url), /did not answer in HTTP\/1/);
  });
});

Deno.test("TLS: the certificate is verified, only http/1.1 is offered, and an HTTP/2-only server goes to the fallback", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: LEAF_PEM, key: LEAF_KEY, onListen() {} },
    async (req) => {
      await req.arrayBuffer();
      return new Response(null, { status: 201 });
    },
  );
  const h2Only = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: LEAF_PEM,
    key: LEAF_KEY,
    alpnProtocols: ["h2"],
  });
  const h2Accepts = (async () => {
    let n = 0;
    for await (const conn of h2Only) {
      n++;
      conn.handshake().catch(() => {}).finally(() => conn.close());
    }
    return n;
  })();
  const untrusting = createHttp1Client();
  const fallbackCalls: string[] = [];
  const client = createHttp1Client({
    caCerts: [MOCK_CA_PEM],
    fallback: (url) => {
      fallbackCalls.push(url.href);
      return Promise.resolve({ status: 299, header: () => null });
    },
  });
  try {
    const url = `https://127.0.0.1:${server.addr.port}/w`;
    await assert.rejects(post(untrusting.post, url), /certificate|UnknownIssuer/i);
    assert.equal((await post(client.post, url)).status, 201);
    assert.equal((await post(client.post, url)).status, 201);
    assert.equal(client.opened, 1);

    const h2Url = `https://127.0.0.1:${(h2Only.addr as Deno.NetAddr).port}/x`;
    assert.equal((await post(client.post, h2Url)).status, 299);
    assert.equal((await post(client.post, h2Url)).status, 299);
    assert.deepEqual(fallbackCalls, [h2Url, h2Url]);
  } finally {
    untrusting.close();
    client.close();
    h2Only.close();
    await server.shutdown();
  }
  assert.equal(await h2Accepts, 1);
});

Deno.test("an aborted request rejects with the signal's reason and closes its connection", async () => {
  await withRawServer(async (c) => {
    await c.request(); // never answers
    await c.request();
  }, async (server, client) => {
    const controller = new AbortController();
    const reason = new DOMException("too slow", "TimeoutError");
    setTimeout(() => controller.abort(reason), 30);
    await assert.rejects(
      client.post(new URL(server.url), {}, enc.encode("x"), controller.signal),
      (err) => err === reason,
    );
    assert.equal(client.connections, 0);
    const already = AbortSignal.abort(new Error("already"));
    await assert.rejects(client.post(new URL(server.url), {}, enc.encode("x"), already), /already/);
    assert.equal(server.requests.length, 1);
  });
});

Deno.test("request headers that could break the message framing are refused before anything is sent", async () => {
  await withRawServer(
    answerAll("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    async (server, client) => {
      for (
        const headers of [
          { "Topic": "a\r\nX-Injected: 1" },
          { "Bad Name": "x" },
          { "Content-Length": "1" },
          { "Transfer-Encoding": "chunked" },
          { "Host": "elsewhere" },
          { "Urgency": "héllo" },
        ]
      ) {
        await assert.rejects(post(client.post, server.url, "x", headers), TypeError);
      }
      await assert.rejects(post(client.post, server.url.replace("//", "//user:pw@")), TypeError);
      assert.equal(server.requests.length, 0);
    },
  );
});

Deno.test("network errors do not carry the endpoint URL", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const client = createHttp1Client();
  try {
    const secret = "/wpush/v2/SECRET-TOKEN-1234";
    await assert.rejects(post(client.post, `http://127.0.0.1:${port}${secret}`), (err) => {
      assert.ok(err instanceof Error);
      assert.ok(!String(err).includes("SECRET-TOKEN"), String(err));
      assert.match(String(err), /refused/i);
      return true;
    });
  } finally {
    client.close();
  }
});

Deno.test("close() closes idle and busy connections, and later requests are refused", async () => {
  await withRawServer(async (c, index) => {
    if (index === 0) return await answerAll("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")(c);
    await c.request(); // the second connection never answers
    await c.request();
  }, async (server, client) => {
    await post(client.post, server.url);
    // One request reuses the idle connection and is answered; the other opens one that hangs.
    const outcomes = [post(client.post, server.url), post(client.post, server.url)].map((p) =>
      p.then(() => "answered", (e) => `error: ${e}`)
    );
    assert.equal(await outcomes[0], "answered");
    for (let i = 0; i < 50 && server.requests.length < 3; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(client.connections, 2);
    client.close();
    assert.match(await outcomes[1]!, /^error/);
    assert.equal(client.connections, 0);
    await assert.rejects(post(client.post, server.url), /client closed/);
  });
});
