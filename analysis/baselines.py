"""Baselines: do the agents find better cells than random and TPE search for the same budget?

The paper: at N = 50 experiments LLM search reaches AP 0.985 against 0.965 for random search.
Here, for every arm (see ``analysis.history``: a policy, or a control-arm campaign
``<id>-baseline-<policy>``):

- ``best_at_n``: best validation AP among an arm's first N experiments, N = 10, 25, 50, 100, ...
  with a 95% bootstrap interval. With two or more independent runs of the arm (seeds or
  campaigns) the estimate is the mean over runs and the bootstrap resamples runs
  (method "runs"); with one run it is the observed value and the bootstrap resamples that run's
  first N experiments with replacement (method "resample-first-N": luck of the draw within one
  run, an interval that cannot rise above the observed best).
- ``regret_curves`` and ``distributions``: the gap to the best AP anyone found, and each arm's
  AP distribution.
- ``verdict``: one plain sentence, "at N=50 the LLM agents reach X vs random Y (difference Z,
  95% interval ...)".
- ``replay``: run a policy against an existing history used as a lookup table, for budgets too
  large to train (cells not in the table are skipped and counted), on the campaign's turns
  scheduler (lab/turns.py) with the table as the executor.

Control arms that really train are launched by ``flows.analyze.run_control_arms``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from crashsearch.analysis.history import CONTROL_POLICIES, is_llm, prepare, running_best
from crashsearch.lab.turns import run_turns

DEFAULT_NS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000)
LLM_ARM = "llm agents"


def arm_sequences(df: pd.DataFrame, combine_llm: bool = True) -> dict[str, list[np.ndarray]]:
    """{arm: [AP sequence of each run, in order, NaN = no AP]}; adds LLM_ARM when >= 2 LLM arms."""
    df = df if "ok" in df.columns else prepare(df)
    vals = df["val_ap"].where(df["ok"])
    out: dict[str, list[np.ndarray]] = {}
    for (arm, _campaign), idx in df.groupby(["arm", "campaign"], sort=True).groups.items():
        out.setdefault(str(arm), []).append(vals.loc[idx].to_numpy(float))
    llm_arms = [a for a in out if is_llm(a)]
    if combine_llm and len(llm_arms) >= 2:
        rows = df[df["arm"].map(is_llm)]
        out[LLM_ARM] = [vals.loc[idx].to_numpy(float) for _, idx in rows.groupby("campaign").groups.items()]
    return out


def _samples(runs: list[np.ndarray], n: int, n_boot: int, rng: np.random.Generator):
    """(estimate, bootstrap samples or None, method, runs used) of the best among the first n."""
    long = [r for r in runs if len(r) >= n]
    if not long:
        return math.nan, None, "too few", 0
    bests = np.array([running_best(r[:n])[-1] for r in long])
    if len(long) >= 2:
        boot = bests[rng.integers(0, len(long), (n_boot, len(long)))]
        with np.errstate(all="ignore"):
            return float(np.nanmean(bests)), np.nanmean(boot, axis=1), "runs", len(long)
    # the max of n draws with replacement from n sorted values is sorted[k] with
    # P(k <= j) = ((j + 1) / n)^n: sample k directly instead of materialising (n_boot, n) draws
    ranked = np.sort(np.nan_to_num(long[0][:n], nan=-np.inf))
    k = np.ceil(n * np.exp(np.log(rng.random(n_boot)) / n)).astype(int) - 1
    boot = ranked[np.clip(k, 0, n - 1)]
    boot[np.isinf(boot)] = np.nan  # a resample of failures only has no best
    return float(bests[0]), boot, "resample-first-N", 1


def _ci(samples) -> tuple[float, float]:
    if samples is None or not np.isfinite(samples).any():
        return math.nan, math.nan
    s = samples[np.isfinite(samples)]
    return float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))


def best_at_n(df: pd.DataFrame, ns: tuple[int, ...] | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Best-at-N per arm: columns arm, n, best, lo, hi, runs, method (see the module docstring).

    ``ns`` defaults to DEFAULT_NS up to the longest run. Rows only where a run reached N.
    """
    seqs = arm_sequences(df)
    longest = max((len(r) for runs in seqs.values() for r in runs), default=0)
    ns = tuple(ns or [n for n in DEFAULT_NS if n <= longest])
    rng = np.random.default_rng(seed)
    rows = []
    for arm, runs in seqs.items():
        for n in ns:
            est, boot, method, used = _samples(runs, n, n_boot, rng)
            if used == 0:
                continue
            lo, hi = _ci(boot)
            rows.append({"arm": arm, "n": int(n), "best": est, "lo": lo, "hi": hi, "runs": used, "method": method})
    return pd.DataFrame(rows, columns=["arm", "n", "best", "lo", "hi", "runs", "method"])


