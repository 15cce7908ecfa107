/**
 * `--only=stranger` (README "Threat model"): the KV bytes one client address can make the relay
 * store in one minute at the default limits, without any credential.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { signJwt } from "../lib/crypto/jwt.ts";
import { generateVapidKeys, importVapidKeys, type VapidKeys } from "../lib/crypto/vapid.ts";
import { loadConfig } from "../lib/config.ts";
import { encodeBase64Url, randomBytes, randomToken } from "../lib/encoding.ts";
import { silentLogger } from "../lib/log.ts";
import type { Transport } from "../lib/transports/types.ts";
import { createRelay } from "../relay.ts";
import { APP, fmt, MiB, TOKEN } from "./_common.ts";
import { subscriberKeys } from "./_seed.ts";

/** Bytes of keys and values in a KV SQLite file, and its entries (read beside a running KV). */
function kvLogical(path: string): { bytes: number; entries: number } {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const row = db.prepare("SELECT sum(length(k) + length(v)) AS b, count(*) AS n FROM kv").get();
    return { bytes: Number(row?.b ?? 0), entries: Number(row?.n ?? 0) };
  } finally {
    db.close();
  }
}

/**
 * What a stranger can store in one minute from one address at the default limits
 * (`RELAY_REGISTRATION_RATE_LIMIT` 60 a minute, 120 ingress messages a minute per push
 * resource), in the largest form each request allows: a 4096-character endpoint with a push
 * resource restricted to a VAPID key; 4096-byte ingress bodies with a TTL of 28 days and a
 * Topic each, to a device whose push service fails (so each message is kept until it becomes
 * a dead letter, kept 7 days). The relay runs in this process on a SQLite KV with the real
 * wiring and a clock this section moves; only the Web Push transport is replaced.
 */
type Post = (path: string, init: RequestInit) => Promise<Response>;

/** One minute's registrations from one address, each as large as allowed; statuses and URLs. */
async function strangerRegistrations(post: Post, limit: number, vapidKey: string) {
  const keys = await subscriberKeys(1);
  const statuses: number[] = [];
  const resources: string[] = [];
  for (let i = 0; i <= limit; i++) {
    const endpoint = `https://93.184.216.34/${"x".repeat(4096 - 26)}${randomToken(3)}`;
    const res = await post("/registrations", {
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        transport: "web-push",
        subscription: {
          endpoint: endpoint.slice(0, 4096),
          keys: { p256dh: keys[0]!, auth: encodeBase64Url(randomBytes(16)) },
        },
        ingress: true,
        "ingress-vapid-public-key": vapidKey,
      }),
    });
    statuses.push(res.status);
    if (res.status === 201) resources.push((await res.json())["push-resource"]);
    else await res.body?.cancel();
  }
  return { statuses, resources };
}

/** One minute's ingress messages to one push resource, each as large as allowed; statuses. */
async function strangerMessages(post: Post, resource: string, vapid: VapidKeys, now: number) {
  const body = new Uint8Array(4096);
  new DataView(body.buffer).setUint32(16, 4096);
  body[20] = 65;
  body[21] = 0x04;
  const jwt = await signJwt(
    { alg: "ES256", typ: "JWT" },
    { aud: "https://relay.example.net", exp: Math.floor(now / 1000) + 3600, sub: "mailto:a@b" },
    (await importVapidKeys(vapid)).signingKey,
  );
  const statuses: number[] = [];
  for (let i = 0; i <= 120; i++) {
    const res = await post(new URL(resource).pathname, {
      headers: {
        "content-encoding": "aes128gcm",
        ttl: "2419200",
        topic: randomToken(24),
        authorization: `vapid t=${jwt}, k=${vapid.publicKey}`,
      },
      body,
    });
    statuses.push(res.status);
    await res.body?.cancel();
  }
  return statuses;
}

/**
 * What a stranger can store in one minute from one address at the default limits
 * (`RELAY_REGISTRATION_RATE_LIMIT` 60 a minute, 120 ingress messages a minute per push
 * resource), in the largest form each request allows: a 4096-character endpoint with a push
 * resource restricted to a VAPID key; 4096-byte ingress bodies with a TTL of 28 days and a
 * Topic each, to a device whose push service fails (so each message is kept until it becomes
 * a dead letter, kept 7 days). The relay runs in this process on a SQLite KV with the real
 * wiring and a clock this section moves; only the Web Push transport is replaced.
 */
