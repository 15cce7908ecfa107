/**
 * Time helpers: an injectable clock and strict RFC 3339 parsing (CC/CD 70025 §6.1.2 and
 * §6.1.3 use RFC 3339 UTC timestamps; digest §6 item 19: parse leniently, normalise to UTC).
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
  const m = RFC3339.exec(value);
  if (!m) return null;
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(
    Number,
  ) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) {
    return null;
  }
  const base = Date.UTC(year, month - 1, day, hour, minute, second);
  const check = new Date(base);
  if (check.getUTCDate() !== day || check.getUTCMonth() !== month - 1) return null;
  const fraction = m[7] ? Math.floor(Number(m[7]) * 1000) : 0;
  let offset = 0;
  if (m[9]) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) return null;
    offset = (oh * 60 + om) * 60_000 * (m[9] === "+" ? 1 : -1);
  }
  return base + fraction - offset;
}

/** Formats epoch milliseconds as RFC 3339 UTC, without a fraction when it is zero. */
export function formatRfc3339(ms: number): string {
  const iso = new Date(ms).toISOString();
  return iso.endsWith(".000Z") ? `${iso.slice(0, -5)}Z` : iso;
}
