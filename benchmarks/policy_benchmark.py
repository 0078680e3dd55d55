"""Speed and fidelity of `crashsearch benchmark` (issue 16), on a paper-sized synthetic history.

    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/policy_benchmark.py [--rows 10469] [--budget 1000]
        [--repeats 10] [--workers 2] [--models hgb,forest,ridge] [--skip-run]

1. Surrogate models: held-out R^2 / Spearman and fit time of each candidate model on the same
   history (``analysis.surrogate.make_model``), plus the time to predict the whole space.
2. The benchmark itself: random, tpe and evolution at the budget with the repeats, through
   ``tasks.benchmark.run_benchmark``, wall time, and where the time goes (policy, surrogate,
   bookkeeping: wall seconds summed over the runs, per policy, and each run's process CPU time,
   which a busy shared machine inflates less than wall time).
The history is ``analysis.synthetic.synthetic_history`` (architecture effect, hyperparameter
effects, 8% seed replicates, 2% failures) under the default 108,000-cell space.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10469)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default="hgb,forest,ridge")
    ap.add_argument("--policies", default="random,tpe,evolution")
    ap.add_argument("--skip-run", action="store_true")
    args = ap.parse_args()

    from crashsearch.analysis.surrogate import fit_surrogate
    from crashsearch.analysis.synthetic import synthetic_history
    from crashsearch.lab.space import Space
    from crashsearch.tasks.benchmark import run_benchmark

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    space = Space.load()
    history = synthetic_history(n=args.rows, seed=7, policies=("random", "tpe", "claude"))
    print(f"history: {len(history):,} rows (synthetic, planted architecture effect)")
    for kind in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        sur = fit_surrogate(history, space, kind=kind, fill=False)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        sur.fill_table()
        fill = time.perf_counter() - t0
        f = sur.fidelity
        print(f"surrogate {kind:7s}: held-out R^2 {f['holdout_r2']:.3f}, Spearman {f['holdout_spearman']:.3f} "
              f"({f['folds']} folds, {f['cells']:,} cells); fit + CV {fit:.1f}s, predict all {space.size:,} cells {fill:.2f}s")
    if args.skip_run:
        return
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = run_benchmark(history, space, args.policies.split(","), args.budget, args.repeats, workers=args.workers,
                        log=lambda m: print(" ", m))
    wall, main_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"run_benchmark: {wall:.1f}s wall for {args.policies} x {args.repeats} repeats x budget {args.budget} "
          f"on {res.workers} workers (fit {res.seconds['fit']:.1f}s, runs {res.seconds['runs']:.1f}s)")
    # what the same work takes on two idle cores: the parent's CPU (fit) plus the runs' CPU spread
    # over the workers longest first (the order run_benchmark submits them)
    loads = [0.0] * res.workers
    for r in sorted(res.runs, key=lambda r: -r.seconds["cpu"]):
        loads[loads.index(min(loads))] += r.seconds["cpu"]
    print(f"CPU: parent {main_cpu:.1f}s, runs {sum(r.seconds['cpu'] for r in res.runs):.1f}s; on {res.workers} idle cores "
          f"about {main_cpu + max(loads):.0f}s wall (load average now {os.getloadavg()[0]:.1f})")
    for policy in dict.fromkeys(r.policy for r in res.runs):
        own = [r for r in res.runs if r.policy == policy]
        s = {k: sum(r.seconds[k] for r in own) for k in ("policy", "objective", "bookkeeping")}
        total = sum(s.values())
        best = np.mean([np.nanmax(r.values) for r in own])
        cpu = sum(r.seconds["cpu"] for r in own)
        print(f"  {policy:9s}: {total:6.1f} wall-s ({cpu:.1f} CPU-s) over {len(own)} runs ({cpu / len(own):.2f} CPU-s a run): policy {s['policy']:.1f}s "
              f"({s['policy'] / total:.0%}), surrogate {s['objective']:.2f}s, bookkeeping {s['bookkeeping']:.1f}s; "
              f"mean best at N={args.budget} {best:.4f}")


if __name__ == "__main__":
    main()
