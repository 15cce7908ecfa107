/**
 * The bridge's WebDAV-Push registrations in its own Deno KV (README, "Push for DAVx⁵ on
 * Radicale (or any CalDAV server)"), so they survive restarts.
 *
 * A registration URL is a capability, so neither it nor the relay's client-data is stored in
 * the clear: a registration's key is an HMAC of its id under `BRIDGE_SECRET`, its id and its
 * client-data are sealed (AES-256-GCM) under a key derived from the same secret, and the push
 * resource appears only as an HMAC in the index that makes re-registration idempotent.
 *
 * | key | value |
 * |---|---|
 * | `["bridge-secret"]` | the generated secret, when `BRIDGE_SECRET` is unset |
 * | `["wp", key]` | {@linkcode StoredRegistration} |
 * | `["wp-res", topic, resourceMac]` | key: one registration per push resource and collection |
 * | `["wp-col", topic, key]` | null: the registrations of a collection |
 * | `["wp-client", relayClientId, key]` | null: the registrations sharing a relay client |
 * | `["wp-exp", expires, key]` | null: the expiry sweep |
 *
 * @module
 */

import { base64Url } from "./config.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function fromB64url(text: string): Uint8Array<ArrayBuffer> {
  const bin = atob(text.replaceAll("-", "+").replaceAll("_", "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** A registration as stored (no id, endpoint or client-data in the clear). */
export interface StoredRegistration {
  /** The registration id, sealed. */
  sealedId: string;
  /** The watched collection's topic. */
  topic: string;
  /** The push resource's HMAC: its key in the `wp-res` index. */
  resourceMac: string;
  /** The relay's client-id of the push subscription (not a secret: it names no endpoint). */
  relayClientId: string;
  /** The relay's client-data, sealed. */
  sealedClientData: string;
  /** The relay's Web Push transport-uri it was registered on. */
  transportUri: string;
  /** Epoch ms of the granted expiry. */
  expires: number;
  createdAt: number;
  updatedAt: number;
}

/** A registration read back, with what the seals hold. */
export interface Registration extends StoredRegistration {
  key: string;
  id: string;
  clientData: string;
  versionstamp: string;
}

/** What {@linkcode PushStore.save} writes. */
export interface SaveRegistration {
  id: string;
  pushResource: string;
  topic: string;
  relayClientId: string;
  clientData: string;
  transportUri: string;
  expires: number;
  now: number;
  /** The record this replaces, as read (its versionstamp is checked). */
  previous?: Registration;
}

/** Opens the store on `kv`, with `BRIDGE_SECRET` or the one kept in KV (generated once). */
export async function openPushStore(kv: Deno.Kv, secret?: string): Promise<PushStore> {
  let text = secret;
  while (text === undefined) {
    const kept = await kv.get<string>(["bridge-secret"]);
    if (kept.value !== null) {
      text = kept.value;
      break;
    }
    const fresh = base64Url(crypto.getRandomValues(new Uint8Array(32)));
    const res = await kv.atomic().check(kept).set(["bridge-secret"], fresh).commit();
    if (res.ok) text = fresh;
  }
  const raw = await crypto.subtle.importKey(
    "raw",
    fromB64url(text),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const sealKey = await crypto.subtle.importKey(
    "raw",
    new Uint8Array(await crypto.subtle.sign("HMAC", raw, encoder.encode("seal"))),
    { name: "AES-GCM" },
    false,
    ["encrypt", "decrypt"],
  );
  return new PushStore(kv, raw, sealKey);
}

export class PushStore {
  constructor(
    private readonly kv: Deno.Kv,
    private readonly macKey: CryptoKey,
    private readonly sealKey: CryptoKey,
  ) {}

  private async mac(label: string, value: string): Promise<string> {
    const tag = await crypto.subtle.sign("HMAC", this.macKey, encoder.encode(`${label}\0${value}`));
    return base64Url(new Uint8Array(tag)).slice(0, 32);
  }

  private async seal(text: string): Promise<string> {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv },
      this.sealKey,
      encoder.encode(text),
    );
    const out = new Uint8Array(12 + ct.byteLength);
    out.set(iv);
    out.set(new Uint8Array(ct), 12);
    return base64Url(out);
  }

  private async unseal(sealed: string): Promise<string> {
    const bytes = fromB64url(sealed);
    const pt = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: bytes.slice(0, 12) },
      this.sealKey,
      bytes.slice(12),
    );
    return decoder.decode(pt);
  }

  private async read(key: string): Promise<Registration | null> {
    const e = await this.kv.get<StoredRegistration>(["wp", key]);
    if (e.value === null) return null;
    return {
      ...e.value,
      key,
      id: await this.unseal(e.value.sealedId),
      clientData: await this.unseal(e.value.sealedClientData),
      versionstamp: e.versionstamp,
    };
  }

  /** The registration with this id (from its registration URL), if any. */
  async byId(id: string): Promise<Registration | null> {
    const reg = await this.read(await this.mac("id", id));
    // A key collision of another id is not this registration.
    return reg && reg.id === id ? reg : null;
  }

  /** The registration of this push resource on the collection with this topic, if any. */
  async byResource(topic: string, pushResource: string): Promise<Registration | null> {
    const idx = await this.kv.get<string>(["wp-res", topic, await this.mac("res", pushResource)]);
    return idx.value === null ? null : await this.read(idx.value);
  }

  /** Every registration of a collection. */
  async ofCollection(topic: string): Promise<Registration[]> {
    const out: Registration[] = [];
    for await (const e of this.kv.list({ prefix: ["wp-col", topic] })) {
      const reg = await this.read(e.key[2] as string);
      if (reg) out.push(reg);
    }
    return out;
  }

  /** How many registrations use a relay client. */
  async usersOf(relayClientId: string): Promise<number> {
    let n = 0;
    for await (const _ of this.kv.list({ prefix: ["wp-client", relayClientId] })) n++;
    return n;
  }

  /** The registrations whose expiry is at or before `now`. */
  async expired(now: number): Promise<Registration[]> {
    const out: Registration[] = [];
    for await (
      const e of this.kv.list({ start: ["wp-exp"], end: ["wp-exp", now + 1] })
    ) {
      const reg = await this.read(e.key[2] as string);
      if (reg) out.push(reg);
    }
    return out;
  }

  /**
   * Creates or replaces a registration with its indexes in one atomic. Returns false (and
   * writes nothing) when another write got there first: read again and retry.
   */
  async save(r: SaveRegistration): Promise<boolean> {
    const key = await this.mac("id", r.id);
    const resourceMac = await this.mac("res", r.pushResource);
    const resKey = ["wp-res", r.topic, resourceMac];
    const value: StoredRegistration = {
      sealedId: await this.seal(r.id),
      topic: r.topic,
      resourceMac,
      relayClientId: r.relayClientId,
      sealedClientData: await this.seal(r.clientData),
      transportUri: r.transportUri,
      expires: r.expires,
      createdAt: r.previous?.createdAt ?? r.now,
      updatedAt: r.now,
    };
    const op = this.kv.atomic();
    const prev = r.previous;
    if (prev) {
      op.check({ key: ["wp", prev.key], versionstamp: prev.versionstamp });
      op.delete(["wp-client", prev.relayClientId, prev.key]);
      op.delete(["wp-exp", prev.expires, prev.key]);
    } else {
      op.check({ key: resKey, versionstamp: null });
    }
    op.set(["wp", key], value)
      .set(resKey, key)
      .set(["wp-col", r.topic, key], null)
      .set(["wp-client", r.relayClientId, key], null)
      .set(["wp-exp", r.expires, key], null);
    return (await op.commit()).ok;
  }

  /**
   * Removes a registration and its indexes, unless it changed since it was read (then the
   * newer record stays). Returns whether it was removed.
   */
  async remove(reg: Registration): Promise<boolean> {
    const res = await this.kv.atomic()
      .check({ key: ["wp", reg.key], versionstamp: reg.versionstamp })
      .delete(["wp", reg.key])
      .delete(["wp-res", reg.topic, reg.resourceMac])
      .delete(["wp-col", reg.topic, reg.key])
      .delete(["wp-client", reg.relayClientId, reg.key])
      .delete(["wp-exp", reg.expires, reg.key])
      .commit();
    return res.ok;
  }
}
