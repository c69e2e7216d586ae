#!/usr/bin/env bash
# Redis as the clouds run it, on loopback: a TLS-only node and a Redis Cluster.
#
#   redis.sh tls start|stop|status       one node that speaks only TLS, with a
#                                        CA made on the spot (openssl)
#   redis.sh cluster start|stop|status   3 primaries + 3 replicas
#   redis.sh cluster kill-primary SLOT_KEY
#                                        SIGKILL the primary that owns the key's
#                                        slot (its replica takes over), print its port
#   redis.sh cluster revive              start every node that is down again
#   redis.sh cluster restart-empty       stop all nodes, drop their data (keep
#                                        the topology), start them again
#   redis.sh env tls|cluster             the REDIS_* lines a function needs
#
# Ports (overridable): REDIS_TLS_PORT=6390; REDIS_CLUSTER_PORTS="7001 ... 7006"
# (the first three become the primaries). State under .local/redis-tls and
# .local/redis-cluster (STACK_DIR overrides .local). Each node's pid is in
# .local/pids/redis-*.pid, so `stack.sh down` stops them with the rest.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL=${STACK_DIR:-"$ROOT/.local"}
PIDS="$LOCAL/pids"
LOGS="$LOCAL/logs"
TLS_PORT=${REDIS_TLS_PORT:-6390}
read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003 7004 7005 7006}"
TLS_DIR="$LOCAL/redis-tls"
CLUSTER_DIR="$LOCAL/redis-cluster"
mkdir -p "$PIDS" "$LOGS"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$name did not become ready in ${secs}s (logs: $LOGS)"
}

stop_pidfile() { # file
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# ------------------------------------------------------------------ TLS

tls_cli() { redis-cli --tls --cacert "$TLS_DIR/ca.crt" -h 127.0.0.1 -p "$TLS_PORT" "$@"; }

# A throwaway CA and a server certificate for localhost and 127.0.0.1: what
# a private CA (REDIS_CA_FILE) looks like in production.
make_certificates() {
  [ -f "$TLS_DIR/server.crt" ] && return 0
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  mkdir -p "$TLS_DIR"
  say "making a CA and a server certificate in .local/redis-tls"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=flashsale local CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext
  )
}

tls_start() {
  if tls_cli ping >/dev/null 2>&1; then return 0; fi
  make_certificates
  say "starting a TLS-only Redis on 127.0.0.1:$TLS_PORT (CA: .local/redis-tls/ca.crt)"
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$TLS_PORT" \
    --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
    --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no \
    --dir "$TLS_DIR" --appendonly yes --save '' --daemonize no \
    >"$LOGS/redis-tls.log" 2>&1 &
  echo $! >"$PIDS/redis-tls.pid"
  wait_for "TLS Redis" 15 tls_cli ping
}

# ------------------------------------------------------------- cluster

cli_at() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

node_start() { # port
  local port=$1 dir="$CLUSTER_DIR/$1"
  if cli_at "$port" ping >/dev/null 2>&1; then return 0; fi
  mkdir -p "$dir"
  # A short node timeout makes failover take seconds, not the default 15 s.
  redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --dir "$dir" --appendonly yes --save '' --daemonize no --protected-mode yes \
    --repl-diskless-sync-delay 0 \
    >>"$LOGS/redis-cluster-$port.log" 2>&1 &
  echo $! >"$PIDS/redis-cluster-$port.pid"
  wait_for "cluster node :$port" 15 cli_at "$port" ping
}

