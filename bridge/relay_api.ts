/**
 * The relay's client API as the bridge uses it for WebDAV-Push clients (README, "The client
 * API"): `POST /registrations` with `"payload": "webdav-push"` for a push subscription a
 * client gave the bridge, and `DELETE /registrations/{client-id}` when the last registration
 * using it is gone.
 *
 * @module
 */

import { GatewayError } from "../dav/gateway_client.ts";
import type { WebPushSubscription } from "../dav/webdav_push.ts";

/** What the relay answered a registration with. */
export interface RelayRegistration {
  clientId: string;
  clientData: string;
}

/** The relay refused or failed a request; `retryAfter` is its `Retry-After` (429), if any. */
export class RelayApiError extends GatewayError {
  readonly retryAfter: string | undefined;
  constructor(
    message: string,
    init: { status: number; code?: string | undefined; retryAfter?: string | undefined },
  ) {
    super(message, init);
    this.name = "RelayApiError";
    this.retryAfter = init.retryAfter;
  }
}

export interface RelayApiOptions {
  /** The relay's base URL (`BRIDGE_RELAY_URL`). */
  url: string;
  fetch: typeof fetch;
  timeoutMs: number;
}

export class RelayApi {
  constructor(private readonly o: RelayApiOptions) {}

  private async call(method: string, path: string, init: RequestInit): Promise<Response> {
    try {
      return await this.o.fetch(`${this.o.url}${path}`, {
        ...init,
        method,
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
    } catch (err) {
      // The error text may hold the URL; the relay's origin is all the message needs.
      throw new RelayApiError(
        `Relay at ${new URL(this.o.url).origin} is unreachable (${(err as Error).name})`,
        { status: 0 },
      );
    }
  }

  private async fail(res: Response, op: string): Promise<never> {
    const text = await res.text().catch(() => "");
    let code: string | undefined;
    try {
      const c = JSON.parse(text)?.error?.code;
      if (typeof c === "string") code = c;
    } catch { /* not JSON */ }
    throw new RelayApiError(`Relay answered ${res.status} to ${op}${code ? ` (${code})` : ""}`, {
      status: res.status,
      code,
      retryAfter: res.headers.get("retry-after") ?? undefined,
    });
  }

  /**
   * Registers a push subscription for WebDAV-Push payloads. The same endpoint and keys give the
   * same client-id again (README, "Who owns a registration").
   *
   * @throws {RelayApiError} on any non-201 answer or when the relay cannot be reached
   */
  async register(sub: WebPushSubscription): Promise<RelayRegistration> {
    const res = await this.call("POST", "/registrations", {
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        transport: "web-push",
        subscription: { endpoint: sub.pushResource, keys: { p256dh: sub.p256dh, auth: sub.auth } },
        payload: "webdav-push",
      }),
    });
    if (res.status !== 201) return await this.fail(res, "registration");
    const body = await res.json().catch(() => null) as Record<string, unknown> | null;
    const clientId = body?.["client-id"];
    const clientData = body?.["client-data"];
    if (typeof clientId !== "string" || typeof clientData !== "string") {
      throw new RelayApiError("Relay answered a registration without client-id or client-data", {
        status: res.status,
      });
    }
    return { clientId, clientData };
  }

  /**
   * Deletes a relay registration with its client-data. An already removed one (`404`) counts
   * as done.
   *
   * @throws {RelayApiError} when the relay cannot be reached or answers otherwise
   */
  async unregister(clientId: string, clientData: string): Promise<void> {
    const res = await this.call("DELETE", `/registrations/${encodeURIComponent(clientId)}`, {
      headers: { authorization: `Bearer ${clientData}` },
    });
    if (res.status === 204 || res.status === 404) {
      await res.body?.cancel();
      return;
    }
    return await this.fail(res, "unregistration");
  }
}
