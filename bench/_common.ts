/**
 * What every benchmark section shares: the app and its token, the check list that fails the
 * run, logging and number formatting.
 *
 * @module
 */

import { randomToken } from "../lib/encoding.ts";

export const APP = "bench";
export const TOKEN = randomToken(24);
export const HOUR = 3600_000;
export const MiB = 1024 * 1024;

/** Checks that failed; any fails the run (exit code 1). */
export const failures: string[] = [];

export function check(ok: boolean, what: string): void {
  if (!ok) {
    failures.push(what);
    console.error(`FAIL: ${what}`);
  }
}

export const log = (s: string) => console.error(`bench: ${s}`);

export const fmt = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** The 1-minute load average, or "unknown" off Linux. */
export async function loadAverage(): Promise<string> {
  try {
    return (await Deno.readTextFile("/proc/loadavg")).split(" ")[0] ?? "unknown";
  } catch {
    return "unknown";
  }
}
