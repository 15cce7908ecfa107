/**
 * WebDAV-Push for DAVx⁵ through the bridge in front of Radicale (README, "Push for DAVx⁵ on
 * Radicale (or any CalDAV server)"; draft-bitfire-webdav-push): discovery, registration and
 * delivery, with a DAVx⁵-shaped client, the relay as a process, web-push-testing as the push
 * distributor (it checks VAPID and decrypts) and a push service that decrypts with npm
 * `http_ece`.
 *
 * Skipped (counted as ignored) only when `radicale` is not installed; CI installs it.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  formatHttpDate,
  parseHttpDate,
  parsePushMessage,
  pushPropertyFragments,
  WP,
} from "../../dav/webdav_push.ts";
import { childElement, childElements, parseXml, type XmlElement } from "../../dav/xml.ts";
import { icsEvent, installed } from "./dav_servers.ts";
import {
  DAVX5_CALDAV_COLLECTIONS,
  DAVX5_CARDDAV_COLLECTIONS,
  davx5Headers,
  davx5Register,
  davx5RegisterNext,
  eventually,
  POLL_SECONDS,
  postXml,
  type PushEndpoint,
  type RadicaleStack,
  startCapturingPushService,
  startRadicaleStack,
} from "./webdav_push_stack.ts";

const hasRadicale = await installed("radicale");
if (!hasRadicale) console.warn("webdav_push_radicale_test.ts: skipped, radicale is not installed");

const D = (l: string) => `{DAV:}${l}`;
/** Long enough for a poll to have happened, and for anything it sends to arrive. */
const POLL_WAIT_MS = POLL_SECONDS * 2000 + 500;

/** Per href: the names in its 2xx propstats and in the others, and the 2xx elements. */
function propstats(xml: string) {
  const out = new Map<string, { ok: Map<string, XmlElement>; failed: string[] }>();
  for (const r of childElements(parseXml(xml, { maxBytes: 1 << 24 }), D("response"))) {
    const href = childElement(r, D("href"))!.text;
    const entry = { ok: new Map<string, XmlElement>(), failed: [] as string[] };
    for (const ps of childElements(r, D("propstat"))) {
      const good = /HTTP\/1\.1 2\d\d/.test(childElement(ps, D("status"))!.text);
      for (const p of childElement(ps, D("prop"))!.children) {
        if (good) entry.ok.set(p.name, p);
        else entry.failed.push(p.name);
      }
    }
    out.set(href, entry);
  }
  return out;
}

async function text(res: Response): Promise<string> {
  return await res.text();
}

async function syncToken(s: RadicaleStack, path: string): Promise<string> {
  const res = await fetch(s.radicale.origin + path, {
    method: "PROPFIND",
    headers: { authorization: s.alice, depth: "0", "content-type": "application/xml" },
    body: `<propfind xmlns="DAV:"><prop><sync-token/></prop></propfind>`,
  });
  return propstats(await text(res)).get(path)!.ok.get(D("sync-token"))!.text;
}

