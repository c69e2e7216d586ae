#!/usr/bin/env bash
# The chaos stack: Redis + DynamoDB Local + the three functions + the router,
# on ports of its own, so that killing its backends never touches the shared
# stack (8080-8083, 9181-9183, Redis 6379, DynamoDB Local 8000).
#
#   chaos.sh quick          stack up (fresh), run.py --quick, abuse.py --quick,
#                           openapi/check.sh --quick, stack down   (the CI form)
#   chaos.sh full           the same with the full sizes
#   chaos.sh exec CMD...    stack up (fresh), CMD, stack down
#   chaos.sh up | down      leave the chaos stack running / stop it
#   chaos.sh env            print the variables that address it (eval "$(chaos.sh env)")
#
# Ports (override with the CHAOS_ variables): router 18080, auth 18081, stock
# 18082, order 18083, metrics 19181-19183, Redis 16379, DynamoDB Local 18000;
# state in .local/chaos. HOLD_TTL_SECONDS is 3 (CHAOS_HOLD_TTL_SECONDS) to
# keep the scenarios short. PROFILE defaults to dev (target/debug).
# Everything this script starts is stopped on exit (trap), whatever happens.
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
export STACK_DETACH=1
# The main justfile exports the shared stack's addresses; never inherit them.
unset REDIS_URL DYNAMODB_ENDPOINT

for p in "$ROUTER_PORT" "$AUTH_PORT" "$STOCK_PORT" "$ORDER_PORT" "$REDIS_PORT" "$DYNAMODB_PORT"; do
  case $p in 8080 | 8081 | 8082 | 8083 | 6379 | 8000)
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

up() {
  mkdir -p "$STACK_DIR/logs"
  say "chaos stack up (fresh) in $STACK_DIR: router :$ROUTER_PORT auth :$AUTH_PORT stock :$STOCK_PORT order :$ORDER_PORT redis :$REDIS_PORT dynamodb :$DYNAMODB_PORT ($PROFILE)"
  local started=$SECONDS
  if ! "$STACK" up --fresh >"$STACK_DIR/logs/chaos-up.log" 2>&1; then
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
  for step in run abuse openapi; do
    t=$SECONDS
    case $step in
      run) python3 "$HERE/run.py" --scenario all $flag --json "$STACK_DIR/logs/chaos-run.json" && s=0 || s=$? ;;
      abuse) python3 "$HERE/abuse.py" $flag && s=0 || s=$? ;;
      openapi) CHAOS_STACK_READY=1 "$ROOT/infra/openapi/check.sh" $flag && s=0 || s=$? ;;
    esac
    took[$step]=$((SECONDS - t))
    status[$step]=$([ "$s" = 0 ] && echo PASS || echo "FAIL (exit $s)")
    [ "$s" = 0 ] || rc=1
  done
  echo
  echo "== chaos $mode: $((SECONDS - started))s =="
  for step in run abuse openapi; do
    printf '  %-8s %-14s %ss\n' "$step" "${status[$step]}" "${took[$step]}"
  done
  return $rc
}

case "${1:-}" in
  quick | full) with_stack suite "$1" ;;
  exec) shift; [ $# -gt 0 ] || { echo "usage: chaos.sh exec CMD..." >&2; exit 2; }; with_stack "$@" ;;
  up) deps; up ;;
  down) down; say "chaos stack down" ;;
  env)
    for v in STACK_DIR ROUTER_PORT AUTH_PORT STOCK_PORT ORDER_PORT METRICS_PORT_BASE REDIS_PORT DYNAMODB_PORT HOLD_TTL_SECONDS PROFILE ADMIN_TOKEN; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
