"""The demo's training beside another CPU-bound process: wall time idle and busy, before and after.

`make demo` on a loaded 2-core machine took 58 min against ~4 idle: torch ran every op on an
OpenMP team of one thread per core, and while a neighbour held a core the team's other thread
spun waiting for it (lab/cpu.py). This script measures a fixed, shorter demo-like campaign (the
full demo is too long to run four times on a shared machine): `crashsearch campaign` through
the CLI, its temporary Prefect server included, strict turns as the demo runs them, policy
random with a fixed seed (the same cells in every run), medium and large heads of three temporal
encoders on the pixels features of a 48-video synthetic set (features extracted first, untimed).

Four runs in one go, each a fresh campaign: the code at ``--before`` (a git ref, exported with
``git archive``; default ``main``) and this working tree ("after"), each idle and then beside one
busy-loop process (started ``--warm`` seconds earlier, so the 1-minute load average shows it, as
it shows a neighbour that has run for a while). Reports wall and CPU time and the busy/idle ratio.

    .venv/bin/python benchmarks/contention.py [--before main] [--budget 8] [--write]

``--write`` replaces the "Contention" section of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = """\
name: contention
groups:
  arch:
    backbone: [pixels]
    encoder: [zipformer, transformer, retention]
    size: [medium, large]
  loss:
    loss: [bce]
  train:
    lr: [0.001, 0.003]
    batch_size: [32]
  data:
    window_s: [2.0]
    augment: [none]
"""


def checkout(ref: str | None, where: Path) -> Path:
    """A folder whose ``crashsearch`` package is the code at ``ref`` (None: this working tree)."""
    where.mkdir(parents=True)
    if ref is None:
        (where / "crashsearch").symlink_to(ROOT)
    else:
        (where / "crashsearch").mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where / "crashsearch")], input=archive, check=True)
    return where


def env_for(code: Path, prefect_home: Path) -> dict:
    """A user's environment: no thread settings of ours or the test wrapper's."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                            "PREFECT_API_URL", "CRASHSEARCH_HOME")}
    return {**env, "PYTHONPATH": str(code), "PREFECT_HOME": str(prefect_home), "PYTHONUNBUFFERED": "1"}


def cli(env: dict, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crashsearch", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def prepare(code: Path, work: Path, videos: int) -> tuple[dict, Path, Path]:
    """Home with a synthetic dataset and its pixels features (untimed); returns (env, home, dataset)."""
    env, home = env_for(code, work / "prefect"), work / "home"
    dataset = home / "datasets" / "synth-day"
    for args in (("synth", "--home", str(home), "--out", str(dataset), "--videos", str(videos), "--seconds", "7.5"),
                 ("extract", "--home", str(home), "--dataset", str(dataset), "--backbone", "pixels")):
        run = cli(env, *args)
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(args[:1])} failed:\n{run.stderr[-2000:]}")
    (home / "contention.yaml").write_text(SPACE)
    return env, home, dataset


def timed_campaign(env: dict, home: Path, dataset: Path, name: str, budget: int, timeout: float) -> dict:
    """One campaign through the CLI; wall and CPU seconds (its process and the Prefect server)."""
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        run = cli(env, "campaign", "--home", str(home), "--dataset", str(dataset), "--campaign", name,
                  "--space", str(home / "contention.yaml"), "--policies", "random", "--budget", str(budget),
                  "--round-size", str(budget), "--seeds", "1", "--seed", "0", "--propose-mode", "turns",
                  timeout=timeout)
        ok, note = run.returncode == 0, run.stderr[-1500:] if run.returncode else ""
    except subprocess.TimeoutExpired:
        ok, note = False, f"stopped after {timeout:.0f} s"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": load, "ok": ok, "note": note}


PROBE = """
import os, sys, time
sys.path.insert(0, {bench!r})
import torch
from train import bench_cells, demo_like_features
from crashsearch.lab.space import Space
from crashsearch.tasks.train import train_batch
space, features = Space.load(), demo_like_features(videos=72)
cells = bench_cells(space, "zipformer", "medium", 4)
t0, c0 = time.perf_counter(), time.process_time()
train_batch(cells, features, list(range(4)), fixed={{**space.fixed, "epochs": 5}})
print(torch.get_num_threads(), time.perf_counter() - t0, time.process_time() - c0)
"""


