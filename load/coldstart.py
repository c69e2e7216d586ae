#!/usr/bin/env python3
"""Cold start of the function binaries: exec -> first real answer, N runs.

    load/coldstart.py [BIN_DIR] [RUNS]      (defaults: $CARGO_TARGET_DIR/release, 20)

For each run a fresh process is spawned (as Knative or Lambda would start an
instance) and polled every millisecond until it answers:
  auth   GET /healthz            200 (Redis and DynamoDB reached)
  stock  GET /stock/sales/<id>   200 (a real read of a sale made for the run)
  order  GET /healthz            200
The figure is the time from just before the exec to the end of that first
200. Backends: REDIS_URL / DYNAMODB_ENDPOINT (loopback Redis and DynamoDB
Local, as `just backends` starts them). The run uses its own ledger and
users tables (cs-*-<run>) and sale, and deletes them and the sale's Redis
keys at the end. Prints one line per function: median, p90, min, max (ms).
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
RUN = uuid.uuid4().hex[:8]
DDB = os.environ.get("DYNAMODB_ENDPOINT", "http://127.0.0.1:8000")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
SALE = f"coldstart-{RUN}"
ADMIN = "coldstart-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys() -> dict:
    out = subprocess.run([os.path.join(BIN, "auth"), "keygen"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


KEYS = keys()
ENV = dict(os.environ, STORE="aws", REDIS_URL=REDIS_URL, DYNAMODB_ENDPOINT=DDB, LOG_LEVEL="warn",
           USERS_TABLE=f"cs-users-{RUN}", LEDGER_TABLE=f"cs-ledger-{RUN}", BIND_ADDR="127.0.0.1")
SECRETS = {
    "auth": {"TOKEN_SIGNING_KEY": KEYS["TOKEN_SIGNING_KEY"]},
    "stock": {"TOKEN_PUBLIC_KEY": KEYS["TOKEN_PUBLIC_KEY"], "ADMIN_TOKEN": ADMIN},
    "order": {"TOKEN_PUBLIC_KEY": KEYS["TOKEN_PUBLIC_KEY"]},
}
PATHS = {"auth": "/healthz", "stock": f"/stock/sales/{SALE}", "order": "/healthz"}


def env_of(fn: str, port: int) -> dict:
    return dict(ENV, **SECRETS[fn], PORT=str(port))


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def once(fn: str) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([os.path.join(BIN, fn)], env=env_of(fn, port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if get(port, PATHS[fn]) == 200:
                    return (time.perf_counter() - t0) * 1000
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"{fn} exited with {proc.returncode} before answering")
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"{fn}: no 200 on {PATHS[fn]} within 30 s")
            time.sleep(0.001)
    finally:
        proc.terminate()
        proc.wait()


def ddb(target: str, body: dict) -> None:
    req = urllib.request.Request(DDB, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"DynamoDB_20120810.{target}",
        "X-Amz-Date": "20250101T000000Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, "
                         "SignedHeaders=host;x-amz-date, Signature=00"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except OSError:
        pass


def main() -> None:
    for fn in ("auth", "stock"):
        subprocess.run([os.path.join(BIN, fn), "migrate"], env=env_of(fn, 0), check=True, capture_output=True)
    # The sale the stock runs read.
    port = free_port()
    proc = subprocess.Popen([os.path.join(BIN, "stock")], env=env_of("stock", port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3000):
            try:
                if get(port, "/healthz") == 200:
                    break
            except OSError:
                time.sleep(0.01)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/stock/sales", method="POST",
                                     data=json.dumps({"sale_id": SALE, "name": "cold start", "stock": 10}).encode(),
                                     headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN}"})
        urllib.request.urlopen(req, timeout=5).read()
    finally:
        proc.terminate()
        proc.wait()
    try:
        for fn in ("auth", "stock", "order"):
            once(fn)  # page cache warm: what a platform's second instance meets
            ms = sorted(once(fn) for _ in range(RUNS))
            p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
            print(f"{fn:6} exec -> first 200 on {PATHS[fn]}: median {statistics.median(ms):.1f} ms, "
                  f"p90 {p90:.1f}, min {ms[0]:.1f}, max {ms[-1]:.1f} ({RUNS} runs, {BIN})")
    finally:
        for table in (f"cs-users-{RUN}", f"cs-ledger-{RUN}"):
            ddb("DeleteTable", {"TableName": table})
        port = REDIS_URL.rsplit(":", 1)[-1].strip("/")
        found = subprocess.run(["redis-cli", "-p", port, "--scan", "--pattern", f"*{SALE}*"],
                               capture_output=True, text=True).stdout.split()
        if found:
            subprocess.run(["redis-cli", "-p", port, "del", *found], capture_output=True)


if __name__ == "__main__":
    main()
