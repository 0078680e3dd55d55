"""One unit of work, the same on a laptop and on a GPU worker: train a batch of jobs, record its rows.

``run_batch`` trains jobs of one backbone (vectorised where shapes match), turns each result
or typed failure into a history row, annotates failures with what the healing rules will do,
and appends the rows to the store in one atomic file. The campaign calls it in-process (local
mode) or through the ``train-batch`` flow on a work pool (distributed mode); either way the
rows are in the store when it returns, so a crash loses at most the batch in flight.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from crashsearch.lab.features import FeatureSet
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.tasks.errors import stopping
from crashsearch.tasks.heal import rule_fix
from crashsearch.tasks.keep import Keeper
from crashsearch.tasks.record import Job, make_row, one_line, utcnow


@dataclass(frozen=True)
class BatchContext:
    """What a row needs besides the job and its result."""

    campaign: str
    dataset: str
    space: Space
    code_version: str
    device: str
    keep_models: int | None = 10  # heads kept for the top K cells (None: all, 0: none); tasks.keep


def run_batch(jobs: list[Job], features: FeatureSet, ctx: BatchContext, store: Store,
              train_fn: Callable | None = None, keeper: Any = None) -> list[dict]:
    """Train ``jobs`` (same backbone) and append their rows to the store. Returns the rows
    (failed ones with an extra ``traceback`` key that is not stored).

    A failure of the whole batch (an unexpected exception in training) becomes a failed row
    per job: nothing is lost and the campaign goes on.
    """
    from crashsearch.tasks.train import train_batch

    train_fn = train_fn or train_batch
    started = utcnow()
    t0 = time.perf_counter()
    try:
        results = train_fn([j.cell for j in jobs], features, [j.seed for j in jobs], ctx.space.fixed, ctx.device)
    except Exception as exc:
        results = [exc] * len(jobs)
    if stopping():  # a failure while the campaign stops may be the stop's doing: not recorded, a resume retrains
        kept = [(job, result) for job, result in zip(jobs, results) if not isinstance(result, BaseException)]
        jobs, results = [job for job, _ in kept], [result for _, result in kept]
        if not jobs:
            return []
    finished = utcnow()
    wall = time.perf_counter() - t0
    rows = []
    for job, result in zip(jobs, results):
        common = dict(campaign=ctx.campaign, dataset=ctx.dataset, space=ctx.space, code_version=ctx.code_version,
                      started_at=started, finished_at=finished)
        if isinstance(result, BaseException):
            error_class = getattr(result, "error_class", type(result).__name__)
            fix = rule_fix(job, error_class, ctx.space)
            rows.append(make_row(job, status="failed", error=result, device=ctx.device, heal_note=fix.note,
                                 train_seconds=wall / len(jobs), **common))
        else:
            rows.append(make_row(job, status="healed" if job.healed_from else "ok", metrics=result.metrics,
                                 train_seconds=result.train_seconds, eval_seconds=result.eval_seconds,
                                 params=result.params, peak_mem_mb=result.peak_mem_mb, device=result.device, **common))
    store.append(ctx.campaign, rows, ctx.space)
    _keep(rows, results, features, ctx, keeper or Keeper(store, ctx.campaign, ctx.keep_models))
    # tracebacks ride along for the healer (an LLM advisor reads them) but are not history columns
    for row, result in zip(rows, results):
        if isinstance(result, BaseException):
            row["traceback"] = _trimmed_traceback(result)
    return rows


def _keep(rows: list[dict], results: list, features: FeatureSet, ctx: BatchContext, keeper: Keeper) -> None:
    """Keep the leaders' head weights (tasks.keep); a failure to keep them is one line, never a lost batch."""
    if ctx.keep_models == 0:
        return
    meta = {"dataset": ctx.dataset, "backbone_weights": features.weights, "in_dim": features.dim,
            "step_hz": features.step_hz}
    try:
        keeper.keep_batch(rows, results, meta)
    except Exception as exc:  # noqa: BLE001 - the rows are recorded; weights are a convenience on top
        reraise_interrupt(exc)  # a Ctrl-C during its DuckDB query is a RuntimeError there: still a Ctrl-C
        print(f"could not keep the weights of batch {rows[0]['experiment_id']}...: {one_line(str(exc), 200)}",
              file=sys.stderr)


def _trimmed_traceback(error: BaseException, lines: int = 40) -> str:
    text = getattr(error, "traceback", "") or "".join(traceback.format_exception(error))
    return "\n".join(text.splitlines()[-lines:])
