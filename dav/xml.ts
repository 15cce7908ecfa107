/**
 * Namespace-aware XML for the DAV-facing parts (CC/CD 70025 §5.2.3, §6.2): a `saxes` wrapper
 * that returns element trees with Clark names (`{DAV:}prop`), and a small serialiser with
 * fixed prefixes.
 *
 * Input is untrusted: the parser refuses any `DOCTYPE` (so no entity expansion, no XXE), caps
 * the body size, the nesting depth and the number of elements, and throws {@linkcode XmlError}
 * (never anything else) for every malformed or hostile body. A prefix means nothing by itself:
 * `<D:topic xmlns:D="urn:ietf:params:xml:ns:dav-push">` and
 * `<topic xmlns="urn:ietf:params:xml:ns:dav-push">` give the same Clark name.
 *
 * Output escapes text and attribute values and drops characters outside the XML 1.0 `Char`
 * production (XML 1.0 §2.2: control characters, lone surrogates, U+FFFE/U+FFFF), which a
 * string concatenation or a careless serialiser lets through.
 *
 * @module
 */

import { SaxesParser } from "saxes";

/** The XML namespaces the DAV-Push binding uses, by their usual prefix. */
export const NS = {
  /** RFC 4918 WebDAV. */
  DAV: "DAV:",
  /** CC/CD 70025 §10.1: the DAV-Push namespace. */
  PUSH: "urn:ietf:params:xml:ns:dav-push",
  /** RFC 4791 CalDAV. */
  CALDAV: "urn:ietf:params:xml:ns:caldav",
  /** Apple CalendarServer extensions (`getctag`, `pushkey`). */
  CS: "http://calendarserver.org/ns/",
} as const;

/** The prefixes the serialiser uses for the namespaces of {@linkcode NS}. */
export const DEFAULT_PREFIXES: Readonly<Record<string, string>> = {
  [NS.DAV]: "D",
  [NS.PUSH]: "P",
  [NS.CALDAV]: "C",
  [NS.CS]: "CS",
};

const XMLNS_NS = "http://www.w3.org/2000/xmlns/";

/** Returns the Clark name `{ns}local` (or just `local` when `ns` is empty). */
export function clark(ns: string, local: string): string {
  return ns === "" ? local : `{${ns}}${local}`;
}

/** Splits a Clark name into namespace and local name. */
export function splitClark(name: string): { ns: string; local: string } {
  if (!name.startsWith("{")) return { ns: "", local: name };
  const end = name.indexOf("}");
  if (end < 0) throw new TypeError(`Invalid Clark name: ${JSON.stringify(name)}`);
  return { ns: name.slice(1, end), local: name.slice(end + 1) };
}

// ---------------------------------------------------------------------------------------------
// Parsing

/** A parsed element. Names are Clark names; prefixes are gone. */
export interface XmlElement {
  /** Clark name, e.g. `{DAV:}href`. */
  readonly name: string;
  /** Namespace URI; empty for an element in no namespace. */
  readonly ns: string;
  /** Local name. */
  readonly local: string;
  /** Attributes by Clark name; namespace declarations are left out. */
  readonly attributes: Readonly<Record<string, string>>;
  /** Child elements in document order. */
  readonly children: XmlElement[];
  /** The character data directly inside this element (text and CDATA, concatenated). */
  text: string;
}

/** Limits for {@linkcode parseXml}. */
export interface ParseXmlOptions {
  /** Largest accepted body in bytes (UTF-8). Default 1 MiB. Larger bodies fail with status 413. */
  maxBytes?: number;
  /** Deepest accepted element nesting; the root is depth 1. Default 32. */
  maxDepth?: number;
  /** Most elements accepted in one document. Default 10000. */
  maxElements?: number;
}

/**
 * Thrown by {@linkcode parseXml} for every body it refuses. `status` is the HTTP status an
 * endpoint should answer with: `413` for a body over the size limit, `400` otherwise.
 */
