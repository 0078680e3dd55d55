"""How big the LLM agents' prompts get as the history grows, and how fast proposals are validated.

    .venv/bin/python benchmarks/prompt_size.py [--sizes 100 1000 10000] [--repeat 3]

Builds synthetic histories of the default 108,000-cell space (random cells, ~88% ok, ~10%
failed, ~2% invalid, validation AP driven by the architecture plus noise, four proposers, long
rationales and error messages) and prints, per size, the prompt in approximate tokens
(characters / 4; no tokenizer is downloaded) split into the static part (cached) and the
per-round part, plus the time to build it. Then it times ``agents.llm.parse_proposals`` on
model answers with Gemini-style string values, a tenth of them invalid: proposals per second.
No network, no API key.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time

import numpy as np
import pandas as pd

from crashsearch.agents.base import VIEW_COLUMNS, HistoryView
from crashsearch.agents.llm import parse_proposals
from crashsearch.agents.prompt import approx_tokens, diagnosis_schema, propose_prompt, proposals_schema, static_prompt
from crashsearch.lab.space import Space

PROPOSERS = ["claude", "gemini", "evolution", "random"]
ERRORS = [("OOMError", "CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 79.10 GiB total capacity)"),
          ("NaNLossError", "loss became NaN at epoch 3 step 117 (lr=0.01, batch 64)"),
          ("ShapeError", "mat1 and mat2 shapes cannot be multiplied (64x1024 and 768x256) in encoder.proj")]


def synthetic_view(space: Space, n: int, seed: int = 0) -> HistoryView:
    """A HistoryView with n synthetic experiments (deterministic for a seed)."""
    rng = random.Random(seed)
    cells = space.sample(rng, n)
    arch_effect = {f"{b}/{e}": rng.uniform(0.55, 0.9) for b in space.axis("backbone").values for e in space.axis("encoder").values}
    rows = []
    for i, cell in enumerate(cells):
        u = rng.random()
        status = "ok" if u < 0.88 else "failed" if u < 0.98 else "invalid"
        error_class, message = rng.choice(ERRORS) if status == "failed" else (None, None)
        ap = min(0.99, arch_effect[cell.arch_group] + rng.gauss(0, 0.03)) if status == "ok" else np.nan
        rows.append({
            "experiment_id": f"e{i:06d}", "cell_id": cell.id, "status": status, "val_ap": ap,
            "val_auc": ap, "proposer": PROPOSERS[i % len(PROPOSERS)],
            "rationale": f"Round {i // 12}: test {cell['encoder']} with {cell['loss']} at lr {cell['lr']} because the "
                         "leaders suggest focal losses help on rare collisions and longer windows add context " * 2,
            "error_class": error_class, "error_message": message, "finished_at": pd.Timestamp("2026-01-01", tz="UTC"),
            **cell.values,
        })
    df = pd.DataFrame(rows, columns=VIEW_COLUMNS + space.axis_names)
    return HistoryView(space, df, in_flight=frozenset(), round=n // 12)


def measure_prompts(space: Space, sizes: list[int], repeat: int) -> list[dict]:
    """Per history size: static and per-round tokens (chars/4), total, and build milliseconds."""
    static = static_prompt(space, "Answer only by calling the tool you are given; put nothing else in your reply.")
    out = []
    for n in sizes:
        view = synthetic_view(space, n)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            dynamic = propose_prompt(view, 12, "claude", "explorer")
            best = min(best, time.perf_counter() - start)
        out.append({"experiments": n, "static_tokens": approx_tokens(static), "round_tokens": approx_tokens(dynamic),
                    "total_tokens": approx_tokens(static) + approx_tokens(dynamic), "build_ms": best * 1000})
    return out


def measure_validation(space: Space, items: int = 20000, seed: int = 1) -> float:
    """Proposals per second through parse_proposals (string values as Gemini sends them, 10% invalid)."""
    rng = random.Random(seed)
    answer = []
    for cell in space.sample(rng, items):
        item = {k: str(v) for k, v in cell.values.items()}
        if rng.random() < 0.1:
            item["lr"] = "0.5"  # not a value of the axis
        item["rationale"] = "explore a new architecture group with focal loss"
        answer.append(item)
    start = time.perf_counter()
    parse_proposals(space, {"proposals": answer}, n=items, taken=set())
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    space = Space.load()
    print(f"# prompt size (tokens ~ chars/4), {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| experiments | static (cached) | per round | total | build ms |")
    print("|---:|---:|---:|---:|---:|")
    for row in measure_prompts(space, args.sizes, args.repeat):
        print(f"| {row['experiments']:,} | {row['static_tokens']:,} | {row['round_tokens']:,} | {row['total_tokens']:,} | {row['build_ms']:.0f} |")
    tools = json.dumps([proposals_schema(space), diagnosis_schema(space)])
    static = static_prompt(space, "Answer only by calling the tool you are given; put nothing else in your reply.")
    print(f"\nClaude's cacheable prefix (tool schemas + static system prompt): ~{approx_tokens(tools) + approx_tokens(static):,} tokens")
    print(f"validation: {measure_validation(space):,.0f} proposals/s through parse_proposals (10% invalid)")


if __name__ == "__main__":
    main()
