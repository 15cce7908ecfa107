#!/bin/sh
# Regenerates the throwaway TLS fixtures of the APNs mock (tests/mocks/apns_mock.ts):
# a CA and a leaf for 127.0.0.1/localhost signed by it, valid for 100 years.
# Deno (rustls) refuses a self-signed leaf that is its own CA (CaUsedAsEndEntity), so the
# tests trust ca.pem through Deno.createHttpClient({ caCerts }) and the server presents
# leaf.pem. The CA key is thrown away: regenerate everything together.
# These keys protect nothing; never use them outside tests.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 36500 \
  -subj "/CN=DAV-Push Relay test CA (throwaway)" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key
openssl req -new -key leaf.key -subj "/CN=127.0.0.1" -out "$tmp/leaf.csr"
cat >"$tmp/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EXT
openssl x509 -req -in "$tmp/leaf.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days 36500 -sha256 -extfile "$tmp/leaf.ext" -out leaf.pem
openssl x509 -in leaf.pem -noout -subject -enddate -ext subjectAltName
