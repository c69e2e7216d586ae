#!/usr/bin/env bash
# Proves the three functions run as AWS Lambda functions (lambda_http), on
# this machine, without an AWS account:
#
#   1. builds the production artifact, `cargo lambda build --release --arm64
#      -p auth -p stock -p order` -> $CARGO_TARGET_DIR/lambda/<fn>/bootstrap
#      (provided.al2023, arm64: infra/aws/template.yaml), and reports sizes;
#   2. starts cargo-lambda's Lambda emulator, `cargo lambda watch`, on
#      127.0.0.1 (it runs the host build of each function, `cargo run --bin
#      <fn>`, when the first request for <fn> arrives), and drives a real flow
#      through the function URL emulation, http://127.0.0.1:PORT/lambda-url/<fn>/<path>,
#      against the local Redis and DynamoDB Local:
#        register -> login -> JWKS -> create sale -> read sale -> checkout
#        -> read order -> idempotent replay -> the caller's orders;
#   3. checks each function process really is a Lambda runtime client
#      (AWS_LAMBDA_RUNTIME_API set, no HTTP listener of its own) and logs JSON;
#   4. stops the emulator and every process it started (by pid; the
#      functions are its children).
#
# Tables (lt-users-<run>, lt-ledger-<run>), the sale and the user are unique
# to the run and deleted at the end; if Redis / DynamoDB Local are down they
# are started with infra/local/stack.sh backends and stopped again.
#
#   infra/lambda/test.sh        (or: just test-lambda)
#
# Environment: CARGO_TARGET_DIR (default target/), LAMBDA_PORT (default 9000,
# or a free port if 9000 is taken), SKIP_ARM64_BUILD=1 to skip step 1,
# KEEP_WORKDIR=1 to keep the emulator log of a successful run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

FUNCTIONS=(auth stock order)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DYNAMODB_ENDPOINT="${DYNAMODB_ENDPOINT:-http://127.0.0.1:8000}"
STARTED=${SECONDS}

