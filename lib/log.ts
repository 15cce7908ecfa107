/**
 * Structured logging: one JSON line per event. Callers pass only non-secret fields; the
 * relay never logs tokens, client-data, endpoints or device tokens (CONTRACT §4).
 *
 * @module
 */

export type LogLevel = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void;
}

/** Writes JSON lines to stdout (info/debug) and stderr (warn/error). */
export function consoleLogger(options: { minLevel?: LogLevel } = {}): Logger {
  const order: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
  const min = order[options.minLevel ?? "info"];
  return {
    log(level, event, fields) {
      if (order[level] < min) return;
      const line = JSON.stringify({ t: new Date().toISOString(), level, event, ...fields });
      if (order[level] >= order.warn) console.error(line);
      else console.log(line);
    },
  };
}

/** A logger that keeps lines in memory, for tests. */
export function memoryLogger(): Logger & {
  lines: { level: LogLevel; event: string; fields: Record<string, unknown> }[];
} {
  const lines: { level: LogLevel; event: string; fields: Record<string, unknown> }[] = [];
  return {
    lines,
    log(level, event, fields) {
      lines.push({ level, event, fields: fields ?? {} });
    },
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = { log() {} };
