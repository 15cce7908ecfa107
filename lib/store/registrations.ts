/**
 * Registrations: `["reg", clientId]`, the device index `["regt", targetHash]` (one client per
 * device), the lifetime record `["regl", clientId]` with its sweep index
 * `["regx", checkAt, clientId]` (README "The client API": a registration without an active
 * subscription for one refresh-interval is removed; lifetimes.ts sweeps), and the push-resource
 * marker `["ingress", id]` of a registration that asked for Web Push ingress, all written in
 * one atomic. A removed registration's marker says `gone` (`410`) until the lifetime sweep
 * deletes it (`["ingx", deleteAt, id]`), and the id is unknown (`404`) from then on.
 *
 * @module
 */

import type { Registration } from "../model.ts";
import { targetHashes } from "../targets.ts";
import type { Clock } from "../time.ts";
import type { IngressMarker } from "./ingress.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv, untilCommitted } from "./kv.ts";
import type { SubscriptionStore } from "./subscriptions.ts";

/** When a registration was made or last renewed, and when the lifetime sweep looks next. */
export interface RegistrationLife {
  renewedAt: number;
  checkAt: number;
}

/** How long a gone push resource answers `410` before its id is forgotten (`404`). */
export const INGRESS_GONE_MS = 7 * 24 * 3600_000;

/** Ingress Topic entries of a removed client deleted per atomic. */
const TOPICS_PER_ATOMIC = 500;

export interface RegistrationStoreOptions {
  now: Clock;
  /** A registration without an active subscription for this long is removed. */
  idleMs: number;
}

/** Who a registration request says the device is (lib/targets.ts). */
export interface DeviceIdentity {
  hash: string;
  /**
   * An older device-index hash the same device may be stored under, and how to tell that
   * the registration found there is this device (e.g. the same Web Push keys).
   */
  legacy?: { hash: string; sameDevice: (reg: Registration) => boolean };
}

/** Entries a removal must find unchanged, or it does not happen (lifetimes.ts). */
export type Unchanged = Deno.KvEntryMaybe<unknown>[];

export class RegistrationStore {
  constructor(
    private readonly kv: Kv,
    private readonly subscriptions: SubscriptionStore,
    private readonly o: RegistrationStoreOptions,
  ) {}

  async get(clientId: string): Promise<Registration | null> {
    return (await this.kv.get<Registration>(keys.registration(clientId))).value;
  }

  /**
   * Registrations by client id (missing ones are absent from the map). A few ids (the
   * subscribers of small fan-outs) are read together with other callers' (`Kv.getManyGrouped`).
   */
  async getMany(clientIds: string[]): Promise<Map<string, Registration>> {
    const k = clientIds.map((c) => keys.registration(c));
    const entries = k.length < 10
      ? await this.kv.getManyGrouped<Registration>(k)
      : await this.kv.getMany<Registration>(k);
    const out = new Map<string, Registration>();
    for (const e of entries) if (e.value) out.set(e.value.clientId, e.value);
    return out;
  }

  /**
   * Creates or renews the registration of a device, in one checked atomic: the device found
   * by `identity` (its hash, else its legacy hash when `sameDevice` says so) is `existing`;
   * `build` returns the record to store. A device stored under its legacy hash moves to its
   * hash. Two identical requests at once end with one client.
   */
  async register(
    identity: DeviceIdentity,
    build: (existing: Registration | null) => Registration,
  ): Promise<{ reg: Registration; existing: Registration | null }> {
    return await untilCommitted(async () => {
      const index = await this.kv.get<string>(keys.registrationByTarget(identity.hash));
      let found = index.value
        ? await this.kv.get<Registration>(keys.registration(index.value))
        : null;
      let legacy: Deno.KvEntryMaybe<string> | null = null;
      if (!found?.value && identity.legacy) {
        legacy = await this.kv.get<string>(keys.registrationByTarget(identity.legacy.hash));
        const old = legacy.value
          ? await this.kv.get<Registration>(keys.registration(legacy.value))
          : null;
        if (old?.value && identity.legacy.sameDevice(old.value)) found = old;
        else legacy = null;
      }
      const existing = found?.value ?? null;
      const reg = build(existing);
      const op = this.kv.atomic().check(index);
      if (found) op.check(found);
      if (legacy) op.check(legacy).delete(keys.registrationByTarget(identity.legacy!.hash));
      op.set(keys.registration(reg.clientId), reg)
        .set(keys.registrationByTarget(identity.hash), reg.clientId);
      await this.renewLife(op, reg.clientId);
      if (reg.ingress) {
        const marker: IngressMarker = { clientId: reg.clientId, gone: false };
        op.set(keys.ingress(reg.ingress.id), marker);
      }
      return (await this.kv.commit(op)) ? { reg, existing } : undefined;
    }, () => {
      throw new Error("Cannot register: the device index kept changing");
    });
  }

