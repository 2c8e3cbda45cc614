#!/usr/bin/env bash
# The standard benchmark in one command: builds in release, starts Keystone on a fresh embedded
# database in a temporary directory, measures start to SERVING, runs keystone-bench's whole
# suite against it, and stops it. Extra arguments go to keystone-bench (e.g. --duration 10).
#   scripts/bench.sh                 # table
#   scripts/bench.sh --json          # for machines
#   KEYSTONE_DATABASE_URL=postgres://user@host/empty_db scripts/bench.sh
#                                    # on PostgreSQL (an empty database: Keystone migrates it);
#                                    # refresh is also compared with pgbench -N on the same
#                                    # server (a scratch database, keystone_pgbench, is made
#                                    # and dropped; needs Debian's postgresql-client)
#   KEYSTONE_BENCH_REPLICAS=2 KEYSTONE_DATABASE_URL=postgres://… KEYSTONE_REDIS_URL=redis://… \
#     scripts/bench.sh               # two replicas on one PostgreSQL and Redis: the bench
#                                    # spreads its connections over both and reports the sum
#                                    # (on one small machine this shows what the cluster path
#                                    # costs, not a speed-up); RSS and CPU are the first's
#   KEYSTONE_BENCH_TLS=1 scripts/bench.sh --scenarios \
#     authenticate,tls-handshake,tls-resumed,client-credentials-mtls,authenticate-dpop
#                                    # every listener on TLS (a CA, a certificate for localhost
#                                    # and a client certificate made here with openssl; the
#                                    # bench presents it); ratios to TLS Health
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

replicas="${KEYSTONE_BENCH_REPLICAS:-1}"
if [ "$replicas" != 1 ]; then
  if [ "$replicas" != 2 ] || [[ "${KEYSTONE_DATABASE_URL:-}" != postgres* ]] \
    || [ -z "${KEYSTONE_REDIS_URL:-}" ] || [ "${KEYSTONE_BENCH_TLS:-0}" = 1 ]; then
    echo "KEYSTONE_BENCH_REPLICAS=2 needs KEYSTONE_DATABASE_URL (PostgreSQL) and" \
      "KEYSTONE_REDIS_URL, without TLS" >&2
    exit 2
  fi
  # A cluster: every replica shares the pepper (client secrets, sealed signing keys).
  export KEYSTONE_CLUSTER__ENABLED=true
  export KEYSTONE_SECRETS__PEPPER="${KEYSTONE_SECRETS__PEPPER:-bench-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"
fi

cargo build --release --bins --locked
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
server=""
replica=""
cleanup() {
  for pid in "$server" "$replica"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" && wait "$pid" || true
    fi
  done
  rm -rf "$work"
  if [ -n "${pgbench_db:-}" ]; then
    psql -q "$KEYSTONE_DATABASE_URL" -c "DROP DATABASE IF EXISTS keystone_pgbench" || true
  fi
}
trap cleanup EXIT

