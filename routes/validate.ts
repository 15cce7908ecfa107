/**
 * Validation at the edge: the gateway protocol's untrusted JSON into typed values, or a
 * `RelayError` with the code the README names ("The gateway protocol"). `lib/` only ever sees
 * what passes here.
 *
 * @module
 */

import type { PushMessage } from "../lib/model.ts";
import { RelayError } from "../lib/errors.ts";
import { formatRfc3339, parseRfc3339 } from "../lib/time.ts";
import { isPlainObject } from "./body.ts";

export const MAX_TOPICS = 1000;
export const MAX_MESSAGES = 1000;
export const MAX_TOPIC_CHARS = 256;
export const MAX_CLIENT_ID_CHARS = 256;
/** README "The gateway protocol": `client-id` may be an array of at most this many. */
const MAX_CLIENT_IDS = 100;
/** README "The gateway protocol": the longest `sync-token`, in characters. */
const MAX_SYNC_TOKEN_CHARS = 1024;

// C0, DEL and C1 control characters.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** A topic is 1 to 256 characters, no control characters (and well-formed Unicode). */
export function isValidTopic(topic: string): boolean {
  if (topic.length === 0 || CONTROL.test(topic) || !topic.isWellFormed()) return false;
  let chars = 0;
  for (const _ of topic) if (++chars > MAX_TOPIC_CHARS) return false;
  return true;
}

function invalidRequest(message: string): RelayError {
  return new RelayError(400, "invalid-request", message);
}

function invalidTopicsError(topics: string[]): RelayError {
  return new RelayError(400, "invalid-topics", `${topics.length} topic(s) are invalid`, {
    "invalid-topics": [...new Set(topics)],
  });
}

function timestamp(value: unknown, name: string): number {
  if (typeof value !== "string") throw invalidRequest(`${name} must be an RFC 3339 string`);
  const ms = parseRfc3339(value);
  if (ms === null) {
    throw invalidRequest(
      `${name} is not an RFC 3339 date-time: ${JSON.stringify(value.slice(0, 64))}`,
    );
  }
  return ms;
}

export interface ParsedSubscribe {
  topics: string[];
  transportUri: string;
  clientData: string;
  expires: number;
}

/** Parses the value of `push-subscribe` (CC/CD 70025 §6.1.2). */
export function parsePushSubscribe(value: unknown): ParsedSubscribe {
  if (!isPlainObject(value)) throw invalidRequest("push-subscribe must be an object");
  const topics = value.topics;
  if (!Array.isArray(topics) || !topics.every((t) => typeof t === "string")) {
    throw invalidRequest("topics must be an array of strings");
  }
  if (topics.length < 1 || topics.length > MAX_TOPICS) {
    throw invalidRequest(`topics must hold 1 to ${MAX_TOPICS} entries, got ${topics.length}`);
  }
  // CC/CD 70025's example says "transport", its grammar "selected-transport": both are read.
  const selected = value["selected-transport"] ?? value.transport;
  if (!isPlainObject(selected)) throw invalidRequest("selected-transport must be an object");
  const transportUri = selected["transport-uri"];
  const clientData = selected["client-data"];
  if (typeof transportUri !== "string" || transportUri.length === 0) {
    throw invalidRequest("selected-transport.transport-uri must be a string");
  }
  if (typeof clientData !== "string" || clientData.length === 0) {
    throw invalidRequest("selected-transport.client-data must be a string");
  }
  const expires = timestamp(value.expires, "expires");
  const bad = (topics as string[]).filter((t) => !isValidTopic(t));
  if (bad.length > 0) throw invalidTopicsError(bad);
  return { topics: topics as string[], transportUri, clientData, expires };
}

function isClientId(v: unknown): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= MAX_CLIENT_ID_CHARS;
}

/**
 * A message's `client-id` (CC/CD 70025 §7.1): one string, or (README "The gateway protocol")
 * an array of at most 100, none of which is notified. Duplicates are dropped; an empty array
 * names nobody, and an array of one is that one string.
 */
function clientIds(value: unknown, i: number): string | string[] | undefined {
  if (value === undefined) return undefined;
  if (isClientId(value)) return value;
  if (!Array.isArray(value)) {
    throw invalidRequest(
      `message ${i}: client-id must be a string of 1 to ${MAX_CLIENT_ID_CHARS} characters, or an array of at most ${MAX_CLIENT_IDS} of them`,
    );
  }
  if (value.length > MAX_CLIENT_IDS) {
    throw invalidRequest(
      `message ${i}: client-id holds ${value.length} entries, at most ${MAX_CLIENT_IDS} are allowed`,
    );
  }
  if (!value.every(isClientId)) {
    throw invalidRequest(
      `message ${i}: every client-id must be a string of 1 to ${MAX_CLIENT_ID_CHARS} characters`,
    );
  }
  const distinct = [...new Set(value as string[])];
  if (distinct.length === 0) return undefined;
  return distinct.length === 1 ? distinct[0] : distinct;
}

/** README "The gateway protocol": `sync-token`, a string of at most 1024 characters. */
function syncToken(value: unknown, i: number): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw invalidRequest(`message ${i}: sync-token must be a string`);
  let chars = 0;
  for (const _ of value) {
    if (++chars > MAX_SYNC_TOKEN_CHARS) {
      throw invalidRequest(
        `message ${i}: sync-token is longer than ${MAX_SYNC_TOKEN_CHARS} characters`,
      );
    }
  }
  // An empty token says nothing: the message is sent as if it had none.
  return value === "" ? undefined : value;
}

/**
 * Parses the value of `push`: `{"messages": [...]}` (CC/CD 70025's example, OX) or a bare array
 * (its grammar). A missing priority is 50 (§6.1.3 SHOULD); a missing timestamp is the time of
 * receipt.
 */
export function parsePushMessages(value: unknown, now: number): PushMessage[] {
  const list = Array.isArray(value) ? value : isPlainObject(value) ? value.messages : undefined;
  if (!Array.isArray(list)) {
    throw invalidRequest('push must be an array of messages or {"messages": [...]}');
  }
  if (list.length < 1 || list.length > MAX_MESSAGES) {
    throw invalidRequest(`push must hold 1 to ${MAX_MESSAGES} messages, got ${list.length}`);
  }
  const messages: PushMessage[] = [];
  const bad: string[] = [];
  list.forEach((m, i) => {
    if (!isPlainObject(m)) throw invalidRequest(`message ${i} must be an object`);
    if (typeof m.topic !== "string") throw invalidRequest(`message ${i}: topic must be a string`);
    if (!isValidTopic(m.topic)) bad.push(m.topic);
    let priority = 50;
    if (m.priority !== undefined) {
      if (
        typeof m.priority !== "number" || !Number.isInteger(m.priority) || m.priority < 0 ||
        m.priority > 100
      ) {
        throw invalidRequest(`message ${i}: priority must be an integer from 0 to 100`);
      }
      priority = m.priority;
    }
    const ts = m.timestamp === undefined ? now : timestamp(m.timestamp, `message ${i}: timestamp`);
    const clientId = clientIds(m["client-id"], i);
    const token = syncToken(m["sync-token"], i);
    messages.push({
      topic: m.topic,
      priority,
      timestamp: formatRfc3339(ts),
      ...(clientId !== undefined ? { clientId } : {}),
      ...(token !== undefined ? { syncToken: token } : {}),
    });
  });
  if (bad.length > 0) throw invalidTopicsError(bad);
  return messages;
}
