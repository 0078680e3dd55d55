"""The proposal-policy interface every searcher implements (random, tpe, evolution, claude, gemini).

Modelled on Optuna's BaseSampler and Ray Tune's Searcher: a small abstract base with hooks that
do nothing by default, so a policy overrides only what it needs.

When the campaign calls what:
- ``propose(view, n)`` once per round with a read-only snapshot of the history; returns up to n
  Proposals. The orchestrator validates and dedups them and may call ``propose`` again for
  replacements (the view then lists the rejected cells as in flight).
- ``observe(results)`` after a round's experiments are recorded, with their rows (dicts with
  ``cell_id``, axis values, ``status``, ``val_ap``; never test AP).
- ``get_state()`` / ``set_state(state)`` around process restarts: the state is JSON-serialisable
  and written atomically by the campaign, so a resumed campaign continues the same search.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from crashsearch.lab.leaderboard import leaderboard
from crashsearch.lab.space import Cell, Space


class PolicyUnavailable(RuntimeError):
    """A policy that cannot run here (e.g. an LLM agent without an API key); one readable line.

    ``create_policy`` raises it; the campaign prints it and goes on with the other policies.
    """


@dataclass
class Proposal:
    """A cell a policy wants run, with why. Token counts and cost are for LLM policies."""

    cell: Cell
    rationale: str = ""
    policy: str = ""
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


@dataclass
class HealAdvice:
    """An LLM's answer about a failure the rules could not heal.

    ``kind`` is "config_fix" (``cell`` is a validated replacement to retry as a healed run) or
    "code_bug" (``diagnosis`` says what a person should fix; shown in the campaign summary).
    """

    kind: str
    diagnosis: str = ""
    cell: Cell | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


# Columns of ``HistoryView.experiments`` that policies may read. Test metrics are never included:
# agents see validation AP only.
VIEW_COLUMNS = ["experiment_id", "cell_id", "status", "val_ap", "val_auc", "proposer", "rationale",
                "error_class", "error_message", "finished_at"]
# Optional: the campaign adds it when a bug fix concerns the campaign (True: trained before the fix).
PRE_FIX = "pre_fix"


@dataclass(frozen=True)
class HistoryView:
    """A read-only snapshot of the history that policies decide from.

    ``experiments``: one row per recorded experiment of this campaign's lineage, oldest first,
    with VIEW_COLUMNS plus one column per axis. ``in_flight``: cell ids claimed but not recorded;
    recorded ids passed in are dropped, because TPE counts an in-flight cell as a poor result.
    """

    space: Space
    experiments: pd.DataFrame
    in_flight: frozenset[int] = frozenset()
    round: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.in_flight and len(self.experiments):
            recorded = set(self.experiments["cell_id"].astype(int))
            object.__setattr__(self, "in_flight", frozenset(int(i) for i in self.in_flight) - recorded)

    @classmethod
    def empty(cls, space: Space) -> "HistoryView":
        return cls(space, pd.DataFrame(columns=VIEW_COLUMNS + space.axis_names))

    @property
    def ok(self) -> pd.DataFrame:
        """Experiments that produced a validation AP (status ok or healed)."""
        df = self.experiments
        return df[df["status"].isin(["ok", "healed"]) & df["val_ap"].notna()]

    def tried_ids(self) -> set[int]:
        """Cell ids already recorded (any status) or in flight."""
        return set(self.experiments["cell_id"].astype(int)) | set(self.in_flight)

    def leaderboard(self, k: int = 10) -> pd.DataFrame:
        """Top k cells by mean validation AP (lab.leaderboard, the one ranking and interval):
        rank, cell_id, axes, mean_ap, std_ap, n, ci_lo, ci_hi (NaN for one run), and
        pre_fix_runs when the experiments carry a ``pre_fix`` column."""
        return leaderboard(self.experiments, k, self.space.axis_names)

    def coverage(self) -> pd.DataFrame:
        """Per architecture group (backbone/encoder): tried, failed, best and mean validation AP."""
        df = self.experiments
        if df.empty:
            return pd.DataFrame(columns=["arch_group", "tried", "failed", "best_ap", "mean_ap"])
        df = df.assign(arch_group=df["backbone"].astype(str) + "/" + df["encoder"].astype(str))
        ok = df[df["status"].isin(["ok", "healed"])]
        out = df.groupby("arch_group").agg(tried=("cell_id", "size"), failed=("status", lambda s: int((s == "failed").sum())))
        out["best_ap"] = ok.groupby("arch_group")["val_ap"].max()
        out["mean_ap"] = ok.groupby("arch_group")["val_ap"].mean()
        return out.reset_index().sort_values("best_ap", ascending=False, na_position="last")

    def failures(self, k: int = 10) -> pd.DataFrame:
        """Failure fingerprints: error class per architecture group, most frequent first."""
        df = self.experiments
        df = df[df["status"] == "failed"]
        if df.empty:
            return pd.DataFrame(columns=["arch_group", "error_class", "count", "example"])
        df = df.assign(arch_group=df["backbone"].astype(str) + "/" + df["encoder"].astype(str))
        out = df.groupby(["arch_group", "error_class"]).agg(count=("cell_id", "size"), example=("error_message", "last"))
        return out.reset_index().sort_values("count", ascending=False).head(k)

    def cells(self, ids: Iterable[int]) -> list[Cell]:
        return [self.space.cell(int(i)) for i in ids]


class Policy(abc.ABC):
    """Base class of every proposal policy. Subclasses set ``name`` and implement ``propose``."""

    name: str = "policy"
    model: str = ""  # an LLM model id, empty for offline policies
    # Why the last ``propose`` returned nothing (an LLM agent that sat out), for the campaign's log.
    last_error: str | None = None
    # True when ``propose`` may run in several threads at once (the pipeline keeps up to
    # ``max_calls_in_flight`` calls going); otherwise the campaign calls it, and ``observe``,
    # one at a time.
    concurrent_calls: bool = False
    # The most cells one ``propose`` call can return (None: no limit); the pipeline asks for no more.
    max_per_call: int | None = None

    def __init__(self, space: Space, seed: int = 0, **kwargs: Any):
        self.space = space
        self.seed = seed

    @abc.abstractmethod
    def propose(self, view: HistoryView, n: int) -> list[Proposal]:
        """Return up to n proposals for the next round (valid cells of ``self.space``)."""

    def observe(self, results: list[dict]) -> None:
        """Called with the recorded rows of the policy's finished experiments. Default: nothing."""

    def diagnose(self, cell: Cell, error_class: str, traceback: str) -> HealAdvice | None:
        """Advice on a failure the healing rules could not handle. Default: None (no opinion)."""
        return None

    def usage(self) -> dict[str, Any] | None:
        """Campaign totals of an LLM agent (tokens_in, tokens_out, cost_usd, ...); None for offline policies."""
        return None

    def get_state(self) -> dict:
        """JSON-serialisable state for resume. Default: nothing beyond the constructor."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what ``get_state`` returned. Default: nothing."""

    def _proposal(self, cell: Cell, rationale: str, **kw: Any) -> Proposal:
        return Proposal(cell=cell, rationale=rationale, policy=self.name, model=self.model, **kw)
