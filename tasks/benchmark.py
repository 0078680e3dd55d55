"""Policy benchmark: run search policies against a model of a recorded history instead of training.

Every policy is built by ``agents.create_policy`` and driven through the Policy interface a
campaign uses (``propose(view, n)`` on a read-only ``HistoryView``, then ``observe(rows)``),
round after round by the campaign's turns scheduler (lab/turns.py), ``repeats`` times with
independent seeds. The objective answers each proposal in place of training:

- ``surrogate``: ``analysis.surrogate.Surrogate.sample`` (predicted mean plus seed noise), any cell;
- ``table``: ``analysis.baselines.replay`` with ``misses_count``: a recorded cell replays one of its
  runs, an unrecorded one is a miss that spends one experiment of the budget and yields no AP.

Each experiment also carries its cell's *held-out* AP, which judges the cell a run would pick
(``analysis.arms``) and which the policy never sees: the surrogate's noise-free mean, or in a
table the cell's mean test AP over its recorded runs (its mean validation AP over the replicates
when no test AP was recorded).

Both search the space restricted to the axis values the history has results for
(``analysis.surrogate.observed_space``): a model cannot say anything about a backbone nobody ran.

Offline policies run in a pool of worker processes (one job per policy and repeat, longest first);
LLM agents run in this process meanwhile (their time is network time) with a dollar budget split
over the repeats: an agent whose budget is spent sits out and its run stops there, shorter than
the budget. Each run times its policy (propose + observe), its objective and the bookkeeping
(views and rows) separately, in wall seconds, and its process CPU seconds.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from crashsearch.agents import create_policy, policy_options
from crashsearch.agents.base import VIEW_COLUMNS, HistoryView, Policy, PolicyUnavailable
from crashsearch.analysis.surrogate import Surrogate, fit_surrogate, observed_space, ok_rows
from crashsearch.lab.errors import UserError
from crashsearch.lab._proc import die_with_parent
from crashsearch.lab.space import Space
from crashsearch.lab.turns import run_turns

OBJECTIVES = ("surrogate", "table")
PATIENCE = 5  # rounds in a row without a new cell before a run stops ("exhausted" or the agent's reason)


@dataclass
class RunResult:
    """One policy's run: AP per experiment in order (NaN: a miss, no AP), what it spent, why it stopped."""

    policy: str
    repeat: int
    seed: int
    values: np.ndarray
    cell_ids: np.ndarray
    stopped: str = "budget"
    heldout: np.ndarray | None = None  # per experiment, its cell's held-out AP (analysis.arms): NaN unknown
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: dict = field(default_factory=lambda: {"policy": 0.0, "objective": 0.0, "bookkeeping": 0.0, "cpu": 0.0})


@dataclass
class BenchmarkRuns:
    """Everything ``run_benchmark`` produced: the runs, the space searched, the surrogate (or None)."""

    objective: str
    budget: int
    repeats: int
    space: Space
    runs: list[RunResult]
    surrogate: Surrogate | None
    skipped: dict[str, str]  # policy -> why it did not run (no key, ...)
    seconds: dict  # fit, runs (wall), total (wall)
    workers: int


def run_policy(policy: Policy, space: Space, evaluate: Callable[[np.ndarray], np.ndarray], budget: int,
               round_size: int = 12, repeat: int = 0) -> RunResult:
    """Run one policy until ``budget`` experiments (or it stops proposing); ``evaluate`` maps cell ids to APs.

    The campaign's strict rounds (lab/turns.py) with ``evaluate`` in place of training."""
    run = _ObjectiveRun(policy, space, evaluate, budget, round_size, repeat)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    stopped, _ = run_turns(run)
    secs = run.secs
    secs["bookkeeping"] = time.perf_counter() - t_start - secs["policy"] - secs["objective"]
    secs["cpu"] = time.process_time() - cpu_start  # on a busy machine the wall splits above overstate the work
    return RunResult(policy.name, repeat, policy.seed, np.array(run.values, dtype=float), np.array(run.ids, dtype=np.int64),
                     stopped=stopped, seconds=secs)


