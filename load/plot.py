#!/usr/bin/env python3
"""Capacity plot and table from a capacity run's JSON files (stdlib only).

  load/plot.py DIR [DIR ...] [--svg OUT.svg] [--table]

DIR holds what load/capacity.sh writes: k6-<target>-<rate>.json (k6
handleSummary of load/capacity.js: offered/achieved rate, p50..p99) and
wrk-<target>-<conns>.json (wrk's numbers plus statuses counted from the
function's /metrics). Writes DIR/capacity.json (all points + the capacity per
target) and an SVG (default DIR/capacity.svg): one panel per call, p99 latency
(log scale) against achieved requests/s, the p99 budget dashed, the capacity
point ringed. --table prints the markdown capacity table.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

BUDGET_MS = {"auth-login": 1000, "stock-view": 10, "order-checkout": 20, "order-soldout": 5, "order-soldout-keyed": 5}
PANELS = [
    ("auth-login", "auth: POST /auth/login (argon2id)", ["auth-login"]),
    ("stock-view", "stock: GET /stock/sales/{id}", ["stock-view"]),
    ("order-checkout", "order: checkout, success (201)", ["order-checkout"]),
    ("order-soldout", "order: checkout, sold out (409)", ["order-soldout", "order-soldout-keyed"]),
]
COLORS = {("k6", "auth-login"): "#1f77b4", ("k6", "stock-view"): "#1f77b4", ("k6", "order-checkout"): "#1f77b4",
          ("k6", "order-soldout"): "#1f77b4", ("wrk", "stock-view"): "#d62728", ("wrk", "order-checkout"): "#d62728",
          ("wrk", "order-soldout"): "#d62728", ("wrk", "order-soldout-keyed"): "#2ca02c",
          ("wrk", "auth-login"): "#d62728"}


def load(directory: Path) -> list[dict]:
    pts = []
    for f in sorted(directory.glob("*.json")):
        if not (f.name.startswith("k6-") or f.name.startswith("wrk-")) or f.name == "capacity.json":
            continue
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if d.get("achieved_rps") and d.get("ms", {}).get("p99") is not None:
            pts.append(d)
    return pts


def good(p: dict) -> bool:
    budget = BUDGET_MS[p["target"]]
    dropped_ok = p.get("dropped", 0) <= 0.01 * max(1, p.get("requests", 0))
    return p["ms"]["p99"] <= budget and p.get("error_rate", 0) < 0.01 and dropped_ok


def capacities(pts: list[dict]) -> dict:
    out = {}
    for target in BUDGET_MS:
        for tool in ("k6", "wrk"):
            ok = [p for p in pts if p["target"] == target and p["tool"] == tool and good(p)]
            allp = [p for p in pts if p["target"] == target and p["tool"] == tool]
            if not allp:
                continue
            best = max(ok, key=lambda p: p["achieved_rps"]) if ok else None
            out[f"{target}/{tool}"] = {
                "target": target, "tool": tool, "budget_ms": BUDGET_MS[target],
                "capacity_rps": best["achieved_rps"] if best else 0,
                "p50_ms": best["ms"]["p50"] if best else None, "p99_ms": best["ms"]["p99"] if best else None,
                "at": ({"offered_rps": best.get("offered_rps")} if tool == "k6" else {"connections": best.get("connections")}) if best else None,
                # Requests in flight at that point: the connections for wrk (closed
                # loop), Little's law λ·W̄ for k6 (open model).
                "in_flight": (best.get("connections") if tool == "wrk" else
                              best["achieved_rps"] * best["ms"]["avg"] / 1000) if best and best["ms"].get("avg") else None,
                "max_rps_seen": max(p["achieved_rps"] for p in allp),
                # Function CPU per request (wrk runs): what one core could do if nothing else ran.
                "cpu_ms_per_req": (sorted(c)[len(c) // 2] if (c := [p["cpu_ms_per_req"] for p in allp if p.get("cpu_ms_per_req")]) else None),
                "points": len(allp),
            }
    return out


def table(caps: dict) -> str:
    rows = ["| call | tool | p99 budget | capacity at budget (req/s) | at | p50 / p99 there | in flight (L = λW) | max req/s seen | function CPU / req | 1 core, CPU-bound |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in caps.values():
        at = "-" if not c["at"] else (f"{c['at']['offered_rps']}/s offered" if "offered_rps" in c["at"] else f"{c['at']['connections']} conns")
        lat = "-" if c["p99_ms"] is None else f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} ms"
        inflight = "-" if c["in_flight"] is None else f"{c['in_flight']:.1f}"
        cpu = c.get("cpu_ms_per_req")
        cpucol = f"{cpu:.3f} ms | {1000 / cpu:,.0f}/s" if cpu else "- | -"
        rows.append(f"| {c['target']} | {c['tool']} | {c['budget_ms']} ms | {c['capacity_rps']:.0f} | {at} | {lat} | {inflight} | {c['max_rps_seen']:.0f} | {cpucol} |")
    return "\n".join(rows)


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(pts: list[dict], caps: dict, title: str) -> str:
    W, H = 1000, 760
    pw, ph = 400, 250
    origins = [(90, 80), (580, 80), (90, 440), (580, 440)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="28" text-anchor="middle" font-size="17" font-weight="bold">{esc(title)}</text>',
           f'<text x="{W/2}" y="48" text-anchor="middle" fill="#555">p99 latency vs achieved throughput, one function pinned to one CPU; '
           f'blue: k6 open model (arrival-rate steps), red/green: wrk closed model (connections)</text>']
    for (key, label, targets), (ox, oy) in zip(PANELS, origins):
        ps = [p for p in pts if p["target"] in targets]
        budget = BUDGET_MS[key]
        out.append(f'<text x="{ox + pw/2}" y="{oy - 12}" text-anchor="middle" font-weight="bold">{esc(label)}</text>')
        out.append(f'<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        if not ps:
            out.append(f'<text x="{ox + pw/2}" y="{oy + ph/2}" text-anchor="middle" fill="#999">not measured</text>')
            continue
        xmax = max(p["achieved_rps"] for p in ps) * 1.1
        lats = [max(p["ms"]["p99"], 0.01) for p in ps] + [budget]
        ylo = 10 ** math.floor(math.log10(min(lats)))
        yhi = 10 ** math.ceil(math.log10(max(lats) * 1.01))
        if ylo == yhi:
            yhi *= 10
        X = lambda v: ox + pw * v / xmax
        Y = lambda v: oy + ph - ph * (math.log10(max(v, ylo)) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        # axes ticks
        for i in range(6):
            xv = xmax * i / 5
            out.append(f'<line x1="{X(xv):.1f}" y1="{oy+ph}" x2="{X(xv):.1f}" y2="{oy+ph+4}" stroke="#333"/>')
            out.append(f'<text x="{X(xv):.1f}" y="{oy+ph+17}" text-anchor="middle">{xv:,.1f}</text>' if xmax < 50 else f'<text x="{X(xv):.1f}" y="{oy+ph+17}" text-anchor="middle">{xv:,.0f}</text>')
        d = ylo
        while d <= yhi * 1.001:
            out.append(f'<line x1="{ox}" y1="{Y(d):.1f}" x2="{ox+pw}" y2="{Y(d):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ox-6}" y="{Y(d)+4:.1f}" text-anchor="end">{d:g}</text>')
            d *= 10
        out.append(f'<text x="{ox + pw/2}" y="{oy+ph+34}" text-anchor="middle" fill="#555">requests/s achieved</text>')
        out.append(f'<text x="{ox-48}" y="{oy + ph/2}" text-anchor="middle" fill="#555" transform="rotate(-90 {ox-48} {oy + ph/2})">p99 ms (log)</text>')
        out.append(f'<line x1="{ox}" y1="{Y(budget):.1f}" x2="{ox+pw}" y2="{Y(budget):.1f}" stroke="#d62728" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{ox+pw-4}" y="{Y(budget)-5:.1f}" text-anchor="end" fill="#d62728">budget {budget} ms</text>')
        legend_y = oy + 16
        for tool in ("k6", "wrk"):
            for t in targets:
                series = sorted([p for p in ps if p["tool"] == tool and p["target"] == t], key=lambda p: (p.get("offered_rps") or p.get("connections") or 0))
                if not series:
                    continue
                color = COLORS.get((tool, t), "#555")
                path = " ".join(f"{'M' if i == 0 else 'L'}{X(p['achieved_rps']):.1f},{Y(p['ms']['p99']):.1f}" for i, p in enumerate(series))
                out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
                for p in series:
                    lab = f"{p.get('offered_rps')}/s offered" if tool == "k6" else f"{p.get('connections')} conns"
                    shape = (f'<circle cx="{X(p["achieved_rps"]):.1f}" cy="{Y(p["ms"]["p99"]):.1f}" r="3.5" fill="{color}">'
                             if tool == "k6" else
                             f'<rect x="{X(p["achieved_rps"])-3.5:.1f}" y="{Y(p["ms"]["p99"])-3.5:.1f}" width="7" height="7" fill="{color}">')
                    out.append(shape + f'<title>{tool} {t} {lab}: {p["achieved_rps"]:.0f}/s, p99 {p["ms"]["p99"]:.2f} ms</title>'
                               + ('</circle>' if tool == "k6" else '</rect>'))
                    if tool == "wrk":
                        out.append(f'<text x="{X(p["achieved_rps"])+5:.1f}" y="{Y(p["ms"]["p99"])-5:.1f}" font-size="9" fill="{color}">c{p.get("connections")}</text>')
                cap = caps.get(f"{t}/{tool}")
                if cap and cap["capacity_rps"]:
                    out.append(f'<circle cx="{X(cap["capacity_rps"]):.1f}" cy="{Y(cap["p99_ms"]):.1f}" r="8" fill="none" stroke="{color}" stroke-width="2"/>')
                name = f"{tool} {t.replace('order-', '')}"
                captxt = f": {cap['capacity_rps']:,.0f}/s within budget" if cap and cap["capacity_rps"] else ": none within budget"
                out.append(f'<text x="{ox+8}" y="{legend_y}" fill="{color}">{esc(name + captxt)}</text>')
                legend_y += 15
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="capacity run directories (points are merged)")
    ap.add_argument("--svg", help="where to write the SVG (default DIR/capacity.svg)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--title", default="Per-function capacity on a 2-core box")
    a = ap.parse_args()
    d = Path(a.dirs[0])
    pts = [p for x in a.dirs for p in load(Path(x))]
    if not pts:
        print(f"no k6-*.json / wrk-*.json results in {d}")
        return 1
    caps = capacities(pts)
    (d / "capacity.json").write_text(json.dumps({"capacities": caps, "points": pts}, indent=2))
    Path(a.svg or d / "capacity.svg").write_text(svg(pts, caps, a.title))
    if a.table:
        print(table(caps))
    print(f"plot: {a.svg or d / 'capacity.svg'} ({len(pts)} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
