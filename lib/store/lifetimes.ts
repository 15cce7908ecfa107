/**
 * The registration lifetime (README "The client API"): a registration that has had no active
 * subscription for one refresh-interval is removed with everything it holds, and the marker of
 * a removed push resource is deleted after its `410` period, so nothing an unauthenticated
 * caller creates outlives that. Each sweep does bounded work, like the subscription expiry
 * sweep, and is run by the background scan.
 *
 * A registration's idle time counts from the latest of: when it was made or renewed
 * (`["regl", clientId]`), the latest expiry any of its subscriptions was given
 * (`["rega", clientId]`, kept with the subscription records), and the expiry of any
 * subscription still stored. Its check (`["regx", checkAt, clientId]`) comes due one
 * refresh-interval after the registration was made; a check that finds it active moves it to
 * one refresh-interval after that latest expiry.
 *
 * Registrations stored before lifetimes existed have no `regl`: the sweep schedules each of
 * them once (as if renewed then), a page per sweep, and records in `["meta", ...]` that it
 * is done.
 *
 * @module
 */

import type { Registration } from "../model.ts";
import type { IngressMarker } from "./ingress.ts";
import { keys } from "./keys.ts";
import { type Kv, untilCommitted } from "./kv.ts";
import type { RegistrationLife, RegistrationStore } from "./registrations.ts";

/** Subscriptions of a client read to find its latest expiry (its `rega` covers the rest). */
const SUBSCRIPTIONS_READ = 100;
/** Registrations scheduled per sweep while older ones are being scheduled. */
const MIGRATED_PER_SWEEP = 200;
/** The meta record that says every older registration has a lifetime. */
const MIGRATION = "registration-lifetimes";

export interface LifetimeSweepOptions {
  /** A registration without an active subscription for this long is removed. */
  idleMs: number;
}

export interface SweepResult {
  /** Registrations removed. */
  removed: number;
  /** Checks that found the registration active and moved it. */
  renewed: number;
  /** Push-resource markers deleted after their `410` period. */
  forgotten: number;
}

interface MigrationState {
  done: boolean;
  /** The last `reg` key scheduled. */
  after: string | null;
}

export class LifetimeSweep {
  private migrated = false;

  constructor(
    private readonly kv: Kv,
    private readonly registrations: RegistrationStore,
    private readonly o: LifetimeSweepOptions,
  ) {}

  /** Looks at up to `limit` due registrations and `limit` due push-resource markers. */
  async sweep(now: number, limit: number): Promise<SweepResult> {
    await this.scheduleOlder(now);
    const result: SweepResult = { removed: 0, renewed: 0, forgotten: 0 };
    for (const e of await this.kv.listAll<null>(keys.lifetimeChecksDue(now), limit)) {
      const [, checkAt, clientId] = e.key as [string, number, string];
      const outcome = await this.check(clientId, checkAt, now);
      if (outcome === "removed") result.removed++;
      if (outcome === "renewed") result.renewed++;
    }
    for (const e of await this.kv.listAll<null>(keys.ingressExpiriesDue(now), limit)) {
      if (await this.forget(e)) result.forgotten++;
    }
    return result;
  }

  /** Removes the client when it has been idle for `idleMs`, else moves its check. */
  private async check(
    clientId: string,
    checkAt: number,
    now: number,
  ): Promise<"removed" | "renewed" | "stale"> {
    const [reg, life, active] = await this.kv.getMany<unknown>([
      keys.registration(clientId),
      keys.registrationLife(clientId),
      keys.clientActiveUntil(clientId),
    ]) as [
      Deno.KvEntryMaybe<Registration>,
      Deno.KvEntryMaybe<RegistrationLife>,
      Deno.KvEntryMaybe<Deno.KvU64>,
    ];
    const entry = keys.lifetimeCheck(checkAt, clientId);
    if (!reg.value || life.value?.checkAt !== checkAt) {
      // Left behind by a removal or a renewal that raced this entry's creation.
      if (!reg.value) await this.kv.commit(this.kv.atomic().check(reg).delete(entry));
      else if (life.value) await this.kv.commit(this.kv.atomic().check(life).delete(entry));
      return "stale";
    }
    const latest = Math.max(
      life.value.renewedAt,
      active.value ? Number(active.value.value) : -Infinity,
      await this.latestStoredExpiry(clientId),
    );
    const deadline = latest + this.o.idleMs;
    if (deadline > now) {
      const moved: RegistrationLife = { renewedAt: life.value.renewedAt, checkAt: deadline };
      await this.kv.commit(
        this.kv.atomic().check(life).delete(entry)
          .set(keys.registrationLife(clientId), moved)
          .set(keys.lifetimeCheck(deadline, clientId), null),
      );
      return "renewed";
    }
    // The registration or its activity changed since the read: the next sweep decides again.
    const removed = await this.registrations.removeUnlessChanged(clientId, [life, active]);
    return removed ? "removed" : "stale";
  }

  private async latestStoredExpiry(clientId: string): Promise<number> {
    let latest = -Infinity;
    const selector = { prefix: keys.clientSubscriptions(clientId) };
    for (const e of await this.kv.listAll<number>(selector, SUBSCRIPTIONS_READ)) {
      latest = Math.max(latest, e.value);
    }
    return latest;
  }

  /** Deletes a gone push resource's marker after its `410` period: `404` from then on. */
  private async forget(e: Deno.KvEntry<null>): Promise<boolean> {
    const id = e.key[2] as string;
    const marker = await this.kv.get<IngressMarker>(keys.ingress(id));
    const op = this.kv.atomic().check(marker).delete(e.key);
    // A marker that is not gone belongs to a live registration (never, for a random id).
    if (marker.value?.gone) op.delete(marker.key);
    return await this.kv.commit(op) && marker.value?.gone === true;
  }

  /** Gives registrations stored before lifetimes existed their first check, a page a time. */
  private async scheduleOlder(now: number): Promise<void> {
    if (this.migrated) return;
    const stateKey = keys.meta(MIGRATION);
    const state = await this.kv.get<MigrationState>(stateKey);
    if (state.value?.done) {
      this.migrated = true;
      return;
    }
    const after = state.value?.after ?? null;
    const page = await this.kv.listAll<Registration>(
      after === null
        ? { prefix: keys.registrationsAll }
        : { prefix: keys.registrationsAll, start: [...keys.registrationsAll, `${after}\u0000`] },
      MIGRATED_PER_SWEEP,
    );
    const lives = await this.kv.getMany<RegistrationLife>(
      page.map((e) => keys.registrationLife(e.key[1] as string)),
    );
    for (const [i, life] of lives.entries()) {
      if (life.value) continue;
      const clientId = page[i]!.key[1] as string;
      const first: RegistrationLife = { renewedAt: now, checkAt: now + this.o.idleMs };
      await untilCommitted(
        async () => {
          const reg = await this.kv.get(keys.registration(clientId));
          const op = this.kv.atomic().check(life, reg);
          if (reg.value) {
            op.set(life.key, first).set(keys.lifetimeCheck(first.checkAt, clientId), null);
          }
          return (await this.kv.commit(op)) || undefined;
        },
        () => false,
        2,
      );
    }
    const done = page.length < MIGRATED_PER_SWEEP;
    const next: MigrationState = done
      ? { done, after: null }
      : { done, after: (page.at(-1)?.key[1] as string) ?? after };
    await this.kv.commit(this.kv.atomic().check(state).set(stateKey, next));
    this.migrated = done;
  }
}
