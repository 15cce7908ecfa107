/**
 * Ids of outbox messages, queued deliveries and dead letters.
 *
 * @module
 */

import { randomToken } from "../encoding.ts";

/** A time-ordered unique id: sortable by creation, with an unguessable suffix. */
export function newId(now: number): string {
  return `${now.toString(36).padStart(9, "0")}${randomToken(9)}`;
}
