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

import { checkHost, connectionRefusal, type HostCheck, type Resolver } from "../address_policy.ts";

/** A push service's answer: the status and its headers. */
export interface PostResponse {
  status: number;
  /** A header by lower-case name; a repeated header's values joined with ", ". */
  header(name: string): string | null;
}

/** One POST with a body, as the Web Push transport sends it. Throws on network errors. */
export type Post = (
  url: URL,
  headers: Record<string, string>,
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

/** Opens a TCP connection to an IP address the endpoint policy allowed. */
export type Connect = (address: { hostname: string; port: number }) => Promise<Deno.TcpConn>;

/** How the client applies the endpoint policy to new connections. */
export interface ConnectionPolicy {
  /** Resolves the endpoint's host (A and AAAA). */
  resolve: Resolver;
  /** Opens the TCP connection to a checked address (tests map one to a local server). */
  connect?: Connect;
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

/** The peer does not speak HTTP/1.1 (ALPN refused, or it answered in another protocol). */
export class ProtocolMismatch extends Error {
  override name = "ProtocolMismatch";
}

/**
 * The endpoint policy let no connection be made, so nothing was sent. `refused`: the URL or an
 * address of its host is not allowed; `unresolved`: the name has no address now. The message
 * names the rule, never the endpoint or an address.
 */
export class EndpointRefused extends Error {
  override name = "EndpointRefused";
  constructor(readonly kind: "refused" | "unresolved", message: string) {
    super(message);
  }
}

/** Checks `url` against the endpoint policy; the addresses a connection may use. */
async function allowedAddresses(
  url: URL,
  lookup: (host: string) => Promise<HostCheck>,
): Promise<string[]> {
  const refusal = connectionRefusal(url);
  if (refusal) throw new EndpointRefused("refused", refusal);
  const check = await lookup(url.hostname);
  if (!check.ok) throw new EndpointRefused(check.kind, check.reason);
  return check.addresses;
}

/** Settles with `work`, or rejects with `signal`'s reason first (for work with no resource). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

const denoConnect: Connect = (address) => Deno.connect(address);

/** The connection ended before any byte of the answer: safe to send again (module doc). */
class NothingReceived extends Error {
  override name = "NothingReceived";
}

const INITIAL_BUFFER = 4096;
const MAX_HEAD_BYTES = 64 * 1024;
const MAX_DRAIN_BYTES = 64 * 1024;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values we send are ASCII: visible characters, space and tab (RFC 9110 §5.5).
const FIELD_VALUE = /^[\t\x20-\x7e]*$/;
const RESERVED = new Set(["host", "content-length", "transfer-encoding", "connection"]);
const latin1 = new TextDecoder("latin1");
const ascii = new TextEncoder();

/** One connection, used by one request at a time. */
class Connection {
  buf = new Uint8Array(INITIAL_BUFFER);
  /** Unread bytes are `buf[start, end)`. */
  start = 0;
  end = 0;
  /** The read in progress, if any; it fills `buf[end...]`. */
  reading: Promise<void> | null = null;
  eof = false;
  failure: unknown = undefined;
  /** In the pool: any read event (end, error, unasked-for bytes) makes it unusable. */
  idle = false;
  closed = false;
  idleSince = 0;
  /** Answers completed on this connection. */
  uses = 0;

  constructor(readonly socket: Deno.Conn, private readonly onClose: (c: Connection) => void) {}

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.idle = false;
    try {
      this.socket.close();
    } catch { /* already closed */ }
    this.onClose(this);
  }

  /** Starts a read unless one is in progress (an idle connection always has one). */
  watch(): void {
    if (this.reading || this.eof || this.failure !== undefined) return;
    if (this.end === this.buf.length) this.makeRoom();
    this.reading = this.socket.read(this.buf.subarray(this.end)).then(
      (n) => {
        this.reading = null;
        if (n === null) this.eof = true;
        else this.end += n;
        if (this.idle) this.close();
      },
      (err) => {
        this.reading = null;
        this.failure = err;
        if (this.idle) this.close();
      },
    );
  }

  /** Waits for more bytes; throws when the connection ended or failed instead. */
  async more(): Promise<void> {
    const before = this.end;
    this.watch();
    await this.reading;
    if (this.end > before) return;
    if (this.failure !== undefined) throw this.failure;
    throw new Error("connection closed before the response was complete");
  }

  private makeRoom(): void {
    if (this.start > 0) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    } else if (this.buf.length < MAX_HEAD_BYTES) {
      const bigger = new Uint8Array(this.buf.length * 2);
      bigger.set(this.buf.subarray(0, this.end));
      this.buf = bigger;
    } else {
      throw new Error("response head too large");
    }
  }

  async write(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) offset += await this.socket.write(bytes.subarray(offset));
  }

  /** Reads one response head (status line and header fields, RFC 9112 §2.1). */
  async head(): Promise<{ version: number; status: number; headers: Map<string, string> }> {
    // Bytes after `start` already searched for the blank line (offsets move when `more()`
    // compacts the buffer, so this one is relative).
    let searched = 0;
    for (;;) {
      const i = indexOfHeadEnd(this.buf, this.start + searched, this.end);
      if (i >= 0) {
        const text = latin1.decode(this.buf.subarray(this.start, i));
        this.start = i + 4;
        return parseHead(text);
      }
      const received = this.end - this.start;
      searched = Math.max(0, received - 3);
      if (received >= 5 && !startsWithHttp(this.buf, this.start)) {
        throw new ProtocolMismatch("the server did not answer in HTTP/1.x");
      }
      if (received >= MAX_HEAD_BYTES) throw new Error("response head too large");
      try {
        await this.more();
      } catch (err) {
        if (received === 0 && this.uses > 0) {
          throw new NothingReceived("connection closed by the server");
        }
        throw err;
      }
    }
  }

  /** Drops `n` body bytes. */
  async skip(n: number): Promise<void> {
    for (;;) {
      const take = Math.min(n, this.end - this.start);
      this.start += take;
      n -= take;
      if (n === 0) return;
      await this.more();
    }
  }

  /** Reads one CRLF-terminated line (chunked framing), at most 4 KiB. */
  async line(): Promise<string> {
    for (;;) {
      const i = indexOfCrlf(this.buf, this.start, this.end);
      if (i >= 0) {
        const text = latin1.decode(this.buf.subarray(this.start, i));
        this.start = i + 2;
        return text;
      }
      if (this.end - this.start > 4096) throw new Error("malformed chunked body");
      await this.more();
    }
  }

  /** Drops a chunked body (RFC 9112 §7.1) and its trailers; false when it is too long. */
  async skipChunked(): Promise<boolean> {
    let total = 0;
    for (;;) {
      const sizeText = (await this.line()).split(";", 1)[0]!.trim();
      if (!/^[0-9A-Fa-f]{1,8}$/.test(sizeText)) throw new Error("malformed chunked body");
      const size = parseInt(sizeText, 16);
      total += size;
      if (total > MAX_DRAIN_BYTES) return false;
      if (size === 0) break;
      await this.skip(size);
      if ((await this.line()) !== "") throw new Error("malformed chunked body");
    }
    while ((await this.line()) !== "") { /* trailer fields, ignored */ }
    return true;
  }
}

function indexOfHeadEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = buf.indexOf(13, from); i >= 0 && i + 3 < to; i = buf.indexOf(13, i + 1)) {
    if (buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function indexOfCrlf(buf: Uint8Array, from: number, to: number): number {
  for (let i = buf.indexOf(13, from); i >= 0 && i + 1 < to; i = buf.indexOf(13, i + 1)) {
    if (buf[i + 1] === 10) return i;
  }
  return -1;
}

function startsWithHttp(buf: Uint8Array, at: number): boolean {
  // "HTTP/"
  return buf[at] === 72 && buf[at + 1] === 84 && buf[at + 2] === 84 && buf[at + 3] === 80 &&
    buf[at + 4] === 47;
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: .*)?$/;

/** Parses a response head (RFC 9112 §4, §5); header names lower-cased. */
function parseHead(
  text: string,
): { version: number; status: number; headers: Map<string, string> } {
  const lines = text.split("\r\n");
  const statusLine = STATUS_LINE.exec(lines[0]!);
  if (!statusLine) {
    if (!lines[0]!.startsWith("HTTP/")) {
      throw new ProtocolMismatch("the server did not answer in HTTP/1.x");
    }
    throw new Error("malformed status line");
  }
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    // No obsolete line folding (RFC 9112 §5.2) and no space before the colon (§5.1).
    if (colon <= 0 || !TOKEN.test(line.slice(0, colon))) throw new Error("malformed header");
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    const seen = headers.get(name);
    headers.set(name, seen === undefined ? value : `${seen}, ${value}`);
  }
  return { version: Number(statusLine[1]), status: Number(statusLine[2]), headers };
}

function requestBytes(url: URL, headers: Record<string, string>, body: Uint8Array): Uint8Array {
  if (url.username || url.password) throw new TypeError("URL must not contain credentials");
  let head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  for (const name in headers) {
    const value = headers[name]!;
    if (!TOKEN.test(name) || RESERVED.has(name.toLowerCase())) {
      throw new TypeError(`header name not allowed: ${name}`);
    }
    if (!FIELD_VALUE.test(value)) throw new TypeError(`invalid value for header ${name}`);
    head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${body.length}\r\n\r\n`;
  // Every character is ASCII (checked above; the URL parser percent-encodes the rest).
  const bytes = new Uint8Array(head.length + body.length);
  ascii.encodeInto(head, bytes);
  bytes.set(body, head.length);
  return bytes;
}

/** Settles with `work`, or throws `signal`'s reason first; a late resource is then closed. */
function abortable<T extends { close(): void }>(
  work: Promise<T>,
  signal: AbortSignal | undefined,
): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.then((r) => r.close(), () => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      work.then((r) => r.close(), () => {});
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (r) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) r.close();
        else resolve(r);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

function isAlpnRefusal(err: unknown): boolean {
  return err instanceof Error && /NoApplicationProtocol|no.application.protocol/i.test(err.message);
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

  /** Host checks in progress: concurrent new connections to one host share one lookup. */
  const lookups = new Map<string, Promise<HostCheck>>();
  function lookup(host: string): Promise<HostCheck> {
    let check = lookups.get(host);
    if (!check) {
      check = checkHost(host, endpointPolicy!.resolve).finally(() => lookups.delete(host));
      lookups.set(host, check);
    }
    return check;
  }

  /** A TCP connection to the first checked address that answers (they are all public). */
  async function dial(addresses: string[], port: number, signal?: AbortSignal) {
    const connect = endpointPolicy?.connect ?? denoConnect;
    let failure: unknown;
    for (const hostname of addresses) {
      signal?.throwIfAborted();
      try {
        return await connect({ hostname, port });
      } catch (err) {
        failure = err;
      }
    }
    throw failure;
  }

  /** The socket for a new connection: by name, or to a checked address under the policy. */
  async function openSocket(
    url: URL,
    hostname: string,
    port: number,
    signal: AbortSignal | undefined,
  ): Promise<Deno.Conn> {
    const tls = url.protocol === "https:";
    if (!endpointPolicy) {
      return await abortable<Deno.Conn>(
        tls
          ? Deno.connectTls({
            hostname,
            port,
            alpnProtocols: ["http/1.1"],
            ...(caCerts ? { caCerts } : {}),
          })
          : Deno.connect({ hostname, port }),
        signal,
      );
    }
    // connectionRefusal admits https: only, so this is always TLS.
    const addresses = await untilAborted(allowedAddresses(url, lookup), signal);
    const tcp = await abortable(dial(addresses, port, signal), signal);
    // TLS for the endpoint's host name, not for the address: the certificate must name it.
    return await abortable<Deno.Conn>(
      Deno.startTls(tcp, {
        hostname,
        alpnProtocols: ["http/1.1"],
        ...(caCerts ? { caCerts } : {}),
      }),
      signal,
    );
  }

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
    if (resolve) await untilAborted(allowedAddresses(url, (h) => checkHost(h, resolve)), signal);
    const response = await fetchFn(url, {
      method: "POST",
      headers,
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
