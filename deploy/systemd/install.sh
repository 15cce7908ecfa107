#!/bin/sh
# Installs (or updates) the relay as the systemd service dav-push-relay, from the checkout this
# script is in. Run as root:  deploy/systemd/install.sh
#
# - a system user davpush;
# - the pinned Deno from npm under $BASE/deno (deploy/deno.sh; Node.js and npm needed here);
# - the relay's dependencies, installed by that same Deno into the checkout and DENO_DIR
#   (`deno install --frozen`: deno.lock must match), so a start never reaches the registry;
# - the unit, with this checkout's path, and /etc/dav-push-relay/env from env.example if absent.
# Then edit /etc/dav-push-relay/env and run: systemctl enable --now dav-push-relay
set -eu
APP=$(cd "$(dirname "$0")/../.." && pwd)
BASE=${BASE:-/opt/dav-push-relay}
UNIT=/etc/systemd/system/dav-push-relay.service
CACHE=/var/cache/dav-push-relay

id -u davpush >/dev/null 2>&1 ||
  useradd --system --home-dir /var/lib/dav-push-relay --shell /usr/sbin/nologin davpush

# Installs Deno if needed and prints its version; `exec` in deno.sh keeps this a plain run.
DENO_PREFIX="$BASE/deno" "$APP/deploy/deno.sh" --version
case $(uname -m) in x86_64 | amd64) A=x64 ;; *) A=arm64 ;; esac
DENO="$BASE/deno/node_modules/@deno/linux-$A-glibc/deno"

install -d -m 0755 "$CACHE"
(cd "$APP" && DENO_DIR="$CACHE/deno" "$DENO" install --frozen --entrypoint main.ts \
  lib/crypto/ece_worker.ts)

sed -e "s#/opt/dav-push-relay/app#$APP#g" \
  -e "s#/opt/dav-push-relay/deno/node_modules/@deno/linux-x64-glibc/deno#$DENO#" \
  "$APP/deploy/systemd/dav-push-relay.service" >"$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"

install -d -m 0750 -g davpush /etc/dav-push-relay
[ -e /etc/dav-push-relay/env ] ||
  install -m 0640 -g davpush "$APP/deploy/systemd/env.example" /etc/dav-push-relay/env

systemctl daemon-reload
echo "Installed. Edit /etc/dav-push-relay/env, then: systemctl enable --now dav-push-relay"
