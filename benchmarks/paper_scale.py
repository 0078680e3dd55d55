"""Paper-scale figures: import, analyze and benchmark a history of the paper's size (10,469 rows) and of 100,000.

For each size N it writes a planted history sampled the way agents sample
(``analysis.synthetic.adaptive_history``: softmax over architectures, 90% of runs at the best
learning rate, 10% seed replicates; the architecture's share over the space is known exactly) as
a Parquet log, then runs the real CLI, each step in its own process so its time and peak memory
are its own:

    crashsearch import LOG --campaign paper --home H
    crashsearch bugfix --campaign paper --at <time of row N/3> --note ... --home H
    crashsearch analyze --campaign paper --home H        (Prefect flow, every estimator)
    crashsearch benchmark --campaign paper --policies random,evolution --budget 200 --repeats 5 --home H

Peak memory is the largest resident set of the step's process tree (``os.wait4``'s ru_maxrss).
It also times ``build_report`` in-process (no Prefect, no store) with its per-section split, and
prints the share over the space against the planted truth.

    OMP_NUM_THREADS=2 python benchmarks/paper_scale.py [--sizes 10469,100000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from crashsearch.analysis.synthetic import PlantedSpaceModel, adaptive_history  # noqa: E402


def step(name: str, argv: list[str]) -> dict:
    """Run one CLI command in a child process: wall seconds, peak RSS (MB), exit code, last line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "crashsearch", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.strip()]
    return {"step": name, "seconds": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "tail": lines[-12:]}


def in_process(history, events, arm) -> dict:
    """build_report alone (no store, no Prefect): wall and CPU seconds, and seconds per section."""
    from crashsearch.analysis.report import build_report

    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        numbers = build_report(history, out, events=events, baselines_df=arm, title="paper scale")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu": cpu, "timings": numbers["timings"], "headline": numbers["headline"],
            "space_shares": numbers["space_shares"]}


def run(size: int, root: Path) -> dict:
    model = PlantedSpaceModel(seed=0)
    history = adaptive_history(size, model, seed=1)
    arm = adaptive_history(min(size, 2000), model, seed=2, uniform=True, campaign="paper-baseline-random")
    log = root / f"paper-{size}.parquet"
    history.drop(columns=["campaign"]).to_parquet(log, index=False)
    at = history["finished_at"].iloc[size // 3].isoformat()
    home = root / f"home-{size}"
    steps = [step("import", ["import", str(log), "--campaign", "paper", "--home", str(home)]),
             step("bugfix", ["bugfix", "--campaign", "paper", "--at", at, "--note", "window slicing fixed",
                             "--home", str(home)]),
             step("analyze", ["analyze", "--campaign", "paper", "--home", str(home)]),
             step("benchmark", ["benchmark", "--campaign", "paper", "--policies", "random,evolution", "--budget", "200",
                                "--repeats", "5", "--home", str(home), "--out", str(root / f"bench-{size}")])]
    numbers = json.loads((home / "campaigns" / "paper" / "report" / "numbers.json").read_text()) \
        if steps[2]["rc"] == 0 else None
    events = [{"declared_at": at, "note": "window slicing fixed"}]
    return {"size": size, "steps": steps, "numbers": numbers, "truth": model.truth,
            "in_process": in_process(history, events, arm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10469,100000")
    parser.add_argument("--keep", default=None, help="keep the logs, homes and reports in this folder")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}, {platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = [run(size, root) for size in sizes]
    print("\n| rows | step | wall s | CPU s | peak RSS MB | exit |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results:
        for s in r["steps"]:
            print(f"| {r['size']:,} | {s['step']} | {s['seconds']:.1f} | {s['cpu']:.1f} | {s['peak_mb']:.0f} | {s['rc']} |")
        ip = r["in_process"]
        print(f"| {r['size']:,} | build_report in-process | {ip['seconds']:.1f} | {ip['cpu']:.1f} | - | 0 |")
    for r in results:
        ip = r["in_process"]
        print(f"\n{r['size']:,} rows, build_report sections (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in ip["timings"].items()))
        h, t = ip["headline"], r["truth"]
        fan = ip["space_shares"]["fanova"] if ip["space_shares"] else {}
        print(f"share over the space ({h['scope']['share_arch']}): architecture {h['share_arch']:.3f} "
              f"{[round(v, 3) for v in h['share_arch_ci']]} (truth {t['architecture']:.3f}); backbone x encoder "
              f"{h['share_arch_group']:.3f} {[round(v, 3) for v in h['share_arch_group_ci']]} (truth {t['arch_group']:.3f}); "
              f"naive eta2 {h['eta2_arch']:.3f} ({h['naive_vs_space']}); {fan.get('n_boot')} refits, "
              f"{fan.get('seconds', 0):.1f} s; {fan.get('note') or ''}")
        for s in r["steps"]:
            if s["rc"] != 0:
                print(f"step {s['step']} failed:\n  " + "\n  ".join(s["tail"]))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
