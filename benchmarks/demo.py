"""The demo, measured: wall and CPU time of a clean `crashsearch demo`, and whether its report has signal.

Runs ``crashsearch demo --home HOME`` (HOME must not exist: a clean run, nothing cached) as a
child process, then reads what it wrote: the report's seed-replicate noise floor (its share of
the validation-AP variance, goal <= 20%), each campaign's first experiment (goal: no AP 1.0),
and the mean validation AP per backbone and encoder (does a temporal head beat mean pooling?).

    .venv/bin/python benchmarks/demo.py --home /tmp/demo-bench [--write]

``--write`` replaces the "Demo" section of benchmarks/README.md with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from crashsearch.lab.settings import resolve_home
from crashsearch.lab.store import Store

BIN = Path(sys.executable).parent / "crashsearch"


def run_demo(home: Path, extra: list[str]) -> dict:
    """Run the demo CLI in a clean home; returns wall and CPU seconds (the child and its children)."""
    if home.exists():
        raise SystemExit(f"{home} exists: the benchmark needs a clean home (nothing cached)")
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([str(BIN), "demo", "--home", str(home), *extra], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    home.with_name(home.name + ".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load_before[0], "load_after": os.getloadavg()[0],
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}


def signal(home: Path) -> dict:
    """The report's noise floor, each campaign's first AP and APs of 1.0, AP by backbone and encoder."""
    h = resolve_home(home)
    numbers = json.loads((h.campaign("demo-day") / "report" / "numbers.json").read_text())
    out = {"noise": numbers["anova"]["full"]["noise"], "temporal": numbers.get("temporal") or [], "campaigns": {}}
    store = Store(h)
    for campaign in ("demo-day", "demo-night"):
        df = store.experiments(campaign).sort_values(["finished_at", "experiment_id"])
        ok = df[df["status"].isin(["ok", "healed"])]
        board = ok.groupby(["backbone", "encoder"])["val_ap"].agg(["count", "mean", "std"]).reset_index()
        out["campaigns"][campaign] = {
            "n": int(len(df)), "failed": int((df["status"] == "failed").sum()),
            "first_ap": float(df.iloc[0]["val_ap"]), "first_cell": f"{df.iloc[0]['backbone']}/{df.iloc[0]['encoder']}",
            "aps_of_1": int((ok["val_ap"] >= 0.99995).sum()),
            "by_encoder": board.to_dict(orient="records"),
        }
    return out


def markdown(timing: dict, sig: dict, videos: str) -> str:
    nz = sig["noise"]
    lines = [
        f"Measured {date.today().isoformat()} on {platform.machine()} {os.cpu_count()}-core CPU shared with other jobs "
        f"(load average {_load(timing, 'before')} before, {_load(timing, 'after')} after), Python "
        f"{platform.python_version()}; `benchmarks/demo.py` (a clean `crashsearch demo`, nothing cached).",
        "",
        f"Demo: {videos}. Wall time **{timing['wall_s'] / 60:.1f} min**; CPU time (user + sys of the demo and its "
        f"Prefect server together) **{timing['cpu_s'] / 60:.1f} min**. On a busy machine the wall time measures the "
        f"neighbours; the CPU time is what the demo itself needs (the demo's torch threads and the server share "
        f"the cores, so on an idle machine the CPU time can exceed the wall time).",
        "",
        f"Report (`demo-day`, full history): seed-replicate noise floor sd {nz['sd']:.4f} over {nz['cells']} "
        f"replicated cells (df {nz['df']}), **{100 * nz['share']:.0f}% of the validation-AP variance** (goal <= 20%).",
        "",
        "| campaign | experiments | failed | first experiment | its val AP | APs of 1.0 |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, c in sig["campaigns"].items():
        lines.append(f"| {name} | {c['n']} | {c['failed']} | {c['first_cell']} | {c['first_ap']:.4f} | {c['aps_of_1']} |")
    lines += ["", "The report's comparison of mean pooling with the best temporal head (`analysis/temporal.py`):", ""]
    for t in sig["temporal"]:
        lines.append(f"- {t['text']}")
        if t.get("paired"):
            lines.append(f"- {t['backbone']}, {t['paired']['text']}.")
    if not sig["temporal"]:
        lines.append("- (none: no backbone has mean-pooling runs)")
    if sig.get("steps"):
        lines += ["", "Steps (the demo's own lines, seconds since its flow started):", ""]
        lines += [f"    {step}" for step in sig["steps"]]
    lines += ["", "Mean validation AP by backbone and encoder (`demo-day`; n runs, replicates included; sd across runs):",
              "", "| backbone | encoder | n | mean val AP | sd |", "|---|---|---:|---:|---:|"]
    for r in sig["campaigns"]["demo-day"]["by_encoder"]:
        sd = "" if r["std"] != r["std"] else f"{r['std']:.3f}"
        lines.append(f"| {r['backbone']} | {r['encoder']} | {r['count']} | {r['mean']:.3f} | {sd} |")
    return "\n".join(lines)


def _load(timing: dict, when: str) -> str:
    """"1.2 / 1.5 / 1.4" (1, 5 and 15 minutes, as `uptime` prints them), or the 1-minute figure alone."""
    triple = timing.get(f"loadavg_{when}")
    return " / ".join(f"{v:.1f}" for v in triple) if triple else f"{timing[f'load_{when}']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--write", action="store_true", help="write the Demo section of benchmarks/README.md")
    ap.add_argument("--reuse", action="store_true", help="read the figures of a finished run in --home (no timing)")
    ap.add_argument("--timing", default=None, help="with --reuse: JSON of a timing measured outside "
                    "(default: HOME.timing.json, written by the run)")
    args = ap.parse_args()
    saved = args.home.with_name(args.home.name + ".timing.json")
    if args.reuse:
        timing = json.loads(args.timing) if args.timing else json.loads(saved.read_text())
    else:
        timing = run_demo(args.home, [])
        saved.write_text(json.dumps(timing))  # so --reuse --write can rewrite the section later
    sig = signal(args.home)
    log = args.home.with_name(args.home.name + ".log")
    if log.exists():  # "[1/4] synthetic datasets: ... (9s)" etc., without Prefect's prefix
        sig["steps"] = [line.split(" - ", 1)[-1] for line in log.read_text().splitlines() if "] " in line
                        and any(f"[{k}/4]" in line for k in range(1, 5))]
    from crashsearch.flows.demo import DEMO_SECONDS, DEMO_SPLIT
    ds = resolve_home(args.home).datasets
    n_day = len(list((ds / "synth-day" / "train").glob("*.mp4")))
    n_night = len(list((ds / "synth-night" / "train").glob("*.mp4")))
    budgets = {c: s["n"] for c, s in sig["campaigns"].items()}
    videos = (f"{n_day} day and {n_night} night synthetic videos, {DEMO_SECONDS:g} s, 160x96, 8 fps, split "
              f"{'/'.join(str(round(100 * f)) for f in DEMO_SPLIT)}; backbones pixels and random tiny V-JEPA 2; "
              f"campaigns of {budgets['demo-day']} (day) and {budgets['demo-night']} (night) experiments")
    text = markdown(timing, sig, videos)
    print(text)
    if args.write:
        from readme import README, write_section  # benchmarks/ is on sys.path when run as a script

        write_section(README, "Demo", text)


if __name__ == "__main__":
    main()
