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
import type { DeviceIdentity } from "./store/registrations.ts";
import {
  endpointRefusal,
  legacyTargetHash,
  type Resolver,
  sameKeys,
  targetHash,
} from "./targets.ts";
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
   * Registers a device (README "The client API", "Who owns a registration"). The same device
   * keeps its client-id, so a re-registration does not double its pushes, and renews its
   * lifetime: the same FCM or APNs token, or the same Web Push endpoint with the same keys.
   * The same endpoint with other keys is a new client; the existing one stays as it was. A
   * repeated registration can add a push resource, never remove one.
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
    const { reg, existing } = await this.o.store.registrations.register(
      await identityOf(target),
      (existing) => this.record(target, req, format, existing),
    );
    this.o.logger.log("info", "registration", {
      client: reg.clientId,
      transport: target.transport,
      renewed: !!existing,
    });
    const result: RegistrationResult = {
      "client-data": await this.o.sealer.seal({
        clientId: reg.clientId,
        transport: target.transport,
      }),
      "client-id": reg.clientId,
      "transport-uri": info.uri,
      "refresh-interval": this.o.refreshInterval,
    };
    if (reg.ingress) result["push-resource"] = `${this.o.publicUrl}/push/${reg.ingress.id}`;
    return result;
  }

  /** The record to store for `target`, given the device's existing registration, if any. */
  private record(
    target: Target,
    req: RegistrationRequest,
    format: PayloadFormat,
    existing: Registration | null,
  ): Registration {
    const reg: Registration = {
      clientId: existing?.clientId ?? randomToken(16),
      target,
      createdAt: existing?.createdAt ?? this.o.now(),
    };
    // The device's latest registration says which payloads it understands.
    if (format === "webdav-push") reg.payload = format;
    // "ingress" adds a push resource, never removes one; a VAPID key given replaces the
    // restriction (a DAV server's key rotation), none given keeps it.
    const ingress = existing?.ingress;
    if (req.ingress || ingress) {
      const vapidPublicKey = req.ingressVapidKey ?? ingress?.vapidPublicKey;
      reg.ingress = {
        id: ingress?.id ?? randomToken(24),
        ...(vapidPublicKey !== undefined ? { vapidPublicKey } : {}),
      };
    }
    return reg;
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
    await this.o.store.registrations.remove(clientId);
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

/**
 * How the store finds a device: its hash; for Web Push also the endpoint-only hash older
 * registrations were stored under, which is the same device only with the same keys.
 */
async function identityOf(target: Target): Promise<DeviceIdentity> {
  const hash = await targetHash(target);
  const legacy = await legacyTargetHash(target);
  if (legacy === null || target.transport !== "web-push") return { hash };
  return {
    hash,
    legacy: {
      hash: legacy,
      sameDevice: (reg) => reg.target.transport === "web-push" && sameKeys(reg.target, target),
    },
  };
}