def regret_curves(df: pd.DataFrame, reference: float | None = None, max_points: int = 400) -> pd.DataFrame:
    """Regret per arm: columns arm, n, best (mean over runs reaching n), regret (reference - best).

    ``reference`` defaults to the best AP anywhere in ``df``. N is log-spaced when runs are long.
    """
    df = df if "ok" in df.columns else prepare(df)
    ref = reference if reference is not None else float(df.loc[df["ok"], "val_ap"].max())
    rows = []
    for arm, runs in arm_sequences(df).items():
        longest = max(len(r) for r in runs)
        ns = np.unique(np.geomspace(1, longest, min(max_points, longest)).astype(int))
        bests = [running_best(r) for r in runs]
        for n in ns:
            vals = [b[n - 1] for b in bests if len(b) >= n]
            with np.errstate(all="ignore"):
                m = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            rows.append({"arm": arm, "n": int(n), "best": m, "regret": ref - m})
    return pd.DataFrame(rows, columns=["arm", "n", "best", "regret"])


def distributions(df: pd.DataFrame) -> pd.DataFrame:
    """AP distribution per arm (ok runs): n, mean, min, q25, median, q75, q90, max."""
    df = df if "ok" in df.columns else prepare(df)
    ok = df[df["ok"]]
    if ok.empty:
        return pd.DataFrame(columns=["arm", "n", "mean", "min", "q25", "median", "q75", "q90", "max"])
    g = ok.groupby("arm")["val_ap"]
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "min": g.min(), "q25": g.quantile(0.25),
                        "median": g.median(), "q75": g.quantile(0.75), "q90": g.quantile(0.9), "max": g.max()})
    return out.reset_index()


def verdict(df: pd.DataFrame, n: int = 50, agent: str | None = None, control: str = "random",
            n_boot: int = 2000, seed: int = 0) -> dict:
    """Compare an agent arm with a control arm at N experiments, in one plain sentence.

    ``agent`` defaults to the LLM agents (combined when several). When either arm ran fewer than
    ``n`` experiments the largest N both reached is used and the sentence says so. Returns a dict:
    text, agent, control, n, agent_best, control_best, diff, diff_lo, diff_hi, method, beats
    (True / False / None when undecided: the interval straddles 0).
    """
    seqs = arm_sequences(df)
    out = {"text": "", "agent": agent, "control": control, "n": n, "agent_best": math.nan, "control_best": math.nan,
           "diff": math.nan, "diff_lo": math.nan, "diff_hi": math.nan, "method": None, "beats": None}
    if agent is None:
        llm = [a for a in seqs if is_llm(a) and a != LLM_ARM]
        if not llm:
            out["text"] = "No LLM agents in this history."
            return out
        agent = LLM_ARM if LLM_ARM in seqs else llm[0]
        label, verb = f"the LLM agents ({', '.join(sorted(llm))})", "reach"
    else:
        label, verb = agent, "reaches"
    out["agent"] = agent
    if agent not in seqs:
        out["text"] = f"No {agent} arm in this history."
        return out
    if control not in seqs:
        out["text"] = f"No {control} control arm in this history; run control arms to compare."
        return out
    reach = min(max(len(r) for r in seqs[agent]), max(len(r) for r in seqs[control]))
    used_n = min(n, reach)
    if used_n < 1:
        out["text"] = f"{label} or {control} has no experiments."
        return out
    rng = np.random.default_rng(seed)
    a_est, a_boot, a_m, _ = _samples(seqs[agent], used_n, n_boot, rng)
    c_est, c_boot, c_m, _ = _samples(seqs[control], used_n, n_boot, rng)
    k = min(len(a_boot), len(c_boot))
    lo, hi = _ci(a_boot[:k] - c_boot[:k])
    diff = a_est - c_est
    beats = None if math.isnan(lo) else (True if lo > 0 else (False if hi < 0 else None))
    short = "" if used_n == n else f" (the largest N both arms reached; N={n} was not reached)"
    call = {True: "the agents beat the control", False: "the control beats the agents",
            None: "no clear difference at this budget"}[beats]
    out.update(agent_best=a_est, control_best=c_est, diff=diff, diff_lo=lo, diff_hi=hi, n=used_n,
               method=f"{a_m} / {c_m}", beats=beats)
    out["text"] = (f"At N={used_n}{short} {label} {verb} {a_est:.4f} vs {control} {c_est:.4f} "
                   f"(difference {diff:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]; bootstrap: {a_m} / {c_m}): {call}.")
    return out


