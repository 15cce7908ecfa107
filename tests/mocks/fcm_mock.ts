/**
 * A local stand-in for Google's OAuth 2.0 token endpoint and the FCM HTTP v1 API, speaking
 * their wire formats: the JWT-bearer grant (RFC 7523) answered with
 * `{"access_token", "expires_in", "token_type"}` or `{"error", "error_description"}`, and
 * `POST /v1/projects/{project}/messages:send` answered with `{"name": ...}` or Google's error
 * envelope `{"error": {"code", "message", "status", "details": [...]}}`.
 *
 * The mock verifies what the real services verify (assertion signature, `iss`, `aud`,
 * `scope`, lifetime; bearer token; project; data values being strings) and records every
 * request so tests can check each header and body field.
 *
 * @module
 */

import { decodeProtectedHeader, jwtVerify } from "jose";

export interface RecordedTokenRequest {
  contentType: string | null;
  grantType: string | null;
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
}

export interface RecordedSend {
  path: string;
  headers: Headers;
  accessToken: string | null;
  body: Record<string, unknown>;
}

/** A scripted answer of the mock. */
export interface MockResponse {
  status: number;
  body: string;
  headers?: Record<string, string>;
}

/** Google's error envelope, as FCM HTTP v1 sends it. */
export function fcmError(
  code: number,
  status: string,
  message: string,
  extra: { errorCode?: string; fieldViolations?: { field: string; description: string }[] } = {},
  headers: Record<string, string> = {},
): MockResponse {
  const details: Record<string, unknown>[] = [];
  if (extra.errorCode) {
    details.push({
      "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
      errorCode: extra.errorCode,
    });
  }
  if (extra.fieldViolations) {
    details.push({
      "@type": "type.googleapis.com/google.rpc.BadRequest",
      fieldViolations: extra.fieldViolations,
    });
  }
  const error: Record<string, unknown> = { code, message, status };
  if (details.length > 0) error.details = details;
  return {
    status: code,
    body: JSON.stringify({ error }, null, 2),
    headers: { "content-type": "application/json; charset=UTF-8", ...headers },
  };
}

export interface FcmMockOptions {
  projectId: string;
  clientEmail: string;
  /** Verifies the RS256 assertions. */
  publicKey: CryptoKey;
  /** Epoch ms; the mock judges token lifetimes by it. */
  now: () => number;
  /** `expires_in` of issued tokens (default 3599, like Google). */
  tokenLifetimeS?: number;
}

export interface FcmMock {
  /** Base URL: the transport's `apiUrl`. */
  url: string;
  /** The token endpoint: the service account's `token_uri`. */
  tokenUri: string;
  tokenRequests: RecordedTokenRequest[];
  sends: RecordedSend[];
  /** Problems the mock found in requests (a correct client leaves this empty). */
  problems: string[];
  /** Answers for the next sends, first in first out; then `200 {"name": ...}`. */
  enqueue(...responses: MockResponse[]): void;
  /** Answers for the next token requests, first in first out; then a fresh token. */
  enqueueToken(...responses: MockResponse[]): void;
  /** Delay before the token endpoint answers. */
  tokenDelayMs: number;
  /** When true, `messages:send` never answers (until the client gives up or the mock closes). */
  hang: boolean;
  /** Makes every access token issued so far invalid (the next send gets `401`). */
  revokeTokens(): void;
  close(): Promise<void>;
}

const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const SCOPE = "https://www.googleapis.com/auth/firebase.messaging";

function json(status: number, value: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=UTF-8", ...headers },
  });
}

function fromMock(r: MockResponse): Response {
  return new Response(r.body, { status: r.status, headers: r.headers ?? {} });
}

