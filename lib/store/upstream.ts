/**
 * The upstream gateway's state (README "Relaying to another gateway"): its bootstrap as last
 * fetched (`["upstream", "bootstrap"]`, so an outage or a restart keeps the list), the result
 * of the last fetch (`["upstream", "check"]`), the push-url it answered with
 * (`["upstream", "push-url"]`), and the topic-to-gateway map (CC/CD 70025 §4.2 MUST):
 * `["upmap", app, topic, subscriberKey]`, one entry per subscriber that the upstream holds for
 * an app's topic, each with the subscription's expiry. A topic counts as relayed while one of
 * its entries is unexpired; the expiry is checked on read, and `expireIn` collects the rest.
 *
 * @module
 */

import type { Entry } from "../model.ts";
import { keys } from "./keys.ts";
import { GC_MARGIN_MS, type Kv, sizedBatches, untilCommitted, utf8Length } from "./kv.ts";

/** The upstream's bootstrap as last fetched. */
export interface StoredBootstrap {
  /** The gateway URL it was fetched from: a list of another upstream is never shown. */
  url: string;
  /** Its `push-transports` entries, as it listed them. */
  transports: Record<string, unknown>[];
  /** Epoch ms. */
  fetchedAt: number;
}

/** The last bootstrap fetch: when, and whether the upstream answered it. */
export interface BootstrapCheck {
  at: number;
  ok: boolean;
  /** What went wrong, without URLs or secrets. */
  error?: string;
}

/** The push-url of the upstream's last successful subscribe answer. */
export interface StoredPushUrl {
  /** The gateway URL it came from. */
  url: string;
  pushUrl: string;
}

/** One subscriber of a relayed topic, as the map keeps it. */
export interface MapEntry {
  /** The subscription's expiry, epoch ms (CC/CD 70025 §6.2.2.1: void after it). */
  exp: number;
  /** When the entry was written, epoch ms. */
  at: number;
}

/** Topics whose map entries one call reads in parallel. */
const READ_CONCURRENCY = 16;
/** Mutations per map atomic (KV: 1000), and key bytes (KV: 80 KiB of keys). */
const WRITES_PER_ATOMIC = 500;
const KEY_BYTES_PER_ATOMIC = 60_000;
/** Checked deletes per atomic (KV: 100 checks). */
const CHECKS_PER_ATOMIC = 100;

function keyBytes(app: string, topic: string, subscriberKey: string): number {
  return utf8Length(app) + utf8Length(topic) + utf8Length(subscriberKey) + 32;
}

export class UpstreamStore {
  constructor(private readonly kv: Kv) {}

  /** The stored bootstrap, when it came from `url`. */
  async bootstrap(url: string): Promise<StoredBootstrap | null> {
    const e = await this.kv.get<StoredBootstrap>(keys.upstreamBootstrap);
    return e.value && e.value.url === url ? e.value : null;
  }

  async saveBootstrap(value: StoredBootstrap): Promise<void> {
    await this.kv.set(keys.upstreamBootstrap, value);
  }

  async check(): Promise<BootstrapCheck | null> {
    return (await this.kv.get<BootstrapCheck>(keys.upstreamCheck)).value;
  }

  async saveCheck(value: BootstrapCheck): Promise<void> {
    await this.kv.set(keys.upstreamCheck, value);
  }

  /** The stored push-url, when it came from `url`. */
  async pushUrl(url: string): Promise<string | null> {
    const e = await this.kv.get<StoredPushUrl>(keys.upstreamPushUrl);
    return e.value && e.value.url === url ? e.value.pushUrl : null;
  }

  async savePushUrl(value: StoredPushUrl): Promise<void> {
    await this.kv.set(keys.upstreamPushUrl, value);
  }

  /** Records (or refreshes) one subscriber's entries for `topics`, valid until `exp`. */
  async record(
    app: string,
    subscriberKey: string,
    topics: string[],
    exp: number,
    now: number,
  ): Promise<void> {
    const value: MapEntry = { exp, at: now };
    const expireIn = Math.max(1, exp - now) + GC_MARGIN_MS;
    for (const chunk of this.batches(app, subscriberKey, topics)) {
      const op = this.kv.atomic();
      for (const t of chunk) {
        op.set(keys.upstreamMapEntry(app, t, subscriberKey), value, { expireIn });
      }
      await this.kv.commit(op);
    }
  }

  /** Removes one subscriber's entries for `topics` (an unsubscribe the upstream accepted). */
  async remove(app: string, subscriberKey: string, topics: string[]): Promise<void> {
    for (const chunk of this.batches(app, subscriberKey, topics)) {
      const op = this.kv.atomic();
      for (const t of chunk) op.delete(keys.upstreamMapEntry(app, t, subscriberKey));
      await this.kv.commit(op);
    }
  }

  private batches(app: string, subscriberKey: string, topics: string[]): string[][] {
    return sizedBatches(
      [...new Set(topics)],
      (t) => keyBytes(app, t, subscriberKey),
      KEY_BYTES_PER_ATOMIC,
      WRITES_PER_ATOMIC,
    );
  }

  /**
   * The upstream says these topics have no subscribers: removes every entry of them written
   * at or before `upTo`, when the request it answered was sent (an entry written later is a
   * subscribe that may have reached the upstream after it answered). Returns how many entries
   * it removed.
   */
  async drop(app: string, topics: string[], upTo: number): Promise<number> {
    let removed = 0;
    for (const topic of new Set(topics)) {
      const entries: Entry<MapEntry>[] = [];
      const prefix = keys.upstreamMapTopic(app, topic);
      for await (const e of this.kv.list<MapEntry>({ prefix }, { batchSize: 1000 })) {
        if (e.value.at <= upTo) entries.push(e);
      }
      for (let i = 0; i < entries.length; i += CHECKS_PER_ATOMIC) {
        const chunk = entries.slice(i, i + CHECKS_PER_ATOMIC);
        removed += await untilCommitted(async (attempt) => {
          const current = attempt === 0
            ? chunk
            : (await this.kv.getMany<MapEntry>(chunk.map((e) => e.key))).filter((e) =>
              e.value !== null && e.value.at <= upTo
            ) as Entry<MapEntry>[];
          const op = this.kv.atomic();
          for (const e of current) op.check(e).delete(e.key);
          return (await this.kv.commit(op)) ? current.length : undefined;
        }, () => 0);
      }
    }
    return removed;
  }

  /** The topics of `topics` that have an unexpired entry for `app`. */
  async active(app: string, topics: string[], now: number): Promise<Set<string>> {
    const out = new Set<string>();
    const unique = [...new Set(topics)];
    for (let i = 0; i < unique.length; i += READ_CONCURRENCY) {
      const chunk = unique.slice(i, i + READ_CONCURRENCY);
      const found = await Promise.all(chunk.map((t) => this.isActive(app, t, now)));
      chunk.forEach((t, j) => found[j] && out.add(t));
    }
    return out;
  }

  private async isActive(app: string, topic: string, now: number): Promise<boolean> {
    const prefix = keys.upstreamMapTopic(app, topic);
    for await (const e of this.kv.list<MapEntry>({ prefix }, { batchSize: 100 })) {
      // Expiry is checked on read: KV's expireIn lags.
      if (e.value.exp > now) return true;
    }
    return false;
  }

  /** Unexpired map entries across all apps (a scan: status, not a hot path). */
  async count(now: number): Promise<number> {
    let n = 0;
    for await (
      const e of this.kv.list<MapEntry>({ prefix: keys.upstreamMapAll }, { batchSize: 1000 })
    ) {
      if (e.value.exp > now) n++;
    }
    return n;
  }
}
