/**
 * WebDAV-Push through the bridge in front of Xandikos (README, "Push for DAVx⁵ on Radicale (or
 * any CalDAV server)"): another server with other habits (every element prefixed, `status`
 * before `prop`, no authentication, `POST` to a calendar stored as a new member), with the
 * DAVx⁵-shaped client, the relay as a process and web-push-testing.
 *
 * Skipped (counted as ignored) only when `xandikos` is not installed; CI installs it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { parsePushMessage, WP } from "../../dav/webdav_push.ts";
import { childElement, childElements, parseXml } from "../../dav/xml.ts";
import { icsEvent, installed, startXandikos } from "./dav_servers.ts";
import { startWebPushTesting } from "./web_push_testing.ts";
import {
  DAVX5_CALDAV_COLLECTIONS,
  davx5Headers,
  davx5Register,
  davx5RegisterNext,
  eventually,
  POLL_SECONDS,
  startBridge,
  startRelay,
} from "./webdav_push_stack.ts";

const hasXandikos = await installed("xandikos");
if (!hasXandikos) console.warn("webdav_push_xandikos_test.ts: skipped, xandikos is not installed");

const CAL = "/user/calendars/calendar/";
const BOOK = "/user/contacts/addressbook/";
const D = (l: string) => `{DAV:}${l}`;

/** The members of the calendar, as Xandikos lists them. */
async function members(origin: string): Promise<string[]> {
  const res = await fetch(origin + CAL, {
    method: "PROPFIND",
    headers: { depth: "1", "content-type": "application/xml" },
    body: `<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>`,
  });
  const root = parseXml(await res.text());
  return childElements(root, D("response")).map((r) => childElement(r, D("href"))!.text)
    .filter((h) => h !== CAL && h !== CAL.slice(0, -1));
}

Deno.test({
  name:
    "WebDAV-Push through the bridge in front of Xandikos: discovery in its answers, registration never stored upstream, pushes for direct and proxied changes",
  ignore: !hasXandikos,
  async fn(t) {
    await using xandikos = await startXandikos();
    const relay = await startRelay();
    await using push = await startWebPushTesting();
    const kvPath = await Deno.makeTempFile({ prefix: "bridge-kv-" });
    const bridge = await startBridge({
      BRIDGE_UPSTREAM: xandikos.origin,
      BRIDGE_COLLECTIONS: `${xandikos.origin}${CAL},${xandikos.origin}${BOOK}`,
      BRIDGE_RELAY_URL: relay.url,
    }, { kvPath });
    try {
      const [topic] = bridge.topics as [string];
      let vapid = "";
      await t.step(
        "§Discovery: the calendar in DAVx⁵'s home-set PROPFIND has P:transports and P:topic in a 200 propstat; the 404 one no longer lists them",
        async () => {
          const res = await fetch(bridge.url + "/user/calendars/", {
            method: "PROPFIND",
            headers: davx5Headers(undefined, "1"),
            body: DAVX5_CALDAV_COLLECTIONS,
          });
          assert.equal(res.status, 207);
          const root = parseXml(await res.text());
          const cal = childElements(root, D("response"))
            .find((r) => childElement(r, D("href"))!.text === CAL)!;
          const ok = childElements(cal, D("propstat"))
            .filter((ps) => /200/.test(childElement(ps, D("status"))!.text))
            .flatMap((ps) => childElement(ps, D("prop"))!.children);
          const failed = childElements(cal, D("propstat"))
            .filter((ps) => !/200/.test(childElement(ps, D("status"))!.text))
            .flatMap((ps) => childElement(ps, D("prop"))!.children.map((c) => c.name));
          const transports = ok.find((p) => p.name === WP.transports)!;
          vapid = childElement(childElement(transports, WP.webPush)!, WP.vapidPublicKey)!.text;
          assert.equal(vapid.length, 87);
          assert.equal(ok.find((p) => p.name === WP.topic)!.text, topic);
          assert.ok(!failed.includes(WP.topic) && !failed.includes(WP.transports));
          const options = await fetch(bridge.url + CAL, { method: "OPTIONS" });
          await options.body?.cancel();
          assert.match(options.headers.get("dav")!, /, webdav-push$/);
        },
      );

      const a = await push.subscribe(vapid);
      const b = await push.subscribe(vapid);
      let locA = "";
      await t.step(
        "§Subscription Registration: both DAVx⁵ bodies get 201 from the bridge, and Xandikos never sees them (no new member)",
        async () => {
          const before = await members(xandikos.origin);
          for (const [sub, body] of [[a, davx5Register], [b, davx5RegisterNext]] as const) {
            const res = await fetch(bridge.url + CAL, {
              method: "POST",
              headers: { "content-type": "application/xml; charset=UTF-8" },
              body: body(sub, Date.now() + 3 * 86400_000),
            });
            assert.equal(res.status, 201, await res.clone().text());
            await res.body?.cancel();
            if (sub === a) locA = res.headers.get("location")!;
          }
          assert.deepEqual(await members(xandikos.origin), before);
        },
      );

      await t.step(
        "a change made straight on Xandikos reaches both within the poll interval, with Xandikos' sync-token",
        async () => {
          const put = await fetch(`${xandikos.origin}${CAL}direct.ics`, {
            method: "PUT",
            headers: { "content-type": "text/calendar; charset=utf-8" },
            body: icsEvent("direct", "Made on Xandikos"),
          });
          assert.ok(put.ok, String(put.status));
          await put.body?.cancel();
          assert.ok(
            await eventually(
              async () =>
                (await push.notifications(a)).length === 1 &&
                (await push.notifications(b)).length === 1,
              POLL_SECONDS * 1000 + 2000,
            ),
          );
          const m = parsePushMessage((await push.notifications(a))[0]!);
          assert.equal(m.topic, topic);
          assert.match(m.syncToken!, /^[0-9a-f]{40}$/);
        },
      );

      await t.step(
        "Push-Dont-Notify on a write through the proxy: the other subscription at once, never the writer",
        async () => {
          const put = await fetch(`${bridge.url}${CAL}own.ics`, {
            method: "PUT",
            headers: { "content-type": "text/calendar", "push-dont-notify": `"${locA}"` },
            body: icsEvent("own", "Made by A"),
          });
          assert.ok(put.ok);
          await put.body?.cancel();
          assert.ok(await eventually(async () => (await push.notifications(b)).length === 2, 3000));
          await new Promise((r) => setTimeout(r, POLL_SECONDS * 2000 + 500));
          assert.equal((await push.notifications(a)).length, 1);
          assert.equal((await push.notifications(b)).length, 2);
        },
      );
    } finally {
      await bridge.stop();
      await relay.stop();
      await Deno.remove(kvPath).catch(() => {});
    }
  },
});
