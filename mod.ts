/**
 * The entry points of this repository. It holds two products: the relay (a CC/CD 70025 Push
 * Gateway) and a toolkit for application servers, with a CalDAV bridge built on the toolkit.
 *
 * - `main.ts` runs the relay (`deno task start`).
 * - `relay.ts` exports `createRelay`, to embed the relay in another Deno program.
 * - `dav/mod.ts` is the toolkit for application-server authors: DAV-Push discovery and
 *   subscribe XML, the gateway client, XML hygiene. This module re-exports it, so
 *   `import { GatewayClient } from "./mod.ts"` works as well.
 * - `bridge/main.ts` runs the CalDAV bridge (`deno task bridge`), an application server that
 *   gives an existing CalDAV server DAV-Push by polling it.
 *
 * @module
 */

export * from "./dav/mod.ts";
