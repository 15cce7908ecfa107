/**
 * Structured logging: one JSON line per event. Callers pass only non-secret fields; the
 * relay never logs tokens, client-data, endpoints or device tokens.
 *
 * @module
 */

export type LogLevel = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void;
}

/**
 * Writes JSON lines to stdout (info/debug) and stderr (warn/error).
 *
 * With `gather`, info and debug lines (one per request, at thousands a second) are gathered
 * and written together once per turn of the event loop: one write instead of one per line
 * (less CPU per push, most of all on Deno 2.5). Warnings and errors are written at
 * once, after what is gathered; the rest when the process exits (`unload`, which `Deno.exit`
 * also fires). Without it every line is its own `console.log` call, one log record each, as
 * Deno Deploy keeps them (main.ts gathers everywhere else).
 */
export function consoleLogger(
  options: { minLevel?: LogLevel; gather?: boolean } = {},
): Logger {
  const order: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
  const min = order[options.minLevel ?? "info"];
  const gather = options.gather ?? false;
  let gathered = "";
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (gathered === "") return;
    const text = gathered;
    gathered = "";
    try {
      writeAll(Deno.stdout, encoder.encode(text));
    } catch {
      // stdout closed: nothing to do about it
    }
  };
  if (gather) globalThis.addEventListener("unload", flush);
  return {
    log(level, event, fields) {
      if (order[level] < min) return;
      const line = JSON.stringify({ t: new Date().toISOString(), level, event, ...fields });
      if (order[level] >= order.warn) {
        flush();
        console.error(line);
      } else if (!gather) {
        console.log(line);
      } else {
        gathered += `${line}\n`;
        if (gathered.length > 65536) flush();
        else if (!scheduled) {
          scheduled = true;
          setTimeout(flush, 0);
        }
      }
    },
  };
}

const encoder = new TextEncoder();

function writeAll(w: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  let offset = 0;
  while (offset < bytes.length) offset += w.writeSync(bytes.subarray(offset));
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
