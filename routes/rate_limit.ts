/**
 * Fixed-window rate limiting as Hono middleware: at most `limit` requests per subject per
 * window, counted in KV so every process on one database shares the count. Over the limit:
 * `429` with `Retry-After` (seconds to the next window).
 *
 * @module
 */

import type { Context, MiddlewareHandler } from "hono";
import { RelayError } from "../lib/errors.ts";
import type { Clock } from "../lib/time.ts";

export interface RateLimitOptions {
  /** Requests per subject per window; 0 turns the limit off. */
  limit: number;
  /** Window length. @default 60000 */
  windowMs?: number;
  /** Who is counted: e.g. the client address, or a push resource. */
  subject: (c: Context) => string;
  /** Counts one hit for `subject` in window `window` and returns the window's count. */
  hit: (subject: string, window: number) => Promise<number>;
  now: Clock;
  /** The refusal's message, e.g. "More than 60 registrations a minute from this address". */
  message: string;
}

/** @throws {RangeError} when `limit` or `windowMs` is not a whole number in range */
export function rateLimit(options: RateLimitOptions): MiddlewareHandler {
  const windowMs = options.windowMs ?? 60_000;
  if (!Number.isInteger(options.limit) || options.limit < 0) {
    throw new RangeError(`Cannot limit the rate: limit must be >= 0, got ${options.limit}`);
  }
  if (!Number.isInteger(windowMs) || windowMs < 1000) {
    throw new RangeError(`Cannot limit the rate: windowMs must be >= 1000, got ${windowMs}`);
  }
  return async function rateLimit(c, next) {
    if (options.limit > 0) {
      const now = options.now();
      const window = Math.floor(now / windowMs);
      const count = await options.hit(options.subject(c), window);
      if (count > options.limit) {
        const retryAfter = Math.max(1, Math.ceil(((window + 1) * windowMs - now) / 1000));
        throw new RelayError(429, "rate-limited", options.message, {}, {
          "Retry-After": String(retryAfter),
        });
      }
    }
    await next();
  };
}