password="bench $(od -An -N12 -tx1 /dev/urandom | tr -d ' \n') staple"
export KEYSTONE_BOOTSTRAP_ADMIN_USERNAME=admin KEYSTONE_BOOTSTRAP_ADMIN_PASSWORD="$password"
export KEYSTONE_BENCH_ADMIN=admin KEYSTONE_BENCH_PASSWORD="$password"
# Ports below Linux's ephemeral range (32768–60999): polling a port in that range before
# anything listens can connect the socket to itself and hold the port.
export KEYSTONE_GRPC_ADDR=127.0.0.1:${KEYSTONE_BENCH_GRPC_PORT:-20551}
# A benchmark measures capacity: every call comes from one address with a few names, which
# the rate limits (limits.*) would refuse as the attack they look like.
# Set them to measure what counting costs (e.g. "1000000/1s burst 1000000", with Redis).
export KEYSTONE_LIMITS__PER_IP="${KEYSTONE_LIMITS__PER_IP:-off}"
export KEYSTONE_LIMITS__PER_CLIENT="${KEYSTONE_LIMITS__PER_CLIENT:-off}"
export KEYSTONE_LIMITS__PER_USERNAME="${KEYSTONE_LIMITS__PER_USERNAME:-off}"
export KEYSTONE_HTTP_ADDR=127.0.0.1:${KEYSTONE_BENCH_HTTP_PORT:-8580}
addr="http://$KEYSTONE_GRPC_ADDR"
bench=()
if [ "${KEYSTONE_BENCH_TLS:-0}" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=keystone-bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
  openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=keystone-bench \
    -keyout "$work/client.key" -out "$work/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$work/client.cnf"
  openssl x509 -req -in "$work/client.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/client.cnf" -out "$work/client.crt" 2>/dev/null
  export KEYSTONE_TLS__CERT_FILE="$work/tls.crt" KEYSTONE_TLS__KEY_FILE="$work/tls.key"
  export KEYSTONE_TLS__CLIENT_CA_FILE="$work/ca.crt"
  addr="https://$KEYSTONE_GRPC_ADDR"
  bench=(--ca-file "$work/ca.crt" --tls-name localhost --cert-file "$work/client.crt"
    --key-file "$work/client.key" --http-addr "https://localhost:${KEYSTONE_HTTP_ADDR##*:}")
fi

# On PostgreSQL, the database's own ceiling: pgbench -N in a scratch database on the same
# server, in rounds beside refresh's (keystone-bench --pgbench).
if [[ "${KEYSTONE_DATABASE_URL:-}" == postgres* ]]; then
  if command -v pgbench >/dev/null && command -v psql >/dev/null; then
    # The same server and parameters (sslmode, host=…), another database.
    base="${KEYSTONE_DATABASE_URL%%\?*}"
    query="${KEYSTONE_DATABASE_URL#"$base"}"
    pgbench_db="${base%/*}/keystone_pgbench$query"
    psql -q "$KEYSTONE_DATABASE_URL" -c "DROP DATABASE IF EXISTS keystone_pgbench" \
      -c "CREATE DATABASE keystone_pgbench"
    pgbench -i -q "$pgbench_db"
    bench+=(--pgbench "$pgbench_db")
  else
    echo "pgbench or psql is missing (Debian's postgresql-client): no database ceiling" >&2
  fi
fi

# The issuer client-credentials-federated plays: keystone-bench serves its keys.
jwks_addr=127.0.0.1:${KEYSTONE_BENCH_JWKS_PORT:-20559}
cat >"$work/keystone.toml" <<TOML
[[federation.issuers]]
name = "keystone-bench"
issuer = "https://kubernetes.keystone-bench.invalid"
jwks_uri = "http://$jwks_addr/jwks"
TOML
export KEYSTONE_CONFIG="$work/keystone.toml"

start() {
  (cd "$work" && exec "$bin/keystone" serve) >>"$work/server.log" 2>&1 &
  server=$!
}
stop() {
  kill -TERM "$server"
  wait "$server" || true
  server=""
}

# First start: migrations, the signing key and the admin. Then a start of the migrated
# database, as a restarted replica sees it, is the one measured.
start
"$bin/keystone-bench" "${bench[@]}" --addr "$addr" --server-pid "$server" --startup >/dev/null
stop
start
"$bin/keystone-bench" "${bench[@]}" --addr "$addr" --server-pid "$server" --startup
sleep 1
echo "server RSS after start: $(awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server/status")"

if [ "$replicas" != 1 ]; then
  # The second replica: the same database and Redis, its own ports.
  mkdir -p "$work/replica"
  replica_grpc=127.0.0.1:$((${KEYSTONE_GRPC_ADDR##*:} + 1))
  (cd "$work/replica" && KEYSTONE_GRPC_ADDR=$replica_grpc \
    KEYSTONE_HTTP_ADDR=127.0.0.1:$((${KEYSTONE_HTTP_ADDR##*:} + 1)) \
    exec "$bin/keystone" serve) >>"$work/replica.log" 2>&1 &
  replica=$!
  "$bin/keystone-bench" --addr "http://$replica_grpc" --server-pid "$replica" --startup >/dev/null
  bench+=(--replica-addr "http://$replica_grpc")
fi

"$bin/keystone-bench" "${bench[@]}" --addr "$addr" --server-pid "$server" --jwks-addr "$jwks_addr" "$@"

# The HTTP endpoints, with wrk (Debian's package `wrk`) when it is installed.
if command -v wrk >/dev/null && [ ${#bench[@]} = 0 ]; then
  { read -r client_id; read -r client_secret; read -r token; } < <(
    "$bin/keystone-bench" "${bench[@]}" --addr "$addr" --seed-only --fresh-tokens 1 --users 1 \
      --jwks-addr "$jwks_addr")
  basic="$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)"
  http="http://$KEYSTONE_HTTP_ADDR"
  cat >"$work/token.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
LUA
  cat >"$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  load() { # load TITLE URL [wrk options]
    echo
    echo "== $1 (wrk: 2 threads, 32 connections, 5 s)"
    wrk -t2 -c32 -d5s --latency "${@:3}" "$2" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|99%'
  }
  for endpoint in token introspect; do
    load "POST /oauth2/$endpoint" "$http/oauth2/$endpoint" -s "$work/$endpoint.lua"
  done
  load "GET /.well-known/jwks.json" "$http/.well-known/jwks.json"
fi
echo
echo "server peak RSS over the whole run: $(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server/status")"
stop
