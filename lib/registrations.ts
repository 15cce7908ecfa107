/**
 * The client API (README "The client API"): devices register where they receive pushes and get
 * a sealed client-data and a client-id; they can delete the registration with that client-data.
 *
 * The route hands over the request's shape (strings where strings belong); what makes a
 * target valid (P-256 keys, the endpoint policy, token formats) is checked here.
 *
 * @module
 */

import { isP256Point, validateSubscriptionKeys } from "./crypto/ece.ts";
import { decodeBase64Url, randomToken } from "./encoding.ts";
import { RelayError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { PayloadFormat, Registration, Target, TransportId } from "./model.ts";
import type { Sealer } from "./seal.ts";
import type { Store } from "./store/mod.ts";
import { endpointRefusal, type Resolver, targetHash } from "./targets.ts";
import type { Clock } from "./time.ts";
import { validateApnsEnvironment, validateApnsToken } from "./transports/apns.ts";
import { validateFcmToken } from "./transports/fcm.ts";
import type { TransportInfo } from "./gateway.ts";

export interface RegistrationResult {
  "client-data": string;
  "client-id": string;
  "transport-uri": string;
  "refresh-interval": number;
  "push-resource"?: string;
}

/** A registration request as the route parsed it. */
export interface RegistrationRequest {
  transport: TransportId;
  /** Web Push: `PushSubscription.toJSON()`'s endpoint and keys. */
  subscription?: { endpoint: string; p256dh: unknown; auth: unknown };
  /** FCM and APNs: the device token, and APNs' environment. */
  token?: unknown;
  environment?: unknown;
  /** Asks for a Web Push ingress push resource. */
  ingress: boolean;
  /** The DAV server's VAPID key that every ingress message must be signed with. */
  ingressVapidKey?: string;
  /** `"payload"` as sent (checked here): `cc-dav-push` or `webdav-push`. */
  payload?: unknown;
}

export interface RegistrationsOptions {
  store: Store;
  sealer: Sealer;
  transports: TransportInfo[];
  refreshInterval: number;
  publicUrl: string;
  /** `RELAY_ALLOW_PRIVATE_ENDPOINTS`: turns the endpoint policy off (local testing only). */
  allowPrivateEndpoints: boolean;
  resolve: Resolver;
  now: Clock;
  logger: Logger;
}

export class Registrations {
  constructor(private readonly o: RegistrationsOptions) {}

  /**
   * Registers a device. The same device (same endpoint or token) keeps its client-id, so a
   * re-registration does not double its pushes; its keys are updated.
   */
  async register(req: RegistrationRequest): Promise<RegistrationResult> {
    const info = this.o.transports.find((t) => t.id === req.transport);
    if (!info) {
      throw new RelayError(
        400,
        "unknown-transport",
        `Transport ${req.transport} is not enabled on this relay`,
      );
    }
    if (req.ingressVapidKey !== undefined) checkIngressKey(req.ingressVapidKey);
    const format = payloadFormatOf(req);
    const target = await this.target(req);
    const hash = await targetHash(target);
    const existingId = await this.o.store.registrations.findByTarget(hash);
    const existing = existingId ? await this.o.store.registrations.get(existingId) : null;
    const clientId = existing?.clientId ?? randomToken(16);
    const reg: Registration = { clientId, target, createdAt: existing?.createdAt ?? this.o.now() };
    // The device's latest registration says which payloads it understands.
    if (format === "webdav-push") reg.payload = format;
    if (req.ingress) {
      reg.ingress = {
        id: existing?.ingress?.id ?? randomToken(24),
        ...(req.ingressVapidKey !== undefined ? { vapidPublicKey: req.ingressVapidKey } : {}),
      };
    }
    await this.o.store.registrations.put(reg, hash);
    this.o.logger.log("info", "registration", {
      client: clientId,
      transport: target.transport,
      renewed: !!existing,
    });
    const result: RegistrationResult = {
      "client-data": await this.o.sealer.seal({ clientId, transport: target.transport }),
      "client-id": clientId,
      "transport-uri": info.uri,
      "refresh-interval": this.o.refreshInterval,
    };
    if (reg.ingress) result["push-resource"] = `${this.o.publicUrl}/push/${reg.ingress.id}`;
    return result;
  }

  /** The device address of a request, or the `400` that says what is wrong with it. */
  private async target(req: RegistrationRequest): Promise<Target> {
    if (req.transport === "web-push") {
      const sub = req.subscription!;
      const check = await validateSubscriptionKeys({ p256dh: sub.p256dh, auth: sub.auth });
      if (!check.ok) {
        throw new RelayError(
          400,
          "invalid-subscription",
          `Invalid subscription keys: ${check.reason}`,
        );
      }
      const refusal = await endpointRefusal(sub.endpoint, {
        allowPrivate: this.o.allowPrivateEndpoints,
        resolve: this.o.resolve,
      });
      if (refusal) {
        throw new RelayError(400, "endpoint-not-allowed", `Endpoint refused: ${refusal}`);
      }
      return {
        transport: "web-push",
        endpoint: sub.endpoint,
        p256dh: sub.p256dh as string,
        auth: sub.auth as string,
      };
    }
    if (req.transport === "fcm") {
      const token = validateFcmToken(req.token);
      if (token === null) {
        throw new RelayError(
          400,
          "invalid-token",
          "An FCM token must be 1 to 4096 printable characters",
        );
      }
      return { transport: "fcm", token };
    }
    const token = validateApnsToken(req.token);
    const environment = validateApnsEnvironment(req.environment);
    if (token === null || environment === null) {
      throw new RelayError(
        400,
        "invalid-token",
        "An APNs token must be an even number (64 or more) of hex digits, and environment production or sandbox",
      );
    }
    return { transport: "apns", token, environment };
  }

  /** Deletes a registration and all its subscriptions, authorised by its client-data. */
  async unregister(clientId: string, clientData: string): Promise<void> {
    const claims = await this.o.sealer.open(clientData);
    if (!claims || claims.clientId !== clientId) {
      throw new RelayError(
        403,
        "invalid-client-data",
        "This client-data does not belong to that client-id",
      );
    }
    const reg = await this.o.store.registrations.get(clientId);
    await this.o.store.registrations.remove(clientId, reg ? await targetHash(reg.target) : null);
    this.o.logger.log("info", "registration.deleted", { client: clientId });
  }
}

/**
 * README "The client API": `payload` names the device's payload format, `cc-dav-push` (the
 * default) or `webdav-push`, and only a Web Push registration may name one.
 */
function payloadFormatOf(req: RegistrationRequest): PayloadFormat {
  if (req.payload === undefined) return "cc-dav-push";
  if (req.payload !== "cc-dav-push" && req.payload !== "webdav-push") {
    throw new RelayError(400, "invalid-request", 'payload must be "cc-dav-push" or "webdav-push"');
  }
  if (req.transport !== "web-push") {
    throw new RelayError(400, "invalid-request", "payload is only for web-push registrations");
  }
  return req.payload;
}

/**
 * RFC 8292 §3.2: an ingress VAPID key is an uncompressed P-256 point; a 65-byte string that
 * is not one would make every message to the push resource fail VAPID.
 */
function checkIngressKey(key: string): void {
  let ok = false;
  try {
    ok = isP256Point(decodeBase64Url(key));
  } catch { /* refused below */ }
  if (!ok) {
    throw new RelayError(
      400,
      "invalid-request",
      "ingress-vapid-public-key must be a base64url 65-byte P-256 point",
    );
  }
}