export async function stranger() {
  const dir = await Deno.makeTempDir({ prefix: "relay-bench-stranger-" });
  const path = `${dir}/relay.sqlite3`;
  const clock = { now: Date.now() };
  const failing: Transport = {
    id: "web-push",
    send: () => Promise.resolve({ kind: "retry", status: 503, reason: "bench: always 503" }),
  };
  const config = loadConfig({
    RELAY_KV_PATH: path,
    RELAY_APPS: `${APP}:${TOKEN}`,
    RELAY_PUBLIC_URL: "https://relay.example.net",
  });
  const kv = await Deno.openKv(path);
  const relay = await createRelay({
    config,
    kv,
    now: () => clock.now,
    logger: silentLogger,
    resolve: () => Promise.resolve(["93.184.216.34"]),
    transports: { "web-push": failing },
    // The breaker's cooldown runs on real time; this section moves only the relay's clock.
    delivery: { breaker: { threshold: 1_000_000 } },
  });
  const post: Post = async (path, init) =>
    await relay.app.request(`https://relay.example.net${path}`, { method: "POST", ...init }, {
      remoteAddr: { hostname: "2001:db8:51:7::1" },
    });
  try {
    const vapid = await generateVapidKeys();
    const start = kvLogical(path);
    const regs = await strangerRegistrations(post, config.registrationRateLimit, vapid.publicKey);
    const registered = kvLogical(path);
    const messages = await strangerMessages(post, regs.resources[0]!, vapid, clock.now);
    await relay.engine.idle();
    const queued = kvLogical(path);
    // Every retry until the messages are dead letters (8 attempts, at most 5 minutes apart).
    for (let i = 0; i < 12; i++) {
      clock.now += 6 * 60_000;
      await relay.engine.tick();
      await relay.engine.idle();
    }
    const dead = kvLogical(path);
    const count = (xs: number[]) => xs.filter((x) => x === 201).length;
    return {
      registrations: count(regs.statuses),
      refused: regs.statuses.length - count(regs.statuses),
      registrationBytes: registered.bytes - start.bytes,
      registrationEntries: registered.entries - start.entries,
      messages: count(messages),
      refusedMessages: messages.length - count(messages),
      queuedBytes: queued.bytes - registered.bytes,
      deadBytes: dead.bytes - registered.bytes,
      deadLetters: await relay.store.kv.count({ prefix: ["dead"] }),
      idleMinutes: config.refreshInterval / 60,
    };
  } finally {
    await relay.engine.shutdown(1000);
    kv.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

export function strangerTable(r: Awaited<ReturnType<typeof stranger>>): string {
  const perReg = r.registrationBytes / r.registrations;
  const perMsg = r.deadBytes / r.messages;
  const kib = (b: number) => `${fmt(b / 1024, 1)} KiB`;
  const mib = (b: number) => `${fmt(b / MiB, 0)} MiB`;
  return [
    "| Stranger, one address (IPv6: one /64), default limits | KV bytes (keys + values) |",
    "| --- | --- |",
    `| ${r.registrations} registrations in a minute (${r.refused} more refused with 429), 4096-character endpoints, push resource with a VAPID key | ${
      kib(r.registrationBytes)
    } a minute (${fmt(perReg)} B each, ${
      fmt(r.registrationEntries / r.registrations, 1)
    } entries each) |`,
    `| kept for one refresh-interval (${
      fmt(r.idleMinutes)
    } minutes) without a subscription, at most | ${mib(r.registrationBytes * r.idleMinutes)} |`,
    `| ${r.messages} ingress messages in a minute to one of its push resources (${r.refusedMessages} more refused with 429), 4096 bytes, TTL 28 days, a Topic each, the device's push service failing | ${
      kib(r.queuedBytes)
    } while queued, ${kib(r.deadBytes)} as ${r.deadLetters} dead letters (${
      fmt(perMsg)
    } B each, kept 7 days) |`,
  ].join("\n");
}
