/**
 * Rewriting the upstream's XML answers in place (README, "Push for DAVx⁵ on Radicale (or any
 * CalDAV server)"): everything stays byte for byte as the upstream sent it except
 *
 * - a `D:href` whose text is an absolute URL of the upstream's origin: that origin becomes the
 *   bridge's (the path, query and the rest of the text are kept as written);
 * - in a `207` multistatus, the `D:response` of a watched collection: the WebDAV-Push
 *   properties the request asked for are put into its `200` propstat (one is made when there
 *   is none) and taken out of any other propstat the upstream listed them in (RFC 4918 §9.1: a
 *   property it did not know came back `404`); a propstat left empty goes.
 *
 * The document is parsed (namespace-aware, `saxes`) only to find where elements start and
 * end; the output is the input with those ranges spliced. Anything the parser refuses
 * (malformed XML, a `DOCTYPE`) is passed on untouched.
 *
 * @module
 */

import { SaxesParser, type SaxesTagNS } from "saxes";
import { statusCode } from "../dav/dav_push.ts";
import { clark, NS } from "../dav/xml.ts";
import { canonicalPath } from "./caldav.ts";

const D = (local: string) => clark(NS.DAV, local);
const HREF = D("href");
const RESPONSE = D("response");
const PROPSTAT = D("propstat");
const PROP = D("prop");
const STATUS = D("status");
const MULTISTATUS = D("multistatus");

/** What {@linkcode rewriteXml} changes. */
export interface RewriteOptions {
  /** The upstream's origin, e.g. `http://127.0.0.1:5232`. */
  upstreamOrigin: string;
  /** The bridge's public origin. */
  publicOrigin: string;
  /**
   * The WebDAV-Push properties for the response of `path` (canonical, from its `D:href`), as
   * self-contained XML fragments by Clark name; undefined for a collection that is not watched.
   */
  pushProperties?: (path: string) => ReadonlyMap<string, string> | undefined;
}

interface Open {
  name: string;
  /** The raw qualified name, as written. */
  qname: string;
  start: number;
  openEnd: number;
  selfClosing: boolean;
  text: string;
}

interface Propstat {
  start: number;
  end: number;
  status: number | undefined;
  /** The `D:prop`: where its content ends, or, when it is `<D:prop/>`, where the tag is. */
  prop?: { openEnd: number; closeStart: number; selfClosing: boolean; qname: string };
  /** Push properties found in it. */
  push: { start: number; end: number }[];
  /** Other properties in it. */
  others: number;
}

interface ResponseState {
  href: string | undefined;
  hrefEnd: number;
  /** The push properties it gets (set when its href closes); undefined: none. */
  props?: ReadonlyMap<string, string> | undefined;
  propstats: Propstat[];
  current?: Propstat | undefined;
}

interface Edit {
  start: number;
  end: number;
  text: string;
}