export class XmlError extends Error {
  /** `400` (malformed or refused) or `413` (too large). */
  readonly status: 400 | 413;
  constructor(message: string, status: 400 | 413 = 400) {
    super(message);
    this.name = "XmlError";
    this.status = status;
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

/**
 * Parses an XML document into an element tree with Clark names.
 *
 * Refuses (with {@linkcode XmlError}): any `DOCTYPE`, malformed XML, unbound prefixes, more
 * than one root, bodies that are not UTF-8, and anything over the limits of `options`.
 */
export function parseXml(input: string | Uint8Array, options: ParseXmlOptions = {}): XmlElement {
  const maxBytes = options.maxBytes ?? 1024 * 1024;
  const maxDepth = options.maxDepth ?? 32;
  const maxElements = options.maxElements ?? 10_000;

  let text: string;
  if (typeof input === "string") {
    // Cheap upper bound first: a UTF-8 encoding is at most 3 bytes per UTF-16 unit.
    if (
      input.length > maxBytes || (input.length * 3 > maxBytes &&
        utf8Encoder.encode(input).length > maxBytes)
    ) {
      throw new XmlError(`Body is larger than ${maxBytes} bytes`, 413);
    }
    text = input;
  } else {
    if (input.length > maxBytes) {
      throw new XmlError(`Body is larger than ${maxBytes} bytes, got ${input.length}`, 413);
    }
    try {
      text = strictUtf8.decode(input);
    } catch {
      throw new XmlError("Body is not valid UTF-8");
    }
  }
  if (text.trim() === "") throw new XmlError("Body is empty, expected an XML document");

  const parser = new SaxesParser({ xmlns: true, position: false });
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let count = 0;

  parser.on("error", (err) => {
    throw new XmlError(`Malformed XML: ${err.message}`);
  });
  parser.on("doctype", () => {
    // saxes accepts a DOCTYPE without entities; a DAV body never needs one, and refusing it
    // closes the door on entity tricks entirely.
    throw new XmlError("DOCTYPE is not allowed");
  });
  parser.on("opentag", (tag) => {
    if (stack.length + 1 > maxDepth) {
      throw new XmlError(`XML is nested deeper than ${maxDepth} elements`);
    }
    if (++count > maxElements) throw new XmlError(`XML has more than ${maxElements} elements`);
    const attributes: Record<string, string> = {};
    for (const attr of Object.values(tag.attributes)) {
      if (attr.uri === XMLNS_NS || (attr.prefix === "" && attr.local === "xmlns")) continue;
      attributes[clark(attr.uri, attr.local)] = attr.value;
    }
    const el: XmlElement = {
      name: clark(tag.uri, tag.local),
      ns: tag.uri,
      local: tag.local,
      attributes,
      children: [],
      text: "",
    };
    const parent = stack.at(-1);
    if (parent) parent.children.push(el);
    else root = el;
    stack.push(el);
  });
  parser.on("closetag", () => {
    stack.pop();
  });
  const onText = (t: string) => {
    const top = stack.at(-1);
    if (top) top.text += t;
  };
  parser.on("text", onText);
  parser.on("cdata", onText);

  try {
    parser.write(text).close();
  } catch (err) {
    if (err instanceof XmlError) throw err;
    // saxes reports through the error handler above; anything else is still the input's fault.
    throw new XmlError(`Malformed XML: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!root) throw new XmlError("XML has no root element");
  return root;
}

/** The first child of `el` with Clark name `name`, if any. */
export function childElement(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}

/** Every child of `el` with Clark name `name`. */
export function childElements(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}

// ---------------------------------------------------------------------------------------------
// Serialising

/** An element to serialise. `name` is a Clark name; children are elements or text. */
export interface XmlNode {
  name: string;
  attributes?: Record<string, string>;
  children?: (XmlNode | string)[];
}

/** Builds an {@linkcode XmlNode}: `el("{DAV:}href", "/x/")`. */
export function el(name: string, ...children: (XmlNode | string)[]): XmlNode {
  return { name, children };
}

// XML 1.0 §2.2 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
// With the `u` flag, lone surrogates are single code points outside the class, so they go too.
const NON_XML_CHAR = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

/** Removes every character that XML 1.0 cannot carry (even as a character reference). */
export function stripInvalidXmlChars(s: string): string {
  return s.replace(NON_XML_CHAR, "");
}

/** Escapes character data, dropping characters outside XML 1.0. */
export function escapeXmlText(s: string): string {
  return stripInvalidXmlChars(s)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll("\r", "&#13;");
}

/** Escapes a double-quoted attribute value, dropping characters outside XML 1.0. */
export function escapeXmlAttribute(s: string): string {
  return escapeXmlText(s)
    .replaceAll('"', "&quot;")
    .replaceAll("\t", "&#9;")
    .replaceAll("\n", "&#10;");
}

// XML Namespaces §3 NCName, restricted to what a local name here can reasonably be.
const NC_NAME =
  /^[A-Za-z_\u00C0-\uFFFD\u{10000}-\u{EFFFF}][A-Za-z0-9._\-\u00B7\u00C0-\uFFFD\u{10000}-\u{EFFFF}]*$/u;

/** Options for {@linkcode serializeXml}. */
export interface SerializeXmlOptions {
  /** Namespace URI to prefix; merged over {@linkcode DEFAULT_PREFIXES}. */
  prefixes?: Record<string, string>;
  /** Emit `<?xml version="1.0" encoding="UTF-8"?>` first. Default true. */
  declaration?: boolean;
}

/**
 * Serialises `root` with fixed prefixes, every namespace declared once on the root element.
 * Namespaces without a configured prefix get `ns0`, `ns1`, ... No default namespace is ever
 * declared, so an element with no namespace is written unprefixed and stays in no namespace.
 *
 * @throws {TypeError} when a name is not a valid XML name (a programming error, not input)
 */
export function serializeXml(root: XmlNode, options: SerializeXmlOptions = {}): string {
  const prefixes = new Map<string, string>(
    Object.entries({ ...DEFAULT_PREFIXES, ...options.prefixes }),
  );
  const used = new Map<string, string>(); // ns -> prefix, in order of first use
  const taken = new Set<string>();
  let generated = 0;

  const prefixFor = (ns: string): string => {
    let p = used.get(ns);
    if (p !== undefined) return p;
    p = prefixes.get(ns);
    if (p === undefined || taken.has(p)) {
      do p = `ns${generated++}`; while (taken.has(p) || [...prefixes.values()].includes(p));
    }
    used.set(ns, p);
    taken.add(p);
    return p;
  };
  const qname = (name: string): string => {
    const { ns, local } = splitClark(name);
    if (!NC_NAME.test(local)) throw new TypeError(`Invalid XML name: ${JSON.stringify(name)}`);
    return ns === "" ? local : `${prefixFor(ns)}:${local}`;
  };

  const write = (node: XmlNode): string => {
    let out = "<" + qname(node.name);
    for (const [name, value] of Object.entries(node.attributes ?? {})) {
      out += ` ${qname(name)}="${escapeXmlAttribute(value)}"`;
    }
    const children = node.children ?? [];
    if (children.length === 0) return out + "/>";
    out += ">";
    for (const c of children) out += typeof c === "string" ? escapeXmlText(c) : write(c);
    return out + `</${qname(node.name)}>`;
  };

  // Serialise first (collecting namespaces), then put the declarations on the root tag.
  const body = write(root);
  const rootName = qname(root.name);
  let decls = "";
  for (const [ns, p] of used) decls += ` xmlns:${p}="${escapeXmlAttribute(ns)}"`;
  const xml = "<" + rootName + decls + body.slice(1 + rootName.length);
  return (options.declaration ?? true) ? `<?xml version="1.0" encoding="UTF-8"?>\n${xml}` : xml;
}
