/**
 * The life of a WebDAV-Push registration through the bridge in front of Radicale (README, "Push
 * for DAVx⁵ on Radicale (or any CalDAV server)"; draft-bitfire-webdav-push): who may register,
 * what is refused (and changes nothing), DELETE, pruning after a 410 from the push service, and
 * a restart of the bridge.
 *
 * Skipped (counted as ignored) only when `radicale` is not installed; CI installs it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { pushErrorXml } from "../../dav/webdav_push.ts";
import { basic, icsEvent, installed } from "./dav_servers.ts";
import {
  davx5Register,
  davx5RegisterNext,
  eventually,
  POLL_SECONDS,
  postXml,
  type PushEndpoint,
  type RadicaleStack,
  startRadicaleStack,
} from "./webdav_push_stack.ts";

const hasRadicale = await installed("radicale");
if (!hasRadicale) console.warn("webdav_push_lifecycle_test.ts: skipped, radicale is not installed");

const POLL_WAIT_MS = POLL_SECONDS * 2000 + 500;
const IN_3_DAYS = () => Date.now() + 3 * 86400_000;

async function registered(s: RadicaleStack, path: string, sub: PushEndpoint): Promise<string> {
  const res = await postXml(s, path, davx5Register(sub, IN_3_DAYS()));
  assert.equal(res.status, 201, await res.clone().text());
  await res.body?.cancel();
  return res.headers.get("location")!;
}

/** A change made straight on Radicale, which the bridge finds by polling. */
async function directChange(s: RadicaleStack, name: string): Promise<void> {
  const res = await fetch(`${s.radicale.origin}${s.paths.cal1}${name}.ics`, {
    method: "PUT",
    headers: { authorization: s.alice, "content-type": "text/calendar; charset=utf-8" },
    body: icsEvent(name, name),
  });
  assert.equal(res.status, 201);
  await res.body?.cancel();
}

/** What Radicale holds in cal1 (a listing of members and the sync-token). */
async function upstreamState(s: RadicaleStack): Promise<string> {
  const res = await fetch(s.radicale.origin + s.paths.cal1, {
    method: "PROPFIND",
    headers: { authorization: s.alice, depth: "1", "content-type": "application/xml" },
    body: `<propfind xmlns="DAV:"><prop><getetag/><sync-token/></prop></propfind>`,
  });
  return await res.text();
}

