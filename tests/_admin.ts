/**
 * What the admin API tests share: the admin token they configure, an authorised request, and a
 * JSON answer with its status checked.
 */

import assert from "node:assert/strict";
import type { Harness } from "./_harness.ts";

export const ADMIN = "admin-token-0123456789abcdef-xyz";

/** A push service's refusal, as the fake Web Push transport answers it. */
export const refused = {
  kind: "failed",
  status: 400,
  reason: "push service answered 400",
} as const;

/** A request to the admin API with `token` (null: none). */
export function admin(
  h: Harness,
  path: string,
  init: RequestInit = {},
  token: string | null = ADMIN,
): Promise<Response> {
  const headers = new Headers(init.headers);
  if (token !== null) headers.set("authorization", `Bearer ${token}`);
  return h.request(path, { ...init, headers });
}

/** The JSON body of `res`, once its status is `status`. */
export async function json(res: Response, status = 200) {
  assert.equal(res.status, status, await res.clone().text());
  return await res.json();
}
