/**
 * The relay's one error type for refusals the caller can act on. It carries the HTTP status
 * and the kebab-case code of the README's error bodies, but no framework types, so `lib/` stays free of
 * HTTP code; `routes/` turns it into `{"error": {"code", "message", ...}}`.
 *
 * @module
 */

export class RelayError extends Error {
  override name = "RelayError";
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 410 | 413 | 415 | 429 | 500 | 503,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Storage (Deno KV) failed or is closed: every route answers 503. */
export class StorageError extends Error {
  override name = "StorageError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * An error for a log line: its name and message and, for a storage failure, what KV said
 * (e.g. "database is locked"). Other causes are left out: a fetch error's text can carry an
 * endpoint URL, which never goes to logs.
 */
export function describeError(err: unknown): string {
  const text = String(err);
  if (err instanceof StorageError && err.cause instanceof Error) {
    return `${text} (${err.cause.message})`;
  }
  return text;
}
