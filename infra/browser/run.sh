#!/usr/bin/env bash
# The waiting-room page in a real headless browser (issue 14, item 4):
#
#   infra/browser/run.sh
#
# 1. installs what is missing: Debian's chromium and chromium-driver (apt),
#    Playwright's Python package (pip; its own browser downloads are never
#    used: the test launches /usr/bin/chromium);
# 2. builds the three functions and the router (debug, $CARGO_TARGET_DIR);
# 3. starts them on free loopback ports against the running backends
#    (REDIS_URL, DYNAMODB_ENDPOINT: `just backends`), with key pairs of
#    their own (access tokens: auth signs; admissions: stock signs, order
#    verifies), the router in front so the page has its single origin;
# 4. runs infra/browser/room_test.py (screenshots in target/browser/);
# 5. stops everything it started, whatever happens (trap).
# Exit status: the test's (0 all scenarios passed), 2 when the stack or the
# tools could not be had.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[browser]\033[0m %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT:-http://127.0.0.1:8000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/debug
SHOTS=${SCREENSHOT_DIR:-$TARGET/browser}

# ---- tools
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
[ -x "$CHROMIUM" ] || die "chromium is not installed and could not be (apt-get install chromium chromium-driver)"
if ! python3 -c 'import playwright.sync_api' 2>/dev/null; then
  say "pip install -r infra/browser/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi
python3 -c 'import playwright.sync_api' || die "playwright (Python) is not installed and could not be"

# ---- build
say "building auth, stock, order, local-router (debug)"
cargo build --quiet -p auth -p stock -p order -p local-router --bins

# ---- stack on free ports
WORK=$(mktemp -d "${TMPDIR:-/tmp}/room-browser.XXXXXX")
PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
AUTH_PORT=$(free_port) STOCK_PORT=$(free_port) ORDER_PORT=$(free_port) ROUTER_PORT=$(free_port)

"$BIN/auth" keygen >"$WORK/access.env"
"$BIN/auth" keygen >"$WORK/admission.env"
key() { sed -n "s/^$2=//p" "$WORK/$1.env"; }
ADMIN=${ADMIN_TOKEN:-dev-admin-token}
# Nothing secret is inherited; each function gets only its own half.
unset TOKEN_SIGNING_KEY TOKEN_PUBLIC_KEY ADMISSION_SIGNING_KEY ADMISSION_PUBLIC_KEY ADMIN_TOKEN
export STORE=aws LOG_LEVEL=${LOG_LEVEL:-warn}

env TOKEN_SIGNING_KEY="$(key access TOKEN_SIGNING_KEY)" "$BIN/auth" migrate >"$WORK/migrate.log" 2>&1 ||
  { cat "$WORK/migrate.log" >&2; die "auth migrate failed (are the backends up? just backends)"; }
env TOKEN_PUBLIC_KEY="$(key access TOKEN_PUBLIC_KEY)" ADMIN_TOKEN="$ADMIN" "$BIN/stock" migrate >>"$WORK/migrate.log" 2>&1 ||
  { cat "$WORK/migrate.log" >&2; die "stock migrate failed"; }

start() { # name port env...
  local name=$1 port=$2
  shift 2
  env "$@" PORT="$port" "$BIN/$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}
start auth "$AUTH_PORT" TOKEN_SIGNING_KEY="$(key access TOKEN_SIGNING_KEY)"
start stock "$STOCK_PORT" TOKEN_PUBLIC_KEY="$(key access TOKEN_PUBLIC_KEY)" ADMIN_TOKEN="$ADMIN" \
  ADMISSION_SIGNING_KEY="$(key admission TOKEN_SIGNING_KEY)"
start order "$ORDER_PORT" TOKEN_PUBLIC_KEY="$(key access TOKEN_PUBLIC_KEY)" \
  ADMISSION_PUBLIC_KEY="$(key admission TOKEN_PUBLIC_KEY)"
ROUTER_LISTEN="127.0.0.1:$ROUTER_PORT" AUTH_URL="http://127.0.0.1:$AUTH_PORT" STOCK_URL="http://127.0.0.1:$STOCK_PORT" \
  ORDER_URL="http://127.0.0.1:$ORDER_PORT" "$BIN/local-router" >"$WORK/router.log" 2>&1 &
PIDS+=($!)

healthy() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null; }
for _ in $(seq 1 150); do
  if healthy "$AUTH_PORT" && healthy "$STOCK_PORT" && healthy "$ORDER_PORT" &&
    curl -s -m 2 -o /dev/null "http://127.0.0.1:$ROUTER_PORT/stock/sales/--probe--"; then
    break
  fi
  sleep 0.2
done
if ! healthy "$AUTH_PORT" || ! healthy "$STOCK_PORT" || ! healthy "$ORDER_PORT"; then
  tail -n 20 "$WORK"/*.log >&2
  die "the functions did not become healthy within 30 s"
fi
say "stack up: router :$ROUTER_PORT (auth :$AUTH_PORT stock :$STOCK_PORT order :$ORDER_PORT) on $REDIS_URL, $DYNAMODB_ENDPOINT"

# ---- the test
mkdir -p "$SHOTS"
rm -f "$SHOTS"/room-*.png # only this run's screenshots
set +e
BASE_URL="http://127.0.0.1:$ROUTER_PORT" ADMIN_TOKEN="$ADMIN" CHROMIUM="$CHROMIUM" SCREENSHOT_DIR="$SHOTS" \
  python3 "$HERE/room_test.py"
rc=$?
set -e
if [ "$rc" != 0 ]; then
  say "FAILED (exit $rc); the functions' logs:"
  tail -n 30 "$WORK"/*.log >&2
fi
exit "$rc"
