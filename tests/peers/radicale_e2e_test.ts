/**
 * End to end against a real CalDAV server (README, "The CalDAV bridge"): Radicale (Debian
 * package `radicale`), the relay (`main.ts`) and the bridge (`bridge/main.ts`) as separate
 * processes, and a Web Push service (npm `web-push-testing`) standing in for the devices.
 *
 * Skipped (counted as ignored) only when `radicale` is not installed; CI installs it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { parseDiscovery } from "../../dav/dav_push.ts";
import { basic, icsEvent, installed, startRadicale } from "./dav_servers.ts";
import { startWebPushTesting, type TestSubscription } from "./web_push_testing.ts";

const ROOT = new URL("../../", import.meta.url);
const POLL_SECONDS = 1;
const RELAY_TOKEN = "bridge-e2e-token-0123456789abcdefghij";

const hasRadicale = await installed("radicale");
if (!hasRadicale) {
  console.warn(
    "radicale_e2e_test.ts: skipped, `radicale` is not installed (apt-get install -y radicale)",
  );
}

interface Proc {
  port: number;
  output: () => string;
  stop(): Promise<void>;
}

/**
 * Spawns a process and waits for its `"event":"listening"` JSON log line (relay and bridge
 * both print one). Keeps draining stdout/stderr so the child never blocks.
 */
async function spawnListening(name: string, args: string[], env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const drain = (stream: ReadableStream<Uint8Array>) =>
    stream.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({
        write(chunk) {
          text = (text + chunk).slice(-20000);
        },
      }),
    ).catch(() => {});
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const proc: Proc = {
    port: 0,
    output: () => text,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
      await child.status;
      await drained;
    },
  };
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const line = text.split("\n").find((l) => l.includes('"event":"listening"'));
    if (line) {
      proc.port = JSON.parse(line).port;
      return proc;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  await proc.stop();
  throw new Error(`${name} did not start listening within 15 s; output:\n${text}`);
}

const ALICE = basic("alice", "alice-password");

