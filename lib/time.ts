/**
 * Time helpers: an injectable clock and strict RFC 3339 parsing (CC/CD 70025 §6.1.2 and
 * §6.1.3 use RFC 3339 UTC timestamps: any offset and fraction are read, and normalised to UTC).
 *
 * @module
 */

/** Milliseconds since the epoch; injected everywhere so tests can fix time. */
export type Clock = () => number;

export const systemClock: Clock = () => Date.now();

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses an RFC 3339 date-time (any offset, optional fraction) into epoch milliseconds, or
 * returns null when the string is not one or names an impossible date.
 */
export function parseRfc3339(value: string): number | null {
  // One match, numbers read straight from it (this runs for every pushed message,
  // and the ingest path's allocations are what Deno 2.5's collector spends its time on).
  const m = RFC3339.exec(value);
  if (!m) return null;
  const year = +m[1]!;
  const month = +m[2]!;
  const day = +m[3]!;
  const hour = +m[4]!;
  const minute = +m[5]!;
  const second = +m[6]!;
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month)) return null;
  if (hour > 23 || minute > 59 || second > 59) return null;
  const base = Date.UTC(year, month - 1, day, hour, minute, second);
  const fraction = m[7] ? Math.floor(+m[7] * 1000) : 0;
  let offset = 0;
  if (m[9]) {
    const oh = +m[10]!;
    const om = +m[11]!;
    if (oh > 23 || om > 59) return null;
    offset = (oh * 60 + om) * 60_000 * (m[9] === "+" ? 1 : -1);
  }
  return base + fraction - offset;
}

/** Days in `month` (1-12) of `year`, proleptic Gregorian. */
function daysIn(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

/** Formats epoch milliseconds as RFC 3339 UTC, without a fraction when it is zero. */
export function formatRfc3339(ms: number): string {
  const iso = new Date(ms).toISOString();
  return iso.endsWith(".000Z") ? `${iso.slice(0, -5)}Z` : iso;
}
