#!/usr/bin/env python3
"""Chaos scenarios against the chaos stack (infra/chaos/chaos.sh brings it up).

    run.py [--scenario all|redis-kill|dynamodb-freeze|dynamodb-restart|dynamodb-lost-answers|
                       function-kill|sigterm|slow-backend] [--quick]

Each scenario creates a fresh sale, runs a stampede of buyers (an asyncio pool
of keep-alive connections straight at the order function; every buyer has its
own access token and Idempotency-Key, and retries 503s and dropped connections
like a real client, within a deadline), injects its fault mid-sale, then audits:

  oversold       ledger_confirmed <= stock_total, and the admin orders list
                 agrees with it (same units, no user over the limit)
  lost           every order_id answered 201/200 is in the admin orders list
  leaked         held == 0 and balanced + consistent within the hold bound
                 (HOLD_TTL + sweep interval + slack) after the stampede, read
                 through the public sale view (which sweeps), no manual step;
                 then a mop-up wave of fresh buyers must sell exactly stock_total
  unclean        every answer is 200/201/409/503; 503 carries Retry-After and
                 the contract error body; nothing slower than the stated bound;
                 dropped connections only where the fault explains them (the
                 killed function's own in-flight and down window; after a
                 SIGTERM only connections the server had not taken yet)
  server errors  no 500 and no panic in the functions' logs during the scenario

The DynamoDB faults are the ones real DynamoDB has (unreachable, slow, a
restart behind the endpoint, answers lost after the commit); DynamoDB Local
SIGKILLed (the extra `dynamodb-kill`) also loses transactions it had
acknowledged, which real DynamoDB never does (see ddb_local_durability.py).

Exits non-zero on any violation. The backends are killed and restarted through
the stack's pid files and infra/local/stack.sh (`backends` only starts what is
not running); a killed function is restarted with the exact environment it had
(read from /proc), as an orchestrator would. Only 127.0.0.1, only the chaos
stack's ports (refuses the shared defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaoslib as cl  # noqa: E402

# The DynamoDB faults are the ones real DynamoDB has: unreachable or slow
# (freeze), a restart behind the endpoint (graceful), answers lost after the
# commit. SIGKILLing DynamoDB Local (`dynamodb-kill`, an extra) also loses
# writes it had acknowledged (ddb_local_durability.py), which real DynamoDB
# never does: it tests DynamoDB Local's durability, not the engine.
SCENARIOS = ["redis-kill", "dynamodb-freeze", "dynamodb-restart", "dynamodb-lost-answers", "function-kill",
             "sigterm", "slow-backend"]
EXTRAS = ["baseline", "redis-kill-keep-aof", "dynamodb-kill", "sweep-overlap"]
# These need the chaos stack on a Redis Cluster of its own (chaos.sh brings it
# up again with `--redis cluster` for them); `--scenario cluster` runs both.
CLUSTER_SCENARIOS = ["redis-cluster-failover", "redis-cluster-restart-empty"]
# The shared test bed's Redis (plain, TLS, cluster and its bus ports, port +
# 10000): never touched.
SHARED_REDIS_PORTS = {6379, 6390, *range(7001, 7007), *range(17001, 17007)}
# The stated bound: the gate agrees with the ledger (balanced and consistent,
# read through the admin breakdown) within this many seconds of the sale's
# hash slot answering again (a promoted replica, or the restarted cluster).
HEAL_BOUND = 5.0
DYNAMODB_FAULTS = ("dynamodb-kill", "dynamodb-freeze", "dynamodb-restart", "dynamodb-lost-answers")
CONTRACT_409 = {"sold_out", "limit_reached", "sale_not_live", "idempotency_key_reused"}


@dataclass
class Plan:
    buyers: int
    stock: int
    connections: int
    spread: float  # buyers arrive uniformly over this many seconds
    fault_at: float  # seconds after the first buyer
    down_for: float  # how long a killed process stays down
    freeze_for: float  # dynamodb-freeze: SIGSTOP -> SIGCONT (longer than LEDGER_TIMEOUT_MS, 3 s)
    hold_for: float  # dynamodb-lost-answers: every answer withheld for this long, then
    lose_for: float  # half the answers cut for this long
    tail: float  # buyers keep retrying this long after the last arrival (+ down_for)
    request_bound: float  # an answer slower than this is a hang (violation)
    slow_buyers: int
    slow_delay: float
    backend_timeout_ms: int
    ledger_timeout_ms: int


QUICK = Plan(buyers=1000, stock=600, connections=48, spread=5.0, fault_at=1.5, down_for=2.0,
             freeze_for=6.0, lose_for=3.0, hold_for=1.5,
             tail=4.0, request_bound=10.0, slow_buyers=150, slow_delay=3.0,
             backend_timeout_ms=1000, ledger_timeout_ms=1500)
FULL = Plan(buyers=3000, stock=1500, connections=64, spread=10.0, fault_at=3.0, down_for=4.0,
            freeze_for=10.0, lose_for=6.0, hold_for=3.0,
            tail=6.0, request_bound=10.0, slow_buyers=400, slow_delay=3.0,
            backend_timeout_ms=1000, ledger_timeout_ms=1500)

# ------------------------------------------------------------------ bookkeeping

STARTED: list[subprocess.Popen] = []  # what this script started itself (proxies, extra instances)
FROZEN: set[int] = set()  # pids this script SIGSTOPped and has not SIGCONTed yet


def thaw_frozen() -> None:
    """SIGCONT whatever we froze: a DynamoDB Local left stopped would hang the next user."""
    for pid in list(FROZEN):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        FROZEN.discard(pid)


def stop_started() -> None:
    thaw_frozen()
    for p in STARTED:
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
    STARTED.clear()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Report:
    name: str
    figures: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marks: dict = field(default_factory=dict)  # monotonic moments (e.g. "settled")

    def fail(self, msg: str) -> None:
        self.violations.append(msg)

    @property
    def verdict(self) -> str:
        return "PASS" if not self.violations else "FAIL"


class LogWatch:
    """Counts 500s and panics the functions logged while a scenario ran."""

    def __init__(self, stack: cl.Stack, names=("order", "stock", "auth", "order-slow")):
        self.files = {}
        for name in names:
            for f in stack.logs.glob(f"{name}*.log"):
                self.files[f] = f.stat().st_size

    def sweeps(self, sale_id: str) -> tuple[int, int, int]:
        """(sweep reports, hold resolutions they claim, unresolved) logged for one sale."""
        import re
        n = total = unresolved = 0
        for f, offset in self.files.items():
            try:
                with open(f, "rb") as fh:
                    fh.seek(offset)
                    for line in fh.read().decode(errors="replace").splitlines():
                        if "swept lapsed holds" in line and f'"sale_id":"{sale_id}"' in line:
                            m = re.search(r"settled: (\d+), released: (\d+), unresolved: (\d+)", line)
                            if m:
                                n += 1
                                total += int(m[1]) + int(m[2])
                                unresolved += int(m[3])
            except OSError:
                pass
        return n, total, unresolved

    def since(self) -> list[str]:
        bad = []
        for f, offset in self.files.items():
            try:
                with open(f, "rb") as fh:
                    fh.seek(offset)
                    for line in fh.read().decode(errors="replace").splitlines():
                        if "panicked" in line or '"status":500' in line or "status=500" in line:
                            bad.append(f"{f.name}: {line[:300]}")
            except OSError:
                pass
        return bad


# ------------------------------------------------------------------ stampede


class Stampede:
    """`n` buyers for one sale; each retries 503s and dropped connections."""

    def __init__(self, minter: cl.Minter, port: int, sale_id: str, n: int, *, connections: int,
                 spread: float, deadline: float, request_timeout: float, tag: str, retry: bool = True):
        self.port, self.sale_id, self.n = port, sale_id, n
        self.users = [cl.fake_user_id() for _ in range(n)]
        self.tokens = [minter.token(u, ttl=3600) for u in self.users]
        self.connections, self.spread, self.deadline = connections, spread, deadline
        self.request_timeout, self.tag, self.retry = request_timeout, tag, retry
        self.acked: dict[str, str] = {}  # order_id -> user_id
        self.bad_bodies: list[str] = []
        self.client: cl.AsyncClient | None = None
        self.t0 = 0.0

    async def run(self, fault=None) -> list[cl.Result]:
        self.client = cl.AsyncClient(self.port, self.connections, self.request_timeout)
        self.t0 = time.monotonic()
        tasks = [asyncio.create_task(self.buyer(i)) for i in range(self.n)]
        fault_task = asyncio.create_task(fault(self)) if fault else None
        await asyncio.gather(*tasks)
        if fault_task:
            await fault_task
        await self.client.close()
        return self.client.results

    async def buyer(self, i: int) -> None:
        arrive = self.t0 + (i * self.spread / self.n if self.n else 0)
        await asyncio.sleep(max(0.0, arrive - time.monotonic()))
        headers = {"authorization": f"Bearer {self.tokens[i]}", "idempotency-key": f"{self.tag}-{i}"}
        while True:
            r = await self.client.request("POST", "/orders", {"sale_id": self.sale_id}, headers, tag=str(i))
            if r.status in (200, 201):
                body = r.json() or {}
                oid = body.get("order_id")
                if (not oid or body.get("status") != "confirmed" or body.get("sale_id") != self.sale_id
                        or body.get("user_id") != self.users[i] or body.get("quantity") != 1):
                    self.bad_bodies.append(f"{r.status} {r.body[:200]!r}")
                if oid:
                    self.acked[oid] = self.users[i]
                return
            if r.status is not None and r.status != 503:
                return  # 409 (sold out / limit) is final; anything else is judged later
            if not self.retry or time.monotonic() > self.deadline:
                return
            if r.status == 503:
                try:
                    wait = min(float(r.headers.get("retry-after", "1")), 1.0)
                except ValueError:
                    wait = 1.0
                await asyncio.sleep(wait * random.uniform(0.3, 1.0))
            else:
                await asyncio.sleep(random.uniform(0.1, 0.4))


def classify(results: list[cl.Result], report: Report, bound: float, allowed_error) -> None:
    """Counts answers and flags everything that is not a clean answer."""
    statuses = Counter(r.status for r in results if r.status is not None)
    errors = Counter(r.error for r in results if r.error)
    allowed = Counter()
    bad_samples: dict[str, str] = {}
    for r in results:
        if r.status is None:
            if r.error != "timeout" and allowed_error(r):
                allowed[r.error] += 1
            else:
                bad_samples.setdefault(f"transport {r.error}", f"sent at +{r.sent:.3f}")
            continue
        if r.latency > bound:
            bad_samples.setdefault("slower than bound", f"{r.status} after {r.latency:.2f}s")
        if r.status == 503:
            if not r.headers.get("retry-after", "").isdigit():
                bad_samples.setdefault("503 without Retry-After", repr(r.headers))
            if not r.code:
                bad_samples.setdefault("503 without the error body", repr(r.body[:200]))
        elif r.status == 409:
            if r.code not in CONTRACT_409:
                bad_samples.setdefault("409 with an unknown code", repr(r.body[:200]))
        elif r.status not in (200, 201):
            bad_samples.setdefault(f"status {r.status}", repr(r.body[:200]))
        if "x-request-id" not in r.headers:
            bad_samples.setdefault("no x-request-id", f"{r.status}")
    lat = sorted(r.latency for r in results if r.status is not None)
    report.figures.update({
        "requests": len(results),
        "201": statuses.get(201, 0), "200 (replay)": statuses.get(200, 0),
        "409": statuses.get(409, 0), "503": statuses.get(503, 0),
        "other status": sum(v for k, v in statuses.items() if k not in (200, 201, 409, 503)),
        "conn errors (explained)": sum(allowed.values()),
        "conn errors (unexplained)": sum(errors.values()) - sum(allowed.values()),
        "p50 latency": f"{lat[len(lat) // 2]:.3f}s" if lat else "-",
        "p99 latency": f"{lat[int(len(lat) * 0.99)]:.3f}s" if lat else "-",
        "max latency": f"{lat[-1]:.3f}s" if lat else "-",
        "latency bound": f"{bound:.1f}s",
    })
    if errors:
        report.notes.append("transport errors: " + ", ".join(f"{k}={v}" for k, v in errors.items()))
    for what, sample in bad_samples.items():
        n = _count(results, what, bound, allowed_error)
        report.fail(f"unclean answer: {what} (x{n}; e.g. {sample})")


def _count(results, what, bound, allowed_error) -> int:
    n = 0
    for r in results:
        if what.startswith("transport "):
            n += r.status is None and f"transport {r.error}" == what and not (r.error != "timeout" and allowed_error(r))
        elif what == "slower than bound":
            n += r.status is not None and r.latency > bound
        elif what.startswith("status "):
            n += r.status is not None and f"status {r.status}" == what
        elif what.startswith("503"):
            n += r.status == 503
        elif what.startswith("409"):
            n += r.status == 409 and r.code not in CONTRACT_409
        else:
            n += r.status is not None and "x-request-id" not in r.headers
    return n


# ------------------------------------------------------------------ audit


def breakdown(stack: cl.Stack, sale_id: str) -> dict | None:
    r = cl.admin(stack, "GET", f"/stock/sales/{sale_id}/breakdown", timeout=10)
    return r.json() if r.status == 200 else None


_HOLD_TTL: dict[str, int] = {}


def hold_ttl_of(stack: cl.Stack, sale_id: str) -> int:
    """HOLD_TTL_SECONDS as the stock function reports it (read once per sale)."""
    if sale_id not in _HOLD_TTL:
        for _ in range(20):
            bd = breakdown(stack, sale_id)
            if bd:
                _HOLD_TTL[sale_id] = int(bd["hold_ttl_seconds"])
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"no breakdown for {sale_id}")
    return _HOLD_TTL[sale_id]


VIEW_LATENCY: list[float] = []


def settled(bd: dict | None) -> bool:
    return bool(bd and bd["balanced"] and bd["consistent"] and bd["held"] == 0 and bd["open_holds"] == 0)


def wait_settled(stack: cl.Stack, sale_id: str, limit: float) -> tuple[dict | None, float | None]:
    """Reads the public view (which sweeps lapsed holds) then the breakdown,
    until both stores agree and nothing is held, or `limit` seconds pass."""
    start = time.monotonic()
    bd = None
    last_note = start
    while time.monotonic() - start < limit:
        try:
            v = cl.call(stack.stock_port, "GET", f"/stock/sales/{sale_id}", timeout=30)
            VIEW_LATENCY.append(v.seconds)
            bd = breakdown(stack, sale_id)
        except OSError:
            VIEW_LATENCY.append(30.0)
            bd = None
        if settled(bd):
            return bd, time.monotonic() - start
        if time.monotonic() - last_note > 10:
            last_note = time.monotonic()
            log(f"  waiting for {sale_id} to settle: " + (
                f"held={bd['held']} open_holds={bd['open_holds']} balanced={bd['balanced']} "
                f"consistent={bd['consistent']}" if bd else "no breakdown"))
        time.sleep(0.25)
    return bd, None


def audit(stack: cl.Stack, minter: cl.Minter, report: Report, sale_id: str, stock: int,
          per_user_limit: int, acked: dict[str, str], since: float, plan: Plan,
          patience: float = 60.0) -> None:
    hold_ttl = hold_ttl_of(stack, sale_id)
    # The stated bound: a hold lapses hold_ttl after it was taken (the last
    # one no later than the end of the stampede, or than the moment the
    # faulty backend answered again, whichever is later) and is swept by the
    # next sale view at most one sweep interval (1 s) later; 3 s of slack for
    # a busy 2-core machine. We keep watching (up to `patience`) past the
    # bound, to report how long it really took.
    bound = hold_ttl + 1 + 3
    elapsed = time.monotonic() - since
    VIEW_LATENCY.clear()
    bd, took = wait_settled(stack, sale_id, max(bound - elapsed, 0.5) + patience)
    report.figures["hold bound"] = f"{bound}s after the stampede / recovery"
    if took is None:
        report.figures["settled after"] = "NOT settled"
        report.fail(f"stock not back within {bound + patience:.0f}s: {json.dumps(bd)}")
        try:
            rec = cl.admin(stack, "POST", f"/stock/sales/{sale_id}/reconcile", timeout=60)
            report.notes.append(f"after one `just reconcile`: {rec.status} {rec.body[:400]!r}")
        except OSError as e:
            report.notes.append(f"reconcile did not answer: {e}")
        bd, took2 = wait_settled(stack, sale_id, 10)
        if took2 is None:
            report.fail("still not settled after reconcile")
    else:
        report.marks["settled"] = since + elapsed + took
        report.figures["settled after"] = f"{elapsed + took:.1f}s"
        if elapsed + took > bound:
            report.fail(f"stock came back only {elapsed + took:.1f}s after the stampede/recovery "
                        f"(bound {bound}s)")
    report.figures["max sale-view latency (audit)"] = f"{max(VIEW_LATENCY):.2f}s" if VIEW_LATENCY else "-"
    slow_views = [t for t in VIEW_LATENCY if t > plan.request_bound]
    if slow_views:
        report.fail(f"public GET /stock/sales/{{id}} took up to {max(slow_views):.1f}s while sweeping "
                    f"(x{len(slow_views)} over the {plan.request_bound:.0f}s bound; 30s = our client gave up)")
    _audit_orders(stack, report, sale_id, stock, per_user_limit, acked, bd, "stampede")

    # Mop-up: fresh buyers until the sale is sold out; it must end with
    # exactly stock_total sold (guarantee 4: no unit stuck in limbo).
    mop_acked: dict[str, str] = {}
    for round_ in range(3):
        bd = breakdown(stack, sale_id)
        if bd is None or bd["stock_remaining"] <= 0 and bd["held"] == 0:
            break
        n = min(bd["stock_remaining"] + bd["held"] + 20, 3 * stock)
        st = Stampede(minter, stack.order_port, sale_id, n, connections=min(plan.connections, n),
                      spread=0.5, deadline=time.monotonic() + 15, request_timeout=plan.request_bound + 5,
                      tag=f"mop{round_}-{sale_id}")
        res = asyncio.run(st.run())
        mop_acked.update(st.acked)
        bad = [r for r in res if r.status not in (200, 201, 409, 503)]
        if bad:
            report.fail(f"mop-up got {len(bad)} unclean answers, e.g. {bad[0].status} {bad[0].error} {bad[0].body[:150]!r}")
        wait_settled(stack, sale_id, hold_ttl + 4)
    bd, _ = wait_settled(stack, sale_id, hold_ttl + 4)
    view = cl.call(stack.stock_port, "GET", f"/stock/sales/{sale_id}").json() or {}
    report.figures["mop-up orders"] = len(mop_acked)
    report.figures["final sold / stock"] = f"{bd['ledger_confirmed'] if bd else '?'} / {stock}"
    report.figures["final status"] = view.get("status")
    if not bd or bd["ledger_confirmed"] != stock or bd["stock_remaining"] != 0 or view.get("status") != "sold_out":
        report.fail(f"sale did not end sold_out with exactly stock_total sold: {json.dumps(bd)} view={view}")
    _audit_orders(stack, report, sale_id, stock, per_user_limit, {**acked, **mop_acked}, bd, "final")


def _audit_orders(stack, report, sale_id, stock, per_user_limit, acked, bd, when) -> None:
    r = cl.admin(stack, "GET", f"/stock/sales/{sale_id}/orders", timeout=30)
    if r.status != 200:
        report.fail(f"{when}: admin orders list answered {r.status}")
        return
    orders = r.json()["orders"]
    ids = [o["order_id"] for o in orders]
    units = sum(o["quantity"] for o in orders)
    per_user = Counter()
    for o in orders:
        per_user[o["user_id"]] += o["quantity"]
    lost = [oid for oid in acked if oid not in set(ids)]
    if when == "stampede":
        report.figures.update({
            "acked orders": len(acked),
            "lost acked": len(lost),
            "ledger units": units,
            "confirmed, never acked": len(set(ids) - set(acked)),
        })
    if lost:
        report.fail(f"{when}: {len(lost)} acknowledged orders missing from the ledger, e.g. {lost[:3]}")
    if len(ids) != len(set(ids)):
        report.fail(f"{when}: duplicate order ids in the admin list")
    if units > stock:
        report.fail(f"{when}: OVERSOLD: {units} units confirmed of {stock}")
    if bd is not None:
        if bd["ledger_confirmed"] > stock:
            report.fail(f"{when}: OVERSOLD: ledger_confirmed {bd['ledger_confirmed']} > {stock}")
        if bd["ledger_confirmed"] != units:
            report.fail(f"{when}: ledger_confirmed {bd['ledger_confirmed']} != {units} units in the orders list")
    over = {u: q for u, q in per_user.items() if q > per_user_limit}
    if over:
        report.fail(f"{when}: {len(over)} users over the per-user limit {per_user_limit}")


# ------------------------------------------------------------------ faults


def health(port: int) -> bool:
    try:
        return cl.call(port, "GET", "/healthz", timeout=2).status == 200
    except OSError:
        return False


def restart_function(stack: cl.Stack, name: str, env: dict[str, str], exe: str, port: int) -> int:
    """Starts a function again exactly as it ran before (same binary, same env)."""
    logf = open(stack.logs / f"{name}.log", "ab")
    p = subprocess.Popen([exe], env=env, stdout=logf, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(cl.ROOT))
    logf.close()
    (stack.pids / f"{name}.pid").write_text(f"{p.pid}\n")
    if not cl.wait_until(lambda: health(port), 60, 0.1):
        raise RuntimeError(f"{name} did not become healthy after restart")
    return p.pid


def reset_functions(stack: cl.Stack) -> None:
    start_backends(stack)
    for name, port in (("order", stack.order_port), ("stock", stack.stock_port)):
        pid = stack.pid(name)
        if pid is None:
            continue
        env, exe = stack.process_env(name), stack.binary(name)
        cl.kill_and_wait(pid, signal.SIGTERM, timeout=20) or cl.kill_and_wait(pid, signal.SIGKILL)
        restart_function(stack, name, env, exe, port)


def start_backends(stack: cl.Stack) -> None:
    """`stack.sh backends`: starts (like stack.sh does) whatever is not running."""
    logf = open(stack.logs / "chaos-stack-sh.log", "ab")
    try:
        subprocess.run([str(cl.ROOT / "infra/local/stack.sh"), "backends"], env=stack.stack_env(),
                       stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       timeout=120, check=True, start_new_session=True)
    finally:
        logf.close()


def fault_backend(stack: cl.Stack, which: str, plan: Plan, ev: dict, wipe: bool, sig: int = signal.SIGKILL):
    """`which` stopped by `sig` (SIGKILL, or SIGTERM: a graceful stop), restarted
    `down_for` later by stack.sh on the same data (Redis: emptied if `wipe`)."""
    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))

        def act():
            pid = stack.pid(which)
            if pid is None:
                raise RuntimeError(f"{which} is not running")
            ev["fault"] = time.monotonic()
            if not cl.kill_and_wait(pid, sig, timeout=30):
                raise RuntimeError(f"{which} (pid {pid}) did not exit within 30s of {signal.Signals(sig).name}")
            ev["down"] = time.monotonic()
            if wipe:
                shutil.rmtree(stack.stack_dir / "redis", ignore_errors=True)
            time.sleep(plan.down_for)
            ev["restart"] = time.monotonic()
            start_backends(stack)
            ev["backend_up"] = time.monotonic()
            cl.wait_until(lambda: health(stack.order_port), 60, 0.1)
            ev["ready"] = time.monotonic()

        await asyncio.to_thread(act)

    return fault


def fault_freeze(stack: cl.Stack, plan: Plan, ev: dict):
    """DynamoDB Local SIGSTOPped for `freeze_for`, then SIGCONTed: unreachable
    and then slow, as real DynamoDB is in a network partition or a brownout.
    Connections are still accepted (the kernel does that), nothing answers;
    requests sent meanwhile are executed after SIGCONT, when the engine may
    long have given up on them (answers after the timeout)."""
    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))

        def act():
            pid = stack.pid("dynamodb")
            if pid is None:
                raise RuntimeError("dynamodb is not running")
            ev["fault"] = time.monotonic()
            FROZEN.add(pid)
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(plan.freeze_for)
            finally:
                thaw_frozen()
            ev["restart"] = ev["backend_up"] = time.monotonic()
            cl.wait_until(lambda: health(stack.order_port), 60, 0.1)
            ev["ready"] = time.monotonic()

        await asyncio.to_thread(act)

    return fault


def fault_lost_answers(control: int, plan: Plan, ev: dict):
    """Through slowproxy, between the order instance and DynamoDB Local: every
    answer withheld (silence until the client gives up) for `hold_for`, then
    the next two answers and each later one with probability 1/2 cut
    (connection reset) for `lose_for`. Each such request reached DynamoDB and
    was executed; only its answer is lost. A sale has one transaction in
    flight at a time, so a lose-everything window hits one batch; cutting
    half of them hits many, and leaves the SDK's retries (same
    ClientRequestToken) a mix of answered and cut. The hold comes first, in
    the thick of the stampede, so that it surely meets a transaction."""
    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))
        ev["fault"] = time.monotonic()
        await asyncio.to_thread(proxy_ctl, control, f"hold-for {plan.hold_for}")
        await asyncio.sleep(plan.hold_for)
        await asyncio.to_thread(proxy_ctl, control, "drop 2")
        await asyncio.to_thread(proxy_ctl, control, f"drop-ratio 0.5 {plan.lose_for}")
        await asyncio.sleep(plan.lose_for)
        ev["restart"] = ev["backend_up"] = ev["ready"] = time.monotonic()

    return fault


class ProxiedOrder:
    """An extra order instance (the stack's binary and environment, its own
    port, no metrics) whose DynamoDB is reached through slowproxy; Redis as
    the stack's. Stopped, with its proxy, on exit."""

    def __init__(self, stack: cl.Stack, name: str, env_extra: dict[str, str] | None = None,
                 max_seconds: int = 300):
        self.stack, self.name = stack, name
        self.listen, self.control, self.port = cl.free_port(), cl.free_port(), cl.free_port()
        self.env_extra, self.max_seconds = env_extra or {}, max_seconds
        self.proxy: subprocess.Popen | None = None
        self.inst: subprocess.Popen | None = None

    def __enter__(self) -> "ProxiedOrder":
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> "ProxiedOrder":
        env = self.stack.process_env("order")
        exe = self.stack.binary("order")
        with open(self.stack.logs / f"slowproxy-{self.name}.log", "ab") as logf:
            self.proxy = subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "slowproxy.py"), "--listen", str(self.listen),
                 "--upstream", str(self.stack.dynamodb_port), "--control", str(self.control),
                 "--max-seconds", str(self.max_seconds)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        STARTED.append(self.proxy)
        env.pop("METRICS_PORT", None)
        env.update(PORT=str(self.port), DYNAMODB_ENDPOINT=f"http://127.0.0.1:{self.listen}", **self.env_extra)
        if not cl.wait_until(lambda: cl.port_open(self.control), 10):
            raise RuntimeError("slowproxy did not start")
        with open(self.stack.logs / f"order-{self.name}.log", "ab") as logf:
            self.inst = subprocess.Popen([exe], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        STARTED.append(self.inst)
        if not cl.wait_until(lambda: health(self.port), 60):
            raise RuntimeError(f"the extra order instance ({self.name}) never became healthy")
        return self

    def stats(self) -> dict[str, str]:
        words = proxy_ctl(self.control, "stats").split()
        return dict(zip(words[::2], words[1::2]))

    def __exit__(self, *_exc) -> None:
        for p in (self.inst, self.proxy):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def fault_function(stack: cl.Stack, sig: int, plan: Plan, ev: dict):
    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))

        def act():
            pid = stack.pid("order")
            env = stack.process_env("order")
            exe = stack.binary("order")
            ev["fault"] = time.monotonic()
            if not cl.kill_and_wait(pid, sig, timeout=30):
                raise RuntimeError(f"order (pid {pid}) did not exit within 30s of signal {sig}")
            ev["down"] = time.monotonic()
            time.sleep(plan.down_for)
            ev["restart"] = time.monotonic()
            restart_function(stack, "order", env, exe, stack.order_port)
            ev["ready"] = time.monotonic()

        await asyncio.to_thread(act)

    return fault


