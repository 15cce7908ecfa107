/**
 * HTTP/1.1 on one connection (RFC 9112 message syntax), for lib/transports/http1.ts: writing a
 * request, reading a response head, and framing its body by `Content-Length`, `chunked` or the
 * end of the connection (RFC 9112 §6.3).
 *
 * @module
 */

/** The peer does not speak HTTP/1.1 (ALPN refused, or it answered in another protocol). */
export class ProtocolMismatch extends Error {
  override name = "ProtocolMismatch";
}

/** The connection ended before any byte of the answer: safe to send again (module doc). */
export class NothingReceived extends Error {
  override name = "NothingReceived";
}

const INITIAL_BUFFER = 4096;
const MAX_HEAD_BYTES = 64 * 1024;
export const MAX_DRAIN_BYTES = 64 * 1024;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values we send are ASCII: visible characters, space and tab (RFC 9110 §5.5).
const FIELD_VALUE = /^[\t\x20-\x7e]*$/;
const RESERVED = new Set(["host", "content-length", "transfer-encoding", "connection"]);
const latin1 = new TextDecoder("latin1");
const ascii = new TextEncoder();

/** One connection, used by one request at a time. */
export class Connection {
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

/**
 * Request header fields checked and written out once, for many requests: a fan-out sends the
 * same fields (TTL, Urgency, Authorization of one origin...) to every subscriber.
 *
 * @throws {TypeError} for a name that is not a token (RFC 9110 §5.1) or one the client sets
 * itself, and for a value that is not visible ASCII, space and tab
 */
export class HeaderBlock {
  /** `name: value\r\n` for each field. */
  readonly text: string;
  constructor(readonly fields: Readonly<Record<string, string>>) {
    let text = "";
    for (const name in fields) {
      const value = fields[name]!;
      if (!TOKEN.test(name) || RESERVED.has(name.toLowerCase())) {
        throw new TypeError(`header name not allowed: ${name}`);
      }
      if (!FIELD_VALUE.test(value)) throw new TypeError(`invalid value for header ${name}`);
      text += `${name}: ${value}\r\n`;
    }
    this.text = text;
  }
}

export function requestBytes(
  url: URL,
  headers: Record<string, string> | HeaderBlock,
  body: Uint8Array,
): Uint8Array {
  if (url.username || url.password) throw new TypeError("URL must not contain credentials");
  const block = headers instanceof HeaderBlock ? headers : new HeaderBlock(headers);
  const head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n${block.text}` +
    `content-length: ${body.length}\r\n\r\n`;
  // Every character is ASCII (checked above; the URL parser percent-encodes the rest).
  const bytes = new Uint8Array(head.length + body.length);
  ascii.encodeInto(head, bytes);
  bytes.set(body, head.length);
  return bytes;
}