Deno.test({
  name:
    "WebDAV-Push through the bridge in front of Radicale: DAVx⁵ discovers, registers, and is pushed what changes",
  ignore: !hasRadicale,
  async fn(t) {
    const s = await startRadicaleStack();
    await using capture = await startCapturingPushService();
    try {
      const { paths, push } = s;
      const [topic1, topic2, topicBook] = s.bridge.topics as [string, string, string];
      const inserted = (topic: string) => {
        const f = pushPropertyFragments({ vapidPublicKey: s.vapid, topic });
        return f.get(WP.transports)! + f.get(WP.topic)!;
      };

      await t.step(
        "§Discovery: DAVx⁵'s home-set PROPFIND (Depth 1) gets P:transports with the relay's VAPID key and P:topic in the 200 propstat of the watched collections; every other byte is Radicale's",
        async () => {
          const direct = await text(
            await fetch(s.radicale.origin + "/alice/", {
              method: "PROPFIND",
              headers: { ...davx5Headers(s.alice, "1"), "accept-encoding": "identity" },
              body: DAVX5_CALDAV_COLLECTIONS,
            }),
          );
          const res = await fetch(s.bridge.url + "/alice/", {
            method: "PROPFIND",
            headers: davx5Headers(s.alice, "1"),
            body: DAVX5_CALDAV_COLLECTIONS,
          });
          assert.equal(res.status, 207);
          const proxied = await text(res);
          const got = propstats(proxied);
          // Radicale lists the address book in the home set too; it is watched as well.
          const watched = new Map([[paths.cal1, topic1], [paths.cal2, topic2], [
            paths.book1,
            topicBook,
          ]]);
          for (const [path, topic] of watched) {
            const r = got.get(path)!;
            const key = childElement(
              childElement(r.ok.get(WP.transports)!, WP.webPush)!,
              WP.vapidPublicKey,
            )!;
            assert.equal(key.text, s.vapid);
            assert.equal(key.attributes["type"], "p256ecdsa");
            assert.equal(s.vapid.length, 87);
            assert.equal(r.ok.get(WP.topic)!.text, topic);
            assert.ok(!r.failed.includes(WP.transports) && !r.failed.includes(WP.topic));
          }
          // Not watched: the principal/home set and the other calendar keep Radicale's 404s.
          for (const path of ["/alice/", paths.other]) {
            assert.ok(got.get(path)!.failed.includes(WP.topic), path);
            assert.equal(got.get(path)!.ok.has(WP.topic), false);
          }
          // Byte for byte: only the watched responses changed, and only in those properties.
          const parts = (x: string) => x.split("<response>");
          const [d, p] = [parts(direct), parts(proxied)];
          assert.equal(p.length, d.length);
          for (let i = 0; i < d.length; i++) {
            const href = /^<href>([^<]+)</.exec(d[i]!)?.[1];
            const topic = href === undefined ? undefined : watched.get(href);
            const expected = topic === undefined ? d[i] : d[i]!
              .replace(/<(\w+):transports \/><\1:topic \/>/, "")
              .replace(
                "</prop><status>HTTP/1.1 200 OK",
                `${inserted(topic)}</prop><status>HTTP/1.1 200 OK`,
              );
            assert.equal(p[i], expected, href);
          }
        },
      );

      await t.step(
        "§Discovery: a collection without a home set (Depth 0), the address book, and P:supported-triggers when asked",
        async () => {
          const cal = propstats(
            await text(
              await fetch(s.bridge.url + paths.cal1, {
                method: "PROPFIND",
                headers: davx5Headers(s.alice, "0"),
                body: DAVX5_CALDAV_COLLECTIONS,
              }),
            ),
          );
          assert.equal(cal.get(paths.cal1)!.ok.get(WP.topic)!.text, topic1);
          const book = propstats(
            await text(
              await fetch(s.bridge.url + paths.book1, {
                method: "PROPFIND",
                headers: davx5Headers(s.alice, "0"),
                body: DAVX5_CARDDAV_COLLECTIONS,
              }),
            ),
          );
          assert.equal(book.get(paths.book1)!.ok.get(WP.topic)!.text, topicBook);
          const triggers = propstats(
            await text(
              await fetch(s.bridge.url + paths.cal1.slice(0, -1), {
                method: "PROPFIND",
                headers: davx5Headers(s.alice, "0"),
                body:
                  `<propfind xmlns="DAV:" xmlns:P="https://bitfire.at/webdav-push"><prop><P:supported-triggers/></prop></propfind>`,
              }),
            ),
          );
          const st = triggers.get(paths.cal1)!.ok.get(WP.supportedTriggers)!;
          assert.equal(childElement(childElement(st, WP.contentUpdate)!, D("depth"))!.text, "1");
        },
      );

      await t.step(
        "§Discovery MUST: OPTIONS on a watched collection has webdav-push in DAV, other resources do not",
        async () => {
          const res = await fetch(s.bridge.url + paths.cal1, {
            method: "OPTIONS",
            headers: { authorization: s.alice },
          });
          await res.body?.cancel();
          assert.match(res.headers.get("dav")!, /^1, 2, 3, calendar-access.*, webdav-push$/);
          const home = await fetch(s.bridge.url + "/alice/", {
            method: "OPTIONS",
            headers: { authorization: s.alice },
          });
          await home.body?.cancel();
          assert.doesNotMatch(home.headers.get("dav")!, /webdav-push/);
        },
      );

      // Three devices: A and B at web-push-testing, C at the capturing service.
      let subA: PushEndpoint, subB: PushEndpoint;
      let locA = "", locB = "", locC = "";
      const subC = capture.subscribe();

      await t.step(
        "§Subscription Registration: DAVx⁵ 4.5.19's body gets 201, an absolute Location and Expires (3 days as asked); again, the same Location",
        async () => {
          subA = await push.subscribe(s.vapid);
          const asked = Math.floor((Date.now() + 3 * 86400_000) / 1000) * 1000;
          const res = await postXml(s, paths.cal1, davx5Register(subA, asked));
          assert.equal(res.status, 201, await res.clone().text());
          assert.equal(await text(res), "");
          locA = res.headers.get("location")!;
          assert.match(locA, new RegExp(`^${s.bridge.url}/push-subscriptions/[A-Za-z0-9_-]{22,}$`));
          const expires = parseHttpDate(res.headers.get("expires")!)!;
          assert.ok(expires >= asked && expires <= asked + 2000, res.headers.get("expires")!);
          // DAVx⁵ registers again after each collection refresh, without a DELETE.
          const again = await postXml(s, paths.cal1, davx5Register(subA, asked + 60_000, "n7"));
          assert.equal(again.status, 201);
          await again.body?.cancel();
          assert.equal(again.headers.get("location"), locA);
          assert.equal(again.headers.get("expires"), formatHttpDate(asked + 60_000));
          assert.equal((await s.bridge.store.ofCollection(topic1)).length, 1);
        },
      );

      await t.step(
        "§Subscription Registration: the newer DAVx⁵ body (content-encoding, trigger content-update depth 1) is accepted too",
        async () => {
          subB = await push.subscribe(s.vapid);
          const res = await postXml(
            s,
            paths.cal1,
            davx5RegisterNext(subB, Date.now() + 3 * 86400_000),
          );
          assert.equal(res.status, 201);
          await res.body?.cancel();
          locB = res.headers.get("location")!;
          const resC = await postXml(
            s,
            paths.cal1,
            davx5Register(subC, Date.now() + 3 * 86400_000),
          );
          assert.equal(resC.status, 201);
          await resC.body?.cancel();
          locC = resC.headers.get("location")!;
          assert.equal(new Set([locA, locB, locC]).size, 3);
        },
      );

      await t.step(
        "a change made straight on Radicale reaches every subscription within the poll interval as a push-message whose topic is the advertised P:topic",
        async () => {
          const put = await fetch(s.radicale.origin + paths.cal1 + "direct1.ics", {
            method: "PUT",
            headers: { authorization: s.alice, "content-type": "text/calendar; charset=utf-8" },
            body: icsEvent("direct1", "Made on Radicale"),
          });
          assert.equal(put.status, 201);
          await put.body?.cancel();
          assert.ok(
            await eventually(
              async () =>
                (await push.notifications(subA)).length === 1 &&
                (await push.notifications(subB)).length === 1 && subC.received.length === 1,
              POLL_SECONDS * 1000 + 2000,
            ),
            "not every subscription was pushed within the poll interval",
          );
          const token = await syncToken(s, paths.cal1);
          for (
            const raw of [...await push.notifications(subA), ...await push.notifications(subB)]
          ) {
            assert.deepEqual(parsePushMessage(raw), {
              topic: topic1,
              contentUpdate: true,
              syncToken: token,
              propertyUpdate: false,
            });
          }
        },
      );

      await t.step(
        "on the wire (decrypted with http_ece): aes128gcm, Content-Type application/octet-stream, TTL, VAPID with the advertised key",
        () => {
          const [m] = subC.received;
          assert.equal(m!.headers.get("content-encoding"), "aes128gcm");
          assert.equal(m!.headers.get("content-type"), "application/octet-stream");
          assert.match(m!.headers.get("ttl")!, /^\d+$/);
          assert.match(
            m!.headers.get("authorization")!,
            new RegExp(`^vapid t=[\\w-]+\\.[\\w-]+\\.[\\w-]+, k=${s.vapid}$`),
          );
          assert.equal(parsePushMessage(m!.plaintext).topic, topic1);
          assert.ok(
            m!.plaintext.startsWith('<?xml version="1.0" encoding="utf-8"?>\n<push-message'),
          );
        },
      );

      await t.step(
        "Push-Dont-Notify: a write through the proxy wakes the other subscriptions at once and never the writer, now or at the next polls",
        async () => {
          const put = await fetch(s.bridge.url + paths.cal1 + "own1.ics", {
            method: "PUT",
            headers: {
              ...davx5Headers(s.alice),
              "content-type": "text/calendar; charset=utf-8",
              "if-none-match": "*",
              "push-dont-notify": `"${locA}"`,
            },
            body: icsEvent("own1", "Made by A through the bridge"),
          });
          assert.equal(put.status, 201);
          const etag = put.headers.get("etag")!;
          await put.body?.cancel();
          assert.ok(
            await eventually(async () => (await push.notifications(subB)).length === 2, 3000),
          );
          assert.ok(await eventually(() => subC.received.length === 2, 3000));
          // A DELETE of A's own, with If-Match, as DAVx⁵ sends it.
          const del = await fetch(s.bridge.url + paths.cal1 + "own1.ics", {
            method: "DELETE",
            headers: { authorization: s.alice, "if-match": etag, "push-dont-notify": `"${locA}"` },
          });
          assert.equal(del.status, 200);
          await del.body?.cancel();
          assert.ok(
            await eventually(async () => (await push.notifications(subB)).length === 3, 3000),
          );
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.equal((await push.notifications(subA)).length, 1, "the writer was woken");
          assert.equal((await push.notifications(subB)).length, 3, "a write was pushed twice");
          const last = parsePushMessage((await push.notifications(subB))[2]!);
          assert.equal(last.syncToken, await syncToken(s, paths.cal1));
        },
      );

      await t.step(
        "Push-Dont-Notify: * tells nobody of that write, and no poll does later",
        async () => {
          const before = [
            (await push.notifications(subA)).length,
            (await push.notifications(subB)).length,
            subC.received.length,
          ];
          const put = await fetch(s.bridge.url + paths.cal1 + "quiet.ics", {
            method: "PUT",
            headers: {
              authorization: s.alice,
              "content-type": "text/calendar",
              "push-dont-notify": "*",
            },
            body: icsEvent("quiet", "Nobody is told"),
          });
          assert.equal(put.status, 201);
          await put.body?.cancel();
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.deepEqual(
            [
              (await push.notifications(subA)).length,
              (await push.notifications(subB)).length,
              subC.received.length,
            ],
            before,
          );
        },
      );

      await t.step(
        "MOVE through the proxy (Destination given Radicale's origin) notifies both calendars once; one push resource may be registered on two collections",
        async () => {
          const onCal2 = await postXml(
            s,
            paths.cal2,
            davx5Register(subA, Date.now() + 3 * 86400_000),
          );
          assert.equal(onCal2.status, 201);
          await onCal2.body?.cancel();
          assert.notEqual(onCal2.headers.get("location"), locA);
          const a = (await push.notifications(subA)).length;
          const b = (await push.notifications(subB)).length;
          const move = await fetch(s.bridge.url + paths.cal1 + "quiet.ics", {
            method: "MOVE",
            headers: {
              authorization: s.alice,
              destination: `${s.bridge.url}${paths.cal2}moved.ics`,
            },
          });
          assert.equal(move.status, 201, await move.clone().text());
          await move.body?.cancel();
          assert.ok(
            await eventually(async () => (await push.notifications(subA)).length === a + 2, 3000),
          );
          assert.ok(
            await eventually(async () => (await push.notifications(subB)).length === b + 1, 3000),
          );
          const topics = (await push.notifications(subA)).slice(a).map((m) =>
            parsePushMessage(m).topic
          );
          assert.deepEqual(topics.sort(), [topic1, topic2].sort());
          // The next polls do not push the move again, in either calendar.
          await new Promise((r) => setTimeout(r, POLL_WAIT_MS));
          assert.equal((await push.notifications(subA)).length, a + 2);
          assert.equal((await push.notifications(subB)).length, b + 1);
          const moved = await fetch(s.radicale.origin + paths.cal2 + "moved.ics", {
            headers: { authorization: s.alice },
          });
          assert.equal(moved.status, 200);
          await moved.body?.cancel();
        },
      );

      await t.step(
        "the bridge's log holds no registration URL, push resource, key or credential",
        () => {
          const logged = JSON.stringify(s.bridge.logger.lines);
          const ids = [locA, locB, locC].map((l) => l.split("/").pop()!);
          const endpoints = [subA, subB, subC].map((x) => new URL(x.endpoint).pathname);
          for (
            const secret of [...ids, ...endpoints, subA.keys.p256dh, subC.keys.auth, "alice-pw"]
          ) {
            assert.ok(!logged.includes(secret), secret);
          }
        },
      );
    } finally {
      await s.close();
    }
  },
});