  /**
   * Creates or replaces a registration and its device index in one atomic, unchecked (seeding
   * and tests); its lifetime counts from its `createdAt`.
   */
  async put(reg: Registration, targetHash: string): Promise<void> {
    const op = this.kv.atomic()
      .set(keys.registration(reg.clientId), reg)
      .set(keys.registrationByTarget(targetHash), reg.clientId);
    await this.renewLife(op, reg.clientId, reg.createdAt);
    if (reg.ingress) {
      const marker: IngressMarker = { clientId: reg.clientId, gone: false };
      op.set(keys.ingress(reg.ingress.id), marker);
    }
    await this.kv.commit(op);
  }

  /** Adds to `op`: the lifetime counts from `at` (now), its old sweep entry replaced. */
  private async renewLife(op: Deno.AtomicOperation, clientId: string, at = this.o.now()) {
    const old = await this.kv.get<RegistrationLife>(keys.registrationLife(clientId));
    if (old.value) op.delete(keys.lifetimeCheck(old.value.checkAt, clientId));
    const life: RegistrationLife = { renewedAt: at, checkAt: at + this.o.idleMs };
    op.check(old).set(keys.registrationLife(clientId), life)
      .set(keys.lifetimeCheck(life.checkAt, clientId), null);
  }

  /**
   * Removes a client with everything it holds: every subscription in bounded atomics, its
   * ingress Topic entries, then the registration, its device index entries (under any hash),
   * its lifetime records, and its push resource, which answers `410` from then on (RFC 8030
   * §7.3) for {@linkcode INGRESS_GONE_MS}. Returns the (app, topic) pairs it removed.
   * Idempotent.
   */
  async remove(clientId: string): Promise<{ app: string; topic: string }[]> {
    const removed = await this.subscriptions.removeAllOf(clientId);
    await untilCommitted(
      async () => (await this.removeRecords(clientId, [])) || undefined,
      () => {
        throw new Error("Cannot remove the registration: it kept changing");
      },
    );
    return removed;
  }

  /**
   * {@linkcode remove}, unless one of the `unless` entries (read by the caller) changed
   * meanwhile, e.g. the client subscribed or registered again: then false, and the
   * registration itself stays.
   */
  async removeUnlessChanged(clientId: string, unless: Unchanged): Promise<boolean> {
    // Checked before the subscriptions go too, not only in the final atomic: a client that
    // subscribed meanwhile keeps what it just subscribed to.
    const now = await this.kv.getMany<unknown>(unless.map((e) => e.key));
    if (now.some((e, i) => e.versionstamp !== unless[i]!.versionstamp)) return false;
    await this.subscriptions.removeAllOf(clientId);
    return await this.removeRecords(clientId, unless);
  }

  private async removeRecords(clientId: string, unless: Unchanged): Promise<boolean> {
    await this.removeIngressTopics(clientId);
    const [reg, life] = await this.kv.getMany<unknown>([
      keys.registration(clientId),
      keys.registrationLife(clientId),
    ]) as [Deno.KvEntryMaybe<Registration>, Deno.KvEntryMaybe<RegistrationLife>];
    const op = this.kv.atomic().check(reg, life, ...unless).delete(keys.registration(clientId))
      .delete(keys.registrationLife(clientId)).delete(keys.clientActiveUntil(clientId));
    if (life.value) op.delete(keys.lifetimeCheck(life.value.checkAt, clientId));
    const hashes = new Set(reg.value ? await targetHashes(reg.value.target) : []);
    const indexes = await this.kv.getMany<string>(
      [...hashes].map((h) => keys.registrationByTarget(h)),
    );
    for (const idx of indexes) if (idx.value === clientId) op.check(idx).delete(idx.key);
    const ingressId = reg.value?.ingress?.id;
    if (ingressId) {
      const marker: IngressMarker = { clientId, gone: true };
      const expireIn = INGRESS_GONE_MS + GC_MARGIN_MS;
      op.set(keys.ingress(ingressId), marker, { expireIn })
        .set(keys.ingressExpiry(this.o.now() + INGRESS_GONE_MS, ingressId), null, { expireIn });
    }
    return await this.kv.commit(op);
  }

  private async removeIngressTopics(clientId: string): Promise<void> {
    while (true) {
      const batch = await this.kv.listAll<number>(
        { prefix: keys.ingressTopics(clientId) },
        TOPICS_PER_ATOMIC,
      );
      if (batch.length === 0) return;
      const op = this.kv.atomic();
      for (const e of batch) op.delete(e.key);
      await this.kv.commit(op);
    }
  }
}