# ------------------------------------------------------------------ Redis Cluster


class ChaosCluster:
    """The chaos stack's own Redis Cluster (REDIS_CLUSTER_PORTS, state under
    STACK_DIR), driven through infra/local/redis.sh. Refuses to run unless the
    ports are set explicitly and are not the shared test bed's (redis.sh
    would default to 7001-7006), and unless the chaos stack's functions really
    run in cluster mode on exactly these nodes."""

    def __init__(self, stack: cl.Stack):
        self.stack = stack
        raw = os.environ.get("REDIS_CLUSTER_PORTS", "").split()
        if not raw:
            raise RuntimeError("REDIS_CLUSTER_PORTS is not set: the cluster scenarios need the chaos stack's own "
                               "cluster (infra/chaos/chaos.sh sets it; redis.sh would default to the shared 7001-7006)")
        self.ports = [int(p) for p in raw]
        taken = (set(self.ports) | {p + 10000 for p in self.ports}) & SHARED_REDIS_PORTS
        if taken:
            raise RuntimeError(f"refusing the shared Redis ports {sorted(taken)} (a node's bus is its port + 10000)")
        env = stack.process_env("order")
        if env.get("REDIS_MODE") != "cluster":
            raise RuntimeError("the chaos stack is not on a Redis Cluster (REDIS_MODE="
                               f"{env.get('REDIS_MODE')!r}): bring it up with infra/chaos/chaos.sh up --redis cluster")
        seeds = {int(u.rsplit(":", 1)[1]) for u in env.get("REDIS_URL", "").split(",") if ":" in u}
        if not seeds or not seeds <= set(self.ports):
            raise RuntimeError(f"the order function's REDIS_URL {env.get('REDIS_URL')!r} is not on "
                               f"REDIS_CLUSTER_PORTS {self.ports}")

    def redis_sh(self, *args: str, timeout: float = 120) -> str:
        env = self.stack.stack_env()
        env["REDIS_CLUSTER_PORTS"] = " ".join(map(str, self.ports))
        with open(self.stack.logs / "chaos-redis-sh.log", "ab") as logf:
            out = subprocess.run([str(cl.ROOT / "infra/local/redis.sh"), *args], env=env, stdout=subprocess.PIPE,
                                 stderr=logf, stdin=subprocess.DEVNULL, timeout=timeout, check=True,
                                 start_new_session=True)
        return out.stdout.decode(errors="replace")

    def cli(self, port: int, *args: str, timeout: float = 1.0) -> str | None:
        assert port in self.ports
        try:
            out = subprocess.run(["redis-cli", "-h", cl.HOST, "-p", str(port), *args], capture_output=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None
        return out.stdout.decode(errors="replace").strip() if out.returncode == 0 else None

    def owner(self, key: str) -> int | None:
        """The primary that serves KEY's slot now: the node that answers a
        read of it itself (every other node, replicas included, redirects)."""
        for port in self.ports:
            if self.cli(port, "EXISTS", key, timeout=0.5) in ("0", "1"):
                return port
        return None

    def role(self, port: int) -> str | None:
        info = self.cli(port, "INFO", "replication") or ""
        for line in info.splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return None

    def healthy(self) -> bool:
        """Every node sees a healthy cluster, and every replica has synced
        from its primary: one that never has refuses to be promoted."""
        def synced(port: int) -> bool:
            info = self.cli(port, "INFO", "replication") or ""
            return "role:slave" not in info or "master_link_status:up" in info
        return all("cluster_state:ok" in (self.cli(p, "CLUSTER", "INFO") or "") and synced(p) for p in self.ports)


def gate_key(sale_id: str) -> str:
    return f"fs:{{{sale_id}}}:sale"


def fault_cluster_failover(cluster: ChaosCluster, sale_id: str, plan: Plan, ev: dict):
    """SIGKILL the primary that owns the sale's gate keys (redis.sh cluster
    kill-primary); its replica is promoted (cluster-node-timeout 2 s); once
    it serves the slot, `down_for` later, the killed node is started again on
    its own data and must rejoin as a replica. Replication is asynchronous:
    the promoted replica may lack the last gate writes the old primary
    acknowledged."""
    key = gate_key(sale_id)

    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))

        def act():
            ev["old_primary"] = cluster.owner(key)
            ev["fault"] = time.monotonic()
            killed = int(cluster.redis_sh("cluster", "kill-primary", key).split()[-1])
            ev["down"] = time.monotonic()
            ev["killed"] = killed
            if not cl.wait_until(lambda: cluster.owner(key) not in (None, killed), 30, 0.05):
                raise RuntimeError(f"no replica took over the slot of {key} within 30 s of killing :{killed}")
            ev["promoted"] = time.monotonic()
            ev["new_primary"] = cluster.owner(key)
            time.sleep(plan.down_for)
            ev["restart"] = time.monotonic()
            cluster.redis_sh("cluster", "revive", timeout=150)
            ev["backend_up"] = time.monotonic()
            # The revived node learns from the others that it was failed over.
            cl.wait_until(lambda: cluster.role(killed) == "slave", 30, 0.1)
            ev["killed_role"] = cluster.role(killed) or "down"
            ev["ready"] = time.monotonic()

        await asyncio.to_thread(act)

    return fault


