/**
 * A local stand-in for the APNs provider API: HTTP/2 only, over TLS, on 127.0.0.1. It answers
 * like Apple does (`200` with `apns-id`, or an error status with `{"reason": "..."}`, plus
 * `timestamp` on `410`) and enforces Apple's provider-token rules: an ES256 JWT with the
 * team id as `iss` and the key id as `kid`, `403 ExpiredProviderToken` once `iat` is more than
 * an hour old, `429 TooManyProviderTokenUpdates` when a new token arrives less than 20
 * minutes after the previous one.
 *
 * The server is `node:http2` `createSecureServer({ allowHTTP1: false })`. Deno 2.5 does not
 * implement that yet; there the mock falls back to `Deno.serve` with TLS, which offers h2 by
 * ALPN (the tests' client is HTTP/2-only, so a request that arrives is still HTTP/2).
 *
 * TLS: the leaf in `certs/` is signed by a throwaway CA (`certs/ca.pem`), which clients trust
 * through `Deno.createHttpClient({ caCerts })`: Deno refuses a self-signed leaf that is its own
 * CA. `certs/generate.sh` remakes them.
 *
 * @module
 */

import { decodeProtectedHeader, jwtVerify } from "jose";

const certDir = new URL("./certs/", import.meta.url);
/** The throwaway CA that signed the mock's certificate. */
export const MOCK_CA_PEM = Deno.readTextFileSync(new URL("ca.pem", certDir));
const LEAF_PEM = Deno.readTextFileSync(new URL("leaf.pem", certDir));
const LEAF_KEY = Deno.readTextFileSync(new URL("leaf.key", certDir));

export interface RecordedApnsRequest {
  method: string;
  path: string;
  /** Lower-case header names; pseudo-headers left out. */
  headers: Record<string, string>;
  body: string;
  /** `h2` when the server saw the protocol itself (node:http2), else `h2 (alpn)`. */
  protocol: string;
  jwt: { header: Record<string, unknown>; claims: Record<string, unknown> } | null;
}

/** A scripted answer: status and Apple's `reason`. */
export interface ApnsMockResponse {
  status: number;
  reason?: string;
  headers?: Record<string, string>;
}

export interface ApnsMockOptions {
  teamId: string;
  keyId: string;
  /** Verifies the ES256 provider tokens. */
  publicKey: CryptoKey;
  /** The bundle id `apns-topic` must name. */
  topic: string;
  /** Epoch ms; the mock judges token age by it. */
  now: () => number;
  /** Force the `Deno.serve` fallback even where node:http2 can serve TLS. */
  forceDenoServe?: boolean;
}