/** Starts the mock on 127.0.0.1 with a free port. */
export function startFcmMock(options: FcmMockOptions): FcmMock {
  const sendQueue: MockResponse[] = [];
  const tokenQueue: MockResponse[] = [];
  const issued = new Map<string, number>(); // access token -> expiry (epoch ms)
  const closing = Promise.withResolvers<void>();
  let counter = 0;

  const mock: FcmMock = {
    url: "",
    tokenUri: "",
    tokenRequests: [],
    sends: [],
    problems: [],
    enqueue: (...r) => void sendQueue.push(...r),
    enqueueToken: (...r) => void tokenQueue.push(...r),
    tokenDelayMs: 0,
    hang: false,
    revokeTokens: () => issued.clear(),
    close: async () => {
      closing.resolve();
      controller.abort();
      await server.finished;
    },
  };

  async function token(req: Request): Promise<Response> {
    const contentType = req.headers.get("content-type");
    const form = new URLSearchParams(await req.text());
    const assertion = form.get("assertion") ?? "";
    const record: RecordedTokenRequest = {
      contentType,
      grantType: form.get("grant_type"),
      header: {},
      claims: {},
    };
    mock.tokenRequests.push(record);
    if (mock.tokenDelayMs > 0) await new Promise((r) => setTimeout(r, mock.tokenDelayMs));
    const scripted = tokenQueue.shift();
    if (scripted) return fromMock(scripted);
    if (contentType !== "application/x-www-form-urlencoded") {
      mock.problems.push(`token: content-type ${contentType}`);
    }
    if (record.grantType !== JWT_BEARER) {
      mock.problems.push(`token: grant_type ${record.grantType}`);
      return json(400, {
        error: "unsupported_grant_type",
        error_description: "Invalid grant_type",
      });
    }
    try {
      record.header = decodeProtectedHeader(assertion) as Record<string, unknown>;
      const { payload } = await jwtVerify(assertion, options.publicKey, {
        algorithms: ["RS256"],
        issuer: options.clientEmail,
        audience: mock.tokenUri,
        currentDate: new Date(options.now()),
        requiredClaims: ["iat", "exp", "scope"],
      });
      record.claims = payload as Record<string, unknown>;
      if (payload.scope !== SCOPE) throw new Error(`scope ${payload.scope}`);
      if ((payload.exp ?? 0) - (payload.iat ?? 0) > 3600) throw new Error("lifetime over 1 h");
    } catch (e) {
      mock.problems.push(`token: ${(e as Error).message}`);
      return json(400, { error: "invalid_grant", error_description: "Invalid JWT Signature." });
    }
    const accessToken = `ya29.mock-${++counter}-${crypto.randomUUID()}`;
    const lifetime = options.tokenLifetimeS ?? 3599;
    issued.set(accessToken, options.now() + lifetime * 1000);
    return json(200, { access_token: accessToken, expires_in: lifetime, token_type: "Bearer" });
  }

  async function send(req: Request, path: string): Promise<Response> {
    const auth = req.headers.get("authorization");
    const accessToken = auth?.startsWith("Bearer ") ? auth.slice(7) : null;
    let body: Record<string, unknown> = {};
    try {
      body = await req.json();
    } catch {
      mock.problems.push("send: body is not JSON");
    }
    mock.sends.push({ path, headers: req.headers, accessToken, body });
    if (mock.hang) {
      // Held until the mock closes; the client is expected to give up long before.
      await closing.promise;
      return new Response(null, { status: 503 });
    }
    const expiry = accessToken === null ? undefined : issued.get(accessToken);
    if (expiry === undefined || expiry <= options.now()) {
      return fromMock(fcmError(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login " +
          "cookie or other valid authentication credential.",
      ));
    }
    const m = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(path);
    if (!m || m[1] !== options.projectId) {
      return fromMock(fcmError(404, "NOT_FOUND", "Requested entity was not found."));
    }
    const message = body.message as Record<string, unknown> | undefined;
    const data = (message?.data ?? {}) as Record<string, unknown>;
    let i = 0;
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== "string") {
        const field = `message.data[${i}].value`;
        const text = `Invalid value at '${field}' (TYPE_STRING), ${JSON.stringify(value)}`;
        mock.problems.push(`send: data ${key} is not a string`);
        return fromMock(fcmError(400, "INVALID_ARGUMENT", text, {
          fieldViolations: [{ field, description: text }],
        }));
      }
      i++;
    }
    const scripted = sendQueue.shift();
    if (scripted) return fromMock(scripted);
    return json(200, {
      name: `projects/${options.projectId}/messages/0:${++counter}%${crypto.randomUUID()}`,
    });
  }

  const controller = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: controller.signal, onListen() {} },
    (req) => {
      const path = new URL(req.url).pathname;
      if (req.method === "POST" && path === "/token") return token(req);
      if (req.method === "POST" && path.startsWith("/v1/")) return send(req, path);
      return json(404, { error: { code: 404, message: "Not Found", status: "NOT_FOUND" } });
    },
  );
  mock.url = `http://127.0.0.1:${server.addr.port}`;
  mock.tokenUri = `${mock.url}/token`;
  return mock;
}
