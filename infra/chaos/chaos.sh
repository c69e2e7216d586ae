#!/usr/bin/env bash
# The chaos stack: Redis + DynamoDB Local + the three functions + the router,
# on ports of its own, so that killing its backends never touches the shared
# stack (8080-8083, 9181-9183, Redis 6379, DynamoDB Local 8000).
#
#   chaos.sh quick          stack up (fresh), run.py --quick, abuse.py --quick,
#                           openapi/check.sh --quick; then the stack again on a
#                           Redis Cluster of its own and run.py --scenario
#                           cluster --quick; stack down   (the CI form)
#   chaos.sh full           the same with the full sizes
#   chaos.sh exec CMD...    stack up (fresh), CMD, stack down
#   chaos.sh up [--redis cluster] | down
#                           leave the chaos stack running / stop it
#   chaos.sh env            print the variables that address it (eval "$(chaos.sh env)")
#
# Ports (override with the CHAOS_ variables): router 18080, auth 18081, stock
# 18082, order 18083, metrics 19181-19183, Redis 16379, DynamoDB Local 18000,
# Redis Cluster 16401-16406 (CHAOS_REDIS_CLUSTER_PORTS); state in .local/chaos.
# HOLD_TTL_SECONDS is 3 (CHAOS_HOLD_TTL_SECONDS) to keep the scenarios short.
# PROFILE defaults to dev (target/debug). Everything this script starts is
# stopped on exit (trap), whatever happens, cluster nodes included.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

export STACK_DIR=${CHAOS_STACK_DIR:-$ROOT/.local/chaos}
export ROUTER_PORT=${CHAOS_ROUTER_PORT:-18080}
export AUTH_PORT=${CHAOS_AUTH_PORT:-18081}
export STOCK_PORT=${CHAOS_STOCK_PORT:-18082}
export ORDER_PORT=${CHAOS_ORDER_PORT:-18083}
export METRICS_PORT_BASE=${CHAOS_METRICS_PORT_BASE:-19180}
export REDIS_PORT=${CHAOS_REDIS_PORT:-16379}
export DYNAMODB_PORT=${CHAOS_DYNAMODB_PORT:-18000}
export HOLD_TTL_SECONDS=${CHAOS_HOLD_TTL_SECONDS:-3}
export PROFILE=${PROFILE:-dev}
export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
# The chaos stack's own Redis Cluster and TLS node (infra/local/redis.sh reads
# these; its defaults are the shared test bed's 7001-7006 and 6390). A
# cluster node also listens on its port + 10000 (the cluster bus): the shared
# cluster holds 17001-17006 that way, so the chaos one sits at 16401-16406
# (bus 26401-26406).
export REDIS_CLUSTER_PORTS=${CHAOS_REDIS_CLUSTER_PORTS:-16401 16402 16403 16404 16405 16406}
export REDIS_TLS_PORT=${CHAOS_REDIS_TLS_PORT:-16390}
export STACK_DETACH=1
# The main justfile exports the shared stack's addresses; never inherit them.
unset REDIS_URL DYNAMODB_ENDPOINT REDIS_MODE REDIS_CA_FILE

read -r -a cluster_ports <<<"$REDIS_CLUSTER_PORTS"
[ "${#cluster_ports[@]}" = 6 ] || { echo "chaos.sh: CHAOS_REDIS_CLUSTER_PORTS must name 6 ports (3 primaries + 3 replicas)" >&2; exit 2; }
bus_ports=()
for p in "${cluster_ports[@]}"; do bus_ports+=($((p + 10000))); done
for p in "$ROUTER_PORT" "$AUTH_PORT" "$STOCK_PORT" "$ORDER_PORT" "$REDIS_PORT" "$DYNAMODB_PORT" "$REDIS_TLS_PORT" "${cluster_ports[@]}" "${bus_ports[@]}"; do
  case $p in 8080 | 8081 | 8082 | 8083 | 6379 | 6390 | 700[1-6] | 1700[1-6] | 8000)
    echo "chaos.sh: refusing to use the shared default port $p" >&2
    exit 2 ;;
  esac
