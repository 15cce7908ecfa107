/**
 * Device targets: their identity hash (one registration per device), and the resolver the
 * Web Push endpoint policy (lib/address_policy.ts) uses by default.
 *
 * @module
 */

import type { Resolver } from "./address_policy.ts";
import { encodeBase64Url, utf8 } from "./encoding.ts";
import type { Target } from "./transports/types.ts";

/** A stable hash of where a device receives pushes: same endpoint or token, same hash. */
export async function targetHash(target: Target): Promise<string> {
  const identity = target.transport === "web-push"
    ? `w\u0000${target.endpoint}`
    : target.transport === "fcm"
    ? `f\u0000${target.token}`
    : `a\u0000${target.environment}\u0000${target.token}`;
  const digest = await crypto.subtle.digest("SHA-256", utf8(identity) as BufferSource);
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