class _ObjectiveRun:
    """One benchmark run as a TurnsHost (lab/turns.py): each round the policy proposes, new cells inside
    the space are claimed, ``evaluate`` answers them (the surrogate executor) and the policy observes.
    A run stops at ``budget``, when the agent's spending budget is exhausted, or after PATIENCE rounds
    in a row without a new cell."""

    def __init__(self, policy: Policy, space: Space, evaluate: Callable[[np.ndarray], np.ndarray], budget: int,
                 round_size: int, repeat: int):
        self.policy, self.space, self.evaluate = policy, space, evaluate
        self.budget, self.round_size, self.repeat = budget, round_size, repeat
        self.cols: dict[str, list] = {c: [] for c in VIEW_COLUMNS + space.axis_names}
        self.blank = {c: None for c in VIEW_COLUMNS} | ({"pre_fix": False} if "pre_fix" in VIEW_COLUMNS else {})
        self.seen: set[int] = set()
        self.values: list[float] = []
        self.ids: list[int] = []
        self.secs = {"policy": 0.0, "objective": 0.0, "bookkeeping": 0.0}
        self.idle_rounds, self.rounds = 0, 0

    def stop_reason(self) -> str | None:
        return "budget" if len(self.values) >= self.budget else None

    def plan(self) -> list:
        view = HistoryView(self.space, pd.DataFrame(self.cols), frozenset(), self.rounds)
        t0 = time.perf_counter()
        proposals = self.policy.propose(view, min(self.round_size, self.budget - len(self.values))) or []
        self.secs["policy"] += time.perf_counter() - t0
        self.rounds += 1
        fresh = []
        for prop in proposals:
            if prop.cell.id not in self.seen and self.space.contains(prop.cell) and len(self.values) + len(fresh) < self.budget:
                self.seen.add(prop.cell.id)
                fresh.append(prop)
        return fresh

    def idle(self) -> str | None:
        self.idle_rounds += 1
        reason = getattr(self.policy, "last_error", None)
        if reason and "budget exhausted" in reason:
            return reason
        if self.idle_rounds >= PATIENCE:
            return reason or "exhausted"
        return None

    def execute(self, fresh: list) -> None:
        self.idle_rounds = 0
        t0 = time.perf_counter()
        aps = self.evaluate(np.array([p.cell.id for p in fresh], dtype=np.int64))
        self.secs["objective"] += time.perf_counter() - t0
        new_rows = []
        for prop, ap in zip(fresh, aps):
            row = {**self.blank, "experiment_id": f"{self.policy.name}-r{self.repeat}-{len(self.values):06d}",
                   "cell_id": prop.cell.id, "status": "ok", "val_ap": float(ap), "val_auc": np.nan,
                   "proposer": self.policy.name, "rationale": prop.rationale, **prop.cell.values}
            for k, v in row.items():
                self.cols[k].append(v)
            new_rows.append(row)
            self.values.append(float(ap))
            self.ids.append(prop.cell.id)
        t0 = time.perf_counter()
        self.policy.observe(new_rows)
        self.secs["policy"] += time.perf_counter() - t0