export interface ApnsMock {
  /** `https://127.0.0.1:<port>` */
  url: string;
  /** True when the server itself refuses HTTP/1.1 (node:http2 with `allowHTTP1: false`). */
  h2Only: boolean;
  requests: RecordedApnsRequest[];
  /** Problems found in requests (a correct client leaves this empty). */
  problems: string[];
  /** Answers for the next well-authenticated requests, first in first out; then `200`. */
  enqueue(...responses: ApnsMockResponse[]): void;
  /** Distinct provider tokens seen, in order. */
  tokensSeen: string[];
  close(): Promise<void>;
}

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Starts the mock on 127.0.0.1 with a free port. */
export async function startApnsMock(options: ApnsMockOptions): Promise<ApnsMock> {
  const queue: ApnsMockResponse[] = [];
  let lastToken: { jwt: string; iat: number } | undefined;

  const mock: ApnsMock = {
    url: "",
    h2Only: false,
    requests: [],
    problems: [],
    enqueue: (...r) => void queue.push(...r),
    tokensSeen: [],
    close: () => Promise.resolve(),
  };

  const answer = (status: number, reason?: string, extra: Record<string, string> = {}): Answer => {
    const headers: Record<string, string> = { "apns-id": crypto.randomUUID().toUpperCase() };
    Object.assign(headers, extra);
    if (reason === undefined) return { status, headers, body: "" };
    headers["content-type"] = "application/json";
    const body: Record<string, unknown> = { reason };
    if (status === 410) body.timestamp = options.now();
    return { status, headers, body: JSON.stringify(body) };
  };

  async function handle(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: string,
    protocol: string,
  ): Promise<Answer> {
    const record: RecordedApnsRequest = { method, path, headers, body, protocol, jwt: null };
    mock.requests.push(record);
    if (method !== "POST") return answer(405, "MethodNotAllowed");
    if (!/^\/3\/device\/[0-9a-f]{64,}$/.test(path)) return answer(404, "BadPath");

    const auth = headers["authorization"];
    if (!auth?.startsWith("bearer ")) return answer(403, "MissingProviderToken");
    const jwt = auth.slice(7);
    try {
      const header = decodeProtectedHeader(jwt) as Record<string, unknown>;
      if (header.kid !== options.keyId) throw new Error(`kid ${header.kid}`);
      const { payload } = await jwtVerify(jwt, options.publicKey, {
        algorithms: ["ES256"],
        issuer: options.teamId,
        requiredClaims: ["iat"],
        currentDate: new Date(options.now()),
        clockTolerance: 60,
      });
      record.jwt = { header, claims: payload as Record<string, unknown> };
    } catch (e) {
      mock.problems.push(`jwt: ${(e as Error).message}`);
      return answer(403, "InvalidProviderToken");
    }
    const iat = Number(record.jwt.claims.iat);
    if (options.now() / 1000 - iat > 3600) return answer(403, "ExpiredProviderToken");
    if (lastToken?.jwt !== jwt) {
      if (lastToken && iat - lastToken.iat < 20 * 60) {
        mock.problems.push("provider token renewed within 20 minutes");
        return answer(429, "TooManyProviderTokenUpdates");
      }
      lastToken = { jwt, iat };
      mock.tokensSeen.push(jwt);
    }

    const topic = headers["apns-topic"];
    if (!topic) return answer(400, "MissingTopic");
    if (topic !== options.topic) {
      mock.problems.push(`apns-topic ${topic}`);
      return answer(400, "BadTopic");
    }
    const pushType = headers["apns-push-type"];
    if (!pushType) return answer(400, "InvalidPushType");
    if (pushType === "background" && headers["apns-priority"] !== "5") {
      mock.problems.push("background push without apns-priority 5");
      return answer(400, "BadPriority");
    }
    if (!/^\d+$/.test(headers["apns-expiration"] ?? "0")) return answer(400, "BadExpirationDate");
    const collapse = headers["apns-collapse-id"];
    if (collapse !== undefined && new TextEncoder().encode(collapse).length > 64) {
      return answer(400, "BadCollapseId");
    }
    if (new TextEncoder().encode(body).length > 4096) return answer(413, "PayloadTooLarge");
    try {
      const json = JSON.parse(body);
      if (typeof json?.aps !== "object") throw new Error("no aps");
    } catch {
      return answer(400, body === "" ? "PayloadEmpty" : "BadMessageId");
    }
    const scripted = queue.shift();
    if (scripted) return answer(scripted.status, scripted.reason, scripted.headers);
    return answer(200);
  }

  let http2: typeof import("node:http2") | undefined;
  if (!options.forceDenoServe) http2 = await import("node:http2");
  let server: import("node:http2").Http2SecureServer | undefined;
  try {
    server = http2?.createSecureServer({ key: LEAF_KEY, cert: LEAF_PEM, allowHTTP1: false });
  } catch {
    server = undefined; // Deno 2.5: "Not implemented: http2.createSecureServer"
  }

  if (server) {
    const h2 = server;
    const sessions = new Set<import("node:http2").ServerHttp2Session>();
    h2.on("session", (s) => {
      sessions.add(s);
      s.on("close", () => sessions.delete(s));
    });
    h2.on("stream", (stream, rawHeaders) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(rawHeaders)) {
        if (!k.startsWith(":") && v !== undefined) headers[k] = String(v);
      }
      const chunks: Uint8Array[] = [];
      stream.on("data", (c: Uint8Array) => chunks.push(c));
      stream.on("end", async () => {
        const body = new TextDecoder().decode(concatBytes(chunks));
        const protocol = (stream.session as { alpnProtocol?: string } | undefined)?.alpnProtocol ??
          "h2";
        const a = await handle(
          String(rawHeaders[":method"]),
          String(rawHeaders[":path"]),
          headers,
          body,
          protocol,
        );
        if (stream.destroyed) return;
        stream.respond({ ":status": a.status, ...a.headers });
        stream.end(a.body);
      });
    });
    await new Promise<void>((resolve) => h2.listen(0, "127.0.0.1", () => resolve()));
    mock.url = `https://127.0.0.1:${(h2.address() as { port: number }).port}`;
    mock.h2Only = true;
    mock.close = async () => {
      for (const s of sessions) s.destroy();
      await new Promise<void>((resolve) => h2.close(() => resolve()));
    };
    return mock;
  }

  const controller = new AbortController();
  const denoServer = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: LEAF_PEM,
    key: LEAF_KEY,
    signal: controller.signal,
    onListen() {},
  }, async (req) => {
    const headers: Record<string, string> = {};
    req.headers.forEach((v, k) => {
      if (k !== "host") headers[k] = v;
    });
    const url = new URL(req.url);
    const a = await handle(req.method, url.pathname, headers, await req.text(), "h2 (alpn)");
    return new Response(a.body === "" ? null : a.body, { status: a.status, headers: a.headers });
  });
  mock.url = `https://127.0.0.1:${denoServer.addr.port}`;
  mock.close = async () => {
    controller.abort();
    await denoServer.finished;
  };
  return mock;
}

function concatBytes(chunks: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const c of chunks) n += c.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}
