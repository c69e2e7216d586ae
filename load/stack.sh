#!/usr/bin/env bash
# The local stack for load work: same processes and environment as
# infra/local/stack.sh (Redis + DynamoDB Local + auth/stock/order + router),
# but it
#   * builds into / runs from $CARGO_TARGET_DIR (default <repo>/target), so a
#     load run never fights another build for the same target directory;
#   * can pin each function to CPUs (PIN_AUTH / PIN_STOCK / PIN_ORDER /
#     PIN_ROUTER = a taskset CPU list, e.g. PIN_ORDER=1) for capacity runs;
#   * takes its ports from the environment, so a second stack can run beside
#     one started by `just up`.
#
#   load/stack.sh up        build (release), start backends if absent, start the functions, wait healthy
#   load/stack.sh down      stop what `load/stack.sh up` started (never anything else)
#   load/stack.sh status
#
# Env: LOAD_BIN (binaries dir; skips the build), LOAD_BUILD=0 (skip the build),
# ROUTER_PORT 8080, AUTH_PORT 8081, STOCK_PORT 8082, ORDER_PORT 8083,
# METRICS_BASE 9180 (auth +1, stock +2, order +3), LOAD_STATE (pid/log dir,
# default load/.run/<ROUTER_PORT>), and any function setting (HOLD_TTL_SECONDS,
# HASH_WORKERS, LOG_LEVEL, ...), which is passed through.
# The signing key is the one `just up` uses: .local/secrets.env (created with
# `auth keygen` if missing), so tokens minted by load/mint-tokens.mjs verify;
# likewise the waiting-room admission pair, .local/admission.env (stock signs,
# order verifies).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUTER_PORT=${ROUTER_PORT:-8080}
AUTH_PORT=${AUTH_PORT:-8081}
STOCK_PORT=${STOCK_PORT:-8082}
ORDER_PORT=${ORDER_PORT:-8083}
METRICS_BASE=${METRICS_BASE:-9180}
STATE=${LOAD_STATE:-$ROOT/load/.run/$ROUTER_PORT}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${LOAD_BIN:-$TARGET/release}
REDIS_PORT=${REDIS_PORT:-6379}
DYNAMODB_PORT=${DYNAMODB_PORT:-8000}
mkdir -p "$STATE"