done

STACK="$ROOT/infra/local/stack.sh"
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

deps() {
  if ! python3 -c 'import cryptography' 2>/dev/null; then
    say "pip install -r infra/chaos/requirements.txt"
    python3 -m pip install -q -r "$HERE/requirements.txt"
  fi
}

up() { # [--redis cluster]
  mkdir -p "$STACK_DIR/logs"
  local shape="redis :$REDIS_PORT"
  if [ "${1:-}" = --redis ] && [ "${2:-}" = cluster ]; then
    shape="redis cluster :${REDIS_CLUSTER_PORTS// /,:}"
    # A cluster made afresh: a failover scenario leaves its topology changed.
    rm -rf "$STACK_DIR/redis-cluster"
  elif [ $# -gt 0 ]; then
    echo "chaos.sh: up takes no option but --redis cluster" >&2
    return 2
  fi
  say "chaos stack up (fresh) in $STACK_DIR: router :$ROUTER_PORT auth :$AUTH_PORT stock :$STOCK_PORT order :$ORDER_PORT $shape dynamodb :$DYNAMODB_PORT ($PROFILE)"
  local started=$SECONDS
  if ! "$STACK" up --fresh "$@" >"$STACK_DIR/logs/chaos-up.log" 2>&1; then
    tail -30 "$STACK_DIR/logs/chaos-up.log" >&2
    echo "chaos.sh: the chaos stack did not come up (log: $STACK_DIR/logs/chaos-up.log)" >&2
    return 1
  fi
  say "chaos stack up in $((SECONDS - started))s"
}

down() {
  "$STACK" down >/dev/null 2>&1 || true
}

with_stack() {
  trap 'say "chaos stack down"; down' EXIT
  trap 'exit 130' INT TERM
  deps
  up
  "$@"
}

suite() { # quick|full
  local mode=$1 flag="" rc=0 t
  [ "$mode" = quick ] && flag=--quick
  local started=$SECONDS
  declare -A took status
  for step in run abuse openapi cluster; do
    t=$SECONDS
    case $step in
      run) python3 "$HERE/run.py" --scenario all $flag --json "$STACK_DIR/logs/chaos-run.json" && s=0 || s=$? ;;
      abuse) python3 "$HERE/abuse.py" $flag && s=0 || s=$? ;;
      openapi) CHAOS_STACK_READY=1 "$ROOT/infra/openapi/check.sh" $flag && s=0 || s=$? ;;
      # The failover scenarios need the whole engine on a Redis Cluster: the
      # same stack again, on the chaos cluster (never the shared one).
      cluster)
        say "chaos stack again, on a Redis Cluster of its own"
        down
        if up --redis cluster; then
          python3 "$HERE/run.py" --scenario cluster $flag --json "$STACK_DIR/logs/chaos-run-cluster.json" && s=0 || s=$?
        else
          s=1
        fi ;;
    esac
    took[$step]=$((SECONDS - t))
    status[$step]=$([ "$s" = 0 ] && echo PASS || echo "FAIL (exit $s)")
    [ "$s" = 0 ] || rc=1
  done
  echo
  echo "== chaos $mode: $((SECONDS - started))s =="
  for step in run abuse openapi cluster; do
    printf '  %-8s %-14s %ss\n' "$step" "${status[$step]}" "${took[$step]}"
  done
  return $rc
}

case "${1:-}" in
  quick | full) with_stack suite "$1" ;;
  exec) shift; [ $# -gt 0 ] || { echo "usage: chaos.sh exec CMD..." >&2; exit 2; }; with_stack "$@" ;;
  up) shift; deps; up "$@" ;;
  down) down; say "chaos stack down" ;;
  env)
    for v in STACK_DIR ROUTER_PORT AUTH_PORT STOCK_PORT ORDER_PORT METRICS_PORT_BASE REDIS_PORT DYNAMODB_PORT REDIS_CLUSTER_PORTS REDIS_TLS_PORT HOLD_TTL_SECONDS PROFILE ADMIN_TOKEN; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
