"""Orchestration overhead of a campaign: wall time that is not training, as a share.

Runs a campaign of N tiny experiments (default 200) on a synthetic dataset's cached pixels
features with evolution, TPE and random, timing every call into the trainer. Overhead is what
the campaign spends outside training: proposing, validation and dedup, building views, writing
the log, healing, bookkeeping. Also profiles where that overhead goes.

    .venv/bin/python benchmarks/campaign.py [--experiments 200] [--round-size 12] [--policies evolution,tpe,random]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import tempfile
import time
from datetime import date

import torch

from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.synth import generate
from crashsearch.tasks.extract import extract_dataset
from crashsearch.tasks.train import train_batch

# "tiny": the real recipe on the demo dataset, restricted to the small heads of the cheap encoders
TINY = """
name: bench-tiny
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru, tcn, transformer, retention]
    size: [small]
  loss:
    loss: [bce, focal_1.0, focal_2.0, focal_3.0]
  train:
    lr: [0.0001, 0.0003, 0.001, 0.003]
    batch_size: [16, 32, 64]
  data:
    window_s: [1.0, 2.0, 3.0]
    augment: [none, jitter]
fixed: {epochs: 20, weight_decay: 0.01, class_balance: true, horizons_s: [0.5, 1.0, 1.5]}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--round-size", type=int, default=12)
    parser.add_argument("--policies", default="evolution,tpe,random")
    parser.add_argument("--profile", action="store_true", help="print the top overhead functions")
    args = parser.parse_args()
    torch.set_num_threads(2)

    root = tempfile.mkdtemp(prefix="crashsearch-bench-")
    home = resolve_home(root)
    ds = generate(home.datasets / "synth-day", videos=48, seed=0)
    extract_dataset(ds, "pixels", home=home, progress=False, log=lambda *_: None)
    space = home.root / "tiny.yaml"
    space.write_text(TINY)

    trained = [0.0]

    def timed_train(*a):
        t0 = time.perf_counter()
        try:
            return train_batch(*a)
        finally:
            trained[0] += time.perf_counter() - t0

    profiler = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    summary = run_campaign(home, ds.root, "bench", policies=args.policies.split(","), budget=args.experiments,
                           round_size=args.round_size, space_path=str(space), seeds=3, train_fn=timed_train,
                           log=lambda *_: None)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t0
    overhead = wall - trained[0]
    print(f"{date.today()} {platform.machine()} {torch.get_num_threads()} torch threads; "
          f"policies {args.policies}; round size {args.round_size}")
    print(f"experiments {summary.recorded}, wall {wall:.1f} s, training {trained[0]:.1f} s, "
          f"overhead {overhead:.2f} s = {overhead / wall:.1%} of campaign time "
          f"({overhead / summary.recorded * 1000:.0f} ms per experiment)")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        print(out.getvalue())


if __name__ == "__main__":
    main()
