"""The campaign engine: observe -> propose -> validate + dedup -> train -> record -> heal, until the goal is met.

``Campaign`` puts one run of a campaign together from small parts (docs/engine.md) and ends it:

- set-up (setup.py): dataset, features, space, lock, executor, policies;
- the ledger (ledger.py): history, counts, goal, claims, round, replicates, re-runs;
- the proposers (proposers.py): asking, claiming, observing, the policies' state;
- the recorder (recorder.py): batches through the executor, results in, healing, progress;
- stopping (stopping.py): deadline, goal reason, the STOP event, how a run ended;
- a scheduler over their context (context.py): strict turns (turns.py) or the asynchronous
  pipeline (pipeline.py), each returning its stop reason and stats;
- the summary (summary.py).

Either way each batch is in the store as soon as it finishes (a crash loses only batches in
flight), the budget counts what the log holds, dedup sees every recorded and claimed cell, and
re-running a campaign id resumes it (the policies' state comes back from ``state.json``).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

from crashsearch.lab.console import echo
from crashsearch.lab.datasets import validation_warning
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.logfiles import append_line, campaign_key
from crashsearch.lab.settings import Home
from crashsearch.lab.versions import bugfix_events
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.context import RunContext
from crashsearch.tasks.campaign.executor import Executor
from crashsearch.tasks.campaign.ledger import Ledger
from crashsearch.tasks.campaign.pipeline import Pipeline
from crashsearch.tasks.campaign.proposers import Proposers, Wrap, plain
from crashsearch.tasks.campaign.recorder import Progress, Recorder
from crashsearch.tasks.campaign.setup import default_campaign_id, features_to_use, resolve_device, set_up  # noqa: F401 (re-exported)
from crashsearch.tasks.campaign.stopping import ending
from crashsearch.tasks.campaign.summary import CampaignSummary, build_summary
from crashsearch.tasks.campaign.turns import Turns
from crashsearch.tasks.failfast import SystematicFailure
from crashsearch.tasks.keep import disk_use
from crashsearch.tasks.record import one_line, utcnow

__all__ = ["Campaign", "Wrap", "default_campaign_id", "features_to_use", "resolve_device"]


class Campaign:
    """One run of a campaign; ``run()`` returns its CampaignSummary.

    ``reporter`` (flows/progress.CampaignProgress in a flow run) hears of the start, each batch,
    each round and the end, for the Prefect UI. Raises ValueError when the dataset has no cached
    features, no policy can run, or another process runs this campaign (CampaignBusy).
    """

    def __init__(self, home: Home, config: CampaignConfig, train_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None, executor: Executor | None = None, wrap: Wrap = plain,
                 reporter: Any = None):
        self.home, self.config, self.log = home, config, log or echo
        setup = set_up(home, config, self.log, executor, train_fn)
        self.setup, self.campaign, self.store, self.lock = setup, setup.campaign, setup.store, setup.lock
        self.dataset, self.weights = setup.dataset, setup.weights

        history = self.store.experiments(self.campaign)
        previous = next((c for c in self.store.campaigns() if c["id"] == self.campaign), {})
        self.runs_before = list(previous.get("runs") or [])  # one entry per run (a nightly campaign: per night)
        self.started_at = utcnow().isoformat()
        # the fixes that concern this campaign; the totals of earlier runs' dedup (nights)
        ledger = Ledger(setup.space, history, config, bugfix_events(home, self.campaign),
                        previous.get("dedup_dropped") or {}, self.log)
        proposers = Proposers(setup.policies, ledger, wrap, self.log, setup.unavailable)
        state_key = campaign_key(self.campaign, "state.json")  # through the backend: it travels with the history
        proposers.restore(self.store.backend, state_key)
        self.validation_note = validation_warning(self.dataset)  # AP on a tiny split ties cells
        if self.validation_note:
            self.log(f"warning: {self.validation_note}")
        progress = Progress(ledger, reporter, clock=setup.stopping.elapsed)
        recorder = Recorder(ledger, proposers, setup.executor, config, setup.space, progress,
                            lambda line: append_line(self.store.backend, campaign_key(self.campaign, "diagnoses.jsonl"), line),
                            wrap, self.log)
        self.ctx = RunContext(config, ledger, proposers, recorder, progress, setup.stopping, setup.executor,
                              setup.device, self.store.backend, state_key, self.log)
        self.stop_line = ""
        self.store.write_campaign(self.campaign, {
            **self._campaign_info(), "status": "running", "host": socket.gethostname(),
            "updated_at": utcnow().isoformat(), "propose_mode": config.propose_mode,
            "policy_args": config.policy_args or {},
        })

    def run(self) -> CampaignSummary:
        """Run until the goal (budget or extend) is recorded, ``hours`` pass or nothing new can be proposed."""
        ctx = self.ctx
        ctx.progress.start(self.campaign, self.config.budget, self.config.progress)
        scheduler = Pipeline(ctx) if self.config.propose_mode == "pipeline" else Turns(ctx)
        stopped, status = "interrupted", "finished"
        try:
            if self.config.rerun_leaders_after_fix:
                ctx.recorder.run_jobs(ctx.ledger.leader_reruns(self.config.rerun_leaders_after_fix))
            stopped, _ = scheduler.run()
        except BaseException as exc:
            status, stopped, self.stop_line = ending(exc)  # Ctrl-C or SIGTERM: "interrupted", not "finished"
            if not isinstance(exc, SystematicFailure):  # a systematic failure: the unspent budget stays for after the fix
                reraise_interrupt(exc)  # a signal DuckDB caught mid-query leaves as the Ctrl-C it was
                raise
            self.log(self.stop_line)
        finally:
            self.stop_line = self.stop_line or ctx.proposers.gave_up
            self.stats = scheduler.stats_now() if self.config.propose_mode == "pipeline" else {}
            self._end(stopped, status)
        return self._write_summary(stopped)

    def _end(self, stopped: str, status: str) -> None:
        """The run's ending, however it ended: state.json, campaign.json, compaction, the reporter,
        summary.txt when interrupted, and the lock released last."""
        ctx = self.ctx
        ctx.progress.close()
        ctx.recorder.take_in_unreported()  # an interrupt after a batch's append: its rows are recorded
        if status == "finished" and ctx.ledger.recorded == 0:  # nothing recorded is never "finished"
            status = "failed"
            last_error = ctx.proposers.last_error
            self.stop_line = self.stop_line or f"the run ended ({stopped}) with nothing recorded" + (
                f"; last error: {last_error}" if last_error else "")
        # each step on its own: on a full disk the others still run, and the error that stopped
        # the run is the one raised (not a second one chained to it)
        self._try("save the policies' state", ctx.save_state)
        run = {"run": len(self.runs_before) + 1, "started_at": self.started_at, "finished_at": utcnow().isoformat(),
               "new": ctx.ledger.new, "recorded": ctx.ledger.recorded, "extend": self.config.extend, "stopped": stopped,
               "mode": self.config.propose_mode}
        self._try("record how the run ended in campaign.json", lambda: self.store.write_campaign(
            self.campaign, {**self._campaign_info(), "runs": self.runs_before + [run],
                            "status": "failed" if stopped == "failed" else status,
                            "stop_reason": self.stop_line or None, "updated_at": utcnow().isoformat()}))
        try:  # one file per campaign keeps queries fast; safe while others read
            self.store.compact(self.campaign)
        except Exception as exc:
            self.log(f"could not compact the log of {self.campaign}: {one_line(str(exc), 160)}")
        if status != "interrupted":  # Ctrl-C: leave at once
            ctx.progress.finish(stopped)
        try:
            if status == "interrupted":  # summary.txt still tells what this run recorded (the CLI prints it)
                self._try("write summary.txt", lambda: self._write_summary(stopped))
        finally:
            self.lock.release()

    def _try(self, what: str, step: Callable[[], Any]) -> None:
        """Run a step of the run's ending; an OSError (a full disk) is logged, naming the file, not raised."""
        try:
            step()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            self.log(f"could not {what}: {where}{exc.strerror or exc}")

    def _write_summary(self, stopped: str) -> CampaignSummary:
        notes = [self.validation_note] if self.validation_note else []
        summary = build_summary(self.ctx, campaign=self.campaign, dataset=self.dataset.name, home=self.home.location,
                                stopped=stopped, stats=self.stats, stop_line=self.stop_line, notes=notes,
                                weights=self.weights, kept=disk_use(self.home, self.campaign))
        self.store.backend.put(campaign_key(self.campaign, "summary.txt"), (summary.format() + "\n").encode())
        return summary

    def _campaign_info(self) -> dict:
        s, ledger = self.setup, self.ctx.ledger
        return {"campaign": self.campaign, "dataset": self.dataset.name, "dataset_path": str(self.dataset.root),
                **s.space_record, "space_path": s.space_path, "backbones": s.backbones,
                "policies": [p.name for p in s.policies],
                "budget": self.config.budget, "extend": self.config.extend, "hours": self.config.hours,
                "seeds": self.config.seeds, "weights": self.weights, "recorded": ledger.recorded, "pid": os.getpid(),
                "keep_models": self.config.keep_models,  # distributed workers read it (flows/train_batch.py)
                "dedup_dropped": ledger.dedup_totals()}
