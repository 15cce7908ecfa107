/**
 * Reading untrusted JSON bodies in the README's error order ("Errors and operations"): `415`
 * not JSON, `413` over 1 MiB, `400` unparsable.
 *
 * @module
 */

import type { Context } from "hono";
import { RelayError } from "../lib/errors.ts";

export const MAX_BODY_BYTES = 1024 * 1024;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** True for `application/json` and `application/*+json`, with any parameters. */
export function isJsonContentType(value: string | undefined): boolean {
  if (!value) return false;
  const type = value.split(";")[0]!.trim().toLowerCase();
  return type === "application/json" || /^application\/[a-z0-9.+-]+\+json$/.test(type);
}

/** Reads at most `limit` bytes of the body; throws 413 past it without reading the rest. */
export async function readBodyLimited(req: Request, limit: number): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    throw new RelayError(413, "payload-too-large", `The body exceeds ${limit} bytes`);
  }
  if (!req.body) return new Uint8Array(0);
  // A declared length within the limit: one read of the whole body, without a stream reader
  // (the reader's promises and chunks were a tenth of a push's allocations). Deno checks that
  // the body matches its Content-Length.
  if (declared !== null && /^\d+$/.test(declared)) {
    return new Uint8Array(await req.arrayBuffer());
  }
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel().catch(() => {});
      throw new RelayError(413, "payload-too-large", `The body exceeds ${limit} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

/** Parses a JSON request body with the contract's statuses. */
export async function readJson(c: Context, limit = MAX_BODY_BYTES): Promise<unknown> {
  if (!isJsonContentType(c.req.header("content-type"))) {
    throw new RelayError(415, "unsupported-media-type", "The body must be application/json");
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
