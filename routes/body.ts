/**
 * Reading untrusted JSON bodies in the README's error order ("Errors and operations"): `415`
 * not JSON or compressed, `413` over 1 MiB, `400` unparsable. Every body must arrive within
 * `RELAY_REQUEST_TIMEOUT_MS` of its request's headers ({@linkcode bodyDeadline}); a slower one,
 * or one the client breaks off, is a `400` (and the connection is closed), never a `500`.
 *
 * @module
 */

import type { Context, MiddlewareHandler } from "hono";
import { RelayError } from "../lib/errors.ts";

export const MAX_BODY_BYTES = 1024 * 1024;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** True for `application/json` and `application/*+json`, with any parameters. */
export function isJsonContentType(value: string | undefined): boolean {
  if (!value) return false;
  const type = value.split(";")[0]!.trim().toLowerCase();
  return type === "application/json" || /^application\/[a-z0-9.+-]+\+json$/.test(type);
}

/** When each request's body must have arrived (`performance.now()` time), by request. */
const deadlines = new WeakMap<Request, { at: number; timeoutMs: number }>();

/**
 * Middleware: the body of every request must arrive within `timeoutMs` of its headers (what
 * `Deno.serve` hands over: it has no timeout of its own for headers or bodies).
 */
export function bodyDeadline(timeoutMs: number): MiddlewareHandler {
  return async function bodyDeadline(c, next) {
    deadlines.set(c.req.raw, { at: performance.now() + timeoutMs, timeoutMs });
    await next();
  };
}

/**
 * A body that was broken off or too slow: `400` with `Connection: close`. (Deno 2.5 then
 * closes the connection; Deno 2.9 keeps it open while a read of its body is pending, which
 * only the client or a reverse proxy ends: README "Threat model".)
 */
function unreadable(code: "incomplete-body" | "request-timeout", message: string): RelayError {
  return new RelayError(400, code, message, {}, { Connection: "close" });
}

/**
 * Reads at most `limit` bytes of the body; throws 413 past it without reading the rest, and
 * 400 when the client breaks the body off or sends it slower than the request deadline.
 */
export async function readBodyLimited(req: Request, limit: number): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    throw new RelayError(413, "payload-too-large", `The body exceeds ${limit} bytes`);
  }
  if (!req.body) return new Uint8Array(0);
  // A stream reader rather than `arrayBuffer()`: only a reader can be cancelled when the
  // deadline passes, and Deno 2.9 keeps a connection open for as long as its body is read.
  const reader = req.body.getReader();
  const deadline = deadlines.get(req);
  let late = false;
  const timer = deadline === undefined ? undefined : setTimeout(() => {
    late = true;
    reader.cancel().catch(() => {});
  }, Math.max(0, deadline.at - performance.now()));
  try {
    const length = declared !== null && /^\d+$/.test(declared) ? Number(declared) : null;
    const body = await readAll(reader, limit, length);
    if (!late) return body;
  } catch (err) {
    if (!late && err instanceof RelayError) throw err;
    // The client closed the connection (or sent a malformed body) before the end.
    if (!late) throw unreadable("incomplete-body", "The request body ended before it was complete");
  } finally {
    clearTimeout(timer);
  }
  throw unreadable(
    "request-timeout",
    `The request did not arrive within ${deadline!.timeoutMs} ms`,
  );
}

/**
 * The whole body: into one buffer of the declared length (Deno checks that the body matches
 * its Content-Length), else chunk by chunk up to `limit`.
 */
async function readAll(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  limit: number,
  declared: number | null,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const out = declared === null ? null : new Uint8Array(declared);
  let total = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    if (total + value.length > (out?.length ?? limit)) {
      await reader.cancel().catch(() => {});
      if (out) throw unreadable("incomplete-body", "The body is longer than its Content-Length");
      throw new RelayError(413, "payload-too-large", `The body exceeds ${limit} bytes`);
    }
    if (out) out.set(value, total);
    else chunks.push(value);
    total += value.length;
  }
  if (out) return total === out.length ? out : out.subarray(0, total);
  if (chunks.length === 1) return chunks[0]!;
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    joined.set(c, offset);
    offset += c.length;
  }
  return joined;
}

/** True when a Content-Encoding header says the body is sent as is (absent or `identity`). */
function isIdentityEncoding(value: string | undefined): boolean {
  return value === undefined ||
    value.split(",").every((v) => v.trim().toLowerCase() === "identity");
}

/** Parses a JSON request body with the contract's statuses. */
export async function readJson(c: Context, limit = MAX_BODY_BYTES): Promise<unknown> {
  if (!isJsonContentType(c.req.header("content-type"))) {
    throw new RelayError(415, "unsupported-media-type", "The body must be application/json");
  }
  // A compressed body is refused rather than decompressed (no decompression bombs).
  if (!isIdentityEncoding(c.req.header("content-encoding"))) {
    throw new RelayError(
      415,
      "unsupported-content-encoding",
      "The body must not be compressed: Content-Encoding must be identity or absent",
    );
  }
  const bytes = await readBodyLimited(c.req.raw, limit);
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw new RelayError(400, "invalid-json", "The body is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new RelayError(
      400,
      "invalid-json",
      `The body is not valid JSON: ${(err as Error).message.slice(0, 120)}`,
    );
  }
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
