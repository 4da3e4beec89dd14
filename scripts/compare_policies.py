#!/usr/bin/env python3
"""Compares mixed-precision search policies on Fashion-MNIST with examples/search_fashion_mnist.

For every policy x budget x seed it runs the example (all policies of one seed start from the
same FP32 checkpoint, trained once per seed, so the comparison is like for like), reads the JSON
results and writes a Markdown table: finetuned test accuracy (mean, standard deviation, min-max
over seeds), uniform's at the same budget, the difference, and search wall time.

  scripts/compare_policies.py [--binary build/release/examples/search_fashion_mnist]
      [--policies all|uniform,dnas,...] [--budgets w2a2,w3a3] [--seeds 1,2,3]
      [--out compare-out] [--force] [-- extra example arguments, e.g. --epochs 2]

Runs whose JSON already exists are reused unless --force. The table goes to <out>/compare.md
and to stdout.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time


def available_policies(binary):
    """The policy names the example accepts (it lists them when given an unknown one)."""
    p = subprocess.run([binary, "--policy", "?"], capture_output=True, text=True)
    m = re.search(r"valid policies in this build: ([^\n]*)", p.stderr + p.stdout)
    if not m:
        sys.exit(f"compare_policies: cannot read the policy list from {binary}")
    return [n.strip() for n in m.group(1).split(",") if n.strip()]


def stats(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return mean, sd, min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="build/release/examples/search_fashion_mnist")
    ap.add_argument("--policies", default="all")
    ap.add_argument("--budgets", default="w2a2,w3a3")
    ap.add_argument("--budget-kind", default="bitops", choices=["bitops", "size"])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--out", default="compare-out")
    ap.add_argument("--force", action="store_true", help="rerun even if a result exists")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: tabulate the results already in --out")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to the example")
    a = ap.parse_args()
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra

    if not os.access(a.binary, os.X_OK):
        sys.exit(f"compare_policies: {a.binary} not found; build the examples first")
    valid = available_policies(a.binary)
    policies = valid if a.policies == "all" else a.policies.split(",")
    for p in policies:
        if p not in valid:
            sys.exit(f"compare_policies: unknown policy '{p}'; this build has {', '.join(valid)}")
    if "uniform" in policies:  # the baseline first
        policies = ["uniform"] + [p for p in policies if p != "uniform"]
    budgets = a.budgets.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    os.makedirs(a.out, exist_ok=True)

    results = {}  # (policy, budget) -> list of result dicts
    failed = {}  # (policy, budget) -> seeds whose run failed
    missing = {}  # (policy, budget) -> seeds not run (--table-only)
    t_start = time.time()
    for seed in seeds:
        ckpt = os.path.join(a.out, f"fp32-s{seed}.bin")
        for budget in budgets:
            for policy in policies:
                stem = f"{policy}-{budget}-{a.budget_kind}-s{seed}"
                path = os.path.join(a.out, stem + ".json")
                if a.table_only and not os.path.exists(path):
                    missing.setdefault((policy, budget), []).append(seed)
                    continue
                if a.force or not os.path.exists(path):
                    cmd = [a.binary, "--policy", policy, "--budget", budget, "--budget-kind",
                           a.budget_kind, "--seed", str(seed), "--checkpoint", ckpt,
                           "--out", a.out] + extra
                    print("+", " ".join(cmd), flush=True)
                    with open(os.path.join(a.out, stem + ".log"), "w") as log:
                        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
                    if rc != 0:  # keep going: one failed run must not lose the sweep
                        print(f"compare_policies: {stem} failed (exit {rc}); see "
                              f"{os.path.join(a.out, stem + '.log')}", flush=True)
                        failed.setdefault((policy, budget), []).append(seed)
                        continue
                with open(path) as f:
                    results.setdefault((policy, budget), []).append(json.load(f))

    def pct(x):
        return f"{100 * x:.2f}"

    lines = [
        f"Fashion-MNIST, demo CNN, {a.budget_kind} budget equal to uniform WxAy; "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); example arguments: "
        f"`{' '.join(extra) if extra else '(defaults)'}`.",
        "",
        "| budget | policy | runs | finetuned acc. % (mean ± sd) | min–max | uniform % "
        "| Δ vs uniform | budget used | search s (mean) | total s (mean) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget in budgets:
        uni = results.get(("uniform", budget))
        uni_mean = stats([r["phases"]["finetune"]["test_accuracy"] for r in uni])[0] if uni else None
        for policy in policies:
            rs = results.get((policy, budget), [])
            bad = failed.get((policy, budget), [])
            notrun = missing.get((policy, budget), [])
            if not rs:
                why = f"failed (seeds {bad})" if bad else f"not run (seeds {notrun})"
                lines.append(f"| {budget.upper()} | {policy} | 0 | {why} | | | | | | | |")
                continue
            acc = [r["phases"]["finetune"]["test_accuracy"] for r in rs]
            mean, sd, lo, hi = stats(acc)
            search_s = stats([r["phases"]["search"]["seconds"] + r["phases"]["derive"]["seconds"]
                              for r in rs])[0]
            total_s = stats([r["total_seconds"] for r in rs])[0]
            used = stats([r["totals"]["budget_usage"] for r in rs])[0]
            delta = f"{100 * (mean - uni_mean):+.2f}" if uni_mean is not None else "–"
            lines.append(
                f"| {budget.upper()} | {policy} | {len(rs)} | {pct(mean)} ± {pct(sd)} "
                f"| {pct(lo)}–{pct(hi)} "
                f"| {pct(uni_mean) if uni_mean is not None else '–'} | {delta} "
                f"| {100 * used:.1f}% | {search_s:.1f} | {total_s:.1f} | "
                + (f"failed seeds: {bad} " if bad else "")
                + (f"seeds not run: {notrun}" if notrun else "") + " |")
    lines += ["", f"Sweep wall time (runs made now): {time.time() - t_start:.0f} s."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
