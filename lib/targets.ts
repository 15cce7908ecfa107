/**
 * Device targets: their identity hash (one registration per device and keys), and the resolver the
 * Web Push endpoint policy (lib/address_policy.ts) uses by default.
 *
 * @module
 */

import type { Resolver } from "./address_policy.ts";
import { decodeBase64Url, encodeBase64Url, utf8 } from "./encoding.ts";
import type { Target } from "./transports/types.ts";

/**
 * A stable hash of who a device is (README "The client API", "Who owns a registration"): an
 * FCM or APNs token (the device's address and credential at its push service), or a Web Push
 * endpoint together with its keys. Knowing an endpoint alone therefore never finds its
 * registration: the same endpoint with other keys is another client. Keys are compared as
 * bytes, so padding or the standard base64 alphabet do not make a device another client.
 */
export async function targetHash(target: Target): Promise<string> {
  const identity = target.transport === "web-push"
    ? `wk\u0000${target.endpoint}\u0000${canonicalKey(target.p256dh)}\u0000${
      canonicalKey(target.auth)
    }`
    : target.transport === "fcm"
    ? `f\u0000${target.token}`
    : `a\u0000${target.environment}\u0000${target.token}`;
  return await sha256(identity);
}

/**
 * The device-index hash Web Push registrations were stored under before keys were part of
 * their identity (the endpoint alone); null for FCM and APNs, whose hash never changed. Only
 * read to find such a registration again (lib/registrations.ts), and removed with it.
 */
export async function legacyTargetHash(target: Target): Promise<string | null> {
  return target.transport === "web-push" ? await sha256(`w\u0000${target.endpoint}`) : null;
}

/** Every device-index hash a registration of `target` may be stored under. */
export async function targetHashes(target: Target): Promise<string[]> {
  const legacy = await legacyTargetHash(target);
  return legacy === null ? [await targetHash(target)] : [await targetHash(target), legacy];
}

/** True when two Web Push targets carry the same keys (compared as bytes). */
export function sameKeys(
  a: { p256dh: string; auth: string },
  b: { p256dh: string; auth: string },
): boolean {
  return canonicalKey(a.p256dh) === canonicalKey(b.p256dh) &&
    canonicalKey(a.auth) === canonicalKey(b.auth);
}

function canonicalKey(key: string): string {
  try {
    return encodeBase64Url(decodeBase64Url(key));
  } catch {
    return key;
  }
}

async function sha256(s: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", utf8(s) as BufferSource);
  return encodeBase64Url(new Uint8Array(digest));
}

export { endpointRefusal, type Resolver } from "./address_policy.ts";

/** Resolves A and AAAA records with Deno's resolver. */
export const denoResolver: Resolver = async (hostname) => {
  const results = await Promise.allSettled([
    Deno.resolveDns(hostname, "A"),
    Deno.resolveDns(hostname, "AAAA"),
  ]);
  return results.flatMap((r) => (r.status === "fulfilled" ? r.value : []));
};
