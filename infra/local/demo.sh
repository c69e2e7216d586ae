#!/usr/bin/env bash
# A small demo sale against a running stack: 5 units, 8 buyers at once.
# Prints who got what, then the sale view. Usage: demo.sh [BASE_URL]
set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
ADMIN=${ADMIN_TOKEN:-dev-admin-token}
SALE="demo-$(date +%s)"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

echo "demo: sale $SALE with 5 units, 8 buyers at the same moment"
# The long-lived 'demo' sale the README's curl lines use (409 if it exists).
curl -s -o /dev/null -XPOST "$BASE/stock/sales" -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d '{"sale_id":"demo","name":"Demo phones","stock":100,"per_user_limit":2}'
curl -fsS -XPOST "$BASE/stock/sales" -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d "{\"sale_id\":\"$SALE\",\"name\":\"Demo sale\",\"stock\":5}" >/dev/null

tokens=()
for i in $(seq 1 8); do
  user="buyer-$SALE-$i"
  pass="demo-password-$i-long"
  curl -s -o /dev/null -XPOST "$BASE/auth/register" -H 'content-type: application/json' -d "{\"username\":\"$user\",\"password\":\"$pass\"}"
  tokens+=("$(curl -fsS -XPOST "$BASE/auth/login" -H 'content-type: application/json' -d "{\"username\":\"$user\",\"password\":\"$pass\"}" | json '["access_token"]')")
done
out=$(mktemp -d)
for i in "${!tokens[@]}"; do
  curl -s -o "$out/$i.json" -w '%{http_code}' -XPOST "$BASE/orders" -H "authorization: Bearer ${tokens[$i]}" \
    -H 'content-type: application/json' -d "{\"sale_id\":\"$SALE\"}" >"$out/$i.code" &
done
wait
ok=0; sold=0
for i in "${!tokens[@]}"; do
  code=$(cat "$out/$i.code")
  case "$code" in
    201) ok=$((ok + 1)); echo "  buyer $((i + 1)): 201 order $(json '["order_id"]' <"$out/$i.json")" ;;
    *) sold=$((sold + 1)); echo "  buyer $((i + 1)): $code $(json '["error"]["code"]' <"$out/$i.json")" ;;
  esac
done
rm -rf "$out"
echo "  confirmed: $ok, refused: $sold"
echo "  sale view: $(curl -fsS "$BASE/stock/sales/$SALE")"
[ "$ok" -eq 5 ] || { echo "demo: expected exactly 5 confirmed orders" >&2; exit 1; }