def fault_cluster_restart_empty(cluster: ChaosCluster, plan: Plan, ev: dict):
    """The whole cluster stopped, every node's data dropped, the topology
    (nodes.conf) kept, and started again (redis.sh cluster restart-empty):
    every gate in it is gone at once."""
    async def fault(st: Stampede) -> None:
        await asyncio.sleep(max(0.0, st.t0 + plan.fault_at - time.monotonic()))

        def act():
            ev["fault"] = time.monotonic()
            cluster.redis_sh("cluster", "restart-empty", timeout=120)
            ev["restart"] = ev["backend_up"] = time.monotonic()
            cl.wait_until(lambda: health(cluster.stack.order_port), 60, 0.1)
            ev["ready"] = time.monotonic()

        await asyncio.to_thread(act)

    return fault


class HealWatch(threading.Thread):
    """From the fault on: when the sale's hash slot answers again
    (`reachable`: after it was seen not answering), then, every 0.2 s until
    stopped, whether the gate agrees with the ledger (the admin breakdown is
    balanced and consistent: confirmed <= ledger_confirmed <= confirmed +
    held). A healthy gate never reads inconsistent there (the breakdown reads
    the gate before the ledger, and an order is confirmed only while its hold
    is held), so a sample that does is a gate still missing orders the ledger
    has: lost with a failover, or confirmed while a rebuild read the ledger
    (adopted when they settle). The breakdown is what a reconcile or the audit reads; like any request
    for the sale it rebuilds a gate that is missing."""

    def __init__(self, stack: cl.Stack, cluster: ChaosCluster, sale_id: str, ev: dict, limit: float = 180):
        super().__init__(daemon=True)
        self.stack, self.cluster, self.sale_id, self.ev, self.limit = stack, cluster, sale_id, ev, limit
        self.halt = threading.Event()
        self.samples: list[tuple[float, bool, dict | None]] = []  # (when, agrees, breakdown)

    def run(self) -> None:
        key = gate_key(self.sale_id)
        start = time.monotonic()
        while "fault" not in self.ev and not self.halt.wait(0.02):
            pass
        seen_down = False
        while not self.halt.is_set() and time.monotonic() - start < self.limit:
            if "reachable" not in self.ev:
                answered = self.cluster.owner(key) is not None
                if not answered:
                    seen_down = True
                    self.ev.setdefault("unreachable", time.monotonic())
                elif seen_down:
                    self.ev["reachable"] = time.monotonic()
                self.halt.wait(0.05)
                continue
            try:
                bd = breakdown(self.stack, self.sale_id)
            except OSError:
                bd = None
            self.samples.append((time.monotonic(), bool(bd and bd["balanced"] and bd["consistent"]), bd))
            self.halt.wait(0.2)

    def healed_at(self) -> float | None:
        """The start of the last run of agreeing samples, if the last one agrees."""
        at = None
        for t, ok, _ in self.samples:
            if ok and at is None:
                at = t
            elif not ok:
                at = None
        return at

    def disagreements(self) -> list[tuple[float, dict | None]]:
        return [(t, bd) for t, ok, bd in self.samples if not ok]


