/**
 * The Google service account that FCM HTTP v1 authenticates with: `RELAY_FCM_SERVICE_ACCOUNT`,
 * the content of the key file the Firebase console downloads, parsed and checked.
 *
 * @module
 */

import { includesBytes, isCompleteDerSequence, pemToDer } from "../crypto/jwt.ts";

const DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token";

/** The parts of a Google service-account key file the relay uses. */
export interface ServiceAccount {
  projectId: string;
  clientEmail: string;
  /** PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). */
  privateKey: string;
  /** `private_key_id`, sent as the assertion's `kid` when present. */
  privateKeyId?: string;
  /** Where the assertion is exchanged for an access token. */
  tokenUri: string;
}

const RSA_ENCRYPTION_OID = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/**
 * Parses and checks `RELAY_FCM_SERVICE_ACCOUNT` (the content of the key file the Firebase
 * console downloads).
 *
 * @throws {Error} whose message starts with `RELAY_FCM_SERVICE_ACCOUNT` and says what is
 * wrong; it never repeats the JSON or the key
 */
export function parseServiceAccount(json: string): ServiceAccount {
  const fail = (what: string): never => {
    throw new Error(`RELAY_FCM_SERVICE_ACCOUNT ${what}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    // JSON.parse messages quote the input, which holds the private key: never pass them on.
    fail("is not valid JSON: set it to the whole content of the service-account key file");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    fail("must be a JSON object (the service-account key file)");
  }
  const obj = raw as Record<string, unknown>;
  if (obj.type !== undefined && obj.type !== "service_account") {
    fail('has a "type" other than "service_account": download a service-account key');
  }
  const text = (name: string): string => {
    const v = obj[name];
    if (typeof v !== "string" || v.trim() === "") fail(`lacks "${name}" (a non-empty string)`);
    return (v as string).trim();
  };
  const projectId = text("project_id");
  if (!/^[A-Za-z0-9.:-]{1,100}$/.test(projectId)) {
    fail('has a "project_id" that is not a Google Cloud project id');
  }
  const clientEmail = text("client_email");
  if (!clientEmail.includes("@")) fail('has a "client_email" that is not an e-mail address');
  const privateKey = text("private_key").replaceAll("\\n", "\n");
  if (!/-----BEGIN PRIVATE KEY-----/.test(privateKey)) {
    fail('has a "private_key" that is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)');
  }
  let der: Uint8Array = new Uint8Array();
  try {
    der = pemToDer(privateKey);
  } catch {
    fail('has a "private_key" whose PEM body is not base64');
  }
  if (!isCompleteDerSequence(der) || !includesBytes(der.subarray(0, 32), RSA_ENCRYPTION_OID)) {
    fail('has a "private_key" that is not a complete PKCS#8 RSA key');
  }
  let tokenUri = DEFAULT_TOKEN_URI;
  if (obj.token_uri !== undefined) {
    tokenUri = text("token_uri");
    let url: URL | undefined;
    try {
      url = new URL(tokenUri);
    } catch {
      fail('has a "token_uri" that is not a URL');
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url!.hostname);
    if (url!.protocol !== "https:" && !(url!.protocol === "http:" && loopback)) {
      fail('has a "token_uri" that is not https: (http: is allowed for loopback mocks only)');
    }
  }
  const account: ServiceAccount = { projectId, clientEmail, privateKey, tokenUri };
  if (typeof obj.private_key_id === "string" && obj.private_key_id !== "") {
    account.privateKeyId = obj.private_key_id;
  }
  return account;
}