def verdicts(df: pd.DataFrame, n: int = 50, seed: int = 0) -> list[dict]:
    """``verdict`` of the agents against every control arm present (random, tpe).

    The agents are the LLM agents when present, else every non-control arm in turn.
    """
    seqs = arm_sequences(df)
    controls = [c for c in CONTROL_POLICIES if c in seqs]
    llm = any(is_llm(a) for a in seqs)
    agents = [None] if llm else [a for a in seqs if a not in CONTROL_POLICIES and a != LLM_ARM]
    if not controls or not agents:
        return [verdict(df, n, agent=agents[0] if agents else None, seed=seed)]
    return [verdict(df, n, agent=a, control=c, seed=seed) for a in agents for c in controls]


# ---- replay ---------------------------------------------------------------------------------

@dataclass
class ReplayResult:
    """What ``replay`` returns: the replayed rows plus what happened to the proposals."""

    history: pd.DataFrame  # rows taken from the table, in replay order, proposer = the policy
    proposed: int = 0  # proposals the policy made
    hits: int = 0  # proposals found in the table (= len(history))
    misses: int = 0  # proposals of cells not in the table: skipped (or counted, see ``misses_count``)
    duplicates: int = 0  # proposals of cells already replayed: skipped
    rounds: int = 0
    stopped: str = ""  # "budget", "stalled" (no hit for `patience` rounds) or "exhausted" (table used up)
    extra: dict = field(default_factory=dict)
    trace: list = field(default_factory=list)  # per counted proposal, in order: its row in the table, -1 for a miss


def replay(policy: Any, space, history_df: pd.DataFrame, budget: int, seed: int = 0, round_size: int = 12,
           patience: int = 50, view_factory: Callable | None = None, misses_count: bool = False) -> ReplayResult:
    """Run ``policy`` (anything with ``propose(view, n)`` and ``observe(rows)``) against a history
    used as a lookup table, until ``budget`` proposals were found in the table.

    A proposed cell present in the table replays one of its recorded runs (chosen with ``seed``
    when it has replicates, any status); a cell not in the table is skipped and counted in
    ``misses`` and shown to the policy as in flight so it is not proposed again. Stops early
    after ``patience`` rounds without a hit or when every table cell was replayed. With
    ``misses_count`` a miss also spends one unit of the budget (a benchmark's tabular objective:
    proposing an unrecorded cell is a wasted experiment); ``trace`` lists every counted proposal.
    The rounds are the campaign's strict turns (lab/turns.py) with the table as the executor.
    """
    if view_factory is None:
        # the Policy interface's own read-only view; imported here so analysis needs agents only for replay
        from crashsearch.agents.base import VIEW_COLUMNS, HistoryView

        def view_factory(space, experiments, in_flight, round):  # noqa: A002 - mirrors HistoryView
            cols = [c for c in VIEW_COLUMNS + space.axis_names if c in experiments.columns]
            return HistoryView(space, experiments[cols].reset_index(drop=True), frozenset(in_flight), round)

    run = _TableRun(policy, space, history_df.reset_index(drop=True), budget, np.random.default_rng(seed),
                    round_size, patience, view_factory, misses_count)
    result = run.result
    result.stopped, _ = run_turns(run)
    name = run.name
    hist = run.table.iloc[run.picked].copy().reset_index(drop=True)
    hist["campaign"] = f"replay-{name}"
    hist["proposer"] = name
    hist["experiment_id"] = [f"replay-{name}-{i:06d}" for i in range(len(hist))]
    if "finished_at" in hist.columns:
        hist["finished_at"] = pd.NaT  # replay order is the order
    result.history = hist
    return result