const ABSOLUTE = /^(\s*)([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#\s<&]*)/;

/** Rewrites an absolute URL of the upstream's origin to the bridge's; others are kept. */
export function rewriteUrl(value: string, options: RewriteOptions): string {
  const m = ABSOLUTE.exec(value);
  if (!m) return value;
  let origin: string;
  try {
    origin = new URL(m[2]! + "/").origin;
  } catch {
    return value;
  }
  if (origin !== options.upstreamOrigin) return value;
  return m[1]! + options.publicOrigin + value.slice(m[0].length);
}

/**
 * Returns `text` rewritten as the module documentation says, or `text` itself when nothing
 * changes or the document cannot be read.
 */
export function rewriteXml(text: string, options: RewriteOptions): string {
  const edits: Edit[] = [];
  const stack: Open[] = [];
  let response: ResponseState | undefined;
  const parser = new SaxesParser({ xmlns: true, position: true });
  let failed = false;
  parser.on("error", () => {
    failed = true;
    throw new Error("unreadable");
  });
  parser.on("doctype", () => {
    failed = true;
    throw new Error("doctype");
  });
  parser.on("opentag", (tag: SaxesTagNS) => {
    const openEnd = parser.position;
    const start = text.lastIndexOf("<", openEnd - 1);
    const name = clark(tag.uri, tag.local);
    const parent = stack.at(-1);
    stack.push({ name, qname: tag.name, start, openEnd, selfClosing: tag.isSelfClosing, text: "" });
    if (name === RESPONSE && parent?.name === MULTISTATUS && stack.length === 2) {
      response = { href: undefined, hrefEnd: -1, propstats: [] };
    } else if (name === PROPSTAT && parent?.name === RESPONSE && response) {
      response.current = { start, end: -1, status: undefined, push: [], others: 0 };
    }
  });
  const onText = (t: string) => {
    const top = stack.at(-1);
    if (top && (top.name === HREF || top.name === STATUS)) top.text += t;
  };
  parser.on("text", onText);
  parser.on("cdata", onText);
  parser.on("closetag", () => {
    const end = parser.position;
    const el = stack.pop()!;
    const closeStart = el.selfClosing ? el.start : text.lastIndexOf("<", end - 1);
    const parent = stack.at(-1);
    const ps = response?.current;
    if (el.name === HREF) {
      const raw = text.slice(el.openEnd, closeStart);
      const out = rewriteUrl(raw, options);
      if (out !== raw) edits.push({ start: el.openEnd, end: closeStart, text: out });
      if (parent?.name === RESPONSE && response && response.href === undefined) {
        response.href = el.text;
        response.hrefEnd = end;
        response.props = options.pushProperties?.(hrefPath(el.text, options));
      }
    } else if (el.name === STATUS && parent?.name === PROPSTAT && ps) {
      ps.status = statusCode(el.text);
    } else if (el.name === PROP && parent?.name === PROPSTAT && ps) {
      ps.prop = { openEnd: el.openEnd, closeStart, selfClosing: el.selfClosing, qname: el.qname };
    } else if (parent?.name === PROP && stack.at(-2)?.name === PROPSTAT && ps) {
      if (response?.props?.has(el.name)) ps.push.push({ start: el.start, end });
      else ps.others++;
    } else if (el.name === PROPSTAT && parent?.name === RESPONSE && response && ps) {
      ps.end = end;
      response.propstats.push(ps);
      response.current = undefined;
    } else if (el.name === RESPONSE && stack.length === 1 && response) {
      edits.push(...responseEdits(response));
      response = undefined;
    }
  });
  try {
    parser.write(text).close();
  } catch {
    return text;
  }
  if (failed || edits.length === 0) return text;
  return splice(text, edits);
}

function hrefPath(href: string, o: RewriteOptions): string {
  try {
    return canonicalPath(href, o.upstreamOrigin + "/");
  } catch {
    return "";
  }
}

/** The edits that give a watched collection's response its push properties. */
function responseEdits(r: ResponseState): Edit[] {
  const props = r.props;
  if (!props || props.size === 0) return [];
  const insert = [...props.values()].join("");
  const ok = r.propstats.find((ps) =>
    ps.prop !== undefined && ps.status !== undefined && ps.status >= 200 && ps.status < 300
  );
  const edits: Edit[] = [];
  for (const ps of r.propstats) {
    if (ps.push.length === 0) continue;
    if (ps !== ok && ps.others === 0) {
      edits.push({ start: ps.start, end: ps.end, text: "" });
    } else {
      for (const p of ps.push) edits.push({ start: p.start, end: p.end, text: "" });
    }
  }
  if (ok?.prop) {
    const p = ok.prop;
    edits.push(
      p.selfClosing
        // `<D:prop/>` becomes `<D:prop>...</D:prop>`: its "/>" is replaced.
        ? { start: p.openEnd - 2, end: p.openEnd, text: `>${insert}</${p.qname}>` }
        : { start: p.closeStart, end: p.closeStart, text: insert },
    );
  } else {
    edits.push({
      start: r.hrefEnd,
      end: r.hrefEnd,
      text: `<D:propstat xmlns:D="DAV:"><D:prop>${insert}</D:prop>` +
        `<D:status>HTTP/1.1 200 OK</D:status></D:propstat>`,
    });
  }
  return edits;
}

/** Applies non-overlapping edits; an edit inside one already applied is dropped. */
function splice(text: string, edits: Edit[]): string {
  edits.sort((a, b) => a.start - b.start || (a.end - a.start) - (b.end - b.start));
  let out = "";
  let cursor = 0;
  for (const e of edits) {
    if (e.start < cursor) continue;
    out += text.slice(cursor, e.start) + e.text;
    cursor = e.end;
  }
  return out + text.slice(cursor);
}
