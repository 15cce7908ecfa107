/**
 * The start-up self-test of libcrypto through FFI (lib/crypto/p256_ffi.ts): before the relay
 * encrypts with it, it must reproduce RFC 8291 Appendix A byte for byte (key import, ECDH,
 * HKDF, AES-GCM) and agree on a fresh ECDH secret with `node:crypto`, and refuse a point off
 * the curve. A wrong binding (another ABI, another OpenSSL) fails here, not on a device.
 *
 * @module
 */

import { createECDH } from "node:crypto";
import { bytesEqual as equal, decodeBase64Url, utf8, viewBytes as bytes } from "../encoding.ts";
import { sealRecord } from "./ece_record.ts";
import type { Libcrypto } from "./p256_ffi.ts";

/** RFC 8291 Appendix A ("Intermediate Values for Encryption"), base64url as printed there. */
export const RFC8291_APPENDIX_A = {
  plaintext: "When I grow up, I want to be a watermelon",
  asPublic:
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8",
  asPrivate: "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw",
  uaPublic:
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
  uaPrivate: "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94",
  authSecret: "BTBZMqHH6r4Tts7J_aSIgg",
  salt: "DGv6ra1nlYgDCS1FRnbzlw",
  body: "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
    "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
    "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
};

/** Null when libcrypto passes; else what failed. */
export function selfTest(lib: Libcrypto): string | null {
  const v = RFC8291_APPENDIX_A;
  const uaPublic = decodeBase64Url(v.uaPublic);
  const pair = lib.importKeyPair(decodeBase64Url(v.asPublic), decodeBase64Url(v.asPrivate));
  const body = sealRecord(lib.symmetric, {
    ecdhSecret: pair.agreeSync(uaPublic),
    uaPublic,
    asPublic: pair.publicKey,
    authSecret: decodeBase64Url(v.authSecret),
    salt: decodeBase64Url(v.salt),
    plaintext: utf8(v.plaintext),
  });
  if (!equal(body, decodeBase64Url(v.body))) return "RFC 8291 Appendix A body differs";

  // A fresh pair against an independent implementation, both ways.
  const peer = createECDH("prime256v1");
  const peerPublic = bytes(peer.generateKeys());
  const fresh = lib.keyPair();
  const ours = fresh.agreeSync(peerPublic);
  if (!equal(ours, bytes(peer.computeSecret(fresh.publicKey)))) {
    return "ECDH secret differs from node:crypto's";
  }

  const offCurve = uaPublic.slice();
  offCurve[64] = offCurve[64]! ^ 1;
  const probe = lib.keyPair();
  try {
    probe.agreeSync(offCurve);
    return "a point off the curve was accepted";
  } catch (err) {
    if (!(err instanceof TypeError)) return "a point off the curve failed oddly";
  }
  return null;
}
