/**
 * Module worker for the crypto floor (bench/crypto_floor.ts): posts `0` when loaded, then
 * answers each `{inFlight, ms}` with the bare pipeline's rate in this worker.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { measureFloorHere } from "./crypto_floor.ts";

self.onmessage = async (e: MessageEvent<{ inFlight: number; ms: number }>) => {
  self.postMessage(await measureFloorHere(e.data.inFlight, e.data.ms));
};
self.postMessage(0);