class _TableRun:
    """A replay as a TurnsHost (lab/turns.py): a round's proposals are sorted into hits (cells in the
    table, claimed), misses and duplicates; the table executor replays a recorded run of each hit."""

    def __init__(self, policy: Any, space, table: pd.DataFrame, budget: int, rng: np.random.Generator,
                 round_size: int, patience: int, view_factory: Callable, misses_count: bool):
        self.policy, self.space, self.table, self.budget, self.rng = policy, space, table, budget, rng
        self.round_size, self.patience, self.view_factory, self.misses_count = round_size, patience, view_factory, misses_count
        self.by_cell = table.groupby("cell_id").indices  # {cell_id: row positions}
        self.name = getattr(policy, "name", type(policy).__name__)
        self.result = ReplayResult(history=table.iloc[:0].copy())
        self.picked: list[int] = []
        self.seen: set[int] = set()
        self.missing: set[int] = set()
        self.idle_rounds = 0

    def spent(self) -> int:
        return self.result.hits + self.result.misses if self.misses_count else self.result.hits

    def stop_reason(self) -> str | None:
        if self.spent() >= self.budget:
            return "budget"
        if len(self.seen) == len(self.by_cell):
            return "exhausted"
        if self.idle_rounds >= self.patience:
            return "stalled"
        return None

    def plan(self) -> list[tuple[bool, int]]:
        """The round's counted proposals in order: (True, cell id) a hit, (False, cell id) a counted miss."""
        result = self.result
        view = self.view_factory(self.space, self.table.iloc[self.picked], self.missing, result.rounds)
        proposals = self.policy.propose(view, min(self.round_size, self.budget - self.spent())) or []
        result.rounds += 1
        jobs = []
        for prop in proposals:
            result.proposed += 1
            cell_id = int(getattr(getattr(prop, "cell", prop), "id", prop))
            if cell_id in self.seen or (self.misses_count and cell_id in self.missing):
                result.duplicates += 1
            elif cell_id not in self.by_cell:
                if self.misses_count and self.spent() >= self.budget:
                    continue
                result.misses += 1
                self.missing.add(cell_id)
                if self.misses_count:
                    jobs.append((False, cell_id))
            elif self.spent() < self.budget:
                self.seen.add(cell_id)
                result.hits += 1
                jobs.append((True, cell_id))
        return jobs

    def idle(self) -> str | None:
        self.idle_rounds += 1
        return None  # stop_reason says when patience ran out

    def execute(self, jobs: list[tuple[bool, int]]) -> None:
        """The table executor: a hit replays one of its cell's recorded runs, a miss yields nothing."""
        new_rows = []
        for hit, cell_id in jobs:
            if not hit:
                self.result.trace.append(-1)
                continue
            pos = int(self.rng.choice(self.by_cell[cell_id]))
            self.picked.append(pos)
            new_rows.append(pos)
            self.result.trace.append(pos)
        self.idle_rounds = 0 if new_rows else self.idle_rounds + 1
        if new_rows and hasattr(self.policy, "observe"):
            self.policy.observe(self.table.iloc[new_rows].drop(columns=[c for c in self.table.columns if c.startswith("test_")]).to_dict("records"))
