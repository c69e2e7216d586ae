#!/usr/bin/env bash
# Side by side: our order function vs a minimal re-implementation of the
# seed's design (load/seed-express: Express + Redis DECRBY/INCRBY, Node cluster
# one worker per core), on the checkout route, same machine, same Redis.
#
#   load/bench-compare.sh [soldout] [success]        (default: both)
#
# Fairness: both servers get the same CPU set (taskset -c $SERVER_CPUS, default
# "1": one core each, i.e. "per pod"; the seed's cluster then has one worker),
# the same load generator (wrk, 1 thread, pinned to $GEN_CPU, default 0), the
# same connection count ($CONNS, 64), the same duration ($SECS, 10 s), the same
# tokens (Ed25519 JWTs both verify for real), and rounds ALTERNATE
# (ours, seed, seed, ours, ours, seed for ROUNDS=3) so drift hits both alike.
# What differs, by design: our success path writes the order durably to
# DynamoDB (Local) behind the Redis gate; the seed stand-in only records it in
# Redis. Our sold-out path (no Idempotency-Key) is answered from memory once
# the gate said sold out; the seed's costs two Redis round trips.
# Prints a table and the ratios (ours / seed) of median throughput and p99,
# and writes load/results/bench-compare-<ts>.json.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PATHS=("$@"); [ ${#PATHS[@]} -gt 0 ] || PATHS=(soldout success)
SERVER_CPUS=${SERVER_CPUS:-1}
GEN_CPU=${GEN_CPU:-0}
CONNS=${CONNS:-64}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
SEED_PORT=${SEED_PORT:-22090}
TS=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/load/results/bench-compare-$TS
mkdir -p "$OUT"
export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
say() { printf '\033[1m[bench-compare]\033[0m %s\n' "$*" >&2; }
GEN=(); PIN=()
if command -v taskset >/dev/null; then GEN=(taskset -c "$GEN_CPU"); PIN=(taskset -c "$SERVER_CPUS"); fi
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
[ -d load/seed-express/node_modules ] || (cd load/seed-express && npm ci --silent --no-audit --no-fund)

# Our functions on their own ports, pinned like the seed.
export ROUTER_PORT=0 AUTH_PORT=22081 STOCK_PORT=22082 ORDER_PORT=22083 METRICS_BASE=22180
export LOAD_STATE=$ROOT/load/.run/bench PIN_AUTH=$SERVER_CPUS PIN_STOCK=$SERVER_CPUS PIN_ORDER=$SERVER_CPUS
"$ROOT/infra/local/stack.sh" load up
SEED_PID=
cleanup() {
  [ -n "$SEED_PID" ] && kill -TERM "$SEED_PID" 2>/dev/null || true
  "$ROOT/infra/local/stack.sh" load down || true
}
trap cleanup EXIT
. "$ROOT/.local/secrets.env"
PORT=$SEED_PORT TOKEN_PUBLIC_KEY=$TOKEN_PUBLIC_KEY nohup "${PIN[@]}" node load/seed-express/server.js >"$OUT/seed.log" 2>&1 &
SEED_PID=$!
for _ in $(seq 1 100); do curl -fsS -m 1 "http://127.0.0.1:$SEED_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$SEED_PORT/healthz" >/dev/null || { cat "$OUT/seed.log"; exit 1; }
say "seed-express up: $(head -1 "$OUT/seed.log")"