Deno.test({
  name:
    "WebDAV-Push registrations through the bridge: refused as they should be, deleted, pruned after a 410, kept across a restart",
  ignore: !hasRadicale,
  async fn(t) {
    const s = await startRadicaleStack();
    try {
      const { paths, push } = s;
      const [topic1] = s.bridge.topics as [string];
      const count = async () => (await s.bridge.store.ofCollection(topic1)).length;

      await t.step(
        "the caller's own read access is asked of Radicale: none is 401 with its WWW-Authenticate, bob on alice's calendar 403, and nothing is registered",
        async () => {
          const sub = await push.subscribe(s.vapid);
          const anonymous = await postXml(s, paths.cal1, davx5Register(sub, IN_3_DAYS()), null);
          assert.equal(anonymous.status, 401);
          assert.match(anonymous.headers.get("www-authenticate")!, /^Basic realm=/);
          await anonymous.body?.cancel();
          const wrong = await postXml(
            s,
            paths.cal1,
            davx5Register(sub, IN_3_DAYS()),
            basic("alice", "nope"),
          );
          assert.equal(wrong.status, 401);
          await wrong.body?.cancel();
          const bob = await postXml(
            s,
            paths.cal1,
            davx5Register(sub, IN_3_DAYS()),
            basic("bob", "bob-pw"),
          );
          assert.equal(bob.status, 403);
          await bob.body?.cancel();
          assert.equal(await count(), 0);
        },
      );

      await t.step(
        "403 bodies: no-supported-trigger, invalid-subscription (the relay's refusal of the keys too), push-not-available",
        async () => {
          const sub = await push.subscribe(s.vapid);
          const next = davx5RegisterNext(sub, IN_3_DAYS());
          // A point of the right length that is not on P-256: the relay refuses it (400), which
          // the client hears as invalid-subscription.
          const offCurve = { ...sub, keys: { ...sub.keys, p256dh: "BA" + "A".repeat(85) } };
          const cases: [string, string, string][] = [
            [
              paths.cal1,
              next.replace(/<n1:content-update>.*<\/n1:content-update>/, "<n1:property-update/>"),
              "no-supported-trigger",
            ],
            [paths.cal1, next.replace(">aes128gcm<", ">aesgcm<"), "invalid-subscription"],
            [
              paths.cal1,
              next.replace(sub.endpoint, "mailto:push@example.com"),
              "invalid-subscription",
            ],
            [paths.cal1, davx5Register(offCurve, IN_3_DAYS()), "invalid-subscription"],
            [paths.other, davx5Register(sub, IN_3_DAYS()), "push-not-available"],
            ["/alice/", davx5Register(sub, IN_3_DAYS()), "push-not-available"],
          ];
          for (const [path, body, condition] of cases) {
            const res = await postXml(s, path, body);
            assert.equal(res.status, 403, condition);
            assert.equal(res.headers.get("content-type"), "application/xml; charset=utf-8");
            assert.equal(await res.text(), pushErrorXml(condition as "invalid-subscription"));
          }
          assert.equal(await count(), 0);
        },
      );

      await t.step(
        "hostile XML (DOCTYPE and entities, unbound prefix, a wrong root, too deep, too many elements) is 400, too large 413, and nothing changes anywhere",
        async () => {
          const sub = await push.subscribe(s.vapid);
          const good = davx5Register(sub, IN_3_DAYS());
          const root = good.slice(good.indexOf("<n0:push-register"));
          const bodies: [string, number][] = [
            [`<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "${sub.endpoint}">]>${root}`, 400],
            [
              `<!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>${root}`,
              400,
            ],
            [root.replace(' xmlns:n0="https://bitfire.at/webdav-push"', ""), 400],
            [root.replaceAll("push-register", "push-registration"), 400],
            [
              `<n0:push-register xmlns:n0="https://bitfire.at/webdav-push">${"<a>".repeat(40)}${
                "</a>".repeat(40)
              }</n0:push-register>`,
              400,
            ],
            [
              `<n0:push-register xmlns:n0="https://bitfire.at/webdav-push">${
                "<a/>".repeat(5000)
              }</n0:push-register>`,
              400,
            ],
            [
              root.replace("<n0:subscription>", `<!--${"x".repeat(70_000)}--><n0:subscription>`),
              413,
            ],
            ["<n0:push-register", 400],
          ];
          const before = await upstreamState(s);
          for (const [body, status] of bodies) {
            const res = await postXml(s, paths.cal1, body);
            assert.equal(res.status, status, body.slice(0, 60));
            await res.body?.cancel();
          }
          assert.equal(await count(), 0);
          assert.equal(await upstreamState(s), before);
          assert.ok(!s.bridge.logger.lines.some((l) => l.event === "webdav-push-registered"));
          // Nothing reached the relay either: the subscription was never registered, so a
          // change reaches nobody.
          await directChange(s, "after-hostile");
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.deepEqual(await push.notifications(sub), []);
        },
      );

      await t.step(
        "§Subscription Removal: DELETE of the registration URL is 204, then 404, and nothing more is sent to it",
        async () => {
          const keep = await push.subscribe(s.vapid);
          const drop = await push.subscribe(s.vapid);
          await registered(s, paths.cal1, keep);
          const loc = await registered(s, paths.cal1, drop);
          const del = await fetch(loc, { method: "DELETE", headers: { authorization: s.alice } });
          assert.equal(del.status, 204);
          await del.body?.cancel();
          const again = await fetch(loc, { method: "DELETE", headers: { authorization: s.alice } });
          assert.equal(again.status, 404);
          await again.body?.cancel();
          // An id never issued, and a Location with something after the id.
          for (const url of [`${s.bridge.url}/push-subscriptions/${"A".repeat(32)}`, `${loc}x`]) {
            const res = await fetch(url, { method: "DELETE" });
            assert.equal(res.status, 404);
            await res.body?.cancel();
          }
          await directChange(s, "after-delete");
          assert.ok(
            await eventually(
              async () => (await push.notifications(keep)).length === 1,
              POLL_WAIT_MS,
            ),
          );
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.deepEqual(await push.notifications(drop), []);
        },
      );

      await t.step(
        "a 410 from the push service removes the registration: gone from the bridge, its URL then 404",
        async () => {
          const doomed = await push.subscribe(s.vapid);
          const loc = await registered(s, paths.cal1, doomed);
          const onCal2 = await registered(s, paths.cal2, doomed);
          const id = loc.split("/").pop()!;
          await push.expire(doomed);
          await directChange(s, "to-a-gone-device");
          // The relay prunes the device; the bridge notices when it checks after the push.
          assert.ok(
            await eventually(
              async () => (await s.bridge.store.byId(id)) === null,
              POLL_WAIT_MS + 3000,
            ),
            "the pruned registration is still in the bridge",
          );
          for (const url of [loc, onCal2]) {
            const res = await fetch(url, { method: "DELETE", headers: { authorization: s.alice } });
            assert.equal(res.status, 404, url === loc ? "cal1" : "cal2");
            await res.body?.cancel();
          }
        },
      );

      await t.step(
        "a restart keeps registrations: the same Location again, Push-Dont-Notify still honoured, DELETE still 204",
        async () => {
          const stays = await push.subscribe(s.vapid);
          const other = await push.subscribe(s.vapid);
          const loc = await registered(s, paths.cal1, stays);
          const otherLoc = await registered(s, paths.cal1, other);
          await s.restartBridge();
          assert.equal(await registered(s, paths.cal1, stays), loc);
          const before = (await push.notifications(stays)).length;
          const otherBefore = (await push.notifications(other)).length;
          const put = await fetch(`${s.bridge.url}${paths.cal1}restart.ics`, {
            method: "PUT",
            headers: {
              authorization: s.alice,
              "content-type": "text/calendar",
              "push-dont-notify": `"${loc}"`,
            },
            body: icsEvent("restart", "After the restart"),
          });
          assert.equal(put.status, 201);
          await put.body?.cancel();
          assert.ok(
            await eventually(
              async () => (await push.notifications(other)).length === otherBefore + 1,
              3000,
            ),
          );
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.equal((await push.notifications(stays)).length, before);
          for (const url of [loc, otherLoc]) {
            const del = await fetch(url, { method: "DELETE", headers: { authorization: s.alice } });
            assert.equal(del.status, 204);
            await del.body?.cancel();
          }
        },
      );
    } finally {
      await s.close();
    }
  },
});
