/**
 * The OpenSSL limit: what this machine's OpenSSL does of the full RFC 8291 encryption (a fresh
 * P-256 key pair, ECDH, 3 × HKDF, AES-GCM per message) with every core, measured as one Node.js
 * process per core (bench/openssl_limit.mjs, `createECDH`, the cheapest node:crypto API), all
 * at once. No relay delivers faster than its machine encrypts; the fan-out figures are given
 * as a fraction of this, measured in the same run.
 *
 * @module
 */

export interface OpensslLimit {
  /** Messages/s of all processes together. */
  rate: number;
  /** Each process's messages/s. */
  processes: number[];
  /** CPU microseconds per message (mean over the processes). */
  cpuUs: number;
}

/** Runs `processes` encryption loops at once for `ms` each and adds up their rates. */
export async function opensslLimit(
  ms: number,
  processes = navigator.hardwareConcurrency,
): Promise<OpensslLimit> {
  const script = new URL("openssl_limit.mjs", import.meta.url).pathname;
  const runs = await Promise.all(Array.from({ length: processes }, async () => {
    const out = await new Deno.Command("node", {
      args: [script, String(ms)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`OpenSSL limit run failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return JSON.parse(new TextDecoder().decode(out.stdout)) as { rate: number; cpuUs: number };
  }));
  return {
    rate: runs.reduce((a, r) => a + r.rate, 0),
    processes: runs.map((r) => r.rate),
    cpuUs: runs.reduce((a, r) => a + r.cpuUs, 0) / runs.length,
  };
}
