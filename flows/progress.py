"""A running campaign in the Prefect UI: progress, the leaderboard and per-policy counts as artifacts.

The campaign flow makes a ``CampaignProgress`` and hands it to the campaign loop, which calls

    start(campaign, recorded, target, budget)   once, before the first round
    batch(recorded)                             after each recorded batch (throttled: one update a second)
    round(round, recorded)                      after each round (the tables every ``every_rounds`` rounds)
    finish(recorded, stopped)                   once, at the end (whatever ended it)

and the flow run's Artifacts tab shows, under keys made from the campaign id:

* ``<id>-progress``: experiments recorded of the run's goal (the budget, or with ``--extend`` the
  run's allowance), as a progress bar whose description says which;
* ``<id>-leaderboard``: the best cells by mean validation AP with 95% intervals (the store's
  leaderboard, the same as ``crashsearch leaderboard``), a new version every few rounds;
* ``<id>-policies``: per proposer, experiments, ok, failed, best validation AP, tokens and cost
  of the recorded experiments.

Outside a flow run (``run_campaign`` called directly) every method is a no-op. An artifact that
cannot be written (server gone) is reported once on the log and the rest are skipped: the UI is
a convenience and never stops a campaign.
"""
from __future__ import annotations

import time
from typing import Callable
from uuid import UUID

from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.settings import Home
from crashsearch.lab.store import Store

SQL_POLICIES = """
    SELECT proposer AS policy, count(*) AS experiments,
           count(*) FILTER (WHERE status IN ('ok', 'healed')) AS ok,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           round(max(val_ap) FILTER (WHERE status IN ('ok', 'healed')), 4) AS best_val_ap,
           CAST(coalesce(sum(tokens_in), 0) + coalesce(sum(tokens_out), 0) AS BIGINT) AS tokens,
           round(coalesce(sum(cost_usd), 0), 4) AS cost_usd
    FROM experiments WHERE campaign = ? AND status <> 'invalid'
    GROUP BY proposer ORDER BY experiments DESC, policy"""


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "campaign"


class CampaignProgress:
    """Publishes a running campaign's progress and tables to the flow run it was made in."""

    def __init__(self, home: Home, every_rounds: int = 3, min_interval_s: float = 1.0,
                 log: Callable[[str], None] | None = None, k: int = 10):
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        self.flow_run_id: UUID | None = context.flow_run.id if context and context.flow_run else None
        self.home, self.every_rounds, self.min_interval_s, self.k = home, max(1, every_rounds), min_interval_s, k
        self.log = log or (lambda line: None)
        self.campaign = self.key = ""
        self.target = self.budget = 0
        self.progress_id: UUID | None = None
        self.last_update = 0.0
        self.published: list[str] = []  # artifact keys written, for tests and the final log line

    @property
    def enabled(self) -> bool:
        return self.flow_run_id is not None

    # ---- the hooks ------------------------------------------------------------------------------
    def start(self, campaign: str, recorded: int, target: int, budget: int) -> None:
        self.campaign, self.key, self.target, self.budget = campaign, artifact_key(campaign), target, budget
        self._safely(lambda: self._create_progress(recorded))

    def batch(self, recorded: int, force: bool = False) -> None:
        if self.progress_id is None or (not force and time.monotonic() - self.last_update < self.min_interval_s):
            return
        self._safely(lambda: self._update_progress(recorded))

    def round(self, round_no: int, recorded: int) -> None:
        self.batch(recorded, force=True)
        if round_no % self.every_rounds == 0:
            self._safely(self._tables)

    def finish(self, recorded: int, stopped: str) -> None:
        self.batch(recorded, force=True)
        self._safely(self._tables)

    # ---- artifacts ------------------------------------------------------------------------------
    def _description(self, recorded: int) -> str:
        goal = "the budget" if self.target == self.budget else f"this run's allowance (campaign budget {self.budget})"
        return f"Campaign {self.campaign}: {recorded} of {self.target} experiments recorded, {goal}"

    def _percent(self, recorded: int) -> float:
        return 100.0 if self.target <= 0 else max(0.0, min(100.0, 100.0 * recorded / self.target))

    def _create_progress(self, recorded: int) -> None:
        from prefect.artifacts import ProgressArtifact

        artifact = ProgressArtifact(key=f"{self.key}-progress", progress=self._percent(recorded),
                                    description=self._description(recorded), flow_run_id=self.flow_run_id)
        self.progress_id = artifact.create(_sync=True).id
        self.last_update = time.monotonic()
        self.published.append(f"{self.key}-progress")

    def _update_progress(self, recorded: int) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.progress_id, self._percent(recorded), description=self._description(recorded),
                                 _sync=True)
        self.last_update = time.monotonic()

    def _tables(self) -> None:
        from prefect.artifacts import TableArtifact

        store = Store(self.home)
        board = store.leaderboard(self.campaign, k=self.k)
        board = board.drop(columns=["std_val_ap", "campaigns"], errors="ignore").round(4)
        policies = store.query(SQL_POLICIES, [self.campaign])
        for suffix, frame, what in (("leaderboard", board, f"Best {self.k} cells by mean validation AP (95% interval)"),
                                    ("policies", policies, "Experiments, failures, best validation AP and cost per policy")):
            records = [{k: (None if v != v else v) for k, v in row.items()}  # NaN -> null
                       for row in frame.astype(object).to_dict(orient="records")]
            TableArtifact(key=f"{self.key}-{suffix}", table=records, flow_run_id=self.flow_run_id,
                          description=f"Campaign {self.campaign}: {what}").create(_sync=True)
            self.published.append(f"{self.key}-{suffix}")

    def _safely(self, work: Callable[[], None]) -> None:
        if not self.enabled:
            return
        try:
            work()
        except Exception as exc:  # the UI is a convenience: report once, then stop trying
            reraise_interrupt(exc)  # a Ctrl-C during its leaderboard query is DuckDB's RuntimeError: stop the run
            self.flow_run_id = None
            self.log(f"Prefect UI artifacts off for this run: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
