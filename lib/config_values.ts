/**
 * Reading single configuration values from the environment: whole numbers in a range, URLs,
 * base64url keys, tokens, the app list and CORS origins, each failing with a `ConfigError`
 * that names its variable.
 *
 * @module
 */

import { decodeBase64Url } from "./encoding.ts";

/** One application server allowed to use the gateway (README "The gateway protocol"). */
export interface AppConfig {
  id: string;
  /** Bearer token; null for a path-authenticated app, whose id is itself the secret. */
  token: string | null;
}

export type Env = Record<string, string | undefined>;

/** A configuration value is wrong; `variable` names the environment variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
  }
}

export function integer(
  env: Env,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw.trim())) {
    throw new ConfigError(name, `must be a whole number, got "${raw}"`);
  }
  const value = Number(raw.trim());
  if (value < min || value > max) {
    throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

export function httpUrl(name: string, raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, `must be an absolute URL, got "${raw}"`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new ConfigError(name, `must be an http: or https: URL, got "${url.protocol}"`);
  }
  if (url.search || url.hash) {
    throw new ConfigError(name, "must not carry a query or fragment");
  }
  return url.href.replace(/\/+$/, "");
}

const APP_ID = /^[A-Za-z0-9._~-]+$/;

/** Parses `RELAY_APPS`: comma-separated `id:token`, where `id:` is a path-authenticated app. */
export function parseApps(raw: string): AppConfig[] {
  const name = "RELAY_APPS";
  const apps: AppConfig[] = [];
  const parts = raw.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) throw new ConfigError(name, "lists no app");
  for (const part of parts) {
    const colon = part.indexOf(":");
    if (colon < 0) {
      throw new ConfigError(name, `entry ${apps.length + 1} has no ":" (expected id:token)`);
    }
    const id = part.slice(0, colon);
    const token = part.slice(colon + 1);
    if (!APP_ID.test(id)) {
      throw new ConfigError(
        name,
        `entry ${apps.length + 1} has an app id with characters outside A-Z a-z 0-9 . _ ~ -`,
      );
    }
    if (apps.some((a) => a.id === id)) {
      throw new ConfigError(name, `app id "${token === "" ? "<path secret>" : id}" appears twice`);
    }
    if (token === "") {
      // A path-authenticated app's id is its secret, so it must be long.
      if (id.length < 32) {
        throw new ConfigError(
          name,
          `entry ${apps.length + 1} is path-authenticated (empty token), so its id must have ` +
            `at least 32 characters, got ${id.length}`,
        );
      }
      apps.push({ id, token: null });
    } else {
      if (token.length < 16 || /\s/.test(token)) {
        throw new ConfigError(
          name,
          `app "${id}" needs a token of at least 16 characters without spaces`,
        );
      }
      apps.push({ id, token });
    }
  }
  const tokens = apps.map((a) => a.token).filter((t) => t !== null);
  if (new Set(tokens).size !== tokens.length) {
    throw new ConfigError(name, "two apps share one token");
  }
  return apps;
}

export function base64Key(
  name: string,
  raw: string,
  length: number | [number, number],
): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = decodeBase64Url(raw.trim());
  } catch {
    throw new ConfigError(name, "is not base64url");
  }
  const ok = typeof length === "number"
    ? bytes.length === length
    : bytes.length >= length[0] && bytes.length <= length[1];
  if (!ok) {
    const want = typeof length === "number" ? `${length}` : `at least ${length[0]}`;
    throw new ConfigError(name, `must decode to ${want} bytes, got ${bytes.length}`);
  }
  return bytes;
}

/** A bearer token from the environment: at least 16 characters, no spaces; unset is null. */
export function bearerToken(env: Env, name: string): string | null {
  const raw = env[name];
  if (raw === undefined || raw === "") return null;
  if (raw.length < 16 || /\s/.test(raw)) {
    throw new ConfigError(name, "must be a token of at least 16 characters without spaces");
  }
  return raw;
}

/** `RELAY_CORS_ORIGINS`: comma-separated origins (`https://app.example`), or `*`. */
export function parseCorsOrigins(raw: string | undefined): string[] | "*" | null {
  if (raw === undefined || raw.trim() === "") return null;
  if (raw.trim() === "*") return "*";
  const origins: string[] = [];
  for (const part of raw.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    let url: URL;
    try {
      url = new URL(part);
    } catch {
      throw new ConfigError("RELAY_CORS_ORIGINS", `"${part}" is not an origin`);
    }
    if ((url.protocol !== "https:" && url.protocol !== "http:") || url.origin !== part) {
      throw new ConfigError(
        "RELAY_CORS_ORIGINS",
        `"${part}" is not an origin (scheme://host[:port], no path)`,
      );
    }
    origins.push(url.origin);
  }
  return origins;
}
