/**
 * Throwaway credentials for the FCM and APNs tests, made fresh with Web Crypto on every run:
 * a Google service-account key file and an Apple `.p8` signing key, each with the public key
 * the mocks verify JWTs with.
 *
 * @module
 */

function toPem(label: string, der: ArrayBuffer): string {
  const b64 = btoa(String.fromCharCode(...new Uint8Array(der)));
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

export interface TestServiceAccount {
  /** The key file's JSON, as `RELAY_FCM_SERVICE_ACCOUNT` holds it, for a given `token_uri`. */
  json(tokenUri: string): string;
  projectId: string;
  clientEmail: string;
  privateKeyId: string;
  privateKeyPem: string;
  publicKey: CryptoKey;
}

/** A service-account key file shaped like the one the Firebase console downloads. */
export async function makeServiceAccount(
  projectId = "relay-test-1a2b3",
): Promise<TestServiceAccount> {
  const pair = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  const privateKeyPem = toPem(
    "PRIVATE KEY",
    await crypto.subtle.exportKey("pkcs8", pair.privateKey),
  );
  const clientEmail = `firebase-adminsdk-x1y2z@${projectId}.iam.gserviceaccount.com`;
  const privateKeyId = "0123456789abcdef0123456789abcdef01234567";
  const json = (tokenUri: string) =>
    JSON.stringify(
      {
        type: "service_account",
        project_id: projectId,
        private_key_id: privateKeyId,
        private_key: privateKeyPem,
        client_email: clientEmail,
        client_id: "104250912345678901234",
        auth_uri: "https://accounts.google.com/o/oauth2/auth",
        token_uri: tokenUri,
        auth_provider_x509_cert_url: "https://www.googleapis.com/oauth2/v1/certs",
        client_x509_cert_url: "https://www.googleapis.com/robot/v1/metadata/x509/test",
        universe_domain: "googleapis.com",
      },
      null,
      2,
    );
  return {
    json,
    projectId,
    clientEmail,
    privateKeyId,
    privateKeyPem,
    publicKey: pair.publicKey,
  };
}

export interface TestApnsKey {
  /** The `.p8` file's content (PKCS#8 PEM). */
  pem: string;
  keyId: string;
  teamId: string;
  publicKey: CryptoKey;
}

/** An APNs auth key like the `.p8` Apple's developer portal issues. */
export async function makeApnsKey(): Promise<TestApnsKey> {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const pem = toPem("PRIVATE KEY", await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  return { pem, keyId: "ABC123DEFG", teamId: "DEF123GHIJ", publicKey: pair.publicKey };
}
