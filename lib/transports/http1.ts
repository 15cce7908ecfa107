/**
 * A lean HTTP/1.1 client for Web Push requests (RFC 9112 message syntax), with keep-alive
 * connections per origin, on `Deno.connect` and `Deno.connectTls`.
 *
 * Why not `fetch`: a Web Push send is one small POST whose answer is a status and at most a
 * `Retry-After`. Deno's `fetch` spends several times the CPU of this client on such a request
 * (Request, Headers, Response and stream objects, WebIDL conversions, the garbage they leave),
 * and a fan-out is bound by CPU (README "Benchmarks" has the measurements).
 *
 * What it does: one request at a time per connection (no pipelining); `Content-Length`
 * request bodies; responses framed by `Content-Length`, `chunked` or the end of the connection
 * (RFC 9112 §6.3), their bodies read and dropped (at most 64 KiB, else the connection is closed
 * instead); 1xx answers skipped; redirects returned, never followed. TLS offers only
 * `http/1.1` by ALPN and verifies certificates as `fetch` does (`DENO_CERT` included). An
 * origin that refuses HTTP/1.1 (an HTTP/2-only server) is handed to `fallback` from then on.
 *
 * With `endpointPolicy`, every new connection is held to the endpoint policy
 * (lib/address_policy.ts): the host is resolved here, every address it has must be public, and
 * the client connects to one of those addresses (`Deno.connect` to the IP), then starts TLS
 * with `Deno.startTls` for the host name, so the certificate is still verified for the name
 * (and SNI carries it). The name is never handed to the runtime to resolve again, so a name
 * that now resolves to a private address is never reached (DNS rebinding). A kept-alive
 * connection was checked when it was opened. A refusal throws `EndpointRefused` before any
 * connection is made. (Deno Deploy's "Pricing and limitations" page says `Deno.connect` to
 * port 443 is prohibited there, `Deno.connectTls` required; `connectTls` takes one `hostname`
 * for both the address and the certificate, so it cannot pin a checked address.)
 *
 * A keep-alive connection can be closed by the server just as it is reused. When that happens
 * before any byte of the answer arrived, the request is sent once more on a new connection,
 * as browsers do: the server closed the connection without answering, so it did not act on
 * the request (RFC 9112 §9.3.1 describes this race).
 *
 * Errors never carry the URL (Web Push endpoints are secrets): ours name the failure, and
 * Deno's connection errors name the OS error.
 *
 * @module
 */

import {
  Connection,
  HeaderBlock,
  MAX_DRAIN_BYTES,
  NothingReceived,
  ProtocolMismatch,
  requestBytes,
} from "./http1_wire.ts";
import {
  checkEndpoint,
  type ConnectionPolicy,
  isAlpnRefusal,
  socketOpener,
} from "./http1_socket.ts";

export { type Connect, type ConnectionPolicy, EndpointRefused } from "./http1_socket.ts";
export { HeaderBlock, ProtocolMismatch } from "./http1_wire.ts";

/** A push service's answer: the status and its headers. */
export interface PostResponse {
  status: number;
  /** A header by lower-case name; a repeated header's values joined with ", ". */
  header(name: string): string | null;
}

/**
 * One POST with a body, as the Web Push transport sends it (header fields as a record, or
 * checked once for many requests). Throws on network errors.
 */
export type Post = (
  url: URL,
  headers: Record<string, string> | HeaderBlock,
  body: Uint8Array,
  signal?: AbortSignal,
) => Promise<PostResponse>;

export interface Http1ClientOptions {
  /** Extra trusted CA certificates (PEM), as `Deno.connectTls` takes them. */
  caCerts?: string[];
  /** An idle connection is not reused after this long, and closed when next seen. @default 30000 */
  idleTimeoutMs?: number;
  /** Idle connections kept per origin; more are closed as they come free. @default 256 */
  maxIdlePerOrigin?: number;
  /**
   * Sends to origins that do not speak HTTP/1.1 (e.g. `fetch`, which negotiates HTTP/2). It is
   * not held to `endpointPolicy`: give none that resolves names itself with the policy on.
   */
  fallback?: Post;
  /** Holds every new connection to the endpoint policy (module doc). Absent: no check. */
  endpointPolicy?: ConnectionPolicy;
}

export interface Http1Client {
  post: Post;
  /** Connections open now, busy or idle. */
  readonly connections: number;
  /** Connections opened so far. */
  readonly opened: number;
  /** Closes every connection; later posts throw. */
  close(): void;
}