OURS=http://127.0.0.1:$ORDER_PORT SEED=http://127.0.0.1:$SEED_PORT
ID=$(printf '%x' "$(date +%s)")
GONE=bench-$ID-gone LIVE=bench-$ID-live
sale() { curl -fsS -XPOST "$1" -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' -d "$2" >/dev/null; }
sale "http://127.0.0.1:$STOCK_PORT/stock/sales" "{\"sale_id\":\"$GONE\",\"name\":\"bench sold out\",\"stock\":1}"
sale "http://127.0.0.1:$STOCK_PORT/stock/sales" "{\"sale_id\":\"$LIVE\",\"name\":\"bench live\",\"stock\":10000000,\"per_user_limit\":10000000}"
sale "$SEED/admin/sales" "{\"sale_id\":\"$GONE\",\"stock\":0}"
sale "$SEED/admin/sales" "{\"sale_id\":\"$LIVE\",\"stock\":10000000}"
node load/mint-tokens.mjs --count 1000 --prefix "bench-$ID" --out "$OUT/tokens.json"
python3 -c 'import json,sys; print("\n".join(t["token"] for t in json.load(open(sys.argv[1]))["tokens"]))' "$OUT/tokens.json" >"$OUT/tokens.txt"
TOKEN1=$(head -1 "$OUT/tokens.txt")
curl -fsS -o /dev/null -XPOST "$OURS/orders" -H "authorization: Bearer $TOKEN1" -H 'content-type: application/json' -d "{\"sale_id\":\"$GONE\"}"
for who in "$OURS" "$SEED"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "$who/orders" -H "authorization: Bearer $TOKEN1" -H 'content-type: application/json' -d "{\"sale_id\":\"$GONE\"}")
  [ "$code" = 409 ] || { say "$who: sold-out sale answers $code, not 409"; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "$who/orders" -H "authorization: Bearer $TOKEN1" -H 'content-type: application/json' -d "{\"sale_id\":\"$LIVE\"}")
  [ "$code" = 201 ] || { say "$who: live sale answers $code, not 201"; exit 1; }
done

one() { # path who round
  local path=$1 who=$2 round=$3 url env=()
  url=$([ "$who" = ours ] && echo "$OURS" || echo "$SEED")
  if [ "$path" = soldout ]; then env=(SALE_ID="$GONE" TOKEN="$TOKEN1"); else env=(SALE_ID="$LIVE" TOKENS_FILE="$OUT/tokens.txt"); fi
  local f="$OUT/$path-$who-$round.txt"
  env "${env[@]}" "${GEN[@]}" wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 5s -s load/wrk/post.lua "$url" >"$f" 2>&1 || true
  python3 "$ROOT/load/caputil.py" bench-round "$f" "$path" "$who" "$round"
}

: >"$OUT/rounds.jsonl"
for path in "${PATHS[@]}"; do
  say "$path path: $ROUNDS alternating rounds, wrk -t1 -c$CONNS -d${SECS}s"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=(ours seed); else order=(seed ours); fi
    for who in "${order[@]}"; do
      one "$path" "$who" "$r" >>"$OUT/rounds.jsonl"
    done
  done
done

python3 - "$OUT/rounds.jsonl" "$ROOT/load/results/bench-compare-$TS.json" "$CONNS" "$SECS" "$SERVER_CPUS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
res = {"connections": int(sys.argv[3]), "seconds": int(sys.argv[4]), "server_cpus": sys.argv[5], "rounds": rows, "paths": {}}
print(f"\n| path | who | median req/s | median p50 | median p99 | wrong statuses |")
print("|---|---|---|---|---|---|")
for path in sorted({r["path"] for r in rows}, reverse=True):
    agg = {}
    for who in ("ours", "seed"):
        rs = [r for r in rows if r["path"] == path and r["who"] == who]
        agg[who] = {"rps": statistics.median(r["rps"] for r in rs), "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs), "wrong": sum(r["wrong_status"] for r in rs)}
        a = agg[who]
        print(f"| {path} | {who} | {a['rps']:.0f} | {a['p50_ms']:.2f} ms | {a['p99_ms']:.2f} ms | {a['wrong']} |")
    o, s = agg["ours"], agg["seed"]
    agg["throughput_ratio"] = o["rps"] / s["rps"] if s["rps"] else None
    agg["p99_ratio"] = o["p99_ms"] / s["p99_ms"] if s["p99_ms"] else None
    res["paths"][path] = agg
for path, agg in res["paths"].items():
    print(f"\n{path}: ours/seed throughput x{agg['throughput_ratio']:.2f}, p99 ours {agg['ours']['p99_ms']:.2f} ms vs seed {agg['seed']['p99_ms']:.2f} ms (ratio {agg['p99_ratio']:.2f})"
          f" -> goal >= 5x with lower p99: {'MET' if agg['throughput_ratio'] >= 5 and agg['p99_ratio'] < 1 else 'NOT MET'}")
open(sys.argv[2], "w").write(json.dumps(res, indent=2))
print(f"\nwritten: {sys.argv[2]}")
PY
rm -f "$OUT/tokens.json" "$OUT/tokens.txt"
