/**
 * Module worker for the crypto floor (bench/crypto_floor.ts): posts `0` when loaded, then
 * answers each `{inFlight, ms, pipeline}` with that pipeline's rate in this worker.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { measureFloorHere, type Pipeline } from "./crypto_floor.ts";

self.onmessage = async (e: MessageEvent<{ inFlight: number; ms: number; pipeline: Pipeline }>) => {
  self.postMessage(await measureFloorHere(e.data.inFlight, e.data.ms, e.data.pipeline));
};
self.postMessage(0);
