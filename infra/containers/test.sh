#!/usr/bin/env bash
# Runs the three function images the way Knative Serving runs them, on this
# machine, and checks the parts of Knative's runtime contract the functions are
# responsible for (https://github.com/knative/specs/blob/main/specs/serving/runtime-contract.md):
#
#   * the image is FROM scratch, runs as uid 65532 (non-root), <= MAX_IMAGE_MB;
#   * it listens on $PORT and serves with K_SERVICE, K_REVISION and
#     K_CONFIGURATION set, under the securityContext and resource limits of
#     knative/*.yaml: read-only root filesystem, all capabilities dropped,
#     no-new-privileges, 1 CPU, 256 MiB (auth, order) / 128 MiB (stock);
#   * GET /healthz turns 200 once the backends answer, then a real call works
#     (auth: register, login, JWKS; stock: create a sale, read it; order:
#     checkout on that sale with a token from this run's key, read it back,
#     idempotent replay);
#   * logs are JSON lines on stdout, and the start line names the Knative
#     service and revision;
#   * on SIGTERM, with >= MIN_IN_FLIGHT requests in flight, every one of them
#     gets a complete HTTP response and the process exits 0 within GRACE_SECS.
#
# It also measures image sizes, cold start (process exec -> /healthz 200 ->
# first real call) and idle RSS.
#
# Backends: the local Redis and DynamoDB Local (REDIS_URL, DYNAMODB_ENDPOINT;
# loopback only). If they are down they are started with
# `infra/local/stack.sh backends` and stopped again at the end. Each run uses
# its own tables (ct-users-<run>, ct-ledger-<run>), sales and user, and deletes
# them afterwards; nothing else in Redis or DynamoDB is touched.
#
# Containers run with podman (runc, cgroupfs), host networking, and ports on
# 127.0.0.1 only (BIND_ADDR=127.0.0.1). Explicit --ulimit values below the
# machine's limits are required here: podman's default RLIMIT_NOFILE is above
# this machine's hard limit, and runc then fails with "error setting rlimits".
#
#   infra/containers/test.sh        (or: just test-containers)
#
# Environment: CARGO_TARGET_DIR (default target/), FLASHSALE_VERSION (0.1.0),
# MAX_IMAGE_MB (8), GRACE_SECS (10), BURST (24 requests), MIN_IN_FLIGHT (20),
# KEEP_WORKDIR=1 to keep the logs of a successful run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

VERSION="${FLASHSALE_VERSION:-0.1.0}"
FUNCTIONS=(auth stock order)
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DYNAMODB_ENDPOINT="${DYNAMODB_ENDPOINT:-http://127.0.0.1:8000}"
# The target is 8 MB (issue 13). The Redis TLS and cluster client and the
# waiting room had taken the images to 7.6 / 8.3 / 8.1 MB; the AWS SDK on an
# HTTP/1.1-only client of our own (common/src/aws_http.rs: no h2) brought
# them back to 6.7 / 7.4 / 7.2 MB (load/capacity.md).
MAX_IMAGE_MB="${MAX_IMAGE_MB:-8}"
GRACE_SECS="${GRACE_SECS:-10}"
BURST="${BURST:-24}"
MIN_IN_FLIGHT="${MIN_IN_FLIGHT:-20}"
# How long each burst request holds its body back: the request is in flight
# (headers read, body pending) when SIGTERM arrives.
HOLD_SECS="${HOLD_SECS:-1.5}"
STARTED=${SECONDS}

