/**
 * Opening the socket of a new HTTP/1.1 connection (lib/transports/http1.ts): by name, or, under
 * the endpoint policy (lib/address_policy.ts), to an address just checked. The host is resolved
 * here, every address it has must be public, and the socket goes to one of those addresses
 * (`Deno.connect` to the IP), then TLS starts with `Deno.startTls` for the host name, so the
 * certificate is still verified for the name (and SNI carries it). The name is never handed to
 * the runtime to resolve again, so a name that now resolves to a private address is never
 * reached (DNS rebinding). A refusal throws `EndpointRefused` before any connection is made.
 *
 * @module
 */

import { checkHost, connectionRefusal, type HostCheck, type Resolver } from "../address_policy.ts";
import { untilAborted } from "../async/abort.ts";

/** Opens a TCP connection to an IP address the endpoint policy allowed. */
export type Connect = (address: { hostname: string; port: number }) => Promise<Deno.TcpConn>;

/** How the client applies the endpoint policy to new connections. */
export interface ConnectionPolicy {
  /** Resolves the endpoint's host (A and AAAA). */
  resolve: Resolver;
  /** Opens the TCP connection to a checked address (tests map one to a local server). */
  connect?: Connect;
}

/**
 * The endpoint policy let no connection be made, so nothing was sent. `refused`: the URL or an
 * address of its host is not allowed; `unresolved`: the name has no address now. The message
 * names the rule, never the endpoint or an address.
 */
export class EndpointRefused extends Error {
  override name = "EndpointRefused";
  constructor(readonly kind: "refused" | "unresolved", message: string) {
    super(message);
  }
}

/** Checks `url` against the endpoint policy; the addresses a connection may use. */
async function allowedAddresses(
  url: URL,
  lookup: (host: string) => Promise<HostCheck>,
): Promise<string[]> {
  const refusal = connectionRefusal(url);
  if (refusal) throw new EndpointRefused("refused", refusal);
  const check = await lookup(url.hostname);
  if (!check.ok) throw new EndpointRefused(check.kind, check.reason);
  return check.addresses;
}

/**
 * Checks `url` against the endpoint policy right before a request that resolves the name
 * itself (`fetch`): the addresses it has now must be public.
 *
 * @throws {EndpointRefused} when the URL or an address is not allowed, or there is none
 */
export async function checkEndpoint(
  url: URL,
  resolve: Resolver,
  signal: AbortSignal | undefined,
): Promise<void> {
  await untilAborted(allowedAddresses(url, (h) => checkHost(h, resolve)), signal);
}

const denoConnect: Connect = (address) => Deno.connect(address);

/**
 * Requests go out as soon as they are written: a request is one write, so Nagle's algorithm
 * gains nothing, and it would hold back any request written in more than one piece.
 */
function noDelay(tcp: Deno.TcpConn): Deno.TcpConn {
  try {
    tcp.setNoDelay(true);
  } catch { /* a socket that cannot: it still works */ }
  return tcp;
}

/** Settles with `work`, or throws `signal`'s reason first; a late resource is then closed. */
function abortable<T extends { close(): void }>(
  work: Promise<T>,
  signal: AbortSignal | undefined,
): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.then((r) => r.close(), () => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      work.then((r) => r.close(), () => {});
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (r) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) r.close();
        else resolve(r);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

export function isAlpnRefusal(err: unknown): boolean {
  return err instanceof Error && /NoApplicationProtocol|no.application.protocol/i.test(err.message);
}

/** Opens sockets for new connections, with TLS for `https:`. */
export type SocketOpener = (
  url: URL,
  hostname: string,
  port: number,
  signal: AbortSignal | undefined,
) => Promise<Deno.Conn>;

/** A socket opener: by name without `endpointPolicy`, to checked addresses with it. */
export function socketOpener(
  options: { caCerts?: string[] | undefined; endpointPolicy?: ConnectionPolicy | undefined },
): SocketOpener {
  const { caCerts, endpointPolicy } = options;
  /** TLS for the endpoint's host name (the certificate must name it), HTTP/1.1 only by ALPN. */
  const tls = (tcp: Deno.TcpConn, hostname: string) =>
    Deno.startTls(tcp, {
      hostname,
      alpnProtocols: ["http/1.1"],
      ...(caCerts ? { caCerts } : {}),
    });
  if (!endpointPolicy) {
    // `Deno.connectTls` (Deno Deploy allows no `Deno.connect` to port 443): its socket has no
    // `setNoDelay`, which matters little while every request is one write.
    return async (url, hostname, port, signal) =>
      url.protocol === "https:"
        ? await abortable<Deno.Conn>(
          Deno.connectTls({
            hostname,
            port,
            alpnProtocols: ["http/1.1"],
            ...(caCerts ? { caCerts } : {}),
          }),
          signal,
        )
        : noDelay(await abortable(Deno.connect({ hostname, port }), signal));
  }
  const policy = endpointPolicy;
  /** Host checks in progress: concurrent new connections to one host share one lookup. */
  const lookups = new Map<string, Promise<HostCheck>>();
  function lookup(host: string): Promise<HostCheck> {
    let check = lookups.get(host);
    if (!check) {
      check = checkHost(host, policy.resolve).finally(() => lookups.delete(host));
      lookups.set(host, check);
    }
    return check;
  }

  /** A TCP connection to the first checked address that answers (they are all public). */
  async function dial(addresses: string[], port: number, signal?: AbortSignal) {
    const connect = policy.connect ?? denoConnect;
    let failure: unknown;
    for (const hostname of addresses) {
      signal?.throwIfAborted();
      try {
        return await connect({ hostname, port });
      } catch (err) {
        failure = err;
      }
    }
    throw failure;
  }

  /** The socket for a new connection to a checked address. */
  async function openSocket(
    url: URL,
    hostname: string,
    port: number,
    signal: AbortSignal | undefined,
  ): Promise<Deno.Conn> {
    // connectionRefusal admits https: only, so this is always TLS.
    const addresses = await untilAborted(allowedAddresses(url, lookup), signal);
    const tcp = noDelay(await abortable(dial(addresses, port, signal), signal));
    // TLS for the endpoint's host name, not for the address.
    return await abortable<Deno.Conn>(tls(tcp, hostname), signal);
  }

  return openSocket;
}
