/**
 * Delivery (README "Delivery guarantees"): the small facade over its parts.
 *
 * - accept.ts records pushes in the outbox before they are answered (group commit,
 *   coalescing: coalesce.ts) and starts their fan-out;
 * - fan_out.ts sends one message to its subscribers and commits its progress;
 * - queued.ts sends single deliveries (acks, ingress, retries), and upstream.ts the push
 *   requests to an upstream gateway that go through the same queue;
 * - sender.ts makes each attempt behind the per-service breaker (breaker.ts) and decides what
 *   follows it (retry.ts);
 * - leases.ts holds this process's claims and heartbeat; scan.ts picks up left-over work.
 *
 * Background ticks (a timer locally, `Deno.cron` on Deno Deploy) only pick up what a crash, a
 * retry, a closed coalescing window or a restart left; new work starts at once.
 *
 * @module
 */

import { randomToken } from "../encoding.ts";
import { describeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type {
  Entry,
  OutboxMessage,
  PushMessage,
  QueuedDelivery,
  StoredPayload,
  Subscriber,
} from "../model.ts";
import type { Sealer } from "../seal.ts";
import type { Store } from "../store/mod.ts";
import type { Clock } from "../time.ts";
import type { Transport, TransportId } from "../transports/types.ts";
import { Accepter, type Listed } from "./accept.ts";
import { type BreakerPolicy, Breakers, DEFAULT_BREAKER } from "./breaker.ts";
import { FanOut } from "./fan_out.ts";
import { Leases } from "./leases.ts";
import { type EnqueueOptions, QueuedDeliveries, queuedKey } from "./queued.ts";
import { DEFAULT_RETRY, type RetryPolicy } from "./retry.ts";
import { Scanner } from "./scan.ts";
import { Sender } from "./sender.ts";
import { type RelayOptions, UpstreamDeliveries, type UpstreamPusher } from "./upstream.ts";

export interface DeliveryEngineOptions {
  store: Store;
  transports: Partial<Record<TransportId, Transport>>;
  sealer: Sealer;
  now: Clock;
  logger: Logger;
  metrics: Metrics;
  /** Seconds a push service keeps an undelivered message (`RELAY_TTL`). */
  ttl: number;
  /** Coalescing window per client and topic; 0 delivers every message (`RELAY_COALESCE_MS`). */
  coalesceMs: number;
  /** Subscriptions read per KV list call during fan-out (1 to 1000). @default 500 */
  pageSize?: number;
  /** Sends in flight per fan-out. @default 64 */
  sendConcurrency?: number;
  /** Fan-out progress is committed every this many finished subscribers (1 to 250). @default 100 */
  commitEvery?: number;
  /**
   * A worker that has not renewed its heartbeat for this long counts as dead and its work is
   * taken over; the heartbeat is renewed every third of it (`RELAY_LEASE_MS`). @default 15000
   */
  leaseMs?: number;
  /** Subscriptions the expiry sweep removes per tick at most. @default 1000 */
  sweepLimit?: number;
  retry?: Partial<RetryPolicy>;
  breaker?: Partial<BreakerPolicy>;
  /** Random number in [0, 1) for jitter. @default Math.random */
  random?: () => number;
  /** Identifies this process in leases. @default a random token */
  owner?: string;
  /**
   * True when a queued delivery was replaced by a newer message with the same RFC 8030 Topic
   * (Web Push ingress, §5.4); it is then dropped instead of sent.
   */
  superseded?: (d: QueuedDelivery) => Promise<boolean>;
  /** The upstream gateway's push requests (README "Relaying to another gateway"). */
  upstream?: UpstreamPusher;
  /**
   * Runs with every tick, besides the scan (the upstream's bootstrap refresh); `signal`
   * aborts at shutdown.
   */
  periodic?: (signal: AbortSignal) => Promise<void>;
}

/** Scan rounds one tick runs at most while scans find more than they may claim. */
const TICK_ROUNDS = 20;

export class DeliveryEngine {
  readonly owner: string;
  readonly breakers: Breakers;
  private readonly leases: Leases;
  private readonly accepter: Accepter;
  private readonly queued: QueuedDeliveries;
  private readonly upstream: UpstreamDeliveries;
  private readonly periodic: ((signal: AbortSignal) => Promise<void>) | undefined;
  private readonly scanner: Scanner;
  private readonly fanOutOptions: ConstructorParameters<typeof FanOut>[0];
  private readonly transports: Partial<Record<TransportId, Transport>>;
  private readonly logger: Logger;
  private readonly now: Clock;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly abort = new AbortController();
  private stopping = false;
  private scanning: Promise<{ work: Promise<void>[]; more: boolean }> | null = null;
  private wakeTimer: ReturnType<typeof setTimeout> | undefined;
  private wakeAt = Infinity;

  constructor(o: DeliveryEngineOptions) {
    const { store, now, logger, metrics } = o;
    this.owner = o.owner ?? randomToken(8);
    this.transports = o.transports;
    this.logger = logger;
    this.now = now;
    const random = o.random ?? Math.random;
    const stopping = () => this.stopping;
    this.leases = new Leases({
      owner: this.owner,
      leaseMs: Math.max(300, o.leaseMs ?? 15_000),
      store,
      now,
      logger,
    });
    this.breakers = new Breakers({ ...DEFAULT_BREAKER, ...o.breaker }, logger);
    // What every sender of single attempts needs: local transports and the upstream alike.
    const attempts = {
      store,
      breakers: this.breakers,
      now,
      logger,
      metrics,
      retry: { ...DEFAULT_RETRY, ...o.retry },
      random,
      ttl: o.ttl,
      signal: this.abort.signal,
    };
    const sender = new Sender({ ...attempts, transports: o.transports });
    this.fanOutOptions = {
      store,
      leases: this.leases,
      sender,
      sealer: o.sealer,
      now,
      logger,
      metrics,
      stopping,
      ttl: o.ttl,
      pageSize: Math.min(1000, Math.max(1, o.pageSize ?? 500)),
      sendConcurrency: Math.max(1, o.sendConcurrency ?? 64),
      commitEvery: Math.min(250, Math.max(1, o.commitEvery ?? 100)),
    };
    this.accepter = new Accepter({
      store,
      leases: this.leases,
      metrics,
      now,
      random,
      ttl: o.ttl,
      coalesceMs: o.coalesceMs,
      fanOut: (entry, listed) => void this.fanOut(entry, listed),
      wakeAt: (at) => this.scheduleAt(at),
    });
    this.upstream = new UpstreamDeliveries({
      ...attempts,
      leases: this.leases,
      pusher: o.upstream ?? null,
      run: (entry) => void this.deliver(entry),
    });
    this.periodic = o.periodic;
    this.queued = new QueuedDeliveries({
      store,
      leases: this.leases,
      sender,
      now,
      logger,
      metrics,
      ttl: o.ttl,
      stopping,
      run: (entry) => void this.deliver(entry),
      upstream: this.upstream,
      ...(o.superseded ? { superseded: o.superseded } : {}),
    });
    this.scanner = new Scanner({
      store,
      leases: this.leases,
      now,
      logger,
      sweepLimit: o.sweepLimit ?? 1000,
      stopping,
      fanOut: (entry) => this.fanOut(entry),
      deliver: (entry) => this.deliver(entry),
    });
  }

  /**
   * Records messages durably in the outbox, then starts their fan-out at once without waiting
   * for it. Resolves when the record is durable; throws (and the push fails) otherwise.
   * `listed`: small topics' whole subscriber lists, read after the push arrived (its look-up),
   * where each fan-out starts.
   */
  accept(app: string, messages: PushMessage[], options: { listed?: Listed } = {}): Promise<void> {
    return this.accepter.accept(app, messages, options.listed);
  }

  /**
   * Records messages for the upstream gateway durably (in the delivery queue), then sends them
   * at once without waiting. Resolves when the record is durable; throws otherwise.
   */
  relay(app: string, messages: PushMessage[], options: RelayOptions): Promise<void> {
    return this.upstream.accept(app, messages, options);
  }

  /** Queues a single delivery to one client (an acknowledging push) and sends it at once. */
  enqueue(clientId: string, payload: StoredPayload, options: EnqueueOptions): Promise<void> {
    return this.queued.enqueue(clientId, payload, options);
  }

  /** Resolves when no fan-out, delivery or tick of this process is running. */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    p.finally(() => this.inFlight.delete(p)).catch(() => {});
    return p;
  }

  /** Holds `key` while `work` runs, logs its failure as `event`, and tracks it for `idle()`. */
  private holdWhile(
    key: string,
    work: () => Promise<void>,
    event: string,
    fields: Record<string, unknown> = {},
  ): Promise<void> {
    this.leases.hold(key);
    return this.track(
      work().catch((err) => {
        this.logger.log("error", event, { ...fields, error: describeError(err) });
      }).finally(() => this.leases.unhold(key)),
    );
  }

  private fanOut(entry: Entry<OutboxMessage>, listed?: readonly Subscriber[]): Promise<void> {
    const fanOut = new FanOut(this.fanOutOptions, entry, listed);
    return this.holdWhile(`o:${entry.value.id}`, () => fanOut.run(), "fanout.error", {
      message: entry.value.id,
    });
  }

  private deliver(entry: Entry<QueuedDelivery>): Promise<void> {
    return this.holdWhile(
      queuedKey(entry.value),
      () => this.queued.deliver(entry),
      "delivery.error",
    );
  }

  /** Wakes the engine (a tick) at `at`; one timer for the earliest wake-up. */
  private scheduleAt(at: number): void {
    if (this.stopping || at >= this.wakeAt) return;
    clearTimeout(this.wakeTimer);
    this.wakeAt = at;
    const delay = Math.max(0, at - this.now()) + 5;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      this.wakeAt = Infinity;
      this.tick().catch((err) =>
        this.logger.log("error", "tick.error", { error: describeError(err) })
      );
    }, Math.min(delay, 2 ** 31 - 1));
  }

  /**
   * One background pass: claims outbox messages that nobody alive holds, sends due queued
   * deliveries, and sweeps expired subscriptions. Resolves when the work it claimed is done;
   * scans again at once while a scan found more than it may claim at a time. Overlapping calls
   * share one scan. It also starts `periodic` (not awaited; `idle()` and `shutdown()` wait for
   * it).
   */
  async tick(): Promise<void> {
    if (this.periodic && !this.stopping) {
      this.track(this.periodic(this.abort.signal)).catch((err) =>
        this.logger.log("error", "tick.periodic_error", { error: describeError(err) })
      );
    }
    for (let round = 0; round < TICK_ROUNDS && !this.stopping; round++) {
      if (!this.scanning) {
        this.scanning = this.track(this.scanner.scan()).finally(() => {
          this.scanning = null;
        });
      }
      const { work, more } = await this.scanning;
      await Promise.allSettled(work);
      if (!more) return;
    }
  }

  /**
   * Stops taking work, lets claimed work finish (fan-outs stop starting sends, commit what
   * finished and release the rest), aborts outbound requests still running 1 s before
   * `timeoutMs`, and finally removes this process's heartbeat so that anything it still holds
   * can be taken over at once.
   */
  async shutdown(timeoutMs = 5000): Promise<void> {
    this.stopping = true;
    this.leases.stop();
    clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    const settled = (ms: number) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      return Promise.race([
        this.idle().then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), Math.max(0, ms)))),
      ]).finally(() => clearTimeout(timer));
    };
    // Wall-clock budget (monotonic), not the injected domain clock.
    const started = performance.now();
    if (!(await settled(timeoutMs - 1000))) {
      this.abort.abort();
      await settled(timeoutMs - (performance.now() - started) - 200);
    }
    await Promise.all(Object.values(this.transports).map((t) => t?.close?.()));
    await this.leases.release();
  }
}
