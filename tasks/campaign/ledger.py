"""The ledger: what a campaign run has recorded and claimed, and what it may still run.

It owns the run's history (every recorded row of the campaign, earlier runs included), the
counts (``recorded`` against the budget, ``new`` in this run, training seconds), the goal
(``target``: the budget, or what the log held plus ``--extend``), the claims (the ``Deduper``:
every recorded or claimed cell, so dedup is exact), the round counter, and the room kept for the
leaders' replicates (tasks/campaign/allot.py) with the jobs that fill it, and the re-runs of
leaders trained before a bug fix. It is the view the policies decide from (``view``).

Only the coordinator thread changes it (``count``, ``next_round``, the claims through the
proposers); the schedulers read it and call its methods, never set its fields.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from crashsearch.agents.base import PRE_FIX, VIEW_COLUMNS, HistoryView
from crashsearch.lab.space import Space
from crashsearch.lab.versions import pre_fix
from crashsearch.tasks.campaign.allot import LEADERS_TO_CONFIRM, replicate_cap, replicates_owed
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.dedup import Deduper
from crashsearch.tasks.record import Job, job_seed


class Ledger:
    """History, counts, goal, claims, round and replicate room of one campaign run."""

    def __init__(self, space: Space, history: pd.DataFrame, config: CampaignConfig, events: list[dict],
                 dedup_before: dict | None = None, log: Callable[[str], None] = print):
        self.space, self.history, self.events, self.log = space, history, events, log
        self.seeds, self.seed = config.seeds, config.seed
        self.deduper = Deduper(space, seen=set(history["cell_id"].astype(int)) if len(history) else set())
        self.dedup_before = dedup_before or {}  # totals of earlier runs (nights)
        self.new = 0
        self.train_seconds = 0.0
        self.target = config.target(self.recorded)  # the budget, or what the log holds plus ``extend``
        self.replicate_cap = replicate_cap(self.seeds, self.target - self.recorded)
        self.reserve_released = False  # set when the room kept for replicates could not be used
        self.round = int(history["round"].max()) + 1 if len(history) and history["round"].notna().any() else 0

    # ---- counts -------------------------------------------------------------------------------
    @property
    def recorded(self) -> int:
        """Experiments that count against the budget (invalid proposals do not)."""
        if self.history.empty:
            return 0
        return int((self.history["status"] != "invalid").sum())

    def count(self, rows: list[dict]) -> None:
        """Add rows now in the store to the history and this run's counts (all that a stopping run still does)."""
        if not rows:
            return
        self.train_seconds += sum(r.get("train_seconds") or 0.0 for r in rows)
        self.history = pd.concat([self.history, pd.DataFrame(rows)], ignore_index=True) if len(self.history) else pd.DataFrame(rows)
        self.new += len(rows)

    def count_unseen(self, rows: list[dict]) -> int:
        """``count`` the rows whose experiment id the history does not hold yet; returns how many."""
        known = set(self.history["experiment_id"]) if len(self.history) and "experiment_id" in self.history else set()
        unseen = [r for r in rows if r["experiment_id"] not in known]
        self.count(unseen)
        return len(unseen)

    def next_round(self) -> int:
        """Close a round (turns: a round; pipeline: a recorded batch); returns the new round number."""
        self.round += 1
        return self.round

    def view(self) -> HistoryView:
        """What a policy decides from: the history now, and the cells claimed and not yet recorded as in flight."""
        df = self.history
        recorded = set(df["cell_id"].astype(int)) if len(df) else set()
        if self.events and len(df):  # agents see which leaderboard rows were trained before the latest fix
            df = df.assign(pre_fix=pre_fix(df, self.events))
        columns = [c for c in VIEW_COLUMNS + [PRE_FIX] + self.space.axis_names if c in df.columns]
        return HistoryView(self.space, df[columns].copy() if len(df) else HistoryView.empty(self.space).experiments,
                           in_flight=frozenset(self.deduper.seen - recorded), round=self.round)

    def is_claimed(self, cell_id: int) -> bool:
        """Whether the cell is recorded or claimed (dedup's view)."""
        return cell_id in self.deduper.seen

    def claim_cell(self, cell_id: int) -> None:
        """Claim a cell outside a policy's proposals (a healed failure's retry in another cell)."""
        self.deduper.seen.add(cell_id)

    def dedup_totals(self) -> dict[str, dict[str, int]]:
        """Proposals dropped per policy and reason, over every run of this campaign."""
        totals = {p: dict(r) for p, r in self.dedup_before.items()}
        for policy, reasons in self.deduper.counts().items():
            for reason, count in reasons.items():
                totals.setdefault(policy, {})[reason] = totals.get(policy, {}).get(reason, 0) + count
        return totals

    # ---- replicates and re-runs ---------------------------------------------------------------
    def replicate_jobs(self, slots: int, pending: set[tuple[int, int]] = frozenset(), limit: int | None = None) -> list[Job]:
        """Re-runs of the current leaders that have fewer than ``seeds`` replicates: at most ``limit``
        (default: half of ``slots``, leaving room for new proposals).

        ``pending``: (cell id, replicate) already queued or training, not asked again."""
        if self.seeds <= 1 or self.history.empty or slots <= 0:
            return []
        board = self.view().leaderboard(LEADERS_TO_CONFIRM)
        limit = max(1, slots // 2) if limit is None else limit
        jobs: list[Job] = []
        for row in board.itertuples():
            for replicate in range(int(row.n), self.seeds):
                if len(jobs) >= limit:
                    return jobs
                if (int(row.cell_id), replicate) in pending:
                    continue
                cell = self.space.cell(int(row.cell_id))
                jobs.append(Job(cell, job_seed(self.seed, cell.id, replicate), replicate, proposer="replicate",
                                rationale=f"confirm leader with seed replicate {replicate}", round=self.round))
        return jobs

    def held_for_replicates(self, room: int, pending_new: int = 0, pending_reps: int = 0) -> int:
        """Of ``room`` (what the goal has left), the experiments new cells leave to the final leaders'
        replicates (tasks/campaign/allot.py): the whole reserve while new cells may still come or are
        unrecorded (any of them may become a leader), then what the leaders lack beyond the
        ``pending_reps`` replicate jobs queued or training."""
        cap = self.replicate_cap
        if cap <= 0 or self.reserve_released:
            return 0
        if room > cap or pending_new:
            return cap
        runs = [int(n) for n in self.view().leaderboard(LEADERS_TO_CONFIRM)["n"]] if len(self.history) else []
        return max(0, min(cap, replicates_owed(runs, self.seeds) - pending_reps))

    def replicate_room(self, room: int, pending_new: int = 0) -> int:
        """How many replicate jobs may start now: replicates of leaders met on the way leave the reserve
        to the final leaders, who get it once every new cell is recorded."""
        cap = 0 if self.reserve_released else self.replicate_cap
        if room > cap:
            return room - cap
        return 0 if pending_new else room

    def release_reserve(self) -> bool:
        """Give the room held for replicates back to new cells when nothing else can run (too few leaders
        for replicates, e.g. failures); True when there was a hold to release."""
        if self.reserve_released or self.held_for_replicates(self.target - self.recorded) <= 0:
            return False
        self.reserve_released = True
        self.log("the room kept for the leaders' replicates goes to new cells: fewer than "
                 f"{LEADERS_TO_CONFIRM} cells finished to replicate")
        return True

    def leader_reruns(self, k: int) -> list[Job]:
        """Top k cells trained under code older than the latest bug-fix event, re-run once each."""
        if not self.events or self.history.empty:
            return []
        buggy = pre_fix(self.history, self.events)  # the one segmentation rule (lab.versions)
        before, after = self.history[buggy], self.history[~buggy]
        view = HistoryView(self.space, before[[c for c in VIEW_COLUMNS + self.space.axis_names if c in before.columns]])
        jobs = []
        for row in view.leaderboard(k).itertuples():
            if int(row.cell_id) in set(after.loc[after["proposer"] == "rerun", "cell_id"].astype(int)):
                continue  # already re-run after this fix
            cell = self.space.cell(int(row.cell_id))
            replicate = int((self.history["cell_id"] == cell.id).sum())
            jobs.append(Job(cell, job_seed(self.seed, cell.id, replicate), replicate, proposer="rerun", round=self.round,
                            rationale=f"re-run leader trained before bug fix {self.events[-1].get('id', '')}"))
        return jobs[: max(0, self.target - self.recorded)]
