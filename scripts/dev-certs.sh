#!/usr/bin/env bash
# Certificates for trying Keystone with TLS on a laptop (docker-compose.tls.yml), made with
# openssl: a CA, a server certificate for localhost and the Compose replicas, and a client
# certificate whose SAN is a SPIFFE ID, for a service client that authenticates by it.
#   scripts/dev-certs.sh [DIR]          # default: ./certs
# For trying things only: the keys are unencrypted and readable by anyone (the container runs
# as an unprivileged user that must read them). In production, cert-manager or your PKI makes
# them (see docs/operations.md#tls).
set -euo pipefail
dir="${1:-certs}"
mkdir -p "$dir"
cd "$dir"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Keystone dev CA" -keyout ca.key -out ca.crt \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  2>/dev/null

issue() { # issue NAME SUBJECT EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
issue server "/CN=localhost" "subjectAltName=DNS:localhost,DNS:keystone-a,DNS:keystone-b,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue payments "/O=Example/CN=payments" "subjectAltName=URI:spiffe://example.org/ns/payments/sa/api
extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 0644 ./*.key
echo "wrote $(pwd): ca.crt (trust it), server.crt/.key (Keystone's), payments.crt/.key (a client's)"
