#!/usr/bin/env python3
"""Renders bench_gemm's JSON output (--benchmark_format=json or --benchmark_out=FILE) to an SVG
chart: effective MAC/s against bit pair, one line per kernel, for one problem size.

usage: scripts/plot_bench.py bench.json out.svg [--size 1024]
No third-party packages: the SVG is written by hand.
"""
import json
import re
import statistics
import sys

PAIRS = ["w1a1", "w1a2", "w2a2", "w2a4", "w4a4", "w8a8"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]


def load(path, size):
    with open(path) as f:
        data = json.load(f)
    runs = {}  # (kernel, pair or None) -> MAC/s of each repetition
    for b in data["benchmarks"]:
        name = b.get("run_name", b["name"])
        # Repetitions only: aggregate rows (mean, median, stddev, cv) share the run name, and
        # their "MAC/s" is a statistic of the rate, not a rate.
        if b.get("run_type", "iteration") != "iteration":
            continue
        if f"M:{size}/" not in name or "MAC/s" not in b or b.get("error_occurred") or "threads2" in name:
            continue
        kernel = name.split("/M:")[0]
        m = re.search(r"/(w\d+a\d+)", kernel)
        key = (kernel.replace("/" + m.group(1), ""), m.group(1)) if m else (kernel, None)
        runs.setdefault(key, []).append(float(b["MAC/s"]))
    lines = {}  # kernel -> {pair: median MAC/s}
    for (kernel, pair), rates in runs.items():
        rate = statistics.median(rates)
        if pair:  # per-pair kernels
            lines.setdefault(kernel, {})[pair] = rate
        else:  # pair-independent baselines (float, int8): flat lines
            lines.setdefault(kernel, {}).update({p: rate for p in PAIRS})
    return lines


def svg(lines, size):
    W, H, L, R, T, B = 800, 460, 80, 260, 40, 50
    import math
    vals = [v for d in lines.values() for v in d.values() if v > 0]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    x = lambda i: L + i * (W - L - R) / (len(PAIRS) - 1)
    y = lambda v: T + (hi - math.log10(v)) * (H - T - B) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">GEMM M=N=K={size}, one core: effective MAC/s</text>']
    for e in range(lo, hi + 1):
        out.append(f'<line x1="{L}" x2="{W-R}" y1="{y(10**e)}" y2="{y(10**e)}" stroke="#ddd"/>')
        out.append(f'<text x="{L-6}" y="{y(10**e)+4}" text-anchor="end">1e{e}</text>')
    for i, p in enumerate(PAIRS):
        out.append(f'<text x="{x(i)}" y="{H-B+18}" text-anchor="middle">{p}</text>')
    for k, (name, d) in enumerate(sorted(lines.items())):
        # Past the eighth line the colours repeat, dashed: the legend shows each line's stroke.
        c = COLORS[k % len(COLORS)]
        dash = "" if k < len(COLORS) else ' stroke-dasharray="6,3"'
        pts = [(x(i), y(d[p])) for i, p in enumerate(PAIRS) if d.get(p, 0) > 0]
        out.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                   % (c, dash, " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)))
        ly = T + 16 * k + 6
        out.append(f'<line x1="{W-R+8}" x2="{W-R+30}" y1="{ly}" y2="{ly}" stroke="{c}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{W-R+36}" y="{ly+4}" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    args = sys.argv[1:]
    size = 1024
    if "--size" in args:
        i = args.index("--size")
        size = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    lines = load(args[0], size)
    if not lines:
        sys.exit(f"no benchmark with M={size} in {args[0]}")
    with open(args[1], "w") as f:
        f.write(svg(lines, size))


if __name__ == "__main__":
    main()