say() { printf '\033[1m[load/stack]\033[0m %s\n' "$*" >&2; }
die() { printf 'load/stack: error: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
healthy() { curl -fsS -m 2 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
wait_for() { # what secs cmd...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" && return 0; sleep 0.1; done
  die "$what not ready after ${secs}s (logs in $STATE)"
}

build() {
  if [ -n "${LOAD_BIN:-}" ] || [ "${LOAD_BUILD:-1}" = 0 ]; then return 0; fi
  say "cargo build --release --bins (CARGO_TARGET_DIR=$TARGET)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --quiet --release --bins)
}

secrets() {
  local f="$ROOT/.local/secrets.env"
  mkdir -p "$ROOT/.local"
  if [ ! -s "$f" ]; then
    say "generating a development signing key in .local/secrets.env"
    "$BIN/auth" keygen >"$f.tmp" && mv "$f.tmp" "$f" && chmod 600 "$f"
  fi
  # An explicit TOKEN_SIGNING_KEY in the environment wins (and its public key is derived).
  if [ -z "${TOKEN_SIGNING_KEY:-}" ]; then
    set -a
    # shellcheck disable=SC1090 # generated, outside the repository
    . "$f"
    set +a
  else
    export TOKEN_PUBLIC_KEY=${TOKEN_PUBLIC_KEY:-$("$BIN/auth" public-key | sed 's/^TOKEN_PUBLIC_KEY=//')}
  fi
  # Waiting-room admissions: the pair `just up` uses (.local/admission.env);
  # the private half goes to stock only, the public half to order only (up()).
  local a="$ROOT/.local/admission.env"
  if [ ! -s "$a" ]; then
    "$BIN/auth" keygen >"$a.tmp" && mv "$a.tmp" "$a" && chmod 600 "$a"
  fi
  ADMISSION_KEY=$(sed -n 's/^TOKEN_SIGNING_KEY=//p' "$a")
  ADMISSION_PUB=$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' "$a")
  [ -n "$ADMISSION_KEY" ] && [ -n "$ADMISSION_PUB" ] || die "$a lacks its key pair (delete it to regenerate)"
  export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
  export STORE=aws REDIS_URL="redis://127.0.0.1:$REDIS_PORT" DYNAMODB_ENDPOINT="http://127.0.0.1:$DYNAMODB_PORT"
  export LOG_LEVEL=${LOG_LEVEL:-warn}
}

start() { # name port metrics_port pin [cmd...]
  local name=$1 port=$2 mport=$3 pin=$4; shift 4
  if port_open "$port"; then die "port $port is in use (set ${name^^}_PORT or stop what holds it)"; fi
  local pre=()
  if [ -n "$pin" ] && command -v taskset >/dev/null; then pre=(taskset -c "$pin"); fi
  PORT=$port METRICS_PORT=$mport nohup "${pre[@]}" "$BIN/$name" "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  say "$name on :$port (metrics :$mport)${pin:+ pinned to CPU $pin} pid $!"
}

up() {
  # A function that fails to start must not leave the others running.
  trap 'down >/dev/null 2>&1' ERR
  die() { printf 'load/stack: error: %s\n' "$*" >&2; down >/dev/null 2>&1; exit 1; }
  build
  [ -x "$BIN/order" ] || die "no binaries in $BIN (build them or set LOAD_BIN)"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || ! port_open "$DYNAMODB_PORT"; then
    REDIS_PORT=$REDIS_PORT DYNAMODB_PORT=$DYNAMODB_PORT "$ROOT/infra/local/stack.sh" backends >&2
  fi
  secrets
  "$BIN/auth" migrate >/dev/null
  "$BIN/stock" migrate >/dev/null
  start auth "$AUTH_PORT" $((METRICS_BASE + 1)) "${PIN_AUTH:-}"
  ADMISSION_SIGNING_KEY=$ADMISSION_KEY start stock "$STOCK_PORT" $((METRICS_BASE + 2)) "${PIN_STOCK:-}"
  ADMISSION_PUBLIC_KEY=$ADMISSION_PUB start order "$ORDER_PORT" $((METRICS_BASE + 3)) "${PIN_ORDER:-}"
  if [ "$ROUTER_PORT" != 0 ]; then
    if port_open "$ROUTER_PORT"; then die "port $ROUTER_PORT is in use"; fi
    local pre=(); [ -n "${PIN_ROUTER:-}" ] && pre=(taskset -c "$PIN_ROUTER")
    ROUTER_LISTEN=127.0.0.1:$ROUTER_PORT AUTH_URL=http://127.0.0.1:$AUTH_PORT STOCK_URL=http://127.0.0.1:$STOCK_PORT \
      ORDER_URL=http://127.0.0.1:$ORDER_PORT nohup "${pre[@]}" "$BIN/local-router" >"$STATE/router.log" 2>&1 &
    echo $! >"$STATE/router.pid"
  fi
  wait_for auth 30 healthy "$AUTH_PORT"
  wait_for stock 30 healthy "$STOCK_PORT"
  wait_for order 30 healthy "$ORDER_PORT"
  [ "$ROUTER_PORT" = 0 ] || wait_for router 30 port_open "$ROUTER_PORT"
  say "up: router :$ROUTER_PORT auth :$AUTH_PORT stock :$STOCK_PORT order :$ORDER_PORT (state $STATE)"
}

down() {
  local any=0
  for name in router order stock auth; do
    local f="$STATE/$name.pid"
    [ -f "$f" ] || continue
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      say "stopped $name (pid $pid)"; any=1
    fi
    rm -f "$f"
  done
  [ $any = 1 ] || say "nothing of ours was running in $STATE"
}

status() {
  for name in auth stock order router; do
    local f="$STATE/$name.pid"
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: not running"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
