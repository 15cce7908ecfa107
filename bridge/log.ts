/**
 * The bridge's structured logging: one JSON line per event, `{"t": <ISO time>, "level",
 * "event", ...fields}`, the same line shape as the relay's. Callers pass only non-secret
 * fields: the bridge never logs its relay token, polling credentials or client-data.
 *
 * @module
 */

/** Severity of a log line; `debug` lines are dropped unless asked for. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Where the bridge sends its events. */
export interface Logger {
  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/**
 * Writes JSON lines: `info` and `debug` to stdout, `warn` and `error` to stderr, one
 * `console` call per line.
 */
export function consoleLogger(options: { minLevel?: LogLevel } = {}): Logger {
  const min = ORDER[options.minLevel ?? "info"];
  return {
    log(level, event, fields) {
      if (ORDER[level] < min) return;
      const line = JSON.stringify({ t: new Date().toISOString(), level, event, ...fields });
      if (ORDER[level] >= ORDER.warn) console.error(line);
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