def threads_probe(busy: bool) -> list[dict]:
    """Where the CPU goes: one batch of 4 medium zipformer heads (5 epochs) with 1 torch thread, 2
    spinning (OpenMP's default wait) and 2 sleeping (PASSIVE), each in a fresh process."""
    rows = []
    code = checkout(None, Path(tempfile.mkdtemp(prefix="crashsearch-probe-")) / "code")
    for threads, wait in ((1, None), (2, None), (2, "PASSIVE")):
        env = {**env_for(code, Path(tempfile.gettempdir())), "OMP_NUM_THREADS": str(threads)}
        if wait:
            env["OMP_WAIT_POLICY"] = wait
        load = os.getloadavg()
        out = subprocess.run([sys.executable, "-c", PROBE.format(bench=str(Path(__file__).parent))], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        rows.append({"threads": int(out[0]), "wait": wait or "default (spin)", "wall_s": float(out[1]),
                     "cpu_s": float(out[2]), "busy": busy, "load": load})
        print(f"probe threads={threads} wait={wait} busy={busy}: wall {float(out[1]):.1f} s, cpu {float(out[2]):.1f} s",
              flush=True)
    return rows


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def markdown(results: dict, args, started: str) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"Measured {started} on {platform.machine()} {cores}-core CPU, Python {platform.python_version()}; "
        f"`benchmarks/contention.py --before {args.before} --budget {args.budget}`. **A busy machine**: other "
        f"engineers' jobs shared it (the load averages below are 1 / 5 / 15 minutes at each run's start), so "
        f"the figures are upper bounds for a quiet one; rerun to refresh them.",
        "",
        f"Workload: a demo-like campaign through the CLI (temporary Prefect server included), strict turns, "
        f"policy random seed 0, {args.budget} experiments: medium and large zipformer, transformer and retention "
        f"heads on the pixels features of {args.videos} synthetic 7.5 s videos (extracted first, untimed). "
        f"*Busy*: beside one busy-loop process (`while True: pass`) started {args.warm:.0f} s before.",
        "",
        "| code | idle wall s | idle CPU s | idle load | busy wall s | busy CPU s | busy load | busy / idle |",
        "|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for code in ("before", "after"):
        idle, busy = results[code]["idle"], results[code]["busy"]
        ratio = busy["wall_s"] / idle["wall_s"]
        mark = "" if busy["ok"] else " (stopped)"
        lines.append(f"| {code} ({args.before if code == 'before' else 'this branch'}) | {idle['wall_s']:.0f} | "
                     f"{idle['cpu_s']:.0f} | {_load(idle)} | {busy['wall_s']:.0f}{mark} | {busy['cpu_s']:.0f} | "
                     f"{_load(busy)} | **{ratio:.1f}x** |")
    return "\n".join(lines)


def _load(run: dict) -> str:
    return " / ".join(f"{v:.1f}" for v in run["load"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main", help="git ref of the code to compare with (default: main; "
                    "'none': only this working tree, idle and busy, printed without writing the README)")
    ap.add_argument("--budget", type=int, default=8, help="experiments per campaign")
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--warm", type=float, default=60.0, help="seconds the busy loop runs before the busy runs")
    ap.add_argument("--timeout", type=float, default=1500.0, help="a run still going after this long is stopped")
    ap.add_argument("--write", action="store_true", help="write the Contention section of benchmarks/README.md")
    ap.add_argument("--probe", action="store_true", help="only the threads probe (one batch, 1 vs 2 threads, "
                    "spinning or not, idle and beside the busy loop)")
    args = ap.parse_args()
    if args.probe:
        rows = threads_probe(False)
        hog = busy_loop()
        try:
            time.sleep(2)
            rows += threads_probe(True)
        finally:
            hog.kill()
            hog.wait()
        print("| beside a busy loop | torch threads | OpenMP wait | wall s | CPU s | load |\n|---|---:|---|---:|---:|---|")
        for r in rows:
            print(f"| {'yes' if r['busy'] else 'no'} | {r['threads']} | {r['wait']} | {r['wall_s']:.1f} | "
                  f"{r['cpu_s']:.1f} | {_load(r)} |")
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: dict = {"before": {}, "after": {}}
    codes = ("after",) if args.before == "none" else ("before", "after")
    with tempfile.TemporaryDirectory(prefix="crashsearch-contention-") as tmp:
        setups = {code: prepare(checkout(args.before if code == "before" else None, Path(tmp) / code / "code"),
                                Path(tmp) / code, args.videos) for code in codes}
        for mode in ("idle", "busy"):
            hog = busy_loop() if mode == "busy" else None
            try:
                if hog is not None:
                    time.sleep(args.warm)
                for code in codes:
                    env, home, dataset = setups[code]
                    results[code][mode] = r = timed_campaign(env, home, dataset, f"{mode}", args.budget, args.timeout)
                    print(f"{code:>6} {mode}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, load {_load(r)}"
                          f"{'' if r['ok'] else ' FAILED ' + r['note']}", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    if args.before == "none":
        after = results["after"]
        print(f"after only, started {started}: busy / idle = {after['busy']['wall_s'] / after['idle']['wall_s']:.2f}x")
        return
    text = markdown(results, args, started)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from readme import README, write_section

        write_section(README, "Contention", text)


if __name__ == "__main__":
    main()