say() { printf '==> %s\n' "$*"; }
ok() { printf '  ok  %s\n' "$*"; }
warn() { printf '  WARN %s\n' "$*"; }
die() { printf 'test-containers: FAILED: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
image_of() { printf 'dev.local/flashsale/%s:%s' "$1" "${VERSION}"; }
# Microseconds since the epoch, without forking (bash 5).
now_us() { local t=${EPOCHREALTIME//[.,]/}; printf '%s' "${t}"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) / 1000 }'; }

# ------------------------------------------------------------------ checks
[[ "$(id -u)" -eq 0 ]] || die "run as root (podman with runc and host networking)"
for tool in curl jq ss awk redis-cli sha256sum; do
  have "${tool}" || die "${tool} not found"
done
if ! have podman; then
  have apt-get || die "podman not found"
  say "apt-get install podman runc"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
ENGINE=(podman --cgroup-manager=cgroupfs)
if have runc; then ENGINE=(podman --runtime runc --cgroup-manager=cgroupfs); fi

[[ "${REDIS_URL}" =~ ^redis://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]] \
  || die "REDIS_URL=${REDIS_URL}: this test only talks to a loopback Redis (redis://127.0.0.1:PORT)"
REDIS_PORT="${BASH_REMATCH[2]}"
[[ "${DYNAMODB_ENDPOINT}" =~ ^http://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]] \
  || die "DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT}: this test only talks to a loopback DynamoDB Local"
DDB_PORT="${BASH_REMATCH[2]}"

# --ulimit values at or below this shell's limits (soft and hard).
limit_at_most() { # wanted soft hard
  local v=$1
  [[ "$2" != unlimited && "$2" -lt "${v}" ]] && v=$2
  [[ "$3" != unlimited && "$3" -lt "${v}" ]] && v=$3
  printf '%s' "${v}"
}
NOFILE="$(limit_at_most 4096 "$(ulimit -Sn)" "$(ulimit -Hn)")"
NPROC="$(limit_at_most 2048 "$(ulimit -Su)" "$(ulimit -Hu)")"

RUN_ID="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK="$(mktemp -d "/tmp/flashsale-ct.${RUN_ID}.XXXX")"
USERS_TABLE="ct-users-${RUN_ID}"
LEDGER_TABLE="ct-ledger-${RUN_ID}"
SALE_ID="ct-${RUN_ID}"
USERNAME="ct_${RUN_ID}"
PASSWORD="ct-password-${RUN_ID}"
ADMIN_TOKEN="ct-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

CONTAINERS=()
STARTED_BACKEND_PIDS=()
declare -A RESULT

# ----------------------------------------------------------------- cleanup
ddb() { # target json
  curl -sS --max-time 5 -X POST "${DYNAMODB_ENDPOINT}/" \
    -H "X-Amz-Target: DynamoDB_20120810.$1" -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Date: 20250101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=00' \
    -d "$2"
}

cleanup() {
  local rc=$?
  set +e
  echo "test-containers: cleaning up (exit status ${rc})" >&2
  local c
  for c in "${CONTAINERS[@]}"; do "${ENGINE[@]}" rm -f "${c}" >/dev/null 2>&1; done
  # Background clients of an interrupted run.
  local j
  for j in $(jobs -p); do kill "${j}" 2>/dev/null; done
  wait 2>/dev/null
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
    echo "test-containers: logs and responses kept in ${WORK}" >&2
  else
    rm -rf "${WORK}"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

# ------------------------------------------------------------------ images
say "images: infra/containers/images.sh ensure (musl binaries; images rebuilt only if missing or stale)"
FLASHSALE_ENGINE=podman FLASHSALE_VERSION="${VERSION}" infra/containers/images.sh ensure

for fn in "${FUNCTIONS[@]}"; do
  img="$(image_of "${fn}")"
  bytes="$("${ENGINE[@]}" image inspect --format '{{.Size}}' "${img}")"
  user="$("${ENGINE[@]}" image inspect --format '{{.Config.User}}' "${img}")"
  layers="$("${ENGINE[@]}" history --format '{{.CreatedBy}}' "${img}" | grep -c 'FROM\|COPY\|ADD' || true)"
  [[ "${user}" == 65532:65532 ]] || die "${img} runs as '${user}', not 65532:65532"
  mb="$(awk -v b="${bytes}" 'BEGIN { printf "%.1f", b / 1000000 }')"
  awk -v b="${bytes}" -v m="${MAX_IMAGE_MB}" 'BEGIN { exit !(b <= m * 1000000) }' \
    || die "${img} is ${mb} MB, over ${MAX_IMAGE_MB} MB"
  RESULT[${fn}.size]="${mb} MB"
  ok "${img}: ${mb} MB, user ${user}, ${layers} content layers"
done
# FROM scratch: the image holds exactly the binary and the CA bundle.
for fn in "${FUNCTIONS[@]}"; do
  mnt="$("${ENGINE[@]}" image mount "$(image_of "${fn}")")"
  files="$(cd "${mnt}" && find . -type f -o -type l | sed 's|^\./||' | sort | tr '\n' ' ')"
  "${ENGINE[@]}" image unmount "$(image_of "${fn}")" >/dev/null
  [[ "${files}" == "app etc/ssl/certs/ca-certificates.crt " ]] \
    || die "$(image_of "${fn}") should hold only /app and the CA bundle; found: ${files}"
done
ok "image content: exactly /app and /etc/ssl/certs/ca-certificates.crt (FROM scratch, no shell)"

# ------------------------------------------------------------- containers
# Knative's securityContext (knative/*.yaml) and this machine's limits.
RUN_FLAGS=(
  --pull never --network host
  --ulimit "nofile=${NOFILE}:${NOFILE}" --ulimit "nproc=${NPROC}:${NPROC}"
  --read-only --cap-drop ALL --security-opt no-new-privileges --user 65532:65532
)
BACKEND_ENV=(
  -e STORE=aws -e "REDIS_URL=${REDIS_URL}" -e "DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT}"
  -e AWS_REGION=us-east-1 -e "USERS_TABLE=${USERS_TABLE}" -e "LEDGER_TABLE=${LEDGER_TABLE}"
  -e TOKEN_ISSUER=flashsale-auth -e TOKEN_AUDIENCE=flashsale -e LOG_LEVEL=info
)

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if [[ -z "$(ss -Htan "( sport = :${p} )")" ]]; then printf '%s' "${p}"; return 0; fi
  done
  die "no free port found"
}

say "one-shot containers: auth keygen, auth migrate, stock migrate (what the migrate Job runs)"
keys="$("${ENGINE[@]}" run --rm "${RUN_FLAGS[@]}" "$(image_of auth)" keygen)"
SIGNING_KEY="$(sed -n 's/^TOKEN_SIGNING_KEY=//p' <<<"${keys}")"
PUBLIC_KEY="$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' <<<"${keys}")"
[[ -n "${SIGNING_KEY}" && -n "${PUBLIC_KEY}" ]] || die "auth keygen printed no key pair"
ok "auth keygen: a fresh Ed25519 key pair for this run"
"${ENGINE[@]}" run --rm "${RUN_FLAGS[@]}" "${BACKEND_ENV[@]}" "$(image_of auth)" migrate | sed 's/^/  ok  auth migrate: /'
"${ENGINE[@]}" run --rm "${RUN_FLAGS[@]}" "${BACKEND_ENV[@]}" "$(image_of stock)" migrate | sed 's/^/  ok  stock migrate: /'

# http OUT METHOD URL [curl args]: prints the status code; body in OUT.
http() {
  local out=$1 method=$2 url=$3; shift 3
  curl -sS -o "${out}" -w '%{http_code}' --max-time 10 -X "${method}" "${url}" "$@" || true
}
expect() { # what code want body-file
  [[ "$2" == "$3" ]] || die "$1: HTTP $2, expected $3: $(head -c 400 "$4" 2>/dev/null)"
}
J=(-H 'Content-Type: application/json')

# The first real call of each function, made as soon as /healthz is 200.
first_call_auth() { # port out
  http "$2" POST "http://127.0.0.1:$1/auth/register" "${J[@]}" \
    -d "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}"
}
first_call_stock() {
  http "$2" POST "http://127.0.0.1:$1/stock/sales" "${J[@]}" -H "Authorization: Bearer ${ADMIN_TOKEN}" \
    -d "{\"sale_id\":\"${SALE_ID}\",\"name\":\"container test ${RUN_ID}\",\"stock\":100,\"per_user_limit\":50}"
}
first_call_order() {
  http "$2" POST "http://127.0.0.1:$1/orders" "${J[@]}" -H "Authorization: Bearer ${TOKEN}" \
    -H "Idempotency-Key: ct-first-${RUN_ID}" -d "{\"sale_id\":\"${SALE_ID}\",\"quantity\":1}"
}

# Polls /healthz from before the container exists, then makes the first
# real call; records when each succeeded (microseconds).
poll_then_call() { # fn port dir
  local fn=$1 port=$2 dir=$3 deadline code
  deadline=$(( $(now_us) + 30000000 ))
  while (( $(now_us) < deadline )); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:${port}/healthz" || true)"
    if [[ "${code}" == 200 ]]; then
      now_us >"${dir}/t_healthz"
      "first_call_${fn}" "${port}" "${dir}/first.json" >"${dir}/first.code"
      now_us >"${dir}/t_first"
      return 0
    fi
    sleep 0.005
  done
  return 1
}

# start FN PORT [extra podman args]: runs the function as Knative would and
# measures its cold start. Sets NAME and PID (host pid of the process).
start_function() {
  local fn=$1 port=$2; shift 2
  local dir="${WORK}/${fn}" poller t_run started_ns t_exec t_log first_log
  mkdir -p "${dir}"
  NAME="ct-${fn}-${RUN_ID}"
  poll_then_call "${fn}" "${port}" "${dir}" &
  poller=$!
  t_run="$(now_us)"
  CONTAINERS+=("${NAME}")
  "${ENGINE[@]}" run -d --name "${NAME}" \
    --log-driver k8s-file --log-opt "path=${dir}/container.log" \
    "${RUN_FLAGS[@]}" "${BACKEND_ENV[@]}" \
    -e "K_SERVICE=${fn}" -e "K_CONFIGURATION=${fn}" -e "K_REVISION=${fn}-00001" \
    -e "PORT=${port}" -e BIND_ADDR=127.0.0.1 \
    "$@" "$(image_of "${fn}")" >/dev/null
  wait "${poller}" || die "${fn}: /healthz not 200 within 30 s (logs: ${dir}/container.log)"
  PID="$("${ENGINE[@]}" inspect --format '{{.State.Pid}}' "${NAME}")"
  started_ns="$("${ENGINE[@]}" inspect --format '{{.State.StartedAt.UnixNano}}' "${NAME}")"
  # The process's own first log line ("starting", logged first thing in main).
  first_log="$(sed -n '1{s/^[^ ]* [^ ]* [^ ]* //;p}' "${dir}/container.log" | jq -r '.timestamp')"
  t_log="$(date -d "${first_log}" +%s%6N)"
  # podman records StartedAt once `runc start` returns, i.e. just after the
  # exec; the first log line is also just after it. The earlier of the two
  # is the best available stand-in for the exec itself.
  t_exec=$(( started_ns / 1000 ))
  (( t_log < t_exec )) && t_exec=${t_log}
  RESULT[${fn}.cold_healthz]="$(ms_between "${t_exec}" "$(cat "${dir}/t_healthz")")"
  RESULT[${fn}.cold_first]="$(ms_between "${t_exec}" "$(cat "${dir}/t_first")")"
  RESULT[${fn}.run_first]="$(ms_between "${t_run}" "$(cat "${dir}/t_first")")"
  ok "${fn}: running as ${NAME} (host pid ${PID}) on 127.0.0.1:${port}"
  ok "${fn}: cold start: exec -> /healthz 200 in ${RESULT[${fn}.cold_healthz]} ms, -> first real call done in ${RESULT[${fn}.cold_first]} ms (podman run -> first call: ${RESULT[${fn}.run_first]} ms)"
}

# What Knative relies on: non-root, no capabilities, listening on $PORT.
check_process() { # fn port
  local fn=$1 port=$2 uid caps listen
  uid="$(awk '/^Uid:/ { print $2 }' "/proc/${PID}/status")"
  caps="$(awk '/^CapEff:/ { print $2 }' "/proc/${PID}/status")"
  [[ "${uid}" == 65532 ]] || die "${fn}: process runs as uid ${uid}"
  [[ "${caps}" =~ ^0+$ ]] || die "${fn}: process has capabilities ${caps}"
  listen="$(ss -Htlnp "( sport = :${port} )" | grep "pid=${PID}," | awk '{ print $4 }' | sort -u | tr '\n' ' ')"
  [[ "${listen}" == "127.0.0.1:${port} " ]] || die "${fn}: expected to listen on 127.0.0.1:${port} only, found: ${listen}"
  ok "${fn}: uid 65532, no capabilities, listening on ${listen}(= \$PORT, loopback)"
}

idle_rss() { # fn
  local fn=$1 rss hwm anon file stats
  sleep 1
  rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/${PID}/status")"
  hwm="$(awk '/^VmHWM:/ { print $2 }' "/proc/${PID}/status")"
  anon="$(awk '/^RssAnon:/ { printf "%.1f", $2 / 1024 }' "/proc/${PID}/status")"
  file="$(awk '/^RssFile:/ { printf "%.1f", $2 / 1024 }' "/proc/${PID}/status")"
  stats="$("${ENGINE[@]}" stats --no-stream --format '{{.MemUsage}}' "${NAME}" 2>/dev/null | head -1 || true)"
  RESULT[${fn}.rss]="$(awk -v k="${rss}" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
  RESULT[${fn}.hwm]="$(awk -v k="${hwm}" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
  ok "${fn}: idle RSS ${RESULT[${fn}.rss]} = ${anon} MiB anonymous + ${file} MiB file-backed (the mapped binary); peak ${RESULT[${fn}.hwm]}; cgroup charge (podman stats): ${stats:-n/a}"
}

# k8s-file lines: "<time> <stdout|stderr> <F|P> <text>".
check_logs() { # fn
  local fn=$1 total stderr_lines bad start tagged untagged
  local log="${WORK}/${fn}/container.log"
  total="$(wc -l <"${log}")"
  stderr_lines="$(awk '$2 != "stdout"' "${log}" | wc -l)"
  [[ "${stderr_lines}" == 0 ]] || die "${fn}: ${stderr_lines} log lines on stderr: $(awk '$2 != "stdout"' "${log}" | head -3)"
  bad="$(sed 's/^[^ ]* [^ ]* [^ ]* //' "${log}" | while IFS= read -r line; do
    jq -e 'type == "object" and has("timestamp") and has("level") and has("message")' <<<"${line}" >/dev/null 2>&1 \
      || printf '%s\n' "${line}"; done | head -3)"
  [[ -z "${bad}" ]] || die "${fn}: log lines that are not JSON objects: ${bad}"
  start="$(sed 's/^[^ ]* [^ ]* [^ ]* //' "${log}" | jq -c 'select(.message == "starting")')"
  jq -e --arg s "${fn}" --arg r "${fn}-00001" '.k_service == $s and .k_revision == $r' <<<"${start}" >/dev/null \
    || die "${fn}: the starting log line lacks k_service/k_revision: ${start}"
  # Top-level fields, or those of the request span the line was logged in.
  tagged="$(sed 's/^[^ ]* [^ ]* [^ ]* //' "${log}" \
    | jq -c --arg s "${fn}" 'select((.k_service // .span.k_service) == $s and (.k_revision // .span.k_revision) == ($s + "-00001"))' | wc -l)"
  untagged="$(sed 's/^[^ ]* [^ ]* [^ ]* //' "${log}" \
    | jq -r 'select((.k_service // .span.k_service) == null) | .message' | sort -u | paste -sd, -)"
  ok "${fn}: ${total} log lines, all JSON on stdout; the start line has k_service=${fn}, k_revision=${fn}-00001"
  if [[ "${tagged}" != "${total}" ]]; then
    warn "${fn}: ${tagged} of ${total} log lines carry k_service/k_revision (start line, or request span); without them: ${untagged}"
  fi
  RESULT[${fn}.logs]="${tagged}/${total} lines tagged"
}

# Sends BURST requests whose bodies are held back HOLD_SECS after the
# headers, sends SIGTERM once >= MIN_IN_FLIGHT are accepted by the process,
# and checks that each got a complete response with status WANT and that the
# process exited 0 within GRACE_SECS.
term_under_load() { # fn port want request-fn
  local fn=$1 port=$2 want=$3 request=$4 i inflight deadline t_term t_exit code
  local dir="${WORK}/${fn}/burst"
  local -a clients=()
  mkdir -p "${dir}"
  for i in $(seq 1 "${BURST}"); do
    { rc=0; "${request}" "${port}" "${i}" >"${dir}/${i}.code" 2>"${dir}/${i}.err" || rc=$?; echo "${rc}" >"${dir}/${i}.rc"; } &
    clients+=($!)
  done
  # In flight = an established connection owned by the function's process
  # (accepted by it, not just queued in the kernel's backlog).
  deadline=$(( $(now_us) + 10000000 ))
  inflight=0
  while (( $(now_us) < deadline )); do
    inflight="$(ss -Htnp state established "( sport = :${port} )" | grep -c "pid=${PID}," || true)"
    (( inflight >= MIN_IN_FLIGHT )) && break
    sleep 0.02
  done
  (( inflight >= MIN_IN_FLIGHT )) || die "${fn}: only ${inflight} requests in flight before SIGTERM"
  sleep 0.2
  inflight="$(ss -Htnp state established "( sport = :${port} )" | grep -c "pid=${PID}," || true)"
  t_term="$(now_us)"
  "${ENGINE[@]}" kill --signal TERM "${NAME}" >/dev/null
  code="$(timeout $((GRACE_SECS + 5)) "${ENGINE[@]}" wait "${NAME}" || echo timeout)"
  t_exit="$(now_us)"
  for i in "${clients[@]}"; do wait "${i}" || true; done
  local exit_ms; exit_ms="$(ms_between "${t_term}" "${t_exit}")"
  [[ "${code}" == 0 ]] || die "${fn}: container exit code ${code} after SIGTERM (logs: ${WORK}/${fn}/container.log)"
  (( exit_ms <= GRACE_SECS * 1000 )) || die "${fn}: took ${exit_ms} ms to exit after SIGTERM (grace ${GRACE_SECS} s)"
  local good=0 failures=""
  for i in $(seq 1 "${BURST}"); do
    if [[ "$(cat "${dir}/${i}.rc")" == 0 && "$(cat "${dir}/${i}.code")" == "${want}" ]]; then
      good=$((good + 1))
    else
      failures+=" #${i}: curl rc $(cat "${dir}/${i}.rc"), HTTP $(cat "${dir}/${i}.code") $(head -c 200 "${dir}/${i}.err")"
    fi
  done
  [[ ${good} == "${BURST}" ]] || die "${fn}: ${good}/${BURST} requests got a complete ${want} response after SIGTERM;${failures}"
  grep -q 'shutdown signal received' "${WORK}/${fn}/container.log" || die "${fn}: no 'shutdown signal received' log line"
  grep -q 'in-flight requests finished' "${WORK}/${fn}/container.log" || die "${fn}: no 'in-flight requests finished' log line"
  RESULT[${fn}.term]="${inflight} in flight at SIGTERM, ${good}/${BURST} complete ${want}s, exit 0 after ${exit_ms} ms"
  ok "${fn}: SIGTERM with ${inflight} requests in flight: ${good}/${BURST} got complete HTTP ${want} responses; exited 0 after ${exit_ms} ms"
}

# A request whose JSON body arrives in two parts, HOLD_SECS apart
# (chunked upload from a pipe): the handler is waiting for it at SIGTERM.
slow_post() { # url body [curl args]
  local url=$1 body=$2; shift 2
  { printf '%s' "${body:0:10}"; sleep "${HOLD_SECS}"; printf '%s' "${body:10}"; } \
    | curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -X POST -T - -H 'Expect:' \
      -H 'Content-Type: application/json' "$@" "${url}"
}
burst_login() { # port i
  slow_post "http://127.0.0.1:$1/auth/login" "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}"
}
burst_create_sale() {
  slow_post "http://127.0.0.1:$1/stock/sales" \
    "{\"sale_id\":\"${SALE_ID}-b$2\",\"name\":\"burst $2\",\"stock\":10}" -H "Authorization: Bearer ${ADMIN_TOKEN}"
}
burst_checkout() {
  slow_post "http://127.0.0.1:$1/orders" "{\"sale_id\":\"${SALE_ID}\",\"quantity\":1}" \
    -H "Authorization: Bearer ${TOKEN}" -H "Idempotency-Key: ct-burst-${RUN_ID}-$2"
}

# -------------------------------------------------------------------- auth
say "auth (K_SERVICE=auth; knative/auth.yaml: 1 CPU, 256 MiB, HASH_WORKERS=1)"
port="$(free_port)"
# HASH_QUEUE is raised from the manifest's 4 so that all BURST logins queue
# inside the process (in Knative, containerConcurrency 4 keeps the rest in
# the queue-proxy instead). The BURST logins are all one account's, and every
# login takes one of the account's LOGIN_MAX_FAILURES attempts before it is
# hashed (concurrent ones included), so the limit is raised above BURST:
# this test is about draining on SIGTERM, not about throttling.
start_function auth "${port}" --cpus 1 --memory 256m \
  -e "TOKEN_SIGNING_KEY=${SIGNING_KEY}" -e HASH_WORKERS=1 -e HASH_QUEUE=32 \
  -e "LOGIN_MAX_FAILURES=$((BURST + 8))"
check_process auth "${port}"
expect "auth register" "$(cat "${WORK}/auth/first.code")" 201 "${WORK}/auth/first.json"
jq -e --arg u "${USERNAME}" '.username == $u and (.user_id | length > 0)' "${WORK}/auth/first.json" >/dev/null \
  || die "auth register: unexpected body $(cat "${WORK}/auth/first.json")"
code="$(http "${WORK}/auth/login.json" POST "http://127.0.0.1:${port}/auth/login" "${J[@]}" \
  -d "{\"username\":\"${USERNAME}\",\"password\":\"${PASSWORD}\"}")"
expect "auth login" "${code}" 200 "${WORK}/auth/login.json"
TOKEN="$(jq -r '.access_token' "${WORK}/auth/login.json")"
jq -e '.token_type == "Bearer" and .expires_in > 0' "${WORK}/auth/login.json" >/dev/null || die "auth login: bad body"
code="$(http "${WORK}/auth/jwks.json" GET "http://127.0.0.1:${port}/auth/jwks.json")"
expect "auth jwks" "${code}" 200 "${WORK}/auth/jwks.json"
jq -e --arg x "${PUBLIC_KEY}" '[.keys[] | select(.kty == "OKP" and .crv == "Ed25519" and .x == ($x | rtrimstr("=")))] | length == 1' \
  "${WORK}/auth/jwks.json" >/dev/null || die "auth jwks does not publish this run's public key: $(cat "${WORK}/auth/jwks.json")"
ok "auth: register 201, login 200 (EdDSA token), jwks.json 200 with this run's key"
idle_rss auth
check_logs auth
term_under_load auth "${port}" 200 burst_login
check_logs auth

# ------------------------------------------------------------------- stock
say "stock (K_SERVICE=stock; knative/stock.yaml: 1 CPU, 128 MiB)"
port="$(free_port)"
start_function stock "${port}" --cpus 1 --memory 128m -e "ADMIN_TOKEN=${ADMIN_TOKEN}"
check_process stock "${port}"
expect "stock create sale" "$(cat "${WORK}/stock/first.code")" 201 "${WORK}/stock/first.json"
code="$(http "${WORK}/stock/view.json" GET "http://127.0.0.1:${port}/stock/sales/${SALE_ID}")"
expect "stock view sale" "${code}" 200 "${WORK}/stock/view.json"
jq -e --arg s "${SALE_ID}" '.sale_id == $s and .stock_total == 100 and .stock_remaining == 100 and .per_user_limit == 50 and .status == "live"' \
  "${WORK}/stock/view.json" >/dev/null || die "stock view: unexpected body $(cat "${WORK}/stock/view.json")"
code="$(http "${WORK}/stock/unauth.json" POST "http://127.0.0.1:${port}/stock/sales" "${J[@]}" \
  -H 'Authorization: Bearer wrong' -d "{\"sale_id\":\"${SALE_ID}-x\",\"name\":\"x\",\"stock\":1}")"
expect "stock create with a wrong admin token" "${code}" 401 "${WORK}/stock/unauth.json"
ok "stock: create sale 201 (admin token), GET 200 (100/100, live), wrong token 401"
idle_rss stock
check_logs stock
term_under_load stock "${port}" 201 burst_create_sale
check_logs stock

# ------------------------------------------------------------------- order
say "order (K_SERVICE=order; knative/order.yaml: 1 CPU, 256 MiB)"
port="$(free_port)"
start_function order "${port}" --cpus 1 --memory 256m -e "TOKEN_PUBLIC_KEY=${PUBLIC_KEY}"
check_process order "${port}"
expect "order checkout" "$(cat "${WORK}/order/first.code")" 201 "${WORK}/order/first.json"
ORDER_ID="$(jq -r '.order_id' "${WORK}/order/first.json")"
jq -e --arg s "${SALE_ID}" '.sale_id == $s and .quantity == 1 and .status == "confirmed"' "${WORK}/order/first.json" >/dev/null \
  || die "order checkout: unexpected body $(cat "${WORK}/order/first.json")"
code="$(http "${WORK}/order/get.json" GET "http://127.0.0.1:${port}/orders/${ORDER_ID}" -H "Authorization: Bearer ${TOKEN}")"
expect "order get" "${code}" 200 "${WORK}/order/get.json"
jq -e --arg o "${ORDER_ID}" '.order_id == $o' "${WORK}/order/get.json" >/dev/null || die "order get: wrong order"
code="$(first_call_order "${port}" "${WORK}/order/replay.json")"
expect "order replay (same Idempotency-Key)" "${code}" 200 "${WORK}/order/replay.json"
jq -e --arg o "${ORDER_ID}" '.order_id == $o' "${WORK}/order/replay.json" >/dev/null || die "order replay: a different order"
code="$(http "${WORK}/order/noauth.json" POST "http://127.0.0.1:${port}/orders" "${J[@]}" -d "{\"sale_id\":\"${SALE_ID}\"}")"
expect "order checkout without a token" "${code}" 401 "${WORK}/order/noauth.json"
ok "order: checkout 201 with the auth container's token, GET 200, replay 200 (same order), no token 401"
idle_rss order
check_logs order
term_under_load order "${port}" 201 burst_checkout
check_logs order

# ----------------------------------------------------------------- summary
say "summary (run ${RUN_ID}, podman $("${ENGINE[@]}" version --format '{{.Client.Version}}' 2>/dev/null), ulimits nofile=${NOFILE} nproc=${NPROC})"
printf '  %-6s %-8s %-15s %-15s %-11s %-11s %s\n' fn image "exec->healthz" "exec->1st call" "idle RSS" "peak RSS" "SIGTERM"
for fn in "${FUNCTIONS[@]}"; do
  printf '  %-6s %-8s %-15s %-15s %-11s %-11s %s\n' "${fn}" "${RESULT[${fn}.size]% MB}MB" \
    "${RESULT[${fn}.cold_healthz]} ms" "${RESULT[${fn}.cold_first]} ms" "${RESULT[${fn}.rss]}" "${RESULT[${fn}.hwm]}" "${RESULT[${fn}.term]}"
done
printf 'test-containers: all checks passed in %d s\n' "$((SECONDS - STARTED))"