def run_table(policy: Policy, space: Space, table: pd.DataFrame, budget: int, seed: int, round_size: int = 12,
              repeat: int = 0) -> RunResult:
    """One run against the history as a table (``analysis.baselines.replay``; misses count, yield NaN)."""
    from crashsearch.analysis.baselines import replay

    t0, cpu0 = time.perf_counter(), time.process_time()
    res = replay(policy, space, table, budget, seed=seed, round_size=round_size, misses_count=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    trace = np.array(res.trace, dtype=np.int64)
    ok = table["status"].isin(("ok", "healed")).to_numpy() & table["val_ap"].notna().to_numpy()
    ap = np.where(ok, table["val_ap"].to_numpy(float), np.nan)
    values = np.where(trace >= 0, ap[np.clip(trace, 0, None)], np.nan) if len(trace) else np.zeros(0)
    ids = np.where(trace >= 0, table["cell_id"].to_numpy(np.int64)[np.clip(trace, 0, None)], -1) if len(trace) else np.zeros(0, np.int64)
    return RunResult(policy.name, repeat, policy.seed, values.astype(float), ids.astype(np.int64),
                     stopped=res.stopped or "budget", seconds={"policy": wall, "objective": 0.0, "bookkeeping": 0.0, "cpu": cpu})


# ---- one job, in a worker or here --------------------------------------------------------------

_CTX: dict[str, Any] = {}


def _init_worker(ctx: dict, parent: int) -> None:
    die_with_parent(parent)  # a SIGKILLed benchmark left its workers computing for minutes
    # Ctrl-C is the parent's to handle: it terminates the workers (SIGTERM, which a forked worker
    # would otherwise inherit as the CLI's "raise an exception" handler and survive)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _CTX.clear()
    _CTX.update(ctx)


def _job(name: str, repeat: int, ctx: dict | None = None, policy_kwargs: dict | None = None) -> RunResult:
    ctx = ctx or _CTX
    space, budget, round_size = ctx["space"], ctx["budget"], ctx["round_size"]
    policy_seed, noise_seed = job_seeds(ctx["seed"], name, repeat)
    policy = create_policy(name, space, seed=policy_seed, **(policy_kwargs or {}))
    if ctx["objective"] == "table":
        result = run_table(policy, space, ctx["table"], budget, seed=noise_seed, round_size=round_size, repeat=repeat)
        judge = ctx["judge"]
        result.heldout = np.array([judge.get(int(c), np.nan) for c in result.cell_ids], dtype=float)
    else:
        rng = np.random.default_rng(noise_seed)
        surrogate: Surrogate = ctx["surrogate"]
        result = run_policy(policy, space, lambda ids: surrogate.sample(ids, rng), budget, round_size, repeat)
        result.heldout = surrogate.predict(result.cell_ids) if len(result.cell_ids) else np.zeros(0)
    result.policy = name  # the name asked for (a registered alias may share its class's name)
    u = policy.usage()  # an LLM agent's totals; None for an offline policy
    if u:
        result.tokens, result.cost_usd = int(u["tokens_in"] + u["tokens_out"]), float(u["cost_usd"])
    return result


def job_seeds(seed: int, policy: str, repeat: int) -> tuple[int, int]:
    """(policy seed, objective seed) of one repeat: independent across repeats, the same for a rerun."""
    ss = np.random.SeedSequence([seed, repeat, sum(map(ord, policy))])
    a, b = ss.generate_state(2)
    return int(a) & 0x7FFFFFFF, int(b)


def run_benchmark(history: pd.DataFrame, space: Space, policies: list[str], budget: int, repeats: int,
                  objective: str = "surrogate", seed: int = 0, round_size: int = 12, workers: int | None = None,
                  policy_kwargs: dict[str, dict] | None = None, max_usd: float = 25.0,
                  surrogate_kind: str = "hgb", log: Callable[[str], None] = print) -> BenchmarkRuns:
    """Run every policy ``repeats`` times against the ``objective`` built from ``history``.

    ``max_usd`` is each LLM agent's dollar budget over all its repeats (split evenly). Returns
    BenchmarkRuns. Raises ValueError (one line) for a bad objective, budget, repeats or policy name,
    and SurrogateError when the history cannot support a surrogate.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; objectives: {', '.join(OBJECTIVES)}")
    if budget < 1 or repeats < 1 or round_size < 1:
        raise UserError(f"budget, repeats and round size must be at least 1; got {budget}, {repeats}, {round_size}")
    policies = list(dict.fromkeys(p.strip().lower() for p in policies if p.strip()))
    if not policies:
        raise UserError("no policies given")
    from crashsearch.agents import list_policies

    unknown = [p for p in policies if p not in list_policies()]
    if unknown:
        raise UserError(f"unknown policy {', '.join(unknown)}; valid policies: {', '.join(list_policies())}")
    t_all = time.perf_counter()
    bench_space = observed_space(space, history)
    if budget > bench_space.size:  # a run never repeats a cell: past the space's size it could only spin
        raise UserError(f"budget {budget:,} is more than the {bench_space.size:,} cells a run can propose (the space "
                         f"restricted to the values with results); use a budget of at most {bench_space.size:,}")
    ctx: dict[str, Any] = {"space": bench_space, "budget": budget, "round_size": round_size, "seed": seed,
                           "objective": objective}
    surrogate = None
    t0 = time.perf_counter()
    if objective == "surrogate":
        surrogate = fit_surrogate(history, space, kind=surrogate_kind, seed=seed)
        ctx["surrogate"] = surrogate
        f = surrogate.fidelity
        log(f"surrogate ({surrogate.kind}) fitted to {surrogate.n_rows:,} ok rows, {surrogate.n_cells:,} cells in "
            f"{surrogate.fit_seconds:.1f}s: held-out R^2 {f['holdout_r2']:.3f}, Spearman {f['holdout_spearman']:.3f}")
    else:
        ctx["table"] = table_rows(history, bench_space)
        ctx["judge"] = cell_heldout(history)
    fit_s = time.perf_counter() - t0

    skipped: dict[str, str] = {}
    # an agent with a spending budget (the LLM agents) runs here, with a share of --max-usd; the rest in the pool
    online = [p for p in policies if "budget" in policy_options(p)]
    offline = [p for p in policies if p not in online]
    kwargs = {p: dict((policy_kwargs or {}).get(p, {})) for p in policies}
    for name in online:  # an agent without its key is skipped with one line, as in a campaign
        kwargs[name].setdefault("budget", {"usd": max_usd / repeats})
        try:
            create_policy(name, bench_space, seed=0, **kwargs[name])
        except PolicyUnavailable as exc:
            skipped[name] = str(exc)
            log(f"{name} skipped: {exc}")
    online = [p for p in online if p not in skipped]

    # tpe is by far the slowest per run: start its jobs first so the pool ends together
    order = {"tpe": 0, "evolution": 1, "random": 2}
    jobs = sorted([(p, r) for p in offline for r in range(repeats)], key=lambda j: (order.get(j[0], 1), j[1]))
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs) or 1))
    runs: list[RunResult] = []
    t0 = time.perf_counter()
    if workers == 1 or not jobs:
        pool = None
        futures = []
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker,
                                      initargs=(ctx, os.getpid()))
        futures = [pool.submit(_job, p, r, None, kwargs[p]) for p, r in jobs]
    try:
        for name in online:
            for r in range(repeats):
                runs.append(_job(name, r, ctx, kwargs[name]))
                log(f"{name} repeat {r + 1}/{repeats}: {len(runs[-1].values)} experiments ({runs[-1].stopped}), "
                    f"{runs[-1].tokens:,} tokens, ${runs[-1].cost_usd:.2f}")
        if pool is None:
            runs += [_job(p, r, ctx, kwargs[p]) for p, r in jobs]
        else:
            runs += [f.result() for f in futures]
    except BaseException:
        if pool is not None:  # interrupted or failed: stop the workers now instead of finishing their runs
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    if pool is not None:
        pool.shutdown()
    runs_s = time.perf_counter() - t0
    runs.sort(key=lambda r: (policies.index(r.policy), r.repeat))
    return BenchmarkRuns(objective, budget, repeats, bench_space, runs, surrogate, skipped,
                         {"fit": fit_s, "runs": runs_s, "total": time.perf_counter() - t_all}, workers)


def table_rows(history: pd.DataFrame, space: Space) -> pd.DataFrame:
    """The rows a table objective replays: every row with a cell id inside ``space``, test metrics dropped."""
    rows = history.drop(columns=[c for c in history.columns if c.startswith("test_")]).reset_index(drop=True)
    if "status" not in rows.columns:
        rows["status"] = np.where(rows["val_ap"].notna(), "ok", "failed")
    ids = pd.to_numeric(rows["cell_id"], errors="coerce")
    inside = ids.notna() & ids.between(0, space.full_size - 1)
    rows = rows[inside].assign(cell_id=ids[inside].astype(np.int64))
    rows = rows[np.array([_in_choices(space, int(i)) for i in rows["cell_id"]], dtype=bool)].reset_index(drop=True)
    if ok_rows(rows).empty:
        raise UserError("the history has no ok row with a validation AP inside the space: nothing to replay")
    return rows


def cell_heldout(history: pd.DataFrame) -> dict[int, float]:
    """{cell id: held-out AP}: the mean test AP of the cell's ok runs, or its replicate mean of
    validation AP when none has a test AP (the judge of a table benchmark's picks)."""
    ok = ok_rows(history)
    ids = pd.to_numeric(ok["cell_id"], errors="coerce")
    test = pd.to_numeric(ok["test_ap"], errors="coerce") if "test_ap" in ok.columns else pd.Series(np.nan, index=ok.index)
    frame = pd.DataFrame({"cell": ids, "test": test, "val": pd.to_numeric(ok["val_ap"], errors="coerce")}).dropna(subset=["cell"])
    means = frame.groupby("cell")[["test", "val"]].mean()
    return {int(c): float(t if np.isfinite(t) else v) for c, t, v in zip(means.index, means["test"], means["val"])}


def _in_choices(space: Space, cell_id: int) -> bool:
    """True when the cell lies inside ``space`` (and its restriction)."""
    try:
        space.cell(cell_id)
        return True
    except ValueError:
        return False
