"""TPE's propose cost, before and after the cheap study (agents/tpe.py ``_fast_study``), in one process.

The baseline swaps ``_fast_study`` for a plain ``optuna.create_study`` (what every propose built
before): same seeds, so both runs must give the same val_ap sequence, which this checks.
Usage: python -m crashsearch.benchmarks.tpe_speed [budget] [seeds]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from crashsearch.agents import create_policy, tpe
from crashsearch.analysis.synthetic import PlantedObjective, planted_search


def _plain_study(optuna, sampler, distributions, n_results):
    return optuna.create_study(direction="maximize", sampler=sampler)


def _run(objective, budget: int, seeds) -> tuple[float, list[np.ndarray]]:
    t0 = time.process_time()
    seqs = [planted_search(create_policy("tpe", objective.space, seed=s), objective, budget) for s in seeds]
    return time.process_time() - t0, seqs


def main() -> None:
    budget = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seeds = range(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    objective = PlantedObjective(seed=0)
    fast = tpe._fast_study
    tpe._fast_study = _plain_study
    before, old = _run(objective, budget, seeds)
    tpe._fast_study = fast
    after, new = _run(objective, budget, seeds)
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(old, new))
    print(f"tpe, budget {budget}, {len(seeds)} seed(s): before {before:.1f} CPU-s, after {after:.1f} CPU-s, "
          f"ratio {before / after:.2f}x; same val_ap sequences: {same}")


if __name__ == "__main__":
    main()