say() { printf '==> %s\n' "$*"; }
ok() { printf '  ok  %s\n' "$*"; }
die() { printf 'test-lambda: FAILED: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
now_us() { local t=${EPOCHREALTIME//[.,]/}; printf '%s' "${t}"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) / 1000 }'; }

for tool in cargo curl jq ss awk redis-cli python3; do
  have "${tool}" || die "${tool} not found"
done
[[ "${REDIS_URL}" =~ ^redis://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]] \
  || die "REDIS_URL=${REDIS_URL}: this test only talks to a loopback Redis"
REDIS_PORT="${BASH_REMATCH[2]}"
[[ "${DYNAMODB_ENDPOINT}" =~ ^http://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]] \
  || die "DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT}: this test only talks to a loopback DynamoDB Local"
DDB_PORT="${BASH_REMATCH[2]}"

RUN_ID="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK="$(mktemp -d "/tmp/flashsale-lt.${RUN_ID}.XXXX")"
USERS_TABLE="lt-users-${RUN_ID}"
LEDGER_TABLE="lt-ledger-${RUN_ID}"
SALE_ID="lt-${RUN_ID}"
USERNAME="lt_${RUN_ID}"
PASSWORD="lt-password-${RUN_ID}"
ADMIN_TOKEN="lt-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WATCH_PID=""
STOPPED_PROCS=""
STARTED_BACKEND_PIDS=()

# ----------------------------------------------------------------- cleanup
ddb() { # target json (DynamoDB Local does not check signatures)
  curl -sS --max-time 5 -X POST "${DYNAMODB_ENDPOINT}/" \
    -H "X-Amz-Target: DynamoDB_20120810.$1" -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Date: 20250101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=00' \
    -d "$2"
}

# The emulator and everything it started (the functions are its children),
# as "pid exe" lines.
descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do
    printf '%s %s\n' "${c}" "$(readlink "/proc/${c}/exe" 2>/dev/null)"
    descendants "${c}"
  done
}
emulator_procs() {
  [[ -n "${WATCH_PID}" ]] && kill -0 "${WATCH_PID}" 2>/dev/null || return 0
  printf '%s %s\n' "${WATCH_PID}" "$(readlink "/proc/${WATCH_PID}/exe" 2>/dev/null)"
  descendants "${WATCH_PID}"
}

# SIGTERM to the emulator, which stops its function instances; whatever is
# left after 5 s (same pid, same executable) gets SIGKILL.
stop_emulator() {
  [[ -n "${WATCH_PID}" ]] || return 0
  local procs pid exe alive
  procs="$(emulator_procs)"
  # The emulator (and, if something wrapped it, the real cargo-lambda below).
  while read -r pid exe; do
    [[ -n "${pid}" && ( "${pid}" == "${WATCH_PID}" || "${exe##*/}" == cargo-lambda ) ]] \
      && kill -TERM "${pid}" 2>/dev/null
  done <<<"${procs}"
  for _ in $(seq 1 50); do
    alive=0
    while read -r pid exe; do
      [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && alive=1
    done <<<"${procs}"
    [[ ${alive} == 0 ]] && break
    sleep 0.1
  done
  while read -r pid exe; do
    [[ -n "${pid}" && "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == "${exe}" ]] || continue
    echo "  killing ${pid} (${exe}): still running 5 s after SIGTERM" >&2
    kill -KILL "${pid}" 2>/dev/null || true
  done <<<"${procs}"
  wait "${WATCH_PID}" 2>/dev/null || true
  STOPPED_PROCS="${procs}"
  WATCH_PID=""
}

cleanup() {
  local rc=$?
  set +e
  echo "test-lambda: cleaning up (exit status ${rc})" >&2
  stop_emulator
  if redis-cli -p "${REDIS_PORT}" ping >/dev/null 2>&1; then
    redis-cli -p "${REDIS_PORT}" --scan --pattern "fs:{${SALE_ID}*" \
      | xargs -r redis-cli -p "${REDIS_PORT}" del >/dev/null
    redis-cli -p "${REDIS_PORT}" del "fs:login-attempts:${USERNAME}" >/dev/null
  fi
  ddb DeleteTable "{\"TableName\":\"${USERS_TABLE}\"}" >/dev/null 2>&1
  ddb DeleteTable "{\"TableName\":\"${LEDGER_TABLE}\"}" >/dev/null 2>&1
  local p
  for p in "${STARTED_BACKEND_PIDS[@]}"; do
    kill -TERM "${p}" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "${p}" 2>/dev/null || break; sleep 0.1; done
  done
  if [[ ${rc} -ne 0 || "${KEEP_WORKDIR:-0}" == 1 ]]; then
    echo "test-lambda: emulator log and responses kept in ${WORK}" >&2
  else
    rm -rf "${WORK}"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ cargo-lambda
if ! cargo lambda --version >/dev/null 2>&1; then
  say "installing cargo-lambda (pip install cargo-lambda; brings zig for the arm64 cross-build)"
  python3 -m pip install --quiet --disable-pip-version-check cargo-lambda \
    || die "pip install cargo-lambda failed: see https://www.cargo-lambda.info/guide/installation.html"
  hash -r
  cargo lambda --version >/dev/null 2>&1 \
    || die "cargo-lambda installed but not on PATH: add pip's script directory to PATH"
fi
ok "$(cargo lambda --version)"

# ---------------------------------------------------- 1. production build
# cargo lambda build --release adds `profile.release.panic="abort"` unless
# the workspace's [profile.release] sets `panic` itself. Then a panicking
# handler kills the Lambda process instead of becoming common::http's 500.
PANIC_SETTING="$(python3 -c 'import sys, tomllib; print(tomllib.load(open("Cargo.toml", "rb")).get("profile", {}).get("release", {}).get("panic", ""))' 2>/dev/null || true)"
if [[ -z "${PANIC_SETTING}" ]]; then
  echo "  WARN Cargo.toml's [profile.release] sets no 'panic', so cargo lambda builds with panic=\"abort\":"
  echo "       a handler panic aborts the function instead of answering 500. Fix: panic = \"unwind\" in [profile.release]."
fi

if [[ "${SKIP_ARM64_BUILD:-0}" != 1 ]]; then
  say "cargo lambda build --release --arm64 -p auth -p stock -p order  (target dir: ${TARGET_DIR})"
  t0=${SECONDS}
  cargo lambda build --release --arm64 -p auth -p stock -p order
  ok "arm64 build took $((SECONDS - t0)) s"
  for fn in "${FUNCTIONS[@]}"; do
    bin="${TARGET_DIR}/lambda/${fn}/bootstrap"
    [[ -f "${bin}" ]] || die "${bin} missing after the build"
    if have file; then
      file -b "${bin}" | grep -q 'ARM aarch64' || die "${bin} is not an arm64 executable: $(file -b "${bin}")"
    fi
    bytes="$(wc -c <"${bin}")"
    # What `sam deploy` uploads: the directory, zipped.
    zipped="$(python3 - "${bin}" <<'EOF'
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[1], "bootstrap")
print(len(buf.getvalue()))
EOF
)"
    printf '  ok  %-34s %5.1f MB (%5.1f MB zipped) %s\n' "${bin}" \
      "$(awk -v b="${bytes}" 'BEGIN { print b / 1000000 }')" "$(awk -v b="${zipped}" 'BEGIN { print b / 1000000 }')" \
      "$(file -b "${bin}" 2>/dev/null | cut -d, -f1-2)"
  done
else
  say "SKIP_ARM64_BUILD=1: not building the arm64 artifact"
fi

# ---------------------------------------------------------------- backends
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! redis-cli -p "${REDIS_PORT}" ping >/dev/null 2>&1 || ! port_open "${DDB_PORT}"; then
  say "backends are down: infra/local/stack.sh backends (stopped again at the end)"
  had_redis=0; had_ddb=0
  redis-cli -p "${REDIS_PORT}" ping >/dev/null 2>&1 && had_redis=1
  port_open "${DDB_PORT}" && had_ddb=1
  REDIS_PORT="${REDIS_PORT}" DYNAMODB_PORT="${DDB_PORT}" infra/local/stack.sh backends
  [[ ${had_redis} == 0 && -f .local/pids/redis.pid ]] && STARTED_BACKEND_PIDS+=("$(cat .local/pids/redis.pid)")
  [[ ${had_ddb} == 0 && -f .local/pids/dynamodb.pid ]] && STARTED_BACKEND_PIDS+=("$(cat .local/pids/dynamodb.pid)")
fi
ok "backends: ${REDIS_URL}, ${DYNAMODB_ENDPOINT}"

# ------------------------------------------------------ 2. host build, env
# The emulator runs `cargo run --bin <fn>` (dev profile); building first
# keeps the compile out of the first invocation's time.
say "cargo build --bin auth --bin stock --bin order  (host build the emulator runs)"
cargo build --bin auth --bin stock --bin order
HOST_BIN="${TARGET_DIR}/debug"

KEYS="$("${HOST_BIN}/auth" keygen)"
SIGNING_KEY="$(sed -n 's/^TOKEN_SIGNING_KEY=//p' <<<"${KEYS}")"
PUBLIC_KEY="$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' <<<"${KEYS}")"
# One environment for all three functions (on AWS each gets its own subset,
# infra/aws/template.yaml); AWS_* credentials stay unset so the functions use
# DynamoDB Local's fixed ones, like the migrations below.
ENV_FILE="${WORK}/lambda.env"
umask 077
cat >"${ENV_FILE}" <<EOF
STORE=aws
REDIS_URL=${REDIS_URL}
DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT}
AWS_REGION=us-east-1
USERS_TABLE=${USERS_TABLE}
LEDGER_TABLE=${LEDGER_TABLE}
TOKEN_ISSUER=flashsale-auth
TOKEN_AUDIENCE=flashsale
TOKEN_SIGNING_KEY=${SIGNING_KEY}
TOKEN_PUBLIC_KEY=${PUBLIC_KEY}
ADMIN_TOKEN=${ADMIN_TOKEN}
LOG_LEVEL=info
EOF
umask 022
(
  set -a
  # shellcheck disable=SC1090
  . "${ENV_FILE}"
  set +a
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE
  "${HOST_BIN}/auth" migrate
  "${HOST_BIN}/stock" migrate
) | sed 's/^/  ok  migrate: /'

# ------------------------------------------------------------ the emulator
LAMBDA_PORT="${LAMBDA_PORT:-9000}"
if [[ -n "$(ss -Htan "( sport = :${LAMBDA_PORT} )")" ]]; then
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if [[ -z "$(ss -Htan "( sport = :${p} )")" ]]; then LAMBDA_PORT=${p}; break; fi
  done
  echo "  port 9000 is taken: the emulator uses ${LAMBDA_PORT}"
fi
BASE="http://127.0.0.1:${LAMBDA_PORT}/lambda-url"

say "cargo lambda watch on 127.0.0.1:${LAMBDA_PORT} (functions start on their first request)"
# No --bin / -p: in a workspace the emulator maps the function name in the
# URL to the binary of that name and runs `cargo run --bin <name>` for it.
# --ignore-changes: no reloads if sources change while the test runs.
# `cargo-lambda lambda watch` is what `cargo lambda watch` runs; calling it
# directly makes $! the emulator itself, not a cargo process in front of it.
CARGO_LAMBDA="$(command -v cargo-lambda)" || die "cargo-lambda is not on PATH"
# A pyenv shim runs the real binary as a child instead of exec'ing it.
if [[ "${CARGO_LAMBDA}" == */shims/* ]] && have pyenv; then CARGO_LAMBDA="$(pyenv which cargo-lambda)"; fi
(
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE
  exec "${CARGO_LAMBDA}" lambda watch --invoke-address 127.0.0.1 --invoke-port "${LAMBDA_PORT}" \
    --ignore-changes --env-file "${ENV_FILE}" --color never
) >"${WORK}/watch.log" 2>&1 &
WATCH_PID=$!
for _ in $(seq 1 300); do
  port_open "${LAMBDA_PORT}" && break
  kill -0 "${WATCH_PID}" 2>/dev/null || die "cargo lambda watch exited: $(tail -20 "${WORK}/watch.log")"
  sleep 0.1
done
port_open "${LAMBDA_PORT}" || die "the emulator did not listen on ${LAMBDA_PORT} within 30 s"
listen="$(ss -Htln "( sport = :${LAMBDA_PORT} )" | awk '{ print $4 }' | sort -u | tr '\n' ' ')"
[[ "${listen}" == "127.0.0.1:${LAMBDA_PORT} " ]] || die "the emulator listens on ${listen}, not only on 127.0.0.1"
ok "emulator listening on ${listen}"

# call OUT METHOD FN PATH [curl args]: through the function URL emulation.
call() {
  local out=$1 method=$2 fn=$3 path=$4; shift 4
  curl -sS -D "${out}.headers" -o "${out}" -w '%{http_code}' --max-time 120 -X "${method}" \
    "${BASE}/${fn}${path}" "$@" || true
}
expect() { # what code want body-file
  [[ "$2" == "$3" ]] || die "$1: HTTP $2, expected $3: $(head -c 400 "$4" 2>/dev/null) (emulator log: ${WORK}/watch.log)"
  grep -qi '^x-request-id:' "$4.headers" || die "$1: no x-request-id header"
}
J=(-H 'Content-Type: application/json')
declare -A COLD

timed_first() { # fn what expected-code out method path [curl args]
  local fn=$1 what=$2 want=$3 out=$4 method=$5 path=$6 t0 code; shift 6
  t0="$(now_us)"
  code="$(call "${out}" "${method}" "${fn}" "${path}" "$@")"
  COLD[${fn}]="$(ms_between "${t0}" "$(now_us)")"
  expect "${fn} ${what}" "${code}" "${want}" "${out}"
  ok "${fn}: ${what} ${code} (first invocation: process start + init + call in ${COLD[${fn}]} ms)"
}

say "flow through ${BASE}/<fn>/..."
timed_first auth "POST /auth/register" 201 "${WORK}/register.json" POST /auth/register "${J[@]}" \
  -d "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}"
code="$(call "${WORK}/register2.json" POST auth /auth/register "${J[@]}" \
  -d "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}")"
expect "auth register again" "${code}" 409 "${WORK}/register2.json"
jq -e '.error.code == "username_taken"' "${WORK}/register2.json" >/dev/null || die "auth: second register should be username_taken"
code="$(call "${WORK}/login.json" POST auth /auth/login "${J[@]}" \
  -d "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}")"
expect "auth login" "${code}" 200 "${WORK}/login.json"
TOKEN="$(jq -r '.access_token' "${WORK}/login.json")"
code="$(call "${WORK}/jwks.json" GET auth /auth/jwks.json)"
expect "auth jwks" "${code}" 200 "${WORK}/jwks.json"
jq -e '[.keys[] | select(.kty == "OKP" and .crv == "Ed25519")] | length >= 1' "${WORK}/jwks.json" >/dev/null \
  || die "auth jwks: no Ed25519 key"
ok "auth: register again 409 username_taken, login 200, jwks.json 200"

timed_first stock "POST /stock/sales" 201 "${WORK}/sale.json" POST /stock/sales "${J[@]}" \
  -H "Authorization: Bearer ${ADMIN_TOKEN}" \
  -d "{\"sale_id\":\"${SALE_ID}\",\"name\":\"lambda test ${RUN_ID}\",\"stock\":10,\"per_user_limit\":2}"
code="$(call "${WORK}/sale-view.json" GET stock "/stock/sales/${SALE_ID}")"
expect "stock view sale" "${code}" 200 "${WORK}/sale-view.json"
jq -e --arg s "${SALE_ID}" '.sale_id == $s and .stock_total == 10 and .stock_remaining == 10 and .status == "live"' \
  "${WORK}/sale-view.json" >/dev/null || die "stock view: unexpected $(cat "${WORK}/sale-view.json")"
ok "stock: GET /stock/sales/${SALE_ID} 200 (10/10, live)"

timed_first order "POST /orders" 201 "${WORK}/order.json" POST /orders "${J[@]}" \
  -H "Authorization: Bearer ${TOKEN}" -H "Idempotency-Key: lt-${RUN_ID}" \
  -d "{\"sale_id\":\"${SALE_ID}\",\"quantity\":1}"
ORDER_ID="$(jq -r '.order_id' "${WORK}/order.json")"
jq -e --arg s "${SALE_ID}" '.sale_id == $s and .quantity == 1 and .status == "confirmed"' "${WORK}/order.json" >/dev/null \
  || die "order: unexpected $(cat "${WORK}/order.json")"
grep -qi "^location: /orders/${ORDER_ID}" "${WORK}/order.json.headers" || die "order: no Location header"
code="$(call "${WORK}/order-get.json" GET order "/orders/${ORDER_ID}" -H "Authorization: Bearer ${TOKEN}")"
expect "order get" "${code}" 200 "${WORK}/order-get.json"
jq -e --arg o "${ORDER_ID}" '.order_id == $o' "${WORK}/order-get.json" >/dev/null || die "order get: wrong order"
code="$(call "${WORK}/order-replay.json" POST order /orders "${J[@]}" \
  -H "Authorization: Bearer ${TOKEN}" -H "Idempotency-Key: lt-${RUN_ID}" \
  -d "{\"sale_id\":\"${SALE_ID}\",\"quantity\":1}")"
expect "order replay" "${code}" 200 "${WORK}/order-replay.json"
jq -e --arg o "${ORDER_ID}" '.order_id == $o' "${WORK}/order-replay.json" >/dev/null || die "order replay: a different order"
code="$(call "${WORK}/orders.json" GET order "/orders?sale_id=${SALE_ID}" -H "Authorization: Bearer ${TOKEN}")"
expect "order list" "${code}" 200 "${WORK}/orders.json"
jq -e --arg o "${ORDER_ID}" '[.orders[].order_id] == [$o]' "${WORK}/orders.json" >/dev/null \
  || die "order list: expected exactly ${ORDER_ID}: $(cat "${WORK}/orders.json")"
code="$(call "${WORK}/order-noauth.json" POST order /orders "${J[@]}" -d "{\"sale_id\":\"${SALE_ID}\"}")"
expect "order without a token" "${code}" 401 "${WORK}/order-noauth.json"
code="$(call "${WORK}/sale-after.json" GET stock "/stock/sales/${SALE_ID}")"
expect "stock view after checkout" "${code}" 200 "${WORK}/sale-after.json"
jq -e '.stock_remaining == 9' "${WORK}/sale-after.json" >/dev/null \
  || die "stock after one checkout: expected 9 remaining: $(cat "${WORK}/sale-after.json")"
ok "order: GET 200, replay 200 (same order), list 200 ([${ORDER_ID}]), no token 401; stock now 9/10"

# --------------------------------------------- 3. what actually ran, how
say "function processes"
for fn in "${FUNCTIONS[@]}"; do
  pid="$(emulator_procs | awk -v f="/debug/${fn}" 'substr($2, length($2) - length(f) + 1) == f { print $1 }' | head -1)"
  [[ -n "${pid}" ]] || die "${fn}: no ${fn} process under the emulator: $(emulator_procs | tr '\n' ';')"
  ppid="$(awk '{ print $4 }' "/proc/${pid}/stat")"
  runtime_api="$(tr '\0' '\n' <"/proc/${pid}/environ" | sed -n 's/^AWS_LAMBDA_RUNTIME_API=//p')"
  [[ "${runtime_api}" =~ ^(http://)?127\.0\.0\.1:${LAMBDA_PORT}/ ]] \
    || die "${fn}: process ${pid} has AWS_LAMBDA_RUNTIME_API='${runtime_api}', not the emulator on 127.0.0.1:${LAMBDA_PORT}"
  tr '\0' '\n' <"/proc/${pid}/environ" | grep -qx "AWS_LAMBDA_FUNCTION_NAME=${fn}" \
    || die "${fn}: process ${pid} is not AWS_LAMBDA_FUNCTION_NAME=${fn}"
  listeners="$(ss -Htlnp | grep -c "pid=${pid}," || true)"
  [[ "${listeners}" == 0 ]] || die "${fn}: process ${pid} listens on a port; on Lambda it must only poll the runtime API"
  rss="$(awk '/^VmRSS:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/${pid}/status")"
  ok "${fn}: pid ${pid} ($(readlink "/proc/${pid}/exe"), child of the emulator ${ppid}): AWS_LAMBDA_RUNTIME_API=${runtime_api}, no listening socket, RSS ${rss} (dev build)"
done
starts="$(grep -c '"message":"starting"' "${WORK}/watch.log" || true)"
[[ "${starts}" -ge 3 ]] || die "expected the three functions' JSON 'starting' lines in the emulator log, found ${starts}"
ok "the functions' JSON logs reach the emulator's output (${starts} 'starting' lines)"

# ------------------------------------------------------------------ 4. stop
say "stopping the emulator and its functions"
stop_emulator
while read -r pid exe; do
  [[ -n "${pid}" && "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == "${exe}" ]] && die "process ${pid} (${exe}) survived"
done <<<"${STOPPED_PROCS}"
ok "emulator stopped; none of its $(grep -c . <<<"${STOPPED_PROCS}") processes is left ($(awk '{ n = split($2, a, "/"); printf "%s%s", sep, a[n]; sep = ", " }' <<<"${STOPPED_PROCS}"))"

say "summary (run ${RUN_ID})"
for fn in "${FUNCTIONS[@]}"; do
  printf '  %-6s first invocation through the emulator (dev build): %s ms\n' "${fn}" "${COLD[${fn}]}"
done
printf 'test-lambda: all checks passed in %d s\n' "$((SECONDS - STARTED))"
