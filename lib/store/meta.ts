/**
 * Generated secrets and keys (`["meta", name]`), kept across restarts: the first writer wins,
 * so two processes starting together on one fresh KV agree on one value.
 *
 * @module
 */

import { keys } from "./keys.ts";
import type { Kv } from "./kv.ts";

export class MetaStore {
  constructor(private readonly kv: Kv) {}

  /** Returns the stored value, or stores `create()` if absent (first writer wins). */
  async getOrCreate<T>(
    name: string,
    create: () => T | Promise<T>,
  ): Promise<{ value: T; created: boolean }> {
    const key = keys.meta(name);
    const existing = await this.kv.get<T>(key);
    if (existing.versionstamp !== null) return { value: existing.value as T, created: false };
    const value = await create();
    const op = this.kv.atomic().check({ key, versionstamp: null }).set(key, value);
    if (await this.kv.commit(op)) return { value, created: true };
    const winner = await this.kv.get<T>(key);
    return { value: winner.value as T, created: false };
  }

  /** One read: throws `StorageError` when storage does not answer. */
  async ping(): Promise<void> {
    await this.kv.get(keys.meta("ping"));
  }
}
