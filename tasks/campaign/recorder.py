"""Training and taking in results: jobs to the executor in shape-grouped batches, each finished batch
into the ledger, the policies' ``observe``, healing, the fail-fast rule and the progress shown.

An executor (tasks/campaign/executor.py) has already written a batch's rows to the store when it
hands them back; ``record`` takes them in. Both schedulers record through here: turns with
``run_jobs`` (a whole round, retries of healed failures after it), the pipeline batch by batch.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from crashsearch.lab.console import progress_bar
from crashsearch.lab.space import Space
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.executor import Executor
from crashsearch.tasks.campaign.ledger import Ledger
from crashsearch.tasks.campaign.proposers import Proposers
from crashsearch.tasks.failfast import FailFast, SystematicFailure
from crashsearch.tasks.heal import heal
from crashsearch.tasks.record import Job, one_line, utcnow


class Progress:
    """What the user and the Prefect UI see of a run: the progress bar (``--progress``) and the
    ``reporter`` (flows/progress.CampaignProgress in a flow run), told of the start, each batch,
    each round and the end. Either may be None."""

    def __init__(self, ledger: Ledger, reporter: Any = None, clock: Callable[[], float] | None = None):
        self.ledger, self.reporter, self.clock = ledger, reporter, clock or (lambda: 0.0)
        self.bar = None

    def start(self, campaign: str, budget: int, bar: bool) -> None:
        self.bar = progress_bar(self.ledger.target, self.ledger.recorded) if bar else None
        if self.reporter is not None:
            self.reporter.start(campaign, self.ledger.recorded, self.ledger.target, budget)

    def training(self, n: int) -> None:
        """Tell the progress bar how many experiments are in training (or waiting for a trainer) now."""
        if self.bar is not None:
            self.bar.training(n)

    def batch(self, rows: list[dict]) -> None:
        if self.bar is not None:
            if rows:
                self.bar.result(_batch_line(rows))
            self.bar.update(len(rows))
            best = self.ledger.view().ok["val_ap"].max()
            rate = self.ledger.new / max(self.clock(), 1e-9) * 60
            self.bar.set_postfix_str(f"best val AP {best:.4f}, {rate:.0f} exp/min" if best == best else f"{rate:.0f} exp/min")
        if self.reporter is not None:
            self.reporter.batch(self.ledger.recorded)

    def round(self, number: int) -> None:
        if self.reporter is not None:
            self.reporter.round(number, self.ledger.recorded)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self, stopped: str) -> None:
        if self.reporter is not None:
            self.reporter.finish(self.ledger.recorded, stopped)


class Recorder:
    """Runs jobs through the executor and takes in each finished batch (``record``)."""

    def __init__(self, ledger: Ledger, proposers: Proposers, executor: Executor, config: CampaignConfig,
                 space: Space, progress: Progress, diagnoses: Callable[[str], None], wrap: Callable, log: Callable[[str], None]):
        self.ledger, self.proposers, self.executor, self.config = ledger, proposers, executor, config
        self.space, self.progress, self.diagnoses, self.wrap, self.log = space, progress, diagnoses, wrap, log
        self.failfast = FailFast()  # stops the run on systematic failure (rule in tasks/failfast.py)
        self.code_bugs: list[str] = []

    def batches(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs grouped into training batches: one backbone each, same shape, at most ``max_group`` models."""
        from crashsearch.tasks.train import group_cells

        out = []
        for backbone in sorted({j.cell["backbone"] for j in jobs}):
            same = [j for j in jobs if j.cell["backbone"] == backbone]
            out += [[same[i] for i in group] for group in group_cells([j.cell for j in same], self.config.max_group)]
        return out

    def run_jobs(self, jobs: list[Job]) -> None:
        """Run jobs in shape-grouped batches through the executor; heal failures; repeat for retries."""
        ledger = self.ledger
        pending = list(jobs)[: max(0, ledger.target - ledger.recorded)]
        while pending:
            retries: list[Job] = []
            left = len(pending)
            self.progress.training(left)  # the bar's heartbeat says so while a long batch trains
            for batch, rows in self.executor.run(self.batches(pending)):
                left -= len(batch)
                self.progress.training(left)
                retries += self.record(batch, rows)
            pending = retries[: max(0, ledger.target - ledger.recorded)]

    def take_in_unreported(self) -> int:
        """Count the rows the executor appended but never handed back (a Ctrl-C after a batch's append,
        while its heads were kept): they are in the store, so the summary and campaign.json count them."""
        unreported = getattr(self.executor, "unreported", None)
        return self.ledger.count_unseen(unreported()) if callable(unreported) else 0

    def record(self, batch: list[Job], rows: list[dict]) -> list[Job]:
        """Take in a recorded batch: history, policies' observe, healing, progress. Returns the retries.
        Raises SystematicFailure when the fail-fast rule says the failures are systematic."""
        self.ledger.count(rows)
        self.proposers.observe(rows)
        failed = [r for r in rows if r["status"] == "failed"]
        retries = self.wrap("heal", self.heal)(batch, failed) if failed else []
        self.progress.batch(rows)
        if (stop := self.failfast.observe(rows)) is not None:
            raise SystematicFailure(stop)
        return retries

    def heal(self, batch: list[Job], failed: list[dict]) -> list[Job]:
        """Heal failed rows by rule or advisor; returns the retry jobs (their cells claimed)."""
        retries = []
        ledger = self.ledger
        by_id = {j.experiment_id: j for j in batch}
        for row in failed:
            job = by_id[row["experiment_id"]]
            # an advisor hears about a failure once per run, not once per experiment repeating it
            first = self.failfast.first_time(row["error_class"], row["error_message"] or "")
            advisors = self.proposers.advisors if first else []
            outcome = heal(job, row["error_class"], row.get("traceback") or row["error_message"] or "", self.space, advisors)
            if outcome.retry is not None and outcome.retry.cell.id != job.cell.id and ledger.is_claimed(outcome.retry.cell.id):
                outcome.note += f" (skipped: cell {outcome.retry.cell.id} already run)"
                outcome.retry = None
            if outcome.retry is not None:
                ledger.claim_cell(outcome.retry.cell.id)
                retries.append(outcome.retry)
            if outcome.code_bug:
                self.code_bugs.append(f"{job.cell!r}: {outcome.code_bug}")
            if outcome.note != row.get("heal_action"):  # what the advisor said, beside the failure's row
                self._note_diagnosis(job, row, outcome.note)
            self.log(f"experiment failed: {job.cell!r}: {row['error_class']}: {one_line(row['error_message'] or '', 160)}"
                     f" -> {outcome.note}")
        return retries

    def _note_diagnosis(self, job: Job, row: dict, note: str) -> None:
        """Append an LLM diagnosis for a failed experiment to diagnoses.jsonl (the row itself never changes)."""
        line = json.dumps({"experiment_id": row["experiment_id"], "cell_id": job.cell.id, "error_class": row["error_class"],
                           "note": note, "at": utcnow().isoformat()})
        self.diagnoses(line)  # appended whole through the campaign's storage backend (lab/logfiles.append_line)


def _batch_line(rows: list[dict]) -> str:
    """The progress bar's "last" result: a batch's size and its best run (or why it failed)."""
    ok = [r for r in rows if r.get("status") in ("ok", "healed") and r.get("val_ap") == r.get("val_ap")
          and r.get("val_ap") is not None]
    if ok:
        best = max(ok, key=lambda r: r["val_ap"])
        what = "/".join(str(best.get(k)) for k in ("backbone", "encoder", "size") if best.get(k) is not None)
        return f"{len(rows)} exp, best {what} val AP {best['val_ap']:.4f}"
    return f"{len(rows)} exp, none ok ({rows[-1].get('error_class') or rows[-1].get('status')})"
