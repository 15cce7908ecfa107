/**
 * The reverse proxy to `BRIDGE_UPSTREAM` (README, "Push for DAVx⁵ on Radicale (or any CalDAV
 * server)"): any method, the same path and query, the client's headers less the hop-by-hop ones
 * (RFC 9110 §7.6.1), `Host` the upstream's, and the answer back the same way.
 *
 * - The client's own `Authorization` goes upstream; the bridge never adds its polling
 *   credentials. The upstream's `WWW-Authenticate` comes back.
 * - `Destination` (RFC 4918 §10.3) naming the bridge is given the upstream's origin, since a
 *   server checks it against its own (Radicale answers `502` otherwise).
 * - An absolute upstream URL in `Location`, `Content-Location` and the `D:href`s of XML answers
 *   is given the bridge's origin; paths are kept (module `rewrite.ts`).
 * - The upstream is asked for `identity` encoding, so the answers the bridge rewrites are
 *   plain; a compressed one is decoded for rewriting (gzip, deflate) or passed on as it is.
 * - Answers are streamed. Request bodies are passed with a `Content-Length`: read first (up to
 *   a limit), because `fetch` sends a streamed body chunked, which HTTP/1.0 servers
 *   (Radicale's) cannot read; only a body beyond the limit streams.
 *
 * @module
 */

import { type RewriteOptions, rewriteUrl, rewriteXml } from "./rewrite.ts";

/** Where the proxy goes and how. */
export interface ProxyOptions {
  /** The upstream's origin, e.g. `http://127.0.0.1:5232`. */
  upstreamOrigin: string;
  /** The bridge's public origin (read at each request: it may be learnt at start). */
  publicOrigin: () => string;
  fetch: typeof fetch;
  /** Longest wait for the upstream's answer headers, in ms. */
  timeoutMs: number;
}

// RFC 9110 §7.6.1 (and the older Keep-Alive, Proxy-Connection); Host is set by fetch.
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
];

/** Largest request body read to be passed with its `Content-Length`. */
const BUFFERED_BODY_LIMIT = 64 * 1024 * 1024;
/** Largest XML answer rewritten; a larger one is passed on unchanged. */
const REWRITE_LIMIT = 64 * 1024 * 1024;

function withoutHopByHop(h: Headers): Headers {
  const out = new Headers(h);
  for (const token of (h.get("connection") ?? "").split(",")) {
    const name = token.trim().toLowerCase();
    if (name !== "") out.delete(name);
  }
  for (const name of HOP_BY_HOP) out.delete(name);
  return out;
}

/** The request's headers as they go upstream. */
function upstreamHeaders(req: Request, o: ProxyOptions): Headers {
  const h = withoutHopByHop(req.headers);
  h.delete("content-length");
  h.set("accept-encoding", "identity");
  const dest = h.get("destination");
  if (dest !== null) {
    try {
      const url = new URL(dest, req.url);
      if (url.origin === new URL(req.url).origin || url.origin === o.publicOrigin()) {
        h.set("destination", o.upstreamOrigin + url.pathname + url.search);
      }
    } catch { /* not a URL: the upstream answers it */ }
  }
  return h;
}

/** A body of unknown length this small is read first, and sent with its length. */
const UNSIZED_BODY_LIMIT = 1024 * 1024;

/**
 * The request body to send: its bytes when its length is known (or it turns out short) and
 * within the limit, else a stream.
 */
export async function upstreamBody(
  req: Request,
): Promise<{ body: BodyInit | null; stream: boolean }> {
  if (req.method === "GET" || req.method === "HEAD" || req.body === null) {
    return { body: null, stream: false };
  }
  const length = Number(req.headers.get("content-length") ?? NaN);
  if (Number.isFinite(length)) {
    if (length <= BUFFERED_BODY_LIMIT) {
      return { body: new Uint8Array(await req.arrayBuffer()), stream: false };
    }
    return { body: req.body, stream: true };
  }
  const { bytes, rest } = await readUpTo(req.body, UNSIZED_BODY_LIMIT);
  return rest ? { body: rejoin(bytes, rest), stream: true } : { body: bytes, stream: false };
}

/**
 * Sends a request upstream. Returns null when the upstream cannot be reached (or sent no
 * answer headers in time), which is the caller's `502`.
 */
