"""CPU benchmark of the training engine at demo size: seconds per experiment, single vs batched.

For every registered encoder it trains the same 16 cells (one shape: window 2 s, batch 32,
varying lr, loss and augmentation) two ways in one run: one at a time through ``train_cell``
(the first ``--single-runs`` of them) and all together through ``train_batch`` (one vectorised
group), and reports seconds per experiment and the speed-up. The features imitate the demo's:
48 videos (70/15/15 split), 23 steps at 4 Hz, 64 dims, with a weak learnable signal.

    .venv/bin/python benchmarks/train.py                 # prints the table, updates README "Training"
    .venv/bin/python benchmarks/train.py --encoders gru,tcn --no-readme
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crashsearch.lab.features import FeatureSet  # noqa: E402
from crashsearch.lab.space import Space  # noqa: E402
from crashsearch.models.registry import list_encoders  # noqa: E402
from crashsearch.tasks.errors import TrainingError  # noqa: E402
from crashsearch.tasks.train import train_batch, train_cell  # noqa: E402
from readme import README, write_section  # benchmarks/ is on sys.path when run as a script

GPU_NOTE = ("GPU throughput (experiments per GPU-hour, naive eager loop vs `train_batch`, 1500 x 16 x 1024 "
            "features) is measured by `benchmarks/gpu_train.py --device cuda --out DIR`, which writes "
            "`DIR/gpu_train.json`; `--device cpu --quick` is its smoke run.")


def demo_like_features(videos: int = 48, steps: int = 23, dim: int = 64, hz: float = 4.0, seed: int = 0) -> FeatureSet:
    """Random features shaped like the demo's, positives with a ramp in a few dims before the event."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(videos, generator=g) < 0.4).float()
    x = torch.randn(videos, steps, dim, generator=g)
    x[:, :, :4] += 0.5 * y[:, None, None] * torch.linspace(0, 2, steps)[:, None]
    n_train, n_val = int(videos * 0.7), int(videos * 0.15)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (videos - n_train - n_val))
    y[[0, n_train, n_train + n_val]] = 1.0  # every split has a positive ...
    y[[1, n_train + 1, n_train + n_val + 1]] = 0.0  # ... and a negative
    return FeatureSet("bench", "vjepa2_vitl", x, y, split, torch.arange(-steps + 1, 1) / hz,
                      [f"v{i}" for i in range(videos)], hz)


def bench_cells(space: Space, encoder: str, size: str, n: int) -> list:
    lrs, losses, augments = [0.0003, 0.001, 0.003, 0.01], ["bce", "focal_2.0"], ["none", "jitter"]
    return [space.validate(dict(backbone="vjepa2_vitl", encoder=encoder, size=size, loss=losses[i % 2],
                                lr=lrs[(i // 2) % 4], batch_size=32, window_s=2.0, augment=augments[(i // 8) % 2]))
            for i in range(n)]


def run(encoders: list[str], size: str, models: int, single_runs: int, epochs: int) -> list[dict]:
    space, features = Space.load(), demo_like_features()
    fixed = {**space.fixed, "epochs": epochs}
    rows = []
    for encoder in encoders:
        cells = bench_cells(space, encoder, size, models)
        train_cell(cells[0], features, 0, fixed={**fixed, "epochs": 1})  # warm-up: imports, first-call costs
        t0 = time.perf_counter()
        for i, cell in enumerate(cells[:single_runs]):
            train_cell(cell, features, i, fixed=fixed)
        single = (time.perf_counter() - t0) / single_runs
        t0 = time.perf_counter()
        results = train_batch(cells, features, list(range(models)), fixed=fixed)
        batched = (time.perf_counter() - t0) / models
        ok = [r for r in results if not isinstance(r, TrainingError)]
        rows.append(dict(encoder=encoder, size=size, single_s=single, batched_s=batched, speedup=single / batched,
                         params=ok[0].params if ok else 0, failed=models - len(ok),
                         mean_val_ap=float(np.mean([r.metrics["val_ap"] for r in ok])) if ok else float("nan")))
        r = rows[-1]
        print(f"{encoder:>12} {size:>6}  single {single:7.3f} s/exp   batched x{models} {batched:7.3f} s/exp   "
              f"speed-up {r['speedup']:5.1f}x   params {r['params']:>7,}   val AP {r['mean_val_ap']:.3f}", flush=True)
    return rows


def table(rows: list[dict], models: int, single_runs: int, epochs: int) -> str:
    threads = torch.get_num_threads()
    lines = [
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} {os.cpu_count()}-core CPU "
        f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end), "
        f"torch {torch.__version__.split('+')[0]}, {threads} torch thread(s); "
        f"`benchmarks/train.py`.",
        "",
        f"Demo-size features: 48 videos (33 train x 3 horizons = 99 examples), 23 steps at 4 Hz, 64 dims; "
        f"{epochs} epochs, batch 32, window 2 s. *Single*: `train_cell` one experiment at a time "
        f"({single_runs} runs); *batched*: `train_batch` of {models} same-shape cells as one vectorised model. "
        f"Seconds are wall time per experiment, evaluation included.",
        "",
        "| encoder | size | params | single s/exp | batched s/exp | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['size']} | {r['params']:,} | {r['single_s']:.3f} | "
                     f"{r['batched_s']:.3f} | {r['speedup']:.1f}x |")
    total = sum(r["batched_s"] for r in rows) / len(rows)
    lines += ["", f"Mean over encoders, batched: {total:.3f} s per experiment "
                  f"(~{60 * total:.0f} s for a 60-experiment demo campaign's training)."]
    lines += ["", GPU_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default="all", help="comma-separated encoder names (default: every registered one)")
    p.add_argument("--size", default="small")
    p.add_argument("--models", type=int, default=16, help="cells trained together in the batched run")
    p.add_argument("--single-runs", type=int, default=4, help="cells trained one at a time for the single figure")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = p.parse_args(argv)
    encoders = list_encoders() if args.encoders == "all" else args.encoders.split(",")
    rows = run(encoders, args.size, args.models, args.single_runs, args.epochs)
    body = table(rows, args.models, args.single_runs, args.epochs)
    print("\n" + body)
    if not args.no_readme:
        write_section(README, "Training", body)
        print(f"\nwrote the Training section of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
