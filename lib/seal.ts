/**
 * Client-data sealing (CC/CD 70025 §8.3 SHOULD, §6.2.2.3): the string an application server
 * forwards is AES-256-GCM ciphertext under a key derived from `RELAY_SECRET`, so the server
 * learns nothing about the push endpoint or token and cannot forge or alter it. Also the
 * keyed topic hash used as Web Push `Topic` / collapse key, which reveals nothing about the
 * DAV topic.
 *
 * @module
 */

import {
  concat,
  decodeBase64Url,
  encodeBase64Url,
  fromUtf8,
  randomBytes,
  utf8,
} from "./encoding.ts";
import type { TransportId } from "./transports/types.ts";

/** What a client-data string carries: the stable client handle and its transport. */
export interface ClientDataClaims {
  clientId: string;
  transport: TransportId;
}

const VERSION = 1;
const AAD = utf8("dav-push-relay client-data v1");

export interface Sealer {
  /** Seals claims into an opaque base64url client-data string. */
  seal(claims: ClientDataClaims): Promise<string>;
  /** Opens client-data; null when it is forged, tampered, truncated or not ours. */
  open(clientData: string): Promise<ClientDataClaims | null>;
  /**
   * The keyed hash of (app, topic): 32 base64url characters (24 bytes of HMAC-SHA-256), so it
   * fits RFC 8030 §5.4's Topic limit and reveals nothing about the topic.
   */
  topicHash(app: string, topic: string): Promise<string>;
  /** HMAC-SHA-256 of `value` under a key for `purpose`, base64url. */
  mac(purpose: string, value: string): Promise<string>;
}

async function hkdfKey(
  secret: Uint8Array,
  info: string,
  algorithm: AesKeyGenParams | HmacImportParams,
  usages: KeyUsage[],
): Promise<CryptoKey> {
  const base = await crypto.subtle.importKey("raw", secret as BufferSource, "HKDF", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: utf8(info) as BufferSource },
    base,
    256,
  );
  return crypto.subtle.importKey("raw", bits, algorithm, false, usages);
}

const TRANSPORT_CODES: Record<TransportId, string> = { "web-push": "w", fcm: "f", apns: "a" };
const CODE_TRANSPORTS: Record<string, TransportId> = { w: "web-push", f: "fcm", a: "apns" };

/** Topic hashes one sealer remembers at most (a topic is at most 256 characters). */
const MAX_TOPIC_HASHES = 10_000;

/** Derives the sealing keys from the relay secret (32 bytes or more). */
export async function createSealer(secret: Uint8Array): Promise<Sealer> {
  if (secret.length < 32) {
    throw new RangeError(
      `Cannot create sealer: secret must be 32 bytes or more, got ${secret.length}`,
    );
  }
  const aead = await hkdfKey(
    secret,
    "dav-push-relay/client-data",
    { name: "AES-GCM", length: 256 },
    [
      "encrypt",
      "decrypt",
    ],
  );
  const macKeys = new Map<string, Promise<CryptoKey>>();
  const topicHashes = new Map<string, string>();
  const macKey = (purpose: string) => {
    let key = macKeys.get(purpose);
    if (!key) {
      key = hkdfKey(secret, `dav-push-relay/mac/${purpose}`, { name: "HMAC", hash: "SHA-256" }, [
        "sign",
      ]);
      macKeys.set(purpose, key);
    }
    return key;
  };
  const mac = async (purpose: string, value: string) =>
    encodeBase64Url(
      new Uint8Array(
        await crypto.subtle.sign("HMAC", await macKey(purpose), utf8(value) as BufferSource),
      ),
    );

  return {
    async seal(claims) {
      const iv = randomBytes(12);
      const plain = utf8(
        JSON.stringify({ c: claims.clientId, t: TRANSPORT_CODES[claims.transport] }),
      );
      const ct = await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: iv as BufferSource, additionalData: AAD as BufferSource },
        aead,
        plain as BufferSource,
      );
      return encodeBase64Url(concat(new Uint8Array([VERSION]), iv, new Uint8Array(ct)));
    },
    async open(clientData) {
      if (typeof clientData !== "string" || clientData.length > 1024) return null;
      let bytes: Uint8Array;
      try {
        bytes = decodeBase64Url(clientData);
      } catch {
        return null;
      }
      if (bytes.length < 1 + 12 + 16 || bytes[0] !== VERSION) return null;
      let plain: ArrayBuffer;
      try {
        plain = await crypto.subtle.decrypt(
          {
            name: "AES-GCM",
            iv: bytes.subarray(1, 13) as BufferSource,
            additionalData: AAD as BufferSource,
          },
          aead,
          bytes.subarray(13) as BufferSource,
        );
      } catch {
        return null;
      }
      try {
        const parsed = JSON.parse(fromUtf8(new Uint8Array(plain)));
        const transport = CODE_TRANSPORTS[parsed?.t];
        if (typeof parsed?.c !== "string" || !transport) return null;
        return { clientId: parsed.c, transport };
      } catch {
        return null;
      }
    },
    async topicHash(app, topic) {
      // Each message's fan-out needs its topic's hash; an HMAC on Web Crypto costs tens of
      // microseconds in thread hand-offs, so recent topics' hashes are remembered.
      const key = `${app}\u0000${topic}`;
      let hash = topicHashes.get(key);
      if (hash === undefined) {
        hash = (await mac("topic", key)).slice(0, 32);
        if (topicHashes.size >= MAX_TOPIC_HASHES) topicHashes.clear();
        topicHashes.set(key, hash);
      }
      return hash;
    },
    mac,
  };
}
