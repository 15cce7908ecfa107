/**
 * A stand-in upstream CC/CD 70025 gateway on 127.0.0.1 (port 0) for relaying tests: it records
 * every request (path, headers, JSON body) and answers as the test says; by default a bootstrap
 * with one FCM transport, `200 {"push-url": ...}` to a subscribe and `200 {"push-response": {}}`
 * to a push.
 */

export interface GatewayRequest {
  path: string;
  headers: Headers;
  body: Record<string, unknown>;
  /** The operation: the body's one member. */
  op: string;
}

export interface MockAnswer {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface GatewayMock {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  /** `<origin>/gateway` */
  url: string;
  /** The push-url it answers subscribes with. */
  pushUrl: string;
  /** The transport its bootstrap lists. */
  transport: Record<string, unknown>;
  requests: GatewayRequest[];
  /** Answers a request; the default answers are described above. */
  answer: (req: GatewayRequest) => MockAnswer | Promise<MockAnswer>;
  /** The requests of one operation. */
  of(op: string): GatewayRequest[];
  /** Resolves once `count` requests of `op` arrived (fails after `timeoutMs`). */
  waitFor(op: string, count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export function startGatewayMock(): GatewayMock {
  const transport = {
    transport: {
      "transport-uri": "https://vendor.example/transports/fcm",
      "refresh-interval": 604800,
      "transport-data": { "project-id": "vendor-project" },
    },
  };
  let origin = "";
  const defaultAnswer = (req: GatewayRequest): MockAnswer => {
    switch (req.op) {
      case "push-transports":
        return { status: 200, body: { "push-transports": [transport] } };
      case "push-subscribe":
        return { status: 200, body: { "push-url": `${origin}/gateway/relay-app` } };
      default:
        return { status: 200, body: { "push-response": {} } };
    }
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (r) => {
    const body = await r.json().catch(() => ({})) as Record<string, unknown>;
    const req: GatewayRequest = {
      path: new URL(r.url).pathname,
      headers: r.headers,
      body,
      op: Object.keys(body)[0] ?? "",
    };
    mock.requests.push(req);
    const a = await mock.answer(req);
    return new Response(a.body === undefined ? null : JSON.stringify(a.body), {
      status: a.status,
      headers: { "content-type": "application/json", ...a.headers },
    });
  });
  origin = `http://127.0.0.1:${server.addr.port}`;
  const mock: GatewayMock = {
    origin,
    url: `${origin}/gateway`,
    pushUrl: `${origin}/gateway/relay-app`,
    transport,
    requests: [],
    answer: defaultAnswer,
    of: (op) => mock.requests.filter((r) => r.op === op),
    async waitFor(op, count, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (mock.of(op).length < count) {
        if (Date.now() > deadline) {
          throw new Error(`Expected ${count} ${op} requests, saw ${mock.of(op).length}`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    close: () => server.shutdown(),
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
  return mock;
}
