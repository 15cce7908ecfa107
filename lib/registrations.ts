/**
 * The client API (CONTRACT §2): devices register where they receive pushes and get a sealed
 * client-data and a client-id; they can delete the registration with that client-data.
 *
 * @module
 */

import type { DeliveryEngine } from "./delivery.ts";
import { randomToken } from "./encoding.ts";
import { RelayError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { Sealer } from "./seal.ts";
import type { Registration, Store } from "./store.ts";
import { targetHash } from "./targets.ts";
import type { Clock } from "./time.ts";
import type { Target } from "./transports/types.ts";
import type { TransportInfo } from "./gateway.ts";

export interface RegistrationResult {
  "client-data": string;
  "client-id": string;
  "transport-uri": string;
  "refresh-interval": number;
  "push-resource"?: string;
}

export interface RegistrationsOptions {
  store: Store;
  sealer: Sealer;
  engine: DeliveryEngine;
  transports: TransportInfo[];
  refreshInterval: number;
  publicUrl: string;
  now: Clock;
  logger: Logger;
}

export class Registrations {
  constructor(private readonly o: RegistrationsOptions) {}

  /**
   * Registers a device. The same device (same endpoint or token) keeps its client-id, so a
   * re-registration does not double its pushes; its keys are updated.
   */
  async register(
    target: Target,
    options: { ingressVapidKey?: string; ingress?: boolean } = {},
  ): Promise<RegistrationResult> {
    const info = this.o.transports.find((t) => t.id === target.transport);
    if (!info) {
      throw new RelayError(
        400,
        "unknown-transport",
        `Transport ${target.transport} is not enabled on this relay`,
      );
    }
    const hash = await targetHash(target);
    const existingId = await this.o.store.findClientByTarget(hash);
    const existing = existingId ? await this.o.store.getRegistration(existingId) : null;
    const clientId = existing?.clientId ?? randomToken(16);
    const reg: Registration = { clientId, target, createdAt: existing?.createdAt ?? this.o.now() };
    if (options.ingress) {
      reg.ingress = {
        id: existing?.ingress?.id ?? randomToken(24),
        ...(options.ingressVapidKey !== undefined
          ? { vapidPublicKey: options.ingressVapidKey }
          : {}),
      };
    }
    await this.o.store.putRegistration(reg, hash);
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
    const reg = await this.o.store.getRegistration(clientId);
    await this.o.store.removeClient(clientId, reg ? await targetHash(reg.target) : null);
    this.o.logger.log("info", "registration.deleted", { client: clientId });
  }
}