/** Creates a client; it holds connections until `close()`. */
export function createHttp1Client(options: Http1ClientOptions = {}): Http1Client {
  const idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
  const maxIdle = options.maxIdlePerOrigin ?? 256;
  const { caCerts, fallback, endpointPolicy } = options;
  const pools = new Map<string, Connection[]>();
  const open = new Set<Connection>();
  /** Origins that refused HTTP/1.1: they go to `fallback`. */
  const otherProtocol = new Set<string>();
  let opened = 0;
  let closed = false;

  const forget = (c: Connection) => open.delete(c);
  const openSocket = socketOpener({ caCerts, endpointPolicy });

  function take(origin: string): Connection | undefined {
    const pool = pools.get(origin);
    const now = performance.now();
    while (pool && pool.length > 0) {
      const c = pool.pop()!;
      if (!c.closed && now - c.idleSince < idleTimeoutMs) {
        c.idle = false;
        return c;
      }
      c.close();
    }
    return undefined;
  }

  function release(origin: string, c: Connection): void {
    let pool = pools.get(origin);
    if (!pool) pools.set(origin, pool = []);
    if (closed || pool.length >= maxIdle) return c.close();
    c.idle = true;
    c.idleSince = performance.now();
    c.watch();
    if (!c.closed) pool.push(c);
    // The least recently used are at the bottom: expire them here rather than on a timer (an
    // idle connection whose server closes it is dropped at once, by its pending read).
    while (
      pool.length > 0 && (pool[0]!.closed || c.idleSince - pool[0]!.idleSince >= idleTimeoutMs)
    ) {
      pool.shift()!.close();
    }
  }

  async function connect(url: URL, signal: AbortSignal | undefined): Promise<Connection> {
    const tls = url.protocol === "https:";
    const hostname = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
    const port = url.port ? Number(url.port) : tls ? 443 : 80;
    const socket = await openSocket(url, hostname, port, signal);
    if (closed) {
      socket.close();
      throw new Error("HTTP client closed");
    }
    const c = new Connection(socket, forget);
    open.add(c);
    opened++;
    if (tls) {
      const onAbort = () => c.close();
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        await (socket as Deno.TlsConn).handshake();
      } catch (err) {
        c.close();
        if (isAlpnRefusal(err)) throw new ProtocolMismatch("the server refused HTTP/1.1");
        throw err;
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    }
    return c;
  }

  /** Sends on `c` and reads the answer; `c` goes back to the pool when it can be reused. */
  async function exchange(
    origin: string,
    c: Connection,
    request: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<PostResponse> {
    const onAbort = () => c.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      try {
        await c.write(request);
      } catch (err) {
        if (c.uses > 0 && !signal?.aborted) throw new NothingReceived("connection closed");
        throw err;
      }
      let head = await c.head();
      // 1xx answers are interim (RFC 9110 §15.2); 101 would switch protocols, never asked for.
      while (head.status < 200) {
        if (head.status === 101) throw new ProtocolMismatch("unexpected protocol switch");
        head = await c.head();
      }
      const { version, status, headers } = head;
      let reusable = version === 1 && !/(?:^|,)\s*close\s*(?:,|$)/i.test(
        headers.get("connection") ?? "",
      );
      // RFC 9112 §6.3: 204 and 304 have no body; else chunked, Content-Length or until close.
      if (status !== 204 && status !== 304) {
        const te = headers.get("transfer-encoding");
        const cl = headers.get("content-length");
        if (te !== undefined) {
          // With both, Transfer-Encoding wins and the connection must not be reused (§6.3).
          if (!/(?:^|,)\s*chunked\s*$/i.test(te) || cl !== undefined) reusable = false;
          else reusable = reusable && await c.skipChunked();
        } else if (cl !== undefined) {
          const values = cl.split(",").map((v) => v.trim());
          if (!/^\d{1,15}$/.test(values[0]!) || values.some((v) => v !== values[0])) {
            throw new Error("malformed Content-Length");
          }
          const length = Number(values[0]);
          if (length > MAX_DRAIN_BYTES) reusable = false;
          else await c.skip(length);
        } else {
          reusable = false; // the body runs to the end of the connection; we need none of it
        }
      }
      c.uses++;
      // Bytes nobody asked for yet mean the framing went wrong: do not reuse.
      if (reusable && c.start === c.end && !c.closed) {
        c.start = c.end = 0;
        release(origin, c);
      } else {
        c.close();
      }
      return { status, header: (name) => headers.get(name) ?? null };
    } catch (err) {
      c.close();
      if (signal?.aborted) throw signal.reason;
      throw err;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  const post: Post = async (url, headers, body, signal) => {
    if (closed) throw new Error("HTTP client closed");
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new TypeError(`scheme ${url.protocol} is not http(s)`);
    }
    const origin = url.origin;
    if (fallback && otherProtocol.has(origin)) return fallback(url, headers, body, signal);
    const request = requestBytes(url, headers, body);
    signal?.throwIfAborted();
    try {
      const reused = take(origin);
      if (reused) {
        try {
          return await exchange(origin, reused, request, signal);
        } catch (err) {
          if (!(err instanceof NothingReceived)) throw err;
          // The server closed the kept-alive connection as we reused it: once more, anew.
        }
      }
      return await exchange(origin, await connect(url, signal), request, signal);
    } catch (err) {
      if (err instanceof ProtocolMismatch && fallback) {
        otherProtocol.add(origin);
        return fallback(url, headers, body, signal);
      }
      throw err;
    }
  };

  return {
    post,
    get connections() {
      return open.size;
    },
    get opened() {
      return opened;
    },
    close() {
      closed = true;
      for (const c of [...open]) c.close();
      pools.clear();
    },
  };
}

/**
 * `Post` on a `fetch` function (tests inject one; proxies need `fetch`'s own support).
 *
 * With `endpointPolicy`, the URL and its host's addresses are checked right before each
 * request, but `fetch` (or the outbound proxy it goes through) then resolves the name again
 * itself: a name whose answer changes between the two can still lead elsewhere. This narrows
 * the window the HTTP/1.1 client closes; it does not close it.
 */
export function fetchPost(
  fetchFn: typeof fetch,
  options: { endpointPolicy?: Pick<ConnectionPolicy, "resolve"> } = {},
): Post {
  const resolve = options.endpointPolicy?.resolve;
  return async (url, headers, body, signal) => {
    if (resolve) await checkEndpoint(url, resolve, signal);
    const response = await fetchFn(url, {
      method: "POST",
      headers: headers instanceof HeaderBlock ? headers.fields : headers,
      body: body as BufferSource,
      ...(signal ? { signal } : {}),
      // A push service has no reason to redirect; following one could send the message
      // (and our VAPID token) to an arbitrary host.
      redirect: "manual",
    });
    // Free the connection for reuse; the answer's body is never needed.
    await response.body?.cancel().catch(() => {});
    return { status: response.status, header: (name) => response.headers.get(name) };
  };
}
