/**
 * Change detection for one upstream collection, by polling: the RFC 6578 sync-token when the
 * server has one, else the CalendarServer `getctag` plus an ETag listing, else the ETag
 * listing alone.
 *
 * The watcher also remembers the writes that went through the bridge (and were pushed at once
 * with the writer's `Push-Client-Id`, CC/CD 70025 §7.1), so the next poll does not push them
 * again, while a change by anyone else in the same window still is. Polls and forwarded writes
 * of one collection run one at a time, so a poll never sees a bridge write before the write is
 * recorded.
 *
 * @module
 */

import {
  type Change,
  collectionState,
  diffEtags,
  listEtags,
  normalizeEtag,
  syncCollection,
  type Upstream,
} from "./caldav.ts";

/** How a collection is being watched. */
export type WatchMode = "sync-token" | "ctag" | "etags";

/** What one poll found. */
export interface PollResult {
  /** True for the first successful poll, which only takes the baseline. */
  baseline: boolean;
  /** Changes no bridge write explains: push them, without a client-id. */
  foreign: Change[];
  /** Changes that were the bridge's own writes (already pushed). */
  own: number;
  /**
   * The server dropped the sync state (RFC 6578 §3.2 invalid token): what changed is unknown,
   * so push once to be safe (a no-op push is allowed, CC/CD 70025 §8.1).
   */
  unknown: boolean;
}

interface OwnWrite {
  path: string;
  /** The ETag the upstream gave the write, or null when it gave none. */
  etag: string | null;
  deleted: boolean;
}

/** Runs async functions one at a time. */
class Mutex {
  #tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.catch(() => {});
    return result;
  }
}

/** Polls one collection and tells bridge writes apart from everyone else's. */
export class CollectionWatcher {
  readonly upstream: Upstream;
  #mode: WatchMode | undefined;
  #syncToken: string | undefined;
  #ctag: string | undefined;
  #etags: Map<string, string> | undefined;
  #own: OwnWrite[] = [];
  readonly #lock = new Mutex();

  constructor(upstream: Upstream) {
    this.upstream = upstream;
  }

  /** The current mode, once the baseline is taken. */
  get mode(): WatchMode | undefined {
    return this.#mode;
  }

  /** The collection's RFC 6578 sync-token as of the last poll, in `sync-token` mode. */
  get syncToken(): string | undefined {
    return this.#syncToken;
  }

  /** Runs `fn` (a forwarded write) exclusively with polls of this collection. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.#lock.run(fn);
  }

  /**
   * Records a write the bridge forwarded and the upstream accepted, so the next poll does not
   * push it again. Call it inside {@linkcode exclusive}, with the member's canonical path.
   */
  recordWrite(path: string, etag: string | null | undefined, deleted: boolean): void {
    this.#own.push({ path, etag: deleted ? null : normalizeEtag(etag), deleted });
  }

  /** Polls once. Throws `UpstreamError` when the upstream fails; the next poll retries. */
  poll(): Promise<PollResult> {
    return this.#lock.run(() => this.#poll());
  }

  async #baseline(): Promise<void> {
    const state = await collectionState(this.upstream);
    if (state.syncToken !== undefined) {
      // RFC 6578 §4: the DAV:sync-token property is a valid token to sync from.
      this.#mode = "sync-token";
      this.#syncToken = state.syncToken;
      this.#ctag = undefined;
      this.#etags = undefined;
      return;
    }
    await this.#baselineListing(state.ctag);
  }

  async #baselineListing(ctag: string | undefined): Promise<void> {
    this.#etags = await listEtags(this.upstream);
    this.#mode = ctag === undefined ? "etags" : "ctag";
    this.#ctag = ctag;
    this.#syncToken = undefined;
  }

  async #poll(): Promise<PollResult> {
    const result: PollResult = { baseline: false, foreign: [], own: 0, unknown: false };
    if (this.#mode === undefined) {
      await this.#baseline();
      this.#own = [];
      return { ...result, baseline: true };
    }
    let changes: Change[] = [];
    if (this.#mode === "sync-token") {
      const r = await syncCollection(this.upstream, this.#syncToken!);
      if (r.kind === "invalid-token") {
        await this.#baseline();
        this.#own = [];
        return { ...result, unknown: true };
      }
      if (r.kind === "unsupported") {
        // Falling back to getctag: take a new baseline in that mode.
        const state = await collectionState(this.upstream);
        await this.#baselineListing(state.ctag);
        this.#own = [];
        return result;
      }
      this.#syncToken = r.token;
      changes = r.changes;
    } else {
      let moved = true;
      if (this.#mode === "ctag") {
        const { ctag } = await collectionState(this.upstream);
        if (ctag === undefined) this.#mode = "etags";
        moved = ctag !== this.#ctag;
        this.#ctag = ctag;
      }
      if (moved) {
        const etags = await listEtags(this.upstream);
        changes = diffEtags(this.#etags ?? new Map(), etags);
        this.#etags = etags;
      }
    }
    for (const change of changes) {
      const i = this.#own.findIndex((w) =>
        w.path === change.path &&
        (w.deleted ? change.etag === null : change.etag !== null &&
          (w.etag === null || w.etag === change.etag))
      );
      if (i >= 0) {
        this.#own.splice(i, 1);
        result.own++;
      } else result.foreign.push(change);
    }
    // Every bridge write happened before this poll began (the lock), so this poll has seen
    // all of them: what is left did not change the collection.
    this.#own = [];
    return result;
  }
}
