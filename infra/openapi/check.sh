#!/usr/bin/env bash
# Conformance of the running chaos stack to infra/openapi/openapi.yaml, with
# schemathesis (installed with pip if missing):
#
#   check.sh [--quick]     (--quick: 30 examples per operation, 90 s; else 100 and 300 s)
#
# Checks: not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance, response_headers_conformance (x-request-id on
# every answer, Retry-After on 429/503, Location on checkouts).
# Runs against the chaos stack (infra/chaos/chaos.sh; ports 18080-18083); if it
# is not up, brings one up for the run and stops it afterwards. Order routes get
# a real user's access token (registered and logged in through the API), admin
# routes the stack's admin token (schemathesis.toml). /healthz, which the router
# does not route, is checked on each function's own port.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
eval "$("$ROOT/infra/chaos/chaos.sh" env)"

EXAMPLES=100 MAX_TIME=300
if [ "${1:-}" = "--quick" ]; then EXAMPLES=30 MAX_TIME=90; fi

if ! curl -fsS -m 5 "http://127.0.0.1:$STOCK_PORT/healthz" >/dev/null 2>&1; then
  if [ -n "${CHAOS_STACK_READY:-}" ]; then
    echo "check.sh: the chaos stack is not healthy" >&2
    exit 2
  fi
  exec "$ROOT/infra/chaos/chaos.sh" exec env CHAOS_STACK_READY=1 "$0" "$@"
fi

if ! command -v st >/dev/null 2>&1 || ! st --version 2>/dev/null | grep -q ' 4\.'; then
  echo "==> pip install -r infra/openapi/requirements.txt"
  python3 -m pip install -q -r "$HERE/requirements.txt"
fi

BASE="http://127.0.0.1:$ROUTER_PORT"
user="st-$(date +%s)-$RANDOM"
pass="schemathesis password $RANDOM"
curl -fsS -o /dev/null -XPOST "$BASE/auth/register" -H 'content-type: application/json' \
  -d "{\"username\":\"$user\",\"password\":\"$pass\"}"
ST_USER_TOKEN=$(curl -fsS -XPOST "$BASE/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"$user\",\"password\":\"$pass\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
export ST_USER_TOKEN ADMIN_TOKEN
# A live sale, so that checkouts and order reads have something real to hit.
curl -s -o /dev/null -XPOST "$BASE/stock/sales" -H "authorization: Bearer $ADMIN_TOKEN" \
  -H 'content-type: application/json' -d '{"sale_id":"st-sale","name":"schemathesis","stock":1000000,"per_user_limit":1000}'
# And one with a waiting room (v1.1): the queue operations' examples name it.
curl -s -o /dev/null -XPOST "$BASE/stock/sales" -H "authorization: Bearer $ADMIN_TOKEN" \
  -H 'content-type: application/json' \
  -d '{"sale_id":"st-room","name":"schemathesis room","stock":1000000,"per_user_limit":1000,"waiting_room":{"admit_per_second":1000}}'

REPORTS="$STACK_DIR/logs/schemathesis"
mkdir -p "$REPORTS"
cd "$REPORTS"   # schemathesis keeps a cache (.schemathesis/) in the working directory
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
# One worker: hypothesis' lambda descriptions call ast.parse, which is not
# thread-safe on CPython 3.11 ("AST constructor recursion depth mismatch").
rc=0
echo "==> schemathesis: every operation but /healthz via the router $BASE (max $EXAMPLES examples each, ${MAX_TIME}s)"
st --config-file "$HERE/schemathesis.toml" --no-color run "$HERE/openapi.yaml" --url "$BASE" \
  --checks "$CHECKS" --max-examples "$EXAMPLES" --request-timeout 15 --workers 1 \
  --suppress-health-check all --max-time "$MAX_TIME" --exclude-path /healthz \
  --report junit --report-junit-path "$REPORTS/router.xml" || rc=1
for port in "$AUTH_PORT" "$STOCK_PORT" "$ORDER_PORT"; do
  echo "==> schemathesis: GET /healthz on :$port"
  st --config-file "$HERE/schemathesis.toml" --no-color run "$HERE/openapi.yaml" --url "http://127.0.0.1:$port" \
    --checks "$CHECKS" --max-examples 5 --workers 1 --include-path /healthz --max-time 5 || rc=1
done
exit $rc