cluster_ok() { # every node answers and sees a healthy cluster
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    cli_at "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

cluster_start() {
  local port formed=0
  for port in "${CLUSTER_PORTS[@]}"; do node_start "$port"; done
  # Nodes restarted on their saved nodes.conf are a cluster already (they
  # may still be greeting each other): create one only from fresh nodes,
  # each knowing nobody but itself.
  for port in "${CLUSTER_PORTS[@]}"; do
    [ "$(cli_at "$port" cluster info | awk -F: '/^cluster_known_nodes/ {print $2}' | tr -d '\r')" = 1 ] || formed=1
  done
  if [ $formed = 0 ]; then
    say "creating a Redis Cluster on ${CLUSTER_PORTS[*]} (3 primaries, 1 replica each)"
    local nodes=()
    for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$LOGS/redis-cluster-create.log" 2>&1 ||
      die "redis-cli --cluster create failed (see $LOGS/redis-cluster-create.log)"
  fi
  wait_for "Redis Cluster" 30 cluster_ok
  # Every primary must have a replica before the stack counts as up:
  # failover tests need one to promote.
  wait_for "cluster replicas" 30 replicas_attached
  wait_for "cluster replication" 30 replicas_synced
  say "Redis Cluster ready: $(cluster_url)"
}

# A replica whose link to its primary has never come up (its first sync not
# done yet) refuses to fail over: Redis counts its data as infinitely old
# ("Disconnected from master for longer than allowed"). `cluster replicas`
# says only that the cluster bus is connected, so check replication itself.
replicas_synced() {
  local port info
  for port in "${CLUSTER_PORTS[@]}"; do
    info=$(cli_at "$port" info replication) || return 1
    case $info in *role:slave*) grep -q '^master_link_status:up' <<<"$info" || return 1 ;; esac
  done
}

replicas_attached() {
  local masters
  masters=$(cli_at "${CLUSTER_PORTS[0]}" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {print $1}')
  local m
  for m in $masters; do
    cli_at "${CLUSTER_PORTS[0]}" cluster replicas "$m" | grep -q 'connected' || return 1
  done
}

cluster_url() {
  local port urls=()
  for port in "${CLUSTER_PORTS[@]:0:3}"; do urls+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${urls[*]}")
}

cluster_stop() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do stop_pidfile "$PIDS/redis-cluster-$port.pid"; done
}

# The port of the live primary that owns KEY's slot, as a live node sees it.
primary_for() { # key
  local port seen slot
  for port in "${CLUSTER_PORTS[@]}"; do
    if cli_at "$port" ping >/dev/null 2>&1; then seen=$port; break; fi
  done
  [ -n "${seen:-}" ] || die "no cluster node is up"
  slot=$(cli_at "$seen" cluster keyslot "$1")
  cli_at "$seen" cluster nodes | awk -v s="$slot" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        n = split($i, r, "-"); if (n == 1) r[2] = r[1]
        if (s + 0 >= r[1] + 0 && s + 0 <= r[2] + 0) { split($2, a, "[:@]"); print a[2]; exit }
      }
    }' | grep . || die "no live primary owns slot $slot"
}

cluster_kill_primary() { # key
  local port
  port=$(primary_for "$1")
  local f="$PIDS/redis-cluster-$port.pid"
  [ -f "$f" ] || die "no pid file for node :$port"
  kill -KILL "$(cat "$f")"
  rm -f "$f"
  echo "$port"
}

cluster_revive() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do node_start "$port"; done
  wait_for "Redis Cluster" 60 cluster_ok
  # A revived primary comes back as a replica: it can be promoted in turn
  # only once it has synced from the primary that replaced it.
  wait_for "cluster replication" 60 replicas_synced
}

cluster_restart_empty() {
  cluster_stop
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    rm -rf "$CLUSTER_DIR/$port/appendonlydir" "$CLUSTER_DIR/$port/dump.rdb"
  done
  cluster_start
}

# -------------------------------------------------------------- main

redis_env() { # tls|cluster
  case "$1" in
    tls) printf 'REDIS_MODE=single\nREDIS_URL=rediss://localhost:%s\nREDIS_CA_FILE=%s\n' "$TLS_PORT" "$TLS_DIR/ca.crt" ;;
    cluster) printf 'REDIS_MODE=cluster\nREDIS_URL=%s\n' "$(cluster_url)" ;;
    *) die "redis.sh env tls|cluster" ;;
  esac
}

command -v redis-server >/dev/null || die "redis-server is missing: run 'just install'"
case "${1:-}/${2:-}" in
  tls/start) tls_start ;;
  tls/stop) stop_pidfile "$PIDS/redis-tls.pid" ;;
  tls/status) tls_cli ping ;;
  cluster/start) cluster_start ;;
  cluster/stop) cluster_stop ;;
  cluster/status) cluster_ok && cli_at "${CLUSTER_PORTS[0]}" cluster nodes ;;
  cluster/kill-primary) cluster_kill_primary "${3:?key}" ;;
  cluster/revive) cluster_revive ;;
  cluster/restart-empty) cluster_restart_empty ;;
  env/*) redis_env "${2:-}" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
