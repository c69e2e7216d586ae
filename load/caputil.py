#!/usr/bin/env python3
"""Small helpers for load/capacity.sh and load/bench-compare.sh (stdlib only).

  caputil.py show FILE                         one line for a k6 or wrk result JSON
  caputil.py saturated FILE BUDGET_MS          exit 0 if the step is far past budget / erroring / dropping
  caputil.py statuses METRICS_PORT ROUTE       {"status": count} of a route, from the function's /metrics
  caputil.py wrk TXT TARGET CONNS BEFORE AFTER  wrk output + status diff -> result JSON on stdout
  caputil.py bench-round TXT PATH WHO ROUND    wrk output -> one bench-compare round JSON
  caputil.py goodput FILE                      the goodput (req/s answered as hoped) of a k6 step
  caputil.py overload OUT PEAK.json OVER.json  the load-shedding verdict (issue 6): goodput at 3x the
                                               peak's rate >= 90 % of the peak, rejections p99 < 10 ms;
                                               writes OUT/overload.json, exits 1 on a miss
"""
import json
import re
import sys
import urllib.request


def show(f):
    d = json.load(open(f))
    m = d["ms"]
    at = f"offered {d.get('offered_rps', 0):>6}/s" if d["tool"] == "k6" else f"c={d.get('connections'):<4}"
    extra = (f"dropped {d.get('dropped', 0)}" if d["tool"] == "k6" else
             f"statuses {d.get('statuses')} cpu/req {d.get('cpu_ms_per_req') or 0:.3f} ms")
    print(f"  {d['tool']:<3} {d['target']:<20} {at} achieved {d['achieved_rps']:>9.1f}/s "
          f"p50 {m['p50'] or 0:.2f} p95 {m['p95'] or 0:.2f} p99 {m['p99'] or 0:.2f} ms err {d['error_rate']:.4f} {extra}")


def saturated(f, budget):
    d = json.load(open(f))
    b = float(budget)
    p99 = d["ms"]["p99"] or 1e9
    return p99 > 10 * b or d["error_rate"] > 0.05 or d.get("dropped", 0) > 0.05 * max(1, d.get("requests", 0))


def statuses(port, route):
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"(\w+)\{(.*)\}\s+([0-9.e+]+)$", line.strip())
            if not m or not m.group(1).endswith("_total") or "request" not in m.group(1):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if labels.get("route") == route and "status" in labels:
                out[labels["status"]] = out.get(labels["status"], 0) + float(m.group(3))
    return out


def wrk_line(txt):
    line = next((l for l in open(txt) if l.startswith("WRK_JSON ")), None)
    return json.loads(line[9:]) if line else None


def wrk(txt, target, conns, before, after, ticks0=None, ticks1=None):
    d = wrk_line(txt) or {"rps": 0, "requests": 0, "socket_errors": -1, "lat_us": {}}
    before, after = json.loads(before), json.loads(after)
    st = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after if after.get(k, 0) - before.get(k, 0) > 0}
    want = {"order-checkout": "201", "stock-view": "200"}.get(target, "409")
    n = sum(st.values()) or 1
    lat = d["lat_us"]
    ms = {k: (lat.get(k2) or 0) / 1000 for k, k2 in
          [("avg", "mean"), ("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("max", "max")]}
    # CPU the function itself burnt per request (utime+stime, 100 ticks/s):
    # its capacity per core if nothing else competed = 1000 / cpu_ms_per_req.
    cpu = None
    if ticks0 is not None and d["requests"]:
        cpu = (int(ticks1) - int(ticks0)) * 10.0 / d["requests"]
    return {"tool": "wrk", "target": target, "connections": int(conns), "achieved_rps": d["rps"], "requests": d["requests"],
            "statuses": st, "error_rate": 1 - st.get(want, 0) / n, "socket_errors": d.get("socket_errors", 0), "ms": ms,
            "cpu_ms_per_req": cpu}


def bench_round(txt, path, who, rnd):
    d = wrk_line(txt) or {"rps": 0, "requests": 0, "non2xx": 0, "socket_errors": -1, "lat_us": {"p50": 0, "p99": 0}}
    want_non2xx = d["requests"] if path == "soldout" else 0
    r = {"path": path, "who": who, "round": int(rnd), "rps": d["rps"], "requests": d["requests"],
         "p50_ms": d["lat_us"]["p50"] / 1000, "p99_ms": d["lat_us"]["p99"] / 1000,
         "wrong_status": abs(d["non2xx"] - want_non2xx), "socket_errors": d["socket_errors"]}
    print(json.dumps(r))
    print(f"  round {r['round']} {path:<8} {who:<5} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
          f"  wrong-status {r['wrong_status']}  socket-errors {r['socket_errors']}", file=sys.stderr)


def goodput(f):
    return json.load(open(f)).get("goodput_rps", 0.0)


def overload(out, peak_f, over_f):
    peak, over = json.load(open(peak_f)), json.load(open(over_f))
    ratio = over["goodput_rps"] / peak["goodput_rps"] if peak["goodput_rps"] else 0.0
    shed = over.get("shed", {})
    verdict = {
        "peak": {"offered_rps": peak["offered_rps"], "goodput_rps": peak["goodput_rps"], "good_ms": peak.get("good_ms")},
        "overload": {"offered_rps": over["offered_rps"], "goodput_rps": over["goodput_rps"],
                     "good_ms": over.get("good_ms"), "shed": shed, "dropped": over.get("dropped", 0),
                     "error_rate": over["error_rate"]},
        "goodput_ratio": ratio,
        "goodput_ok": ratio >= 0.9,
        "rejections_fast": shed.get("count", 0) == 0 or (shed.get("p99") or 1e9) < 10,
    }
    json.dump(verdict, open(f"{out}/overload.json", "w"), indent=2)
    print(f"peak goodput {peak['goodput_rps']:.0f}/s at {peak['offered_rps']}/s offered; "
          f"at {over['offered_rps']}/s offered: goodput {over['goodput_rps']:.0f}/s ({ratio:.0%} of peak), "
          f"{shed.get('count', 0)} shed, p50 {shed.get('p50') or 0:.2f} ms p99 {shed.get('p99') or 0:.2f} ms "
          f"max {shed.get('max') or 0:.1f} ms; admitted p99 {(over.get('good_ms') or {}).get('p99') or 0:.0f} ms")
    ok = verdict["goodput_ok"] and verdict["rejections_fast"]
    print("overload verdict:", "PASS" if ok else "MISS (goodput >= 90 % of peak and rejections p99 < 10 ms)")
    return 0 if ok else 1


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "show":
        show(*args)
    elif cmd == "saturated":
        return 0 if saturated(*args) else 1
    elif cmd == "statuses":
        print(json.dumps(statuses(*args)))
    elif cmd == "wrk":
        print(json.dumps(wrk(*args)))
    elif cmd == "bench-round":
        bench_round(*args)
    elif cmd == "goodput":
        print(goodput(*args))
    elif cmd == "overload":
        return overload(*args)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
