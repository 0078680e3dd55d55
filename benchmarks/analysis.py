"""Benchmark the analysis suite: the full report for synthetic histories of growing size.

For each size N it generates a synthetic history (``analysis.synthetic``: claude, gemini and
random proposers, 8% replicates, 2% failures), a control-arm campaign of min(N, 2000) random
experiments, a second dataset of N/4 experiments for the transfer section and one bug-fix event
at N/3, then times ``build_report`` end to end (statistics, five figures, Markdown, HTML and
numbers.json) and reports the per-section split. Goal: the paper's 10,469 experiments in under
30 s on a 2-core CPU.

    .venv/bin/python benchmarks/analysis.py [--sizes 10469,10000,1000000] [--boot 200]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from crashsearch.analysis.report import build_report  # noqa: E402
from crashsearch.analysis.synthetic import synthetic_history  # noqa: E402


def run(size: int, n_boot: int) -> dict:
    t0 = time.perf_counter()
    history = synthetic_history(size, seed=0)
    base = synthetic_history(min(size, 2000), seed=1, campaign="synthetic-baseline-random", policies=("random",))
    other = synthetic_history(max(size // 4, 100), seed=2, campaign="night", dataset="synth-night")
    events = [{"declared_at": history["finished_at"].iloc[size // 3], "note": "benchmark bug fix"}]
    generate = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        numbers = build_report(history, out, events=events, title=f"benchmark {size:,}", baselines_df=base,
                               other_datasets=other, weights="random", n_boot=n_boot)
        total = time.perf_counter() - t0
    return {"size": size, "generate_s": generate, "report_s": total, "timings": numbers["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10469,10000,1000000")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamples of the power-law fit")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"{stamp}, {platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    results = [run(size, args.boot) for size in sizes]
    sections = list(results[0]["timings"])
    print("\n| experiments | report s | " + " | ".join(sections) + " |")
    print("|---:|---:|" + "---:|" * len(sections))
    for r in results:
        print(f"| {r['size']:,} | {r['report_s']:.1f} | " + " | ".join(f"{r['timings'][s]:.1f}" for s in sections) + " |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
