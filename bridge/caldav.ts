/**
 * The few WebDAV requests the bridge makes to its upstream CalDAV server to notice changes:
 * a `PROPFIND` for `DAV:sync-token` and `CS:getctag`, the RFC 6578 `sync-collection` REPORT,
 * and a `Depth: 1` `PROPFIND` listing member ETags (what a ctag-only client does once the
 * ctag moves).
 *
 * @module
 */

import { statusCode } from "../dav/dav_push.ts";
import {
  childElement,
  childElements,
  clark,
  el,
  NS,
  parseXml,
  serializeXml,
  type XmlElement,
} from "../dav/xml.ts";

/** How to reach one upstream collection. */
export interface Upstream {
  /** Collection URL without credentials, ending in `/`. */
  url: string;
  /** The bridge's own polling credentials (never used for a client's write). */
  authorization: string | undefined;
  fetch: typeof fetch;
  /** Per-request timeout in milliseconds. */
  timeoutMs: number;
}

/** The upstream failed: `status` is its HTTP status, or 0 when it could not be reached. */
export class UpstreamError extends Error {
  readonly status: number;
  constructor(message: string, status: number, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "UpstreamError";
    this.status = status;
  }
}

/** A changed member: its canonical path, and its new ETag or `null` when it was removed. */
export interface Change {
  path: string;
  etag: string | null;
}

const D = (local: string) => clark(NS.DAV, local);
const GETCTAG = clark(NS.CS, "getctag");
// Responses can be large (a whole collection's ETags); bounded all the same.
const RESPONSE_LIMITS = { maxBytes: 64 * 1024 * 1024, maxDepth: 64, maxElements: 2_000_000 };
// The two PROPFIND bodies never change: the collection's state (RFC 6578 §4 sync-token, the
// CalendarServer ctag), and its members' ETags.
const STATE_PROPFIND = serializeXml(
  el(D("propfind"), el(D("prop"), el(D("sync-token")), el(GETCTAG))),
);
const MEMBERS_PROPFIND = serializeXml(
  el(D("propfind"), el(D("prop"), el(D("getetag")), el(D("resourcetype")))),
);

/**
 * The canonical form of a member href: the absolute path, each segment percent-decoded and
 * re-encoded the same way, so `/a/b%40c.ics` and `/a/b@c.ics` compare equal.
 */
export function canonicalPath(href: string, base: string): string {
  const path = new URL(href.trim(), base).pathname;
  return path.split("/").map((s) => {
    try {
      return encodeURIComponent(decodeURIComponent(s));
    } catch {
      return s;
    }
  }).join("/");
}

/** ETags compare without a weak marker (`W/"x"` equals `"x"`). */
export function normalizeEtag(etag: string | null | undefined): string | null {
  if (etag === null || etag === undefined) return null;
  const t = etag.trim();
  return t.startsWith("W/") ? t.slice(2) : t;
}

async function request(
  up: Upstream,
  method: string,
  headers: Record<string, string>,
  body: string,
): Promise<{ status: number; text: string }> {
  const h: Record<string, string> = {
    "content-type": "application/xml; charset=utf-8",
    ...headers,
  };
  if (up.authorization) h.authorization = up.authorization;
  let res: Response;
  try {
    res = await up.fetch(up.url, {
      method,
      headers: h,
      body,
      signal: AbortSignal.timeout(up.timeoutMs),
    });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new UpstreamError(`Upstream ${up.url} is unreachable: ${reason}`, 0, err);
  }
  return { status: res.status, text: await res.text() };
}

function parseMultistatus(up: Upstream, text: string): XmlElement {
  let root: XmlElement;
  try {
    root = parseXml(text, RESPONSE_LIMITS);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new UpstreamError(`Upstream ${up.url} sent an unreadable multistatus: ${reason}`, 207);
  }
  if (root.name !== D("multistatus")) {
    throw new UpstreamError(`Upstream ${up.url} sent ${root.name} instead of a multistatus`, 207);
  }
  return root;
}

/** The 2xx-propstat value of `name` in a `D:response`, if any. */
function okProp(response: XmlElement, name: string): XmlElement | undefined {
  for (const ps of childElements(response, D("propstat"))) {
    const code = statusCode(childElement(ps, D("status"))?.text);
    if (code === undefined || code < 200 || code > 299) continue;
    const found = childElement(childElement(ps, D("prop")) ?? ps, name);
    if (found) return found;
  }
  return undefined;
}

