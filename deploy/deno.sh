#!/bin/sh
# Runs the pinned Deno itself: installs it from the npm registry into $DENO_PREFIX once, then
# execs the real binary with the arguments given, so the process a service manager (or `kill`)
# signals IS Deno. Never start the relay through `npx deno` or the npm package's bin.cjs: both
# run Deno as a child and do not pass SIGTERM or SIGINT on, so the relay's graceful shutdown
# never runs and the orphaned relay keeps its port (README "Running in production").
#
#   deploy/deno.sh task start        # from the repository: the relay, as `deno task start`
#
# Needs Node.js and npm for the first run only; the npm package ships glibc Linux and macOS
# binaries. DENO_VERSION and DENO_PREFIX override the defaults below.
set -eu
V=${DENO_VERSION:-2.9.6}
P=${DENO_PREFIX:-${XDG_DATA_HOME:-$HOME/.local/share}/dav-push-relay/deno-$V}
case $(uname -m) in
  x86_64 | amd64) A=x64 ;;
  aarch64 | arm64) A=arm64 ;;
  *) echo "deno.sh: the deno npm package has no binary for $(uname -m)" >&2; exit 1 ;;
esac
case $(uname -s) in
  Linux) PKG="linux-$A-glibc" ;;
  Darwin) PKG="darwin-$A" ;;
  *) echo "deno.sh: the deno npm package has no binary for $(uname -s)" >&2; exit 1 ;;
esac
# The platform package's own binary: present whether or not npm ran install scripts.
B="$P/node_modules/@deno/$PKG/deno"
if ! "$B" --version 2>/dev/null | grep -q "^deno $V "; then
  npm install --prefix "$P" --ignore-scripts --no-save --no-package-lock --no-audit --no-fund \
    "deno@$V" >&2
fi
exec "$B" "$@"