async function updates(
  push: Awaited<ReturnType<typeof startWebPushTesting>>,
  sub: TestSubscription,
): Promise<Record<string, unknown>[]> {
  return (await push.notifications(sub)).map((m) => JSON.parse(m))
    .filter((m) => m.type === "update");
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

Deno.test({
  name:
    "bridge end to end with Radicale: a CalDAV PUT wakes the subscribed client within the poll interval; a PUT with its Push-Client-Id through the bridge does not",
  ignore: !hasRadicale,
  async fn() {
    const cleanup: (() => Promise<void>)[] = [];
    try {
      // 1. Radicale with one calendar, created with MKCALENDAR (RFC 4791 §5.3.1).
      const radicale = await startRadicale({ alice: "alice-password" });
      cleanup.push(radicale.stop);
      const calendar = `${radicale.origin}/alice/calendar/`;
      const mk = await fetch(calendar, { method: "MKCALENDAR", headers: { authorization: ALICE } });
      assert.equal(mk.status, 201);
      await mk.body?.cancel();

      // 2. The relay and the push service.
      const relay = await spawnListening("relay", ["run", "-A", "main.ts"], {
        PORT: "0",
        RELAY_KV_PATH: ":memory:",
        RELAY_APPS: `bridge:${RELAY_TOKEN}`,
        RELAY_ALLOW_PRIVATE_ENDPOINTS: "1",
        RELAY_REGISTRATION_RATE_LIMIT: "0",
        RELAY_COALESCE_MS: "0",
      });
      cleanup.push(relay.stop);
      const relayUrl = `http://127.0.0.1:${relay.port}`;
      const push = await startWebPushTesting();
      cleanup.push(() => push.close());

      // 3. The bridge, polling Radicale with credentials in the collection URL.
      const bridge = await spawnListening("bridge", ["run", "-A", "bridge/main.ts"], {
        BRIDGE_PORT: "0",
        BRIDGE_COLLECTIONS: calendar.replace("http://", "http://alice:alice-password@"),
        BRIDGE_POLL_SECONDS: String(POLL_SECONDS),
        BRIDGE_RELAY_URL: relayUrl,
        BRIDGE_RELAY_TOKEN: RELAY_TOKEN,
      });
      cleanup.push(bridge.stop);
      const bridgeUrl = `http://127.0.0.1:${bridge.port}`;
      const collections = await (await fetch(`${bridgeUrl}/collections`)).json();
      assert.deepEqual(collections, [{ path: "/collections/0/", upstream: calendar }]);

      // 4. Discovery through the bridge (§5.2.3.1).
      const propfind = await fetch(`${bridgeUrl}/collections/0/`, {
        method: "PROPFIND",
        headers: { depth: "0", "content-type": "application/xml" },
        body: `<propfind xmlns="DAV:" xmlns:P="urn:ietf:params:xml:ns:dav-push"><prop>` +
          `<P:subscribe-URL/><P:supported-transport-set/><P:topic/><P:version/></prop></propfind>`,
      });
      assert.equal(propfind.status, 207);
      const discovered = parseDiscovery(await propfind.text());
      assert.equal(discovered.version, "1");
      const webPush = discovered.transports.find((t) => t.transportUri.endsWith("/web-push"))!;
      const vapidKey = (webPush.transportData as Record<string, string>)["vapid-public-key"]!;
      const topic = discovered.topic!;
      // BRIDGE_PUBLIC_URL unset: http://localhost:<the port it got>, absolute (§6.2.1.1).
      assert.equal(discovered.subscribeUrl, `http://localhost:${bridge.port}/subscribe`);

      // 5. Two devices register with the relay and subscribe through the bridge (§5.2.3.2).
      const devices = [];
      for (let i = 0; i < 2; i++) {
        const subscription = await push.subscribe(vapidKey);
        const reg = await fetch(`${relayUrl}/registrations`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ transport: "web-push", subscription }),
        });
        assert.equal(reg.status, 201, await reg.clone().text());
        const registration = await reg.json();
        const expires = new Date(Date.now() + 86_400_000).toISOString().replace(/\.\d+Z$/, "Z");
        const subscribeUrl = `${bridgeUrl}/subscribe`;
        const sub = await fetch(subscribeUrl, {
          method: "POST",
          headers: { "content-type": "application/xml; charset=utf-8" },
          body: `<subscribe xmlns="urn:ietf:params:xml:ns:dav-push"><topic>${topic}</topic>` +
            `<selected-transport><transport-uri>${webPush.transportUri}</transport-uri>` +
            `<client-data>${registration["client-data"]}</client-data></selected-transport>` +
            `<expires>${expires}</expires></subscribe>`,
        });
        assert.equal(sub.status, 200, await sub.clone().text());
        await sub.body?.cancel();
        devices.push({ subscription, clientId: registration["client-id"] as string });
      }
      const [writer, other] = devices as [typeof devices[0], typeof devices[0]];

      // 6. A plain CalDAV PUT straight to Radicale: both devices hear of it within the interval.
      const put = await fetch(`${calendar}first.ics`, {
        method: "PUT",
        headers: { authorization: ALICE, "content-type": "text/calendar; charset=utf-8" },
        body: icsEvent("first", "Created in Radicale"),
      });
      assert.equal(put.status, 201);
      await put.body?.cancel();
      const started = Date.now();
      const bothWoken = await waitFor(
        async () =>
          (await updates(push, writer.subscription)).length === 1 &&
          (await updates(push, other.subscription)).length === 1,
        POLL_SECONDS * 1000 + 1500,
      );
      assert.ok(
        bothWoken,
        `no update push within the poll interval; bridge log:\n${bridge.output()}`,
      );
      const [update] = await updates(push, writer.subscription);
      assert.equal(update!.topic, topic);
      const latency = Date.now() - started;
      assert.ok(latency <= POLL_SECONDS * 1000 + 1500, `update took ${latency} ms`);

      // 7. The writer's own change through the bridge, with its Push-Client-Id (§7.1): the
      // other device is told at once, the writer is not woken, now or by the next polls.
      const own = await fetch(`${bridgeUrl}/collections/0/second.ics`, {
        method: "PUT",
        headers: {
          authorization: ALICE,
          "content-type": "text/calendar; charset=utf-8",
          "push-client-id": writer.clientId,
        },
        body: icsEvent("second", "Created through the bridge"),
      });
      assert.equal(own.status, 201);
      await own.body?.cancel();
      assert.ok(
        await waitFor(async () => (await updates(push, other.subscription)).length === 2, 3000),
        "the other device was not told of the bridge write",
      );
      await new Promise((r) => setTimeout(r, POLL_SECONDS * 2500));
      assert.equal((await updates(push, writer.subscription)).length, 1, "the writer was woken");
      assert.equal(
        (await updates(push, other.subscription)).length,
        2,
        "the write was pushed twice",
      );
      assert.doesNotMatch(bridge.output(), /alice-password|YWxpY2U6/);
    } finally {
      for (const stop of cleanup.reverse()) await stop().catch(() => {});
    }
  },
});
