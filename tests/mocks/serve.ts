/**
 * Runs the FCM and APNs mocks by hand, to try the relay's FCM and APNs transports without
 * Google or Apple accounts:
 *
 * ```sh
 * deno run -A tests/mocks/serve.ts > .mocks.env     # keep it running; prints requests on stderr
 * set -a; . ./.mocks.env; set +a
 * DENO_CERT=tests/mocks/certs/ca.pem deno task start
 * ```
 *
 * It writes `RELAY_FCM_*` and `RELAY_APNS_*` lines with throwaway credentials (fresh keys on
 * every start) that the mocks accept, then logs every request they receive on stderr.
 *
 * @module
 */

import { startFcmMock } from "./fcm_mock.ts";
import { startApnsMock } from "./apns_mock.ts";
import { makeApnsKey, makeServiceAccount } from "./keys.ts";

const TOPIC = "org.example.davpush";
const now = () => Date.now();
const [account, apnsKey] = await Promise.all([makeServiceAccount(), makeApnsKey()]);
const fcm = startFcmMock({
  projectId: account.projectId,
  clientEmail: account.clientEmail,
  publicKey: account.publicKey,
  now,
});
const apns = await startApnsMock({
  teamId: apnsKey.teamId,
  keyId: apnsKey.keyId,
  publicKey: apnsKey.publicKey,
  topic: TOPIC,
  now,
});

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const env: Record<string, string> = {
  RELAY_FCM_SERVICE_ACCOUNT: account.json(fcm.tokenUri),
  RELAY_FCM_API_URL: fcm.url,
  RELAY_APNS_KEY: apnsKey.pem,
  RELAY_APNS_KEY_ID: apnsKey.keyId,
  RELAY_APNS_TEAM_ID: apnsKey.teamId,
  RELAY_APNS_TOPIC: TOPIC,
  RELAY_APNS_API_URL: apns.url,
  RELAY_APNS_SANDBOX_URL: apns.url,
};
for (const [k, v] of Object.entries(env)) console.log(`${k}=${quote(v)}`);
console.error(`FCM mock on ${fcm.url}, APNs mock (HTTP/2, TLS) on ${apns.url}; Ctrl-C stops`);

let seenFcm = 0;
let seenApns = 0;
setInterval(() => {
  for (; seenFcm < fcm.sends.length; seenFcm++) {
    const send = fcm.sends[seenFcm]!;
    const message = send.body.message as Record<string, unknown> | undefined;
    console.error(`FCM  ${send.path} data=${JSON.stringify(message?.data)}`);
  }
  for (; seenApns < apns.requests.length; seenApns++) {
    const r = apns.requests[seenApns]!;
    console.error(`APNs ${r.path.slice(0, 20)}... ${r.protocol} ${r.body}`);
  }
  for (const p of [...fcm.problems.splice(0), ...apns.problems.splice(0)]) {
    console.error(`problem: ${p}`);
  }
}, 250);