/** The collection's `DAV:sync-token` and `CS:getctag` (RFC 6578 §4; CalendarServer ctag). */
export async function collectionState(
  up: Upstream,
): Promise<{ syncToken: string | undefined; ctag: string | undefined }> {
  const res = await request(
    up,
    "PROPFIND",
    { depth: "0" },
    STATE_PROPFIND,
  );
  if (res.status !== 207) {
    throw new UpstreamError(`Upstream ${up.url} answered PROPFIND with ${res.status}`, res.status);
  }
  const root = parseMultistatus(up, res.text);
  const self = canonicalPath(up.url, up.url);
  let syncToken: string | undefined;
  let ctag: string | undefined;
  for (const r of childElements(root, D("response"))) {
    const href = childElement(r, D("href"))?.text;
    if (href !== undefined && canonicalPath(href, up.url) !== self) continue;
    syncToken ??= okProp(r, D("sync-token"))?.text.trim() || undefined;
    ctag ??= okProp(r, GETCTAG)?.text.trim() || undefined;
  }
  return { syncToken, ctag };
}

/** Outcome of a sync-collection REPORT. */
export type SyncResult =
  | { kind: "changes"; token: string; changes: Change[] }
  /** RFC 6578 §3.2: the token is no longer valid (`DAV:valid-sync-token` precondition). */
  | { kind: "invalid-token" }
  /** The server does not do sync-collection on this collection. */
  | { kind: "unsupported"; status: number };

/**
 * Changes since `token` (RFC 6578 §3.2, `DAV:sync-level` 1), following truncated answers
 * (§3.6: a `507` response for the collection itself means "ask again with the new token").
 */
export async function syncCollection(up: Upstream, token: string): Promise<SyncResult> {
  const changes = new Map<string, string | null>();
  const self = canonicalPath(up.url, up.url);
  for (let round = 0; round < 100; round++) {
    const res = await request(
      up,
      "REPORT",
      { depth: "0" },
      serializeXml(
        el(
          D("sync-collection"),
          el(D("sync-token"), token),
          el(D("sync-level"), "1"),
          el(D("prop"), el(D("getetag"))),
        ),
      ),
    );
    if ((res.status === 403 || res.status === 409) && res.text.includes("valid-sync-token")) {
      return { kind: "invalid-token" };
    }
    if (res.status >= 500 || res.status === 401 || res.status === 429) {
      throw new UpstreamError(`Upstream ${up.url} answered REPORT with ${res.status}`, res.status);
    }
    if (res.status !== 207) return { kind: "unsupported", status: res.status };
    const root = parseMultistatus(up, res.text);
    const next = childElement(root, D("sync-token"))?.text.trim();
    if (!next) {
      throw new UpstreamError(
        `Upstream ${up.url} sent a sync-collection answer without token`,
        207,
      );
    }
    let truncated = false;
    for (const r of childElements(root, D("response"))) {
      const status = statusCode(childElement(r, D("status"))?.text);
      for (const hrefEl of childElements(r, D("href"))) {
        const path = canonicalPath(hrefEl.text, up.url);
        if (path === self) {
          if (status === 507) truncated = true;
          continue;
        }
        if (status === 404) changes.set(path, null);
        else changes.set(path, normalizeEtag(okProp(r, D("getetag"))?.text) ?? "");
      }
    }
    token = next;
    if (!truncated) break;
  }
  return {
    kind: "changes",
    token,
    changes: [...changes].map(([path, etag]) => ({ path, etag })),
  };
}

/** Every member (not sub-collections) with its ETag, by canonical path (`Depth: 1` PROPFIND). */
export async function listEtags(up: Upstream): Promise<Map<string, string>> {
  const res = await request(
    up,
    "PROPFIND",
    { depth: "1" },
    MEMBERS_PROPFIND,
  );
  if (res.status !== 207) {
    throw new UpstreamError(`Upstream ${up.url} answered PROPFIND with ${res.status}`, res.status);
  }
  const root = parseMultistatus(up, res.text);
  const self = canonicalPath(up.url, up.url);
  const out = new Map<string, string>();
  for (const r of childElements(root, D("response"))) {
    const href = childElement(r, D("href"))?.text;
    if (href === undefined) continue;
    const path = canonicalPath(href, up.url);
    if (path === self) continue;
    if (okProp(r, D("resourcetype"))?.children.some((c) => c.name === D("collection"))) continue;
    out.set(path, normalizeEtag(okProp(r, D("getetag"))?.text) ?? "");
  }
  return out;
}

/** What changed between two ETag listings. */
export function diffEtags(
  before: ReadonlyMap<string, string>,
  after: ReadonlyMap<string, string>,
): Change[] {
  const changes: Change[] = [];
  for (const [path, etag] of after) {
    if (before.get(path) !== etag) changes.push({ path, etag });
  }
  for (const path of before.keys()) if (!after.has(path)) changes.push({ path, etag: null });
  return changes;
}
