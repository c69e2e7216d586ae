#!/usr/bin/env python3
"""Audit one sale from the outside: the public API plus the stock function's
admin extensions. Checks the contract's guarantees and prints a verdict table;
exits 1 on any violation, 2 if the sale cannot be read at all.

  load/audit.py SALE [SALE ...] [--base-url URL] [--stock-url URL] [--admin-token T]
                [--expect-sold-out] [--settle-timeout S] [--hold-grace S] [--json FILE]
  load/audit.py --from-files DIR      audit saved answers (view.json, breakdown.json, orders.json)
  load/audit.py --self-test           prove that every check fails on a violating input

Checks (each PASS / FAIL / SKIP):
  never_oversold        sum of confirmed order quantities <= stock_total, and
                        ledger_confirmed <= stock_total            (guarantee 1)
  ledger_matches_orders the /orders list adds up to ledger_confirmed
  per_user_limit        no user holds more than per_user_limit units (guarantee 2)
  idempotency           one order per (user, Idempotency-Key); order ids unique
  orders_well_formed    every order is confirmed, of this sale, quantity >= 1
  balanced              stock_remaining + held + confirmed == stock_total (guarantee 5)
  consistent            confirmed <= ledger_confirmed <= confirmed + held
  view_matches          public sale view agrees with the breakdown (total, remaining)
  holds_bounded         no hold lapsed more than --hold-grace seconds ago, after a
                        stock view has had the chance to sweep it    (guarantee 4)
  sold_out              with --expect-sold-out: once holds settle (waits up to
                        hold TTL + margin, calling reconcile once), stock_remaining
                        == 0, ledger_confirmed == stock_total and status sold_out

Stdlib only (python3 >= 3.9).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class Unreachable(Exception):
    pass


# ---------------------------------------------------------------- sources


class ApiSource:
    """Reads a sale through the running stack."""

    def __init__(self, base_url: str, stock_url: str, admin_token: str, timeout: float = 60.0, tries: int = 3):
        self.base = base_url.rstrip("/")
        self.stock = stock_url.rstrip("/")
        self.token = admin_token
        self.timeout = timeout
        self.tries = tries

    def _call(self, method: str, url: str, admin: bool) -> dict:
        # A stack that was just hammered may still be draining: retry
        # time-outs, refused connections and 503s a few times before giving up.
        for attempt in range(self.tries):
            try:
                return self._once(method, url, admin)
            except Unreachable as e:
                last = e
                if "HTTP 4" in str(e):
                    raise
                time.sleep(1.0 + attempt)
        raise last

    def _once(self, method: str, url: str, admin: bool) -> dict:
        req = urllib.request.Request(url, method=method)
        if admin:
            req.add_header("Authorization", f"Bearer {self.token}")
        if method == "POST":
            req.add_header("Content-Type", "application/json")
            req.data = b""
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                return json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:300]
            raise Unreachable(f"{method} {url}: HTTP {e.code} {body}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise Unreachable(f"{method} {url}: {e}") from None

    def view(self, sale: str) -> dict:
        # The public view also sweeps lapsed holds (at most once a second).
        return self._call("GET", f"{self.base}/stock/sales/{sale}", admin=False)

    def breakdown(self, sale: str) -> dict:
        return self._call("GET", f"{self.stock}/stock/sales/{sale}/breakdown", admin=True)

    def reconcile(self, sale: str) -> dict:
        return self._call("POST", f"{self.stock}/stock/sales/{sale}/reconcile", admin=True)

    def orders(self, sale: str) -> list:
        return self._call("GET", f"{self.stock}/stock/sales/{sale}/orders", admin=True)["orders"]

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, secs: float) -> None:
        time.sleep(secs)


class FileSource:
    """Saved answers: DIR/view.json, DIR/breakdown.json, DIR/orders.json and an
    optional DIR/now.txt (the audit's "now", RFC 3339) for hold ages."""

    def __init__(self, directory: str):
        self.dir = Path(directory)

    def _load(self, name: str):
        p = self.dir / name
        if not p.exists():
            raise Unreachable(f"{p} is missing")
        return json.loads(p.read_text())

    def view(self, sale: str) -> dict:
        return self._load("view.json")

    def breakdown(self, sale: str) -> dict:
        return self._load("breakdown.json")

    def reconcile(self, sale: str) -> dict:
        return self.breakdown(sale)

    def orders(self, sale: str) -> list:
        data = self._load("orders.json")
        return data["orders"] if isinstance(data, dict) else data

    def now(self) -> datetime:
        p = self.dir / "now.txt"
        return parse_ts(p.read_text().strip()) if p.exists() else datetime.now(timezone.utc)

    def sleep(self, secs: float) -> None:
        pass


def parse_ts(s: str) -> datetime:
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return datetime.fromisoformat(s)


# ---------------------------------------------------------------- checks


def audit(source, sale: str, expect_sold_out: bool = False, settle_timeout: float | None = None,
          hold_grace: float = 5.0, log=lambda *_: None) -> dict:
    """Runs every check; returns {"sale", "checks": [(name, verdict, detail)], "ok", "facts"}."""
    checks: list[tuple[str, str, str]] = []

    def add(name, ok, detail, skip=False):
        checks.append((name, SKIP if skip else (PASS if ok else FAIL), detail))

    view = source.view(sale)
    bd = source.breakdown(sale)

    # Holds: a stock view sweeps lapsed holds (once per sweep interval per
    # instance), so look again after a view if the first breakdown shows one.
    def stale_hold(b):
        exp = b.get("oldest_hold_expires_at")
        if not exp:
            return None
        age = (source.now() - parse_ts(exp)).total_seconds()
        return age if age > hold_grace else None

    if stale_hold(bd) is not None:
        source.sleep(1.2)
        view = source.view(sale)
        bd = source.breakdown(sale)

    if expect_sold_out:
        ttl = float(bd.get("hold_ttl_seconds") or 15)
        budget = settle_timeout if settle_timeout is not None else ttl + 10
        deadline = time.monotonic() + budget
        reconciled = False
        while bd.get("held", 0) > 0 or bd.get("open_holds", 0) > 0:
            if time.monotonic() >= deadline or isinstance(source, FileSource):
                break
            log(f"{sale}: {bd.get('held')} units still held; waiting for them to settle")
            source.sleep(1.0)
            view = source.view(sale)  # sweeps lapsed holds
            bd = source.breakdown(sale)
            if not reconciled and time.monotonic() > deadline - budget / 2:
                bd = source.reconcile(sale)
                reconciled = True
        view = source.view(sale) if not isinstance(source, FileSource) else view

    orders = source.orders(sale)
    total = int(bd["stock_total"])
    limit = int(view.get("per_user_limit") or 1)
    qty_sum = sum(int(o.get("quantity", 0)) for o in orders)
    ledger = int(bd["ledger_confirmed"])

    add("never_oversold", qty_sum <= total and ledger <= total,
        f"orders sum {qty_sum}, ledger_confirmed {ledger}, stock_total {total}")
    add("ledger_matches_orders", qty_sum == ledger,
        f"/orders adds up to {qty_sum} over {len(orders)} orders; ledger_confirmed {ledger}")

    per_user: dict[str, int] = defaultdict(int)
    for o in orders:
        per_user[o.get("user_id")] += int(o.get("quantity", 0))
    over = {u: q for u, q in per_user.items() if q > limit}
    add("per_user_limit", not over,
        f"{len(per_user)} buyers, max {max(per_user.values(), default=0)} units each, limit {limit}"
        + (f"; over: {dict(list(over.items())[:5])}" if over else ""))

    keyed = Counter((o.get("user_id"), o.get("idempotency_key")) for o in orders if o.get("idempotency_key"))
    dup_keys = {k: n for k, n in keyed.items() if n > 1}
    ids = Counter(o.get("order_id") for o in orders)
    dup_ids = [i for i, n in ids.items() if n > 1]
    add("idempotency", not dup_keys and not dup_ids,
        f"{sum(keyed.values())} keyed orders, {len(dup_keys)} duplicated (user, key) pairs, {len(dup_ids)} duplicated order ids"
        + (f"; e.g. {list(dup_keys.items())[:3]}" if dup_keys else ""))

    bad = [o.get("order_id") for o in orders
           if o.get("status") != "confirmed" or o.get("sale_id") != sale or int(o.get("quantity", 0)) < 1]
    add("orders_well_formed", not bad, f"{len(bad)} malformed" + (f": {bad[:3]}" if bad else ""))

    rem, held, conf = int(bd["stock_remaining"]), int(bd["held"]), int(bd["confirmed"])
    add("balanced", bool(bd.get("balanced")) and rem + held + conf == total,
        f"remaining {rem} + held {held} + confirmed {conf} = {rem + held + conf} vs total {total}"
        f" (service says balanced={bd.get('balanced')})")
    # A sale split into gate buckets (one per Redis Cluster shard) must
    # balance in every bucket, and the buckets' shares make up the stock.
    buckets = bd.get("buckets") or []
    if buckets:
        off = [b.get("bucket") for b in buckets
               if not b.get("balanced") or int(b["stock_remaining"]) + int(b["held"]) + int(b["confirmed"])
               != int(b["stock_total"])]
        shares = sum(int(b["stock_total"]) for b in buckets)
        add("buckets_balanced", not off and shares == total,
            f"{len(buckets)} buckets, shares sum to {shares} of {total}; unbalanced: {off or 'none'}")
    cons = conf <= ledger <= conf + held and ledger <= total
    add("consistent", bool(bd.get("consistent")) and cons,
        f"confirmed {conf} <= ledger {ledger} <= confirmed+held {conf + held}"
        f" (service says consistent={bd.get('consistent')})")

    # The view is read just before the breakdown; they can differ only by
    # holds resolved in between, so an exact match is required when none is open.
    same_total = int(view.get("stock_total", -1)) == total
    same_remaining = int(view.get("stock_remaining", -1)) == max(rem, 0)
    add("view_matches", same_total and (same_remaining or held > 0),
        f"view total {view.get('stock_total')} remaining {view.get('stock_remaining')} status {view.get('status')};"
        f" breakdown remaining {rem}")

    age = stale_hold(bd)
    add("holds_bounded", age is None,
        f"{bd.get('open_holds', 0)} open holds, oldest expires {bd.get('oldest_hold_expires_at') or '-'}"
        + (f" = lapsed {age:.1f}s ago (> {hold_grace}s grace)" if age is not None else "")
        + f"; hold TTL {bd.get('hold_ttl_seconds')}s")

    if expect_sold_out:
        ok = rem == 0 and held == 0 and ledger == total and view.get("status") == "sold_out"
        add("sold_out", ok, f"remaining {rem}, held {held}, ledger_confirmed {ledger}/{total}, status {view.get('status')}")
    else:
        add("sold_out", True, "not asked (--expect-sold-out)", skip=True)

    return {
        "sale": sale,
        "ok": all(v != FAIL for _, v, _ in checks),
        "checks": checks,
        "facts": {"view": view, "breakdown": bd, "orders": len(orders), "units": qty_sum, "buyers": len(per_user)},
    }


def print_report(result: dict, out=sys.stdout) -> None:
    sale = result["sale"]
    w = max(len(n) for n, _, _ in result["checks"])
    print(f"\naudit of sale {sale}", file=out)
    print(f"  {'check'.ljust(w)}  verdict  detail", file=out)
    print(f"  {'-' * w}  -------  {'-' * 40}", file=out)
    for name, verdict, detail in result["checks"]:
        print(f"  {name.ljust(w)}  {verdict:<7}  {detail}", file=out)
    print(f"  => {'OK' if result['ok'] else 'VIOLATION'}", file=out)


# ---------------------------------------------------------------- self-test


def _fixture(**over):
    orders = [
        {"order_id": f"o{i}", "sale_id": "s", "user_id": f"u{i}", "quantity": 1, "status": "confirmed",
         "created_at": "2026-01-01T00:00:00Z", "idempotency_key": f"k{i}"}
        for i in range(10)
    ]
    view = {"sale_id": "s", "name": "s", "stock_total": 10, "stock_remaining": 0, "per_user_limit": 1,
            "status": "sold_out", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z"}
    bd = {"sale_id": "s", "stock_total": 10, "stock_remaining": 0, "held": 0, "confirmed": 10,
          "ledger_confirmed": 10, "open_holds": 0, "oldest_hold_expires_at": None, "balanced": True,
          "consistent": True, "hold_ttl_seconds": 15}
    fx = {"view": view, "breakdown": bd, "orders": orders, "now": "2026-06-01T00:00:00Z"}
    for k, fn in over.items():
        fn(fx)
    return fx


def _write(fx, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "view.json").write_text(json.dumps(fx["view"]))
    (directory / "breakdown.json").write_text(json.dumps(fx["breakdown"]))
    (directory / "orders.json").write_text(json.dumps({"orders": fx["orders"]}))
    (directory / "now.txt").write_text(fx["now"])


def self_test() -> int:
    import tempfile

    def oversold(fx):
        fx["orders"].append(dict(fx["orders"][0], order_id="o99", user_id="u99", idempotency_key="k99"))
        fx["breakdown"].update(ledger_confirmed=11, confirmed=11, stock_remaining=-1)

    def over_limit(fx):
        fx["orders"][1]["user_id"] = "u0"

    def dup_key(fx):
        fx["orders"][1].update(user_id="u0", idempotency_key="k0")
        fx["view"]["per_user_limit"] = 2

    def unbalanced(fx):
        fx["breakdown"].update(stock_remaining=1, balanced=False)

    def bucket_off(fx):
        fx["breakdown"]["buckets"] = [
            {"bucket": 0, "stock_total": 5, "stock_remaining": 1, "held": 0, "confirmed": 5, "open_holds": 0,
             "balanced": False},
            {"bucket": 1, "stock_total": 5, "stock_remaining": -1, "held": 0, "confirmed": 5, "open_holds": 0,
             "balanced": False}]

    def buckets_ok(fx):
        fx["breakdown"]["buckets"] = [
            {"bucket": b, "stock_total": 5, "stock_remaining": 0, "held": 0, "confirmed": 5, "open_holds": 0,
             "balanced": True} for b in (0, 1)]

    def inconsistent(fx):
        fx["breakdown"].update(ledger_confirmed=9, consistent=False)

    def stale(fx):
        fx["breakdown"].update(stock_remaining=0, confirmed=9, held=1, open_holds=1, ledger_confirmed=10,
                               oldest_hold_expires_at="2026-05-31T23:59:00Z")

    def not_sold_out(fx):
        fx["orders"].pop()
        fx["breakdown"].update(stock_remaining=1, confirmed=9, ledger_confirmed=9)
        fx["view"].update(stock_remaining=1, status="live")

    def malformed(fx):
        fx["orders"][2]["status"] = "pending"

    cases = [
        ("clean sold-out sale", {}, True, None),
        ("oversold", {"a": oversold}, False, "never_oversold"),
        ("user over limit", {"a": over_limit}, False, "per_user_limit"),
        ("same key twice", {"a": dup_key}, False, "idempotency"),
        ("unbalanced", {"a": unbalanced}, False, "balanced"),
        ("two balanced buckets", {"a": buckets_ok}, True, None),
        ("a bucket unbalanced, the sum right", {"a": bucket_off}, False, "buckets_balanced"),
        ("inconsistent", {"a": inconsistent}, False, "consistent"),
        ("hold lapsed 60 s ago", {"a": stale}, False, "holds_bounded"),
        ("not sold out", {"a": not_sold_out}, False, "sold_out"),
        ("pending order", {"a": malformed}, False, "orders_well_formed"),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, mods, want_ok, want_fail) in enumerate(cases):
            d = Path(tmp) / str(i)
            _write(_fixture(**mods), d)
            r = audit(FileSource(str(d)), "s", expect_sold_out=True)
            failed = {n for n, v, _ in r["checks"] if v == FAIL}
            good = r["ok"] == want_ok and (want_fail is None or want_fail in failed)
            failures += not good
            print(f"  {'ok ' if good else 'BAD'} {label:<22} audit says {'OK' if r['ok'] else 'VIOLATION'}"
                  f" {sorted(failed) if failed else ''}")
    print(f"self-test: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("sales", nargs="*", metavar="SALE")
    p.add_argument("--base-url", default=os.environ.get("BASE_URL", "http://127.0.0.1:8080"))
    p.add_argument("--stock-url", default=os.environ.get("STOCK_URL"),
                   help="where the admin extensions are served (default: the base URL, which routes /stock/*)")
    p.add_argument("--admin-token", default=os.environ.get("ADMIN_TOKEN", "dev-admin-token"))
    p.add_argument("--expect-sold-out", action="store_true")
    p.add_argument("--settle-timeout", type=float, default=None,
                   help="seconds to wait for holds to settle (default hold TTL + 10)")
    p.add_argument("--hold-grace", type=float, default=5.0,
                   help="how long past its expiry a hold may still be open (default 5 s)")
    p.add_argument("--from-files", metavar="DIR", help="audit saved view.json/breakdown.json/orders.json")
    p.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    p.add_argument("--self-test", action="store_true")
    a = p.parse_args(argv)

    if a.self_test:
        return self_test()
    if a.from_files:
        sources = [(FileSource(a.from_files), a.sales[0] if a.sales else
                    json.loads((Path(a.from_files) / "breakdown.json").read_text())["sale_id"])]
    else:
        if not a.sales:
            p.error("name at least one SALE (or --from-files / --self-test)")
        src = ApiSource(a.base_url, a.stock_url or a.base_url, a.admin_token)
        sources = [(src, s) for s in a.sales]

    results, unreadable = [], 0
    for src, sale in sources:
        try:
            r = audit(src, sale, a.expect_sold_out, a.settle_timeout, a.hold_grace,
                      log=lambda msg: print(f"  ... {msg}", file=sys.stderr))
        except Unreachable as e:
            print(f"\naudit of sale {sale}: cannot read it: {e}", file=sys.stderr)
            unreadable += 1
            results.append({"sale": sale, "ok": False, "error": str(e), "checks": []})
            continue
        except (KeyError, ValueError, TypeError) as e:
            print(f"\naudit of sale {sale}: unexpected answer shape: {e!r}", file=sys.stderr)
            results.append({"sale": sale, "ok": False, "error": repr(e), "checks": []})
            unreadable += 1
            continue
        print_report(r)
        results.append(r)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    bad = [r["sale"] for r in results if not r["ok"]]
    print(f"\naudit: {len(results) - len(bad)} of {len(results)} sales OK" + (f"; violations in {bad}" if bad else ""))
    if results and unreadable == len(results):
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
