/**
 * The paths the app serves, by pattern, whatever the method: for `405` with `Allow` on a known
 * path with a method it does not serve (RFC 9110 §15.5.6; `HEAD` wherever `GET` is), and for
 * request logs, which show a path only as its route pattern with every parameter masked
 * (`/gateway/<app>`, `/push/<id>`), and any other path as `<unmatched>`: a capability
 * (a path-secret app id, an ingress id) never reaches a log, wherever it stands.
 *
 * @module
 */

import type { Context, Hono } from "hono";
import { matchedRoutes } from "hono/route";
import { TrieRouter } from "hono/router/trie-router";

interface Known {
  pattern: string;
  method: string;
}

/** What request logs show for a path that matches no route. */
const UNMATCHED_PATH = "<unmatched>";

const LOGGED_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);

/** The method as logged: a standard one, or `<other>` (a method token could carry anything). */
export function logMethod(method: string): string {
  return LOGGED_METHODS.has(method) ? method : "<other>";
}

/** A route pattern as logged: every parameter masked (`:clientId` → `<client-id>`). */
export function logPattern(pattern: string | null): string {
  if (pattern === null) return UNMATCHED_PATH;
  return pattern.replace(
    /:([A-Za-z0-9_]+)(\{[^}]*\})?/g,
    (_, name: string) => `<${name.replace(/[A-Z]/g, (ch) => `-${ch.toLowerCase()}`)}>`,
  );
}

/** The app's routes by pattern, built once, on first use (after every route was added). */
export class KnownPaths {
  private router: TrieRouter<Known> | null = null;

  constructor(private readonly app: Hono) {}

  private build(): TrieRouter<Known> {
    const router = new TrieRouter<Known>();
    for (const r of this.app.routes) {
      if (r.method === "ALL") continue; // middleware
      router.add("ALL", r.path, { pattern: r.path, method: r.method });
    }
    return router;
  }

  /** The patterns `path` matches and the methods they serve; null for an unknown path. */
  match(path: string): { pattern: string; allow: string[] } | null {
    this.router ??= this.build();
    const [found] = this.router.match("GET", path) as [[Known, unknown][]];
    if (found.length === 0) return null;
    const methods = new Set<string>();
    for (const [k] of found) {
      methods.add(k.method);
      if (k.method === "GET") methods.add("HEAD");
    }
    const order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    const allow = [...methods].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    return { pattern: found[0]![0].pattern, allow };
  }

  /** The pattern of the route that answered `c`, or of a known path; null when unknown. */
  patternOf(c: Context): string | null {
    const handler = matchedRoutes(c).findLast((r) => r.method !== "ALL");
    return handler?.path ?? this.match(c.req.path)?.pattern ?? null;
  }
}