export async function forward(
  req: Request,
  body: { body: BodyInit | null; stream: boolean },
  o: ProxyOptions,
): Promise<Response | null> {
  const url = new URL(req.url);
  const timer = new AbortController();
  const t = setTimeout(() => timer.abort(), o.timeoutMs);
  try {
    return await o.fetch(o.upstreamOrigin + url.pathname + url.search, {
      method: req.method,
      headers: upstreamHeaders(req, o),
      body: body.body,
      redirect: "manual",
      signal: timer.signal,
      ...(body.stream ? { duplex: "half" } : {}),
    } as RequestInit);
  } catch {
    return null;
  } finally {
    clearTimeout(t);
  }
}

/** True for `application/xml`, `text/xml` and any `+xml` type, with any parameters. */
export function isXml(contentType: string | null): boolean {
  const type = (contentType ?? "").split(";")[0]!.trim().toLowerCase();
  return type === "application/xml" || type === "text/xml" || type.endsWith("+xml");
}

/** Reads a body up to `limit` bytes; past it, `rest` holds the reader of what is left. */
export async function readUpTo(
  body: ReadableStream<Uint8Array>,
  limit: number,
): Promise<
  { bytes: Uint8Array<ArrayBuffer>; rest: ReadableStreamDefaultReader<Uint8Array> | null }
> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size > limit) return { bytes: concat(chunks, size), rest: reader };
  }
  return { bytes: concat(chunks, size), rest: null };
}

function concat(chunks: Uint8Array[], size: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** The buffered start of a body followed by the rest, as one stream. */
export function rejoin(head: Uint8Array, rest: ReadableStreamDefaultReader<Uint8Array>) {
  return new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(head);
    },
    async pull(c) {
      const { value, done } = await rest.read();
      if (done) c.close();
      else c.enqueue(value);
    },
    cancel(reason) {
      return rest.cancel(reason);
    },
  });
}

async function decoded(
  bytes: Uint8Array<ArrayBuffer>,
  encoding: string,
): Promise<Uint8Array<ArrayBuffer> | null> {
  if (encoding !== "gzip" && encoding !== "deflate") return null;
  try {
    const stream = new Blob([bytes]).stream()
      .pipeThrough(new DecompressionStream(encoding));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch {
    return null;
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

/**
 * The upstream's answer as the client gets it: hop-by-hop headers dropped, `Location` and
 * `Content-Location` rewritten and, for an XML answer to anything but `GET`/`HEAD`, the body
 * rewritten (`rewrite`: the push properties of `PROPFIND` answers).
 */
export async function clientResponse(
  res: Response,
  method: string,
  rewrite: RewriteOptions,
): Promise<Response> {
  const headers = withoutHopByHop(res.headers);
  for (const name of ["location", "content-location"]) {
    const v = headers.get(name);
    if (v !== null) headers.set(name, rewriteUrl(v, rewrite));
  }
  const empty = method === "HEAD" || res.status === 204 || res.status === 304;
  if (empty || res.body === null) {
    await res.body?.cancel();
    return new Response(null, { status: res.status, headers });
  }
  if (method === "GET" || !isXml(res.headers.get("content-type"))) {
    return new Response(res.body, { status: res.status, headers });
  }
  const { bytes, rest } = await readUpTo(res.body, REWRITE_LIMIT);
  if (rest) return new Response(rejoin(bytes, rest), { status: res.status, headers });
  let plain: Uint8Array<ArrayBuffer> | null = bytes;
  const encoding = (res.headers.get("content-encoding") ?? "").trim().toLowerCase();
  if (encoding !== "" && encoding !== "identity") plain = await decoded(bytes, encoding);
  if (plain === null) return new Response(bytes, { status: res.status, headers });
  let text: string;
  try {
    text = strictUtf8.decode(plain);
  } catch {
    return new Response(bytes, { status: res.status, headers });
  }
  const out = rewriteXml(text, rewrite);
  if (out === text && plain === bytes) return new Response(bytes, { status: res.status, headers });
  headers.delete("content-encoding");
  headers.delete("content-length");
  return new Response(out === text ? plain : encoder.encode(out), { status: res.status, headers });
}