def gate_repairs(watch: "LogWatch", sale_id: str) -> dict[str, int]:
    """What the functions logged about repairing this sale's gate."""
    out = Counter()
    for f, offset in watch.files.items():
        try:
            with open(f, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if sale_id not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("sale_id") != sale_id:
                continue
            msg = rec.get("message", "")
            if msg == "gate rebuilt from the ledger":
                out["gate rebuilds"] += 1
                out["orders loaded by rebuilds"] += int(rec.get("orders", 0))
            elif msg == "reconcile counted orders the gate had missed":
                out["orders adopted by reconcile"] += int(rec.get("adopted", 0))
    return dict(out)


# ------------------------------------------------------------------ scenarios


def cluster_figures(report: Report, cluster: ChaosCluster, ev: dict, results: list[cl.Result], t0: float) -> None:
    """What the cluster did, and that the engine sold again on it."""
    fault_t = ev.get("fault")
    if fault_t is None:
        return
    if "killed" in ev:
        report.figures["killed primary"] = f":{ev['killed']} (owner before: :{ev.get('old_primary')})"
        if "promoted" in ev:
            report.figures["replica promoted after"] = f"{ev['promoted'] - ev['down']:.2f}s (:{ev.get('new_primary')})"
        report.figures["killed node after revive"] = ev.get("killed_role", "?")
        if ev.get("killed_role") != "slave":
            report.fail(f"the killed primary :{ev['killed']} did not rejoin as a replica "
                        f"(role {ev.get('killed_role', '?')}) after revive")
    reach = ev.get("reachable")
    if reach is None:
        report.fail("the sale's hash slot was never seen unreachable and then answering again")
        return
    report.figures["slot unreachable → answering"] = (
        f"+{ev.get('unreachable', fault_t) - t0:.2f}s → +{reach - t0:.2f}s ({reach - fault_t:.2f}s after the fault)")
    before = sum(r.status in (200, 201) and r.finished <= fault_t for r in results)
    after = [r for r in results if r.status in (200, 201) and r.sent >= reach]
    report.figures["201 before the fault / sent after reachable"] = f"{before} / {len(after)}"
    if after:
        report.figures["first 201 after reachable"] = f"{min(r.finished for r in after) - reach:.2f}s"
    # Every buyer sends an Idempotency-Key, so a 409 is the gate's (or the
    # ledger's) verdict too, never an instance's cached one: once the slot
    # answers, the engine must give verdicts again (201 while units remain,
    # 409 once sold out), not only 503s.
    verdicts = [r for r in results if r.status in (200, 201, 409) and r.sent >= reach]
    retried = [r for r in results if r.sent >= reach]
    report.figures["verdicts (201/409) sent after reachable"] = f"{len(verdicts)} of {len(retried)}"
    if retried and not verdicts:
        report.fail(f"the engine did not resume: all {len(retried)} requests sent after the cluster was "
                    f"reachable again were answered {dict(Counter(r.status or r.error for r in retried))}")


def heal_figures(report: Report, heal: HealWatch, ev: dict) -> None:
    """The heal time against HEAL_BOUND, from the moment the slot answered."""
    reach = ev.get("reachable")
    if reach is None:
        return
    at = heal.healed_at()
    how = "breakdown"
    if at is None:
        at, how = report.marks.get("settled"), "audit"
    bad = heal.disagreements()
    report.figures["gate/ledger disagreements seen"] = (
        f"{len(bad)} of {len(heal.samples)} samples" + (
            f" (first: +{bad[0][0] - reach:.2f}s after reachable: "
            + (f"confirmed {bad[0][1]['confirmed']} held {bad[0][1]['held']} ledger {bad[0][1]['ledger_confirmed']}"
               if bad[0][1] else "no breakdown") + ")" if bad else ""))
    if at is None:
        report.figures["gate healed after"] = "NEVER"
        report.fail("the gate never agreed with the ledger again")
        return
    took = max(0.0, at - reach)
    report.figures["gate healed after"] = f"{took:.2f}s after reachable ({how}; bound {HEAL_BOUND:.0f}s)"
    if took > HEAL_BOUND:
        report.fail(f"the gate agreed with the ledger only {took:.1f}s after the cluster was reachable again "
                    f"(bound {HEAL_BOUND:.0f}s)")


def run_fault_scenario(name: str, stack: cl.Stack, minter: cl.Minter, plan: Plan) -> Report:
    """One stampede with one fault (or none: baseline), then the audit."""
    if name != "dynamodb-lost-answers":
        return stampede_with_fault(name, stack, minter, plan, stack.order_port, None)
    # The stampede goes to an extra order instance whose DynamoDB answers
    # slowproxy loses; it stays up (answers passing again) through the audit,
    # as an instance whose network recovered would.
    with ProxiedOrder(stack, "lost-answers") as po:
        report = stampede_with_fault(name, stack, minter, plan, po.port, po.control)
        stats = po.stats()
    report.figures["answers cut / withheld"] = f"{stats.get('cut', '?')} / {stats.get('held', '?')}"
    if stats.get("cut", "0") == "0" or stats.get("held", "0") == "0":
        report.fail(f"the fault was not injected: slowproxy cut {stats.get('cut')} and withheld "
                    f"{stats.get('held')} answers (both must be > 0)")
    return report


def stampede_with_fault(name: str, stack: cl.Stack, minter: cl.Minter, plan: Plan, port: int,
                        control: int | None) -> Report:
    report = Report(name)
    cluster = ChaosCluster(stack) if name in CLUSTER_SCENARIOS else None
    if cluster and not cl.wait_until(cluster.healthy, 30, 0.2):
        raise RuntimeError("the chaos cluster is not healthy before the scenario (a node not ok, or a replica "
                           "not synced, for 30 s)")
    watch = LogWatch(stack)
    sale_id = cl.unique(name)
    if name == "redis-cluster-restart-empty":
        # redis.sh stops the nodes one after another, in REDIS_CLUSTER_PORTS
        # order; the sale goes on the first primary in that order, so that its
        # gate goes down at once, while units are still on sale.
        first = next((p for p in cluster.ports if cluster.role(p) == "master"), None)
        for _ in range(50):
            if cluster.owner(gate_key(sale_id)) == first:
                break
            sale_id = cl.unique(name)
    cl.create_sale(stack, sale_id, plan.stock, 1)
    hold_ttl_of(stack, sale_id)
    ev: dict[str, float] = {}
    heal = HealWatch(stack, cluster, sale_id, ev) if cluster else None
    down_for = plan.down_for
    if name == "redis-kill":
        fault = fault_backend(stack, "redis", plan, ev, wipe=True)
    elif name == "redis-kill-keep-aof":  # extra: restarted on its append-only file (last second may be lost)
        fault = fault_backend(stack, "redis", plan, ev, wipe=False)
    elif name == "dynamodb-kill":  # extra: tests DynamoDB Local's durability (it loses acked transactions)
        fault = fault_backend(stack, "dynamodb", plan, ev, wipe=False)
    elif name == "dynamodb-restart":
        fault = fault_backend(stack, "dynamodb", plan, ev, wipe=False, sig=signal.SIGTERM)
    elif name == "dynamodb-freeze":
        fault, down_for = fault_freeze(stack, plan, ev), plan.freeze_for
    elif name == "dynamodb-lost-answers":
        assert control is not None
        fault, down_for = fault_lost_answers(control, plan, ev), plan.lose_for + plan.hold_for
    elif name == "function-kill":
        fault = fault_function(stack, signal.SIGKILL, plan, ev)
    elif name == "sigterm":
        fault = fault_function(stack, signal.SIGTERM, plan, ev)
    elif name == "redis-cluster-failover":
        fault = fault_cluster_failover(cluster, sale_id, plan, ev)
    elif name == "redis-cluster-restart-empty":
        fault = fault_cluster_restart_empty(cluster, plan, ev)
    else:  # baseline: the same stampede with no fault, for comparison
        async def fault(_st):
            return None
    deadline_after = plan.spread + down_for + plan.tail
    st = Stampede(minter, port, sale_id, plan.buyers, connections=plan.connections,
                  spread=plan.spread, deadline=0, request_timeout=plan.request_bound + 5, tag=sale_id)
    st.deadline = time.monotonic() + deadline_after + 30  # refined below once t0 is known

    async def go():
        async def fault_and_extend(s: Stampede):
            if name in CLUSTER_SCENARIOS:
                # Buyers keep retrying for as long as the cluster is away
                # (bounded), as clients of a sale do, so that the engine
                # meets the cluster's return under load; then `tail` more.
                s.deadline = s.t0 + 90
                await fault(s)
                s.deadline = max(s.t0 + deadline_after, ev.get("ready", 0) + plan.tail)
                return
            s.deadline = s.t0 + deadline_after
            await fault(s)
            # A slow restart (DynamoDB Local is a JVM) must not starve the retries.
            s.deadline = max(s.deadline, ev.get("ready", 0) + plan.tail)
        return await st.run(fault_and_extend)

    log(f"{name}: sale {sale_id}, {plan.stock} units, {plan.buyers} buyers over {plan.spread}s, fault at +{plan.fault_at}s")
    if heal:
        heal.start()
    try:
        results = asyncio.run(go())
    finally:
        if heal:
            heal.halt.set()
            heal.join(10)
    end = time.monotonic()

    def allowed(r: cl.Result) -> bool:
        if name in ("redis-kill", "redis-kill-keep-aof", "baseline", *DYNAMODB_FAULTS, *CLUSTER_SCENARIOS):
            return False  # the function stays up: it must answer every request
        fault_t, ready = ev.get("fault", 0), ev.get("ready", end)
        if name == "function-kill":
            # Requests cut by the kill, or sent while the function was down.
            return r.started <= ready + 0.5 and r.finished >= fault_t - 0.05
        # SIGTERM: requests already in flight when the signal came must be
        # answered; ones the server had not taken yet may be refused/reset.
        in_flight = r.reused and r.sent <= fault_t - 0.1
        return not in_flight and r.started <= ready + 0.5 and r.finished >= fault_t - 0.05

    classify(results, report, plan.request_bound, allowed)
    if st.bad_bodies:
        report.fail(f"{len(st.bad_bodies)} order bodies not as the contract says, e.g. {st.bad_bodies[0]}")
    fault_t = ev.get("fault")
    if fault_t is None:
        if name != "baseline":
            report.fail("the fault was never injected")
    else:
        ready = ev.get("ready", end)
        report.figures["fault at"] = f"+{fault_t - st.t0:.2f}s"
        report.figures["down (fault → ready)"] = f"{ready - fault_t:.2f}s"
        during = [r for r in results if r.started >= fault_t and r.finished <= ready]
        report.figures["answers while down"] = dict(Counter(r.status or r.error for r in during))
        after = [r for r in results if r.status in (200, 201) and r.finished > ready]
        report.figures["first 201 after ready"] = f"{min(r.finished for r in after) - ready:.2f}s" if after else "none"
        if name in ("dynamodb-restart", "dynamodb-kill", "redis-kill", "redis-kill-keep-aof") and "down" in ev:
            report.figures["exit after signal"] = f"{ev['down'] - fault_t:.2f}s"
        if name == "sigterm":
            inflight = [r for r in results if r.reused and r.sent <= fault_t - 0.1 and r.finished >= fault_t]
            report.figures["in flight at SIGTERM"] = len(inflight)
            report.figures["  of which answered"] = sum(r.status is not None for r in inflight)
            report.figures["drain (signal → exit)"] = f"{ev['down'] - fault_t:.2f}s"
            if any(r.status is None for r in inflight):
                report.fail("an in-flight request was dropped on SIGTERM")
            if not inflight:
                report.notes.append("no request was in flight at the signal (load too light to prove draining)")
    report.figures["stampede length"] = f"{end - st.t0:.1f}s"
    log(f"{name}: stampede done in {end - st.t0:.1f}s: " + ", ".join(
        f"{k} {report.figures.get(k)}" for k in ("requests", "201", "409", "503", "max latency", "down (fault → ready)")))
    if cluster:
        cluster_figures(report, cluster, ev, results, st.t0)
    audit(stack, minter, report, sale_id, plan.stock, 1, st.acked, max(end, ev.get("ready", 0)), plan)
    if cluster:
        heal_figures(report, heal, ev)
        report.figures.update(gate_repairs(watch, sale_id))
        if not cluster.healthy():
            report.fail("the chaos cluster is not healthy after the scenario")
    n, resolved, unresolved = watch.sweeps(sale_id)
    report.figures["sweep reports (resolved / unresolved)"] = f"{n} ({resolved} / {unresolved})"
    for line in watch.since():
        report.fail(f"server log: {line}")
    return report


def proxy_ctl(port: int, line: str) -> str:
    import socket
    with socket.create_connection((cl.HOST, port), timeout=5) as s:
        s.sendall(line.encode() + b"\n")
        return s.recv(200).decode().strip()


def run_slow_backend(stack: cl.Stack, minter: cl.Minter, plan: Plan) -> Report:
    report = Report("slow-backend")
    watch = LogWatch(stack)
    base_env = stack.process_env("order")
    exe = stack.binary("order")
    for backend, upstream in (("redis", stack.redis_port), ("dynamodb", stack.dynamodb_port)):
        listen, control, port = cl.free_port(), cl.free_port(), cl.free_port()
        proxy = subprocess.Popen([sys.executable, str(Path(__file__).parent / "slowproxy.py"),
                                  "--listen", str(listen), "--upstream", str(upstream),
                                  "--control", str(control), "--max-seconds", "300"],
                                 stdout=open(stack.logs / f"slowproxy-{backend}.log", "ab"),
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        STARTED.append(proxy)
        env = dict(base_env)
        env.pop("METRICS_PORT", None)
        env.update(PORT=str(port), BACKEND_TIMEOUT_MS=str(plan.backend_timeout_ms),
                   LEDGER_TIMEOUT_MS=str(plan.ledger_timeout_ms))
        if backend == "redis":
            env["REDIS_URL"] = f"redis://127.0.0.1:{listen}"
        else:
            env["DYNAMODB_ENDPOINT"] = f"http://127.0.0.1:{listen}"
        cl.wait_until(lambda: cl.port_open(control), 10)
        logf = open(stack.logs / "order-slow.log", "ab")
        inst = subprocess.Popen([exe], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        STARTED.append(inst)
        if not cl.wait_until(lambda: health(port), 60):
            report.fail(f"{backend}: the dedicated order instance never became healthy")
            continue
        sale_id = cl.unique(f"slow-{backend}")
        stock = plan.slow_buyers  # one unit each for the warm-up + slow + recovery waves
        cl.create_sale(stack, sale_id, stock, 1)
        hold_ttl_of(stack, sale_id)
        # Bound: the gate's Redis call gives up after BACKEND_TIMEOUT_MS; the
        # ledger write after LEDGER_TIMEOUT_MS; a checkout makes at most one
        # of each before answering, plus a release (another backend call).
        bound = (2 * plan.backend_timeout_ms + plan.ledger_timeout_ms) / 1000 + 1.0
        log(f"slow-backend/{backend}: order instance :{port} -> proxy :{listen} -> :{upstream}; sale {sale_id}")

        def wave(n: int, tag: str, retry: bool, deadline: float = 0) -> Stampede:
            st = Stampede(minter, port, sale_id, n, connections=min(64, n), spread=0.5,
                          deadline=time.monotonic() + deadline, request_timeout=bound + 10,
                          tag=f"{tag}-{sale_id}", retry=retry)
            asyncio.run(st.run())
            return st

        warm = wave(20, "warm", retry=False)
        warm_ok = sum(r.status == 201 for r in warm.client.results)
        log(f"  delay {plan.slow_delay}s on {backend}")
        t_slow = time.monotonic()
        proxy_ctl(control, f"delay {plan.slow_delay}")
        slow = wave(plan.slow_buyers // 3, "slow", retry=False)
        slow_res = slow.client.results
        proxy_ctl(control, "delay 0")
        t_fast = time.monotonic()
        # Recovery: buyers retrying (as clients do) until they get through.
        rec = wave(plan.slow_buyers // 3, "recover", retry=True, deadline=15)
        rec_ok = [r for r in rec.client.results if r.status in (200, 201)]
        sub = Report(f"slow-{backend}")
        classify(slow_res + rec.client.results + warm.client.results, sub, bound, lambda r: False)
        acked = {**warm.acked, **slow.acked, **rec.acked}
        c = Counter(r.status for r in slow_res)
        lat = sorted(r.latency for r in slow_res)
        prefix = f"{backend}: "
        report.figures[prefix + "warm-up 201"] = f"{warm_ok}/20"
        report.figures[prefix + "requests while slow"] = len(slow_res)
        report.figures[prefix + "answers while slow"] = dict(c)
        report.figures[prefix + "max latency while slow"] = f"{lat[-1]:.2f}s (bound {bound:.1f}s)" if lat else "-"
        report.figures[prefix + "first 201 after delay removed"] = (
            f"{min(r.finished for r in rec_ok) - t_fast:.2f}s" if rec_ok else "none")
        report.figures[prefix + "slow phase length"] = f"{t_fast - t_slow:.1f}s"
        for k in ("requests", "201", "409", "503"):
            report.figures[k] = report.figures.get(k, 0) + sub.figures.get(k, 0)
        report.figures["max latency"] = max(report.figures.get("max latency", "0s"), sub.figures["max latency"],
                                            key=lambda v: float(v.rstrip("s")) if v != "-" else 0)
        report.figures.setdefault("first 201 after ready", "")
        report.figures["first 201 after ready"] += f"{backend} {report.figures[prefix + 'first 201 after delay removed']} "
        if c.get(503, 0) == 0:
            report.fail(f"{backend}: no 503 while the backend was {plan.slow_delay}s slow (answers {dict(c)})")
        if not rec_ok:
            report.fail(f"{backend}: no order went through after the delay was removed")
        for v in sub.violations:
            report.fail(prefix + v)
        report.notes += [prefix + n for n in sub.notes]
        inst.terminate()
        inst.wait(30)
        proxy.terminate()
        proxy.wait(10)
        # The holds the slow instance left lapse; the main stack sweeps them.
        sub2 = Report("audit")
        audit(stack, minter, sub2, sale_id, stock, 1, acked, time.monotonic(), plan)
        for k in ("settled after", "lost acked", "acked orders", "confirmed, never acked", "final sold / stock"):
            report.figures[prefix + k] = sub2.figures.get(k)
        report.figures["lost acked"] = report.figures.get("lost acked", 0) + (sub2.figures.get("lost acked") or 0)
        for v in sub2.violations:
            report.fail(prefix + v)
        report.notes += [prefix + n for n in sub2.notes]
    for line in watch.since():
        report.fail(f"server log: {line}")
    return report


def run_sweep_overlap(stack: cl.Stack, minter: cl.Minter, plan: Plan) -> Report:
    """Extra (not in `all`): do lapsed-hold sweeps pile up while the ledger is slow?

    One order instance talks to DynamoDB through slowproxy (3 s answers;
    LEDGER_TIMEOUT_MS 1500, BACKEND_TIMEOUT_MS 1000): 100 checkouts leave
    100 uncertain holds; once they lapse, one checkout a second for 12 s.
    Each resolve gives up after >= 1 s, so a single sweep can log at most one
    "could not resolve a lapsed hold" a second; more means sweeps overlap.
    """
    import re
    report = Report("sweep-overlap")
    listen, control, port = cl.free_port(), cl.free_port(), cl.free_port()
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).parent / "slowproxy.py"), "--listen", str(listen),
                              "--upstream", str(stack.dynamodb_port), "--control", str(control), "--max-seconds", "120"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    STARTED.append(proxy)
    env = stack.process_env("order")
    env.pop("METRICS_PORT", None)
    env.update(PORT=str(port), DYNAMODB_ENDPOINT=f"http://127.0.0.1:{listen}", BACKEND_TIMEOUT_MS="1000",
               LEDGER_TIMEOUT_MS="1500")
    logp = stack.logs / "order-sweep-overlap.log"
    with open(logp, "wb") as logf:
        inst = subprocess.Popen([stack.binary("order")], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    STARTED.append(inst)
    cl.wait_until(lambda: cl.port_open(control), 10)
    if not cl.wait_until(lambda: health(port), 60):
        report.fail("the extra order instance never became healthy")
        return report
    sale = cl.unique("overlap")
    cl.create_sale(stack, sale, 1000, 1)

    def buy(n: int) -> Counter:
        st = Stampede(minter, port, sale, n, connections=min(n, 50), spread=0, deadline=0,
                      request_timeout=20, tag=cl.unique("o"), retry=False)
        asyncio.run(st.run())
        return Counter(r.status for r in st.client.results)

    report.figures["warm-up"] = dict(buy(5))
    proxy_ctl(control, "delay 3")
    report.figures["100 checkouts, ledger answering in 3 s"] = dict(buy(100))
    time.sleep(hold_ttl_of(stack, sale) + 0.5)
    for _ in range(12):
        buy(1)
        time.sleep(1.0)
    time.sleep(2)
    inst.terminate()
    inst.wait(30)
    proxy.terminate()
    proxy.wait(10)
    per_sec = Counter()
    for line in logp.read_text(errors="replace").splitlines():
        if "could not resolve a lapsed hold" in line:
            m = re.search(r"T(\d\d:\d\d:\d\d)", line)
            if m:
                per_sec[m[1]] += 1
    report.figures["failed resolves per second"] = " ".join(str(v) for _, v in sorted(per_sec.items()))
    peak = max(per_sec.values(), default=0)
    report.figures["sweeps running at once (peak)"] = f">= {peak}"
    if peak > 2:
        report.fail(f"lapsed-hold sweeps overlap: up to {peak} failed resolves a second (one sweep can log "
                    f"at most 1/s), i.e. a new sweep starts every second while the others still run")
    bd, took = wait_settled(stack, sale, 30)
    report.figures["settled through the main stack after"] = f"{took:.1f}s" if took is not None else "NOT settled"
    if took is None:
        report.fail(f"holds not back after 30 s: {bd}")
    return report


# ------------------------------------------------------------------ main


def print_report(rep: Report, partial: bool = False) -> None:
    rows = [[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in rep.figures.items()]
    if partial:
        print()
        print(cl.table(["figure", "value"], rows, title=f"-- {rep.name}: stampede done, auditing --"), flush=True)
        return
    rows.append(["audit verdict", rep.verdict])
    print()
    print(cl.table(["figure", "value"], rows, title=f"== {rep.name} =="))
    for n in rep.notes:
        print(f"  note: {n}")
    for v in rep.violations:
        print(f"  VIOLATION: {v}")
    print(flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="all",
                    help=f"all = the {len(SCENARIOS)} fault scenarios ({', '.join(SCENARIOS)}); cluster = "
                         f"{' + '.join(CLUSTER_SCENARIOS)} (the chaos stack on its own Redis Cluster: "
                         "chaos.sh up --redis cluster); or names, comma-separated. Extras: baseline = the same "
                         "stampede with no fault; redis-kill-keep-aof = Redis SIGKILLed and restarted on its "
                         "append-only file; dynamodb-kill = DynamoDB Local SIGKILLed (tests DynamoDB Local's "
                         "durability, not the engine: it loses acknowledged transactions); sweep-overlap = "
                         "do lapsed-hold sweeps pile up while the ledger is slow")
    ap.add_argument("--quick", action="store_true", help="the bounded CI form (1,000 buyers, shorter faults)")
    ap.add_argument("--buyers", type=int)
    ap.add_argument("--stock", type=int)
    ap.add_argument("--connections", type=int, help="client connections (buyers in flight at once)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.buyers:
        plan.buyers = args.buyers
    if args.stock:
        plan.stock = args.stock
    if args.connections:
        plan.connections = args.connections
    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_started)

    stack = cl.Stack()
    for name, port in (("order", stack.order_port), ("stock", stack.stock_port)):
        if not cl.wait_until(lambda: health(port), 20, 0.5):
            print(f"the chaos stack's {name} function is not healthy on :{port}; "
                  f"start it with infra/chaos/chaos.sh up (or run `just chaos`)", file=sys.stderr)
            return 2
    minter = cl.Minter(stack.secrets()["TOKEN_SIGNING_KEY"])
    scenarios: list[str] = []
    for name in args.scenario.split(","):
        name = name.strip()
        if name == "all":
            scenarios += SCENARIOS
        elif name == "cluster":
            scenarios += CLUSTER_SCENARIOS
        elif name in (*SCENARIOS, *EXTRAS, *CLUSTER_SCENARIOS):
            scenarios.append(name)
        else:
            ap.error(f"unknown scenario {name!r} (all, cluster, {', '.join([*SCENARIOS, *EXTRAS, *CLUSTER_SCENARIOS])})")
    reports: list[Report] = []
    started = time.monotonic()
    try:
        for name in scenarios:
            t = time.monotonic()
            try:
                if name == "slow-backend":
                    rep = run_slow_backend(stack, minter, plan)
                elif name == "sweep-overlap":
                    rep = run_sweep_overlap(stack, minter, plan)
                else:
                    rep = run_fault_scenario(name, stack, minter, plan)
            except Exception as e:  # noqa: BLE001 - a scenario that broke is a failed scenario
                import traceback
                traceback.print_exc()
                rep = Report(name)
                rep.fail(f"scenario aborted: {type(e).__name__}: {e}")
                # Bring back whatever the scenario left down, for the next one.
                try:
                    if name in CLUSTER_SCENARIOS:
                        ChaosCluster(stack).redis_sh("cluster", "start", timeout=120)
                    start_backends(stack)
                    if not health(stack.order_port) and stack.pid("order") is None:
                        rep.notes.append("order function was down; restart it with infra/chaos/chaos.sh up")
                except Exception as e2:  # noqa: BLE001
                    rep.notes.append(f"could not restore the backends: {e2}")
            rep.figures["scenario time"] = f"{time.monotonic() - t:.1f}s"
            if rep.violations and name != scenarios[-1]:
                # Isolation: a scenario that went wrong may leave work running
                # inside the functions (e.g. background sweeps); restart them
                # (same binary, same environment) so the next one starts clean.
                try:
                    reset_functions(stack)
                    rep.notes.append("order and stock functions restarted after this scenario (isolation)")
                except Exception as e:  # noqa: BLE001
                    rep.notes.append(f"could not restart the functions: {e}")
            print_report(rep)
            reports.append(rep)
    finally:
        stop_started()
    rows = []
    for rep in reports:
        f = rep.figures
        rows.append([rep.name, f.get("requests", "-"), f.get("201", "-"), f.get("409", "-"), f.get("503", "-"),
                     f.get("max latency", "-"), f.get("down (fault → ready)", "-"), f.get("first 201 after ready", "-"),
                     f.get("settled after", "-"), f.get("lost acked", "-"), f.get("final sold / stock", "-"),
                     str(f.get("gate healed after", "-")).split(" after")[0], rep.verdict])
    print(cl.table(["scenario", "requests", "201", "409", "503", "max lat", "down", "1st 201 after",
                    "settled after", "lost", "sold/stock", "gate healed", "verdict"], rows,
                   title=f"== chaos summary ({'quick' if args.quick else 'full'}, {time.monotonic() - started:.0f}s) =="))
    if args.json:
        Path(args.json).write_text(json.dumps([{"name": r.name, "figures": r.figures, "violations": r.violations,
                                                "notes": r.notes} for r in reports], indent=2, default=str))
    failed = [r.name for r in reports if r.violations]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall scenarios passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
