"""The campaign engine: observe -> propose -> validate + dedup -> train -> record -> heal, until the goal is met.

``Campaign`` holds one run of a campaign (its config, space, policies, history and claims) and
the steps every mode shares: the history view, claiming proposals, replicates of leaders,
recording a finished batch (history, policies' observe, healing), state and summary.
``run()`` drives them in one of two ways:

- turns (and concurrent): strict rounds. Each round replicates leaders, asks every policy for
  its share (one after the other, each seeing the earlier claims; or all at once), trains the
  round in shape-grouped batches, records and heals, then asks again. Reproducible.
- pipeline (tasks/campaign/pipeline.py): proposers and trainers run at the same time.

Either way each batch is in the store as soon as it finishes (a crash loses only batches in
flight), the budget counts what the log holds, dedup sees every recorded and claimed cell, and
re-running a campaign id resumes it (the policies' state comes back from ``state.json``).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from crashsearch.agents import create_policy
from crashsearch.agents.base import PRE_FIX, VIEW_COLUMNS, HistoryView, Policy, PolicyUnavailable, Proposal
from crashsearch.lab.bounds import skip_entry
from crashsearch.lab.classes import check_cached
from crashsearch.lab._io import atomic_write
from crashsearch.lab.console import echo, progress_bar
from crashsearch.lab.datasets import load_dataset, validation_warning
from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import CampaignLock, ending_status, reraise_interrupt
from crashsearch.lab.settings import Home
from crashsearch.lab.campaign_space import campaign_space, keep_space
from crashsearch.lab.logfiles import append_line, campaign_key
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, code_version, pre_fix
from crashsearch.tasks.campaign.allot import LEADERS_TO_CONFIRM, allot, replicate_cap, replicates_owed
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.executor import Executor, LocalExecutor
from crashsearch.tasks.campaign.pipeline import Pipeline
from crashsearch.tasks.campaign.summary import CampaignSummary
from crashsearch.tasks.dedup import Deduper
from crashsearch.tasks.execute import BatchContext
from crashsearch.tasks.failfast import FailFast, SystematicFailure
from crashsearch.tasks.heal import heal
from crashsearch.tasks.keep import disk_use
from crashsearch.tasks.record import Job, job_seed, one_line, utcnow

REPLACEMENT_ASKS = 2  # turns mode: extra propose calls per policy and round to replace dropped proposals
# A policy whose calls keep failing (rejected answers, API errors after its own retries) is asked
# again after a backoff, this many times in a row, before the run goes on without it: a few bad
# replies must not end a campaign as "exhausted".
SIT_OUT_RETRIES = 5

# ``wrap(name, fn)`` returns fn or a traced version of it (the flow makes Prefect tasks), so the
# engine stays free of Prefect: "propose-<policy>", "heal".
Wrap = Callable[[str, Callable], Callable]


def features_to_use(home: Home, dataset_name: str, dataset_arg: str, backbones: list[str] | None,
                    dataset: Any = None) -> list[str]:
    """The backbones a campaign trains on (``backbones``, or every complete cache of the dataset),
    after checking each is cached and every split has both classes (lab.classes); with ``dataset``
    (a loaded Dataset) also that each cache was extracted from it and holds all its videos. Raises
    UserError / ClassCheckError / FeaturesNotFound in one line; the CLI calls it before a flow
    starts (and before the campaign's lock), the engine again when it starts."""
    from crashsearch.lab.cache import latest_partition, list_cached

    available = sorted({c["backbone"] for c in list_cached(home, dataset_name) if c.get("complete", True)})
    wanted = list(backbones or available)
    extract = f"run `crashsearch extract --dataset {dataset_arg} --backbone NAME` first"
    if not available:
        raise UserError(f"no cached features for dataset {dataset_name!r}; {extract}")
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(f"no cached features for dataset {dataset_name!r} and backbone(s) {', '.join(missing)}; "
                         f"{extract} (cached: {', '.join(available)})")
    if dataset is not None:  # another dataset's features under the same name, or videos missing: refused here
        for backbone in wanted:
            latest_partition(home, dataset_name, backbone, dataset)
    check_cached(home, dataset_name, wanted)  # every split has both classes, or no round starts
    return wanted


def default_campaign_id(dataset_name: str) -> str:
    return f"{dataset_name}"


def _plain(name: str, fn: Callable) -> Callable:
    return fn


class Campaign:
    """One run of a campaign; ``run()`` returns its CampaignSummary.

    ``reporter`` (flows/progress.CampaignProgress in a flow run) hears of the start, each batch,
    each round and the end, for the Prefect UI. Raises ValueError when the dataset has no cached
    features, no policy can run, or another process runs this campaign (CampaignBusy).
    """

    reporter: Any = None

    def __init__(self, home: Home, config: CampaignConfig, train_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None, executor: Executor | None = None, wrap: Wrap = _plain,
                 reporter: Any = None):
        from crashsearch.lab.cache import latest_partition, load_features, weights_id

        self.home, self.config, self.wrap = home, config, wrap
        self.log, self.reporter = log or echo, reporter
        self.dataset = load_dataset(config.dataset)
        self.campaign = default_campaign_id(self.dataset.name) if config.campaign is None else config.campaign
        # checked before the lock: a refused campaign leaves no folder behind
        wanted = features_to_use(home, self.dataset.name, config.dataset, config.backbone_list, self.dataset)
        self.lock = CampaignLock(home.root, self.campaign).acquire()  # one writer per campaign (lab/lock.py)
        self.store = Store(home)
        self.budget, self.hours, self.seeds, self.seed = config.budget, config.hours, config.seeds, config.seed
        self.device = resolve_device(config.device)
        self.started = time.monotonic()

        wanted = features_to_use(home, self.dataset.name, config.dataset, config.backbone_list)
        # the campaign's own space (lab/campaign_space.py): --space, else its kept copy; another one is refused
        full, path = campaign_space(home, self.campaign, config.space, log=self.log)
        self.space_path = str(path.resolve()) if path else None  # control arms reuse it
        self.space_record = keep_space(home, self.campaign, full, path)
        self.space = full.restrict(backbone=wanted)
        self.backbones = sorted(wanted)
        if executor is None:
            # dataset=: only a cache extracted from this dataset's files counts, not one with its folder name
            self.features = {b: load_features(home, self.dataset.name, b, device=self.device, dataset=self.dataset)
                             for b in wanted}
            self.weights = {b: f.weights for b, f in self.features.items()}
        else:  # the workers load the features; this process only needs their weights ids
            self.features = {}
            self.weights = {b: weights_id(latest_partition(home, self.dataset.name, b, self.dataset).meta) for b in wanted}
        self.version = code_version()
        ctx = BatchContext(self.campaign, self.dataset.name, self.space, self.version, self.device,
                           keep_models=config.keep_models)
        self.executor: Executor = executor or LocalExecutor(self.features, ctx, self.store, train_fn)

        self.policies: list[Policy] = []
        self.unavailable: list[str] = []
        policy_args = config.policy_args or {}
        for i, name in enumerate(config.policy_list):
            try:
                self.policies.append(create_policy(name, self.space, seed=self.seed + i, **policy_args.get(name, {})))
            except (PolicyUnavailable, ValueError) as exc:  # no key or SDK; a bad option: the rest go on
                self.unavailable.append(one_line(str(exc)))
                self.log(f"policy {name} unavailable: {one_line(str(exc))}")
        if not self.policies:
            raise UserError(f"no policy can run: {'; '.join(self.unavailable) or 'none given'}")
        # a policy that cannot take overlapping calls is called (propose, observe) under its lock
        self.locks = {p.name: threading.Lock() for p in self.policies}
        self.advisors = [p for p in self.policies if type(p).diagnose is not Policy.diagnose]
        self.state_path = home.campaign(self.campaign) / "state.json"
        self._restore_state()

        self.history = self.store.experiments(self.campaign)
        self.events = bugfix_events(home, self.campaign)  # the fixes that concern this campaign
        previous = next((c for c in self.store.campaigns() if c["id"] == self.campaign), {})
        self.runs_before = list(previous.get("runs") or [])  # one entry per run (a nightly campaign: per night)
        self.started_at = utcnow().isoformat()
        self.dedup_before = previous.get("dedup_dropped") or {}  # totals of earlier runs (nights)
        self.deduper = Deduper(self.space, seen=set(self.history["cell_id"].astype(int)) if len(self.history) else set())
        self.new = 0
        self.failfast = FailFast()  # stops the run on systematic failure (rule in tasks/failfast.py)
        self.stop_line = ""
        self.train_seconds = 0.0
        self.code_bugs: list[str] = []
        self.target = config.target(self.recorded)  # the budget, or what the log holds plus ``extend``
        # the run's shares (tasks/campaign/allot.py): experiments offered to and claimed by each policy
        self.offered = {p.name: 0 for p in self.policies}
        self.claimed = {p.name: 0 for p in self.policies}
        self.replicate_cap = replicate_cap(self.seeds, self.target - self.recorded)
        self.reserve_released = False  # set when the room kept for replicates could not be used
        self.sat_out: dict[str, str] = {}  # a policy's last reason for returning nothing
        self.validation_note = validation_warning(self.dataset)  # AP on a tiny split ties cells
        if self.validation_note:
            self.log(f"warning: {self.validation_note}")
        self.round = int(self.history["round"].max()) + 1 if len(self.history) and self.history["round"].notna().any() else 0
        self.pipeline_stats: dict[str, Any] = {}
        self.bar = None
        self.failed_calls: dict[str, int] = {}  # a policy's failed calls in a row (see SIT_OUT_RETRIES)
        self.last_error: str | None = None  # the latest reason a policy came back empty
        self._failed_at: dict[str, float] = {}  # when a policy's last counted failure came back (monotonic)
        self._calls_lock = threading.Lock()  # ask() runs in proposal threads
        self.store.write_campaign(self.campaign, {
            **self._campaign_info(), "status": "running", "host": socket.gethostname(),
            "updated_at": utcnow().isoformat(), "propose_mode": config.propose_mode, "policy_args": policy_args,
        })

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> CampaignSummary:
        """Run until the goal (budget or extend) is recorded, ``hours`` pass or nothing new can be proposed."""
        self.bar = progress_bar(self.target, self.recorded) if self.config.progress else None
        stopped, status = "interrupted", "finished"
        if self.reporter is not None:
            self.reporter.start(self.campaign, self.recorded, self.target, self.budget)
        try:
            if self.config.rerun_leaders_after_fix:
                self.run_jobs(self._leader_reruns(self.config.rerun_leaders_after_fix))
            if self.config.propose_mode == "pipeline":
                stopped = Pipeline(self).run()
            else:
                stopped = self._run_turns()
        except SystematicFailure as exc:  # the unspent budget stays for after the fix
            stopped, self.stop_line = "failed", exc.stop.line()
            self.log(self.stop_line)
        except BaseException as exc:
            status = stopped = ending_status(exc)  # Ctrl-C or SIGTERM: "interrupted", not "finished"
            reraise_interrupt(exc)  # a signal DuckDB caught mid-query leaves as the Ctrl-C it was
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
            if status == "finished" and self.recorded == 0:  # nothing recorded is never "finished"
                status = "failed"
                self.stop_line = self.stop_line or f"the run ended ({stopped}) with nothing recorded" + (
                    f"; last error: {self.last_error}" if self.last_error else "")
            # each step on its own: on a full disk the others still run, and the error that stopped
            # the run is the one raised (not a second one chained to it)
            self._try("save the policies' state", self._save_state)
            run = {"run": len(self.runs_before) + 1, "started_at": self.started_at, "finished_at": utcnow().isoformat(),
                   "new": self.new, "recorded": self.recorded, "extend": self.config.extend, "stopped": stopped,
                   "mode": self.config.propose_mode}
            self._try("record how the run ended in campaign.json", lambda: self.store.write_campaign(
                self.campaign, {**self._campaign_info(), "runs": self.runs_before + [run],
                                "status": "failed" if stopped == "failed" else status,
                                "stop_reason": self.stop_line or None, "updated_at": utcnow().isoformat()}))
            try:  # one file per campaign keeps queries fast; safe while others read
                self.store.compact(self.campaign)
            except Exception as exc:
                self.log(f"could not compact the log of {self.campaign}: {one_line(str(exc), 160)}")
            if self.reporter is not None and status != "interrupted":  # Ctrl-C: leave at once
                self.reporter.finish(self.recorded, stopped)
            try:
                if status == "interrupted":  # summary.txt still tells what this run recorded (the CLI prints it)
                    self._try("write summary.txt", lambda: self._write_summary(stopped))
            finally:
                self.lock.release()
        return self._write_summary(stopped)

    def _try(self, what: str, step: Callable[[], Any]) -> None:
        """Run a step of the run's ending; an OSError (a full disk) is logged, naming the file, not raised."""
        try:
            step()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            self.log(f"could not {what}: {where}{exc.strerror or exc}")

    def _write_summary(self, stopped: str) -> CampaignSummary:
        summary = self._summary(stopped)
        _atomic_write(self.home.campaign(self.campaign) / "summary.txt", summary.format() + "\n")
        return summary

    def out_of_time(self) -> bool:
        return self.hours is not None and time.monotonic() - self.started > self.hours * 3600

    def time_left(self) -> float | None:
        """Seconds until the --hours deadline (None: no deadline)."""
        return None if self.hours is None else self.hours * 3600 - (time.monotonic() - self.started)

    def _run_turns(self) -> str:
        while self.recorded < self.target:
            if self.out_of_time():
                return "hours"
            room = self.target - self.recorded
            slots = min(self.config.round_size, room)
            only_replicates = room - self.held_for_replicates(room) <= 0
            limit = min(self.replicate_room(room), slots if only_replicates else max(1, slots // 2))
            jobs = self.replicate_jobs(slots, limit=limit)
            jobs += self._propose_round(min(slots, room - self.held_for_replicates(room, pending_reps=len(jobs))) - len(jobs))
            if not jobs:
                if self.release_reserve():
                    continue
                delay = self.retry_delay()
                if delay is not None:  # a policy failed (rejected answer, API error): ask again after a backoff
                    time.sleep(delay)
                    continue
                return self.nothing_to_propose()
            self.run_jobs(jobs)
            self._save_state()
            self.round += 1
            if self.reporter is not None:
                self.reporter.round(self.round, self.recorded)
        return self.goal_reason()

    def goal_reason(self) -> str:
        """Why a run that recorded its goal stopped: "budget", or "allowance" when ``--extend`` set a lower goal."""
        return "allowance" if self.target < self.budget else "budget"

    @property
    def recorded(self) -> int:
        """Experiments that count against the budget (invalid proposals do not)."""
        if self.history.empty:
            return 0
        return int((self.history["status"] != "invalid").sum())

    def view(self) -> HistoryView:
        """What a policy decides from: the history now, and the cells claimed and not yet recorded as in flight."""
        df = self.history
        recorded = set(df["cell_id"].astype(int)) if len(df) else set()
        if self.events and len(df):  # agents see which leaderboard rows were trained before the latest fix
            df = df.assign(pre_fix=pre_fix(df, self.events))
        columns = [c for c in VIEW_COLUMNS + [PRE_FIX] + self.space.axis_names if c in df.columns]
        return HistoryView(self.space, df[columns].copy() if len(df) else HistoryView.empty(self.space).experiments,
                           in_flight=frozenset(self.deduper.seen - recorded), round=self.round)

    # ---- proposing and claiming ---------------------------------------------------------------
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

    def shares(self, free: int, waiting: frozenset[str] = frozenset()) -> dict[str, int]:
        """``free`` experiments offered to the policies: even over the run, remainder by order (allot.py).
        ``waiting``: policies not asked now (their last call claimed nothing); the others share their part."""
        asked = [p for p in self.policies if p.name not in waiting] or self.policies
        parts = dict(zip([p.name for p in asked], allot(free, [self.offered[p.name] for p in asked])))
        return {p.name: parts.get(p.name, 0) for p in self.policies}

    def _propose_round(self, slots: int) -> list[Job]:
        """Each policy's share of ``slots`` (allot.py); what a policy leaves unfilled goes to the ones that filled theirs."""
        if slots <= 0:
            return []
        shares = self.shares(slots)
        for name, want in shares.items():
            self.offered[name] += want
        got: dict[str, list[Job]] = {}
        if self.config.propose_mode == "concurrent":
            view = self.view()
            with ThreadPoolExecutor(max_workers=len(self.policies)) as pool:
                first = list(pool.map(lambda p: self.ask(p, view, shares[p.name]), self.policies))
            for policy, proposals in zip(self.policies, first):
                got[policy.name] = self._claim_with_replacements(policy, shares[policy.name], proposals)
        else:
            for policy in self.policies:
                want = shares[policy.name]
                got[policy.name] = self._claim_with_replacements(policy, want, self.ask(policy, self.view(), want))
        jobs = [j for name in got for j in got[name]]
        short = frozenset(name for name, mine in got.items() if len(mine) < shares[name])
        if short and len(short) < len(self.policies) and len(jobs) < slots:
            more = self.shares(slots - len(jobs), waiting=short)
            for policy in (p for p in self.policies if p.name not in short and more[p.name] > 0):
                self.offered[policy.name] += more[policy.name]
                jobs += self._claim_with_replacements(policy, more[policy.name],
                                                      self.ask(policy, self.view(), more[policy.name]))
        return jobs

    def ask(self, policy: Policy, view: HistoryView, n: int) -> list[Proposal]:
        """One proposal call (a task run named propose-<policy> in a flow); [] when the policy fails or sits out."""
        if n <= 0:
            return []
        started = time.monotonic()
        proposals, error = self._ask(policy, view, n)
        with self._calls_lock:  # counted for retry_delay: an empty answer with an error is a failed call
            if proposals or not error:
                self.failed_calls[policy.name] = 0
            else:
                # calls that were out together when the API failed count once, not once each
                if started >= self._failed_at.get(policy.name, -1.0):
                    self.failed_calls[policy.name] = self.failed_calls.get(policy.name, 0) + 1
                    self._failed_at[policy.name] = time.monotonic()
                self.last_error = one_line(str(error), 300)
        return proposals

    def retry_delay(self, name: str | None = None) -> float | None:
        """Seconds to wait before asking policy ``name`` (None: the earliest of all) again after failed
        calls; None when it has not failed or has failed SIT_OUT_RETRIES times in a row (given up)."""
        delays = []
        for policy in self.policies:
            failed = self.failed_calls.get(policy.name, 0)
            if (name is None or policy.name == name) and 0 < failed < SIT_OUT_RETRIES:
                base, cap = getattr(policy, "retry_base_s", 1.0), getattr(policy, "retry_max_s", 60.0)
                delays.append(max(0.0, min(base * 2 ** (failed - 1), cap)))  # a negative option is no wait
        return min(delays) if delays else None

    def nothing_to_propose(self) -> str:
        """Why the run stops when no policy proposes a new cell: "exhausted" only when the space is
        (every cell tried or claimed) or a policy found nothing new; "failed" when every policy gave
        up on errors (``stop_line`` names the last one)."""
        gave_up = [p.name for p in self.policies if self.failed_calls.get(p.name, 0) >= SIT_OUT_RETRIES]
        if len(self.deduper.seen) < self.space.size and len(gave_up) == len(self.policies):
            self.stop_line = (f"every policy failed {SIT_OUT_RETRIES} calls in a row ({', '.join(gave_up)}); "
                              f"last error: {self.last_error}")
            self.log(self.stop_line)
            return "failed"
        self.log("no new cells could be proposed: the (sub-)space is exhausted or every policy sat out")
        return "exhausted"

    def _ask(self, policy: Policy, view: HistoryView, n: int) -> tuple[list[Proposal], str | None]:
        call = self.wrap(f"propose-{policy.name}", _propose_call)
        try:
            if policy.concurrent_calls:
                proposals, error = call(policy, view, n)
            else:
                with self.locks[policy.name]:
                    proposals, error = call(policy, view, n)
        except Exception as exc:  # a broken policy sits out the round; the campaign goes on
            reraise_interrupt(exc)
            error = f"policy {policy.name} failed to propose: {type(exc).__name__}: {one_line(str(exc), 200)}"
            self.sat_out[policy.name] = f"it failed: {type(exc).__name__}: {one_line(str(exc), 120)}"
            self.log(error)
            return [], error
        if not proposals and error:
            self.sat_out[policy.name] = f"it sat out: {one_line(str(error), 120)}"
            self.log(f"policy {policy.name} sits out round {self.round}: {one_line(str(error), 200)}")
        return proposals, error

    def claim(self, policy: Policy, proposals: list[Proposal], limit: int | None = None) -> list[Job]:
        """Validate, dedup and claim up to ``limit`` proposals; return their jobs (invalid ones are logged).

        Proposals beyond ``limit`` are left unclaimed (not counted as duplicates)."""
        kept = self.deduper.claim(proposals if limit is None else [], policy.name)
        if limit is not None:
            for proposal in proposals:
                if len(kept) >= limit:
                    break
                kept += self.deduper.claim([proposal], policy.name)
        for proposal, reason in self.deduper.invalid:
            self.log(f"invalid proposal from {proposal.policy or policy.name}: {reason}")
        self.deduper.invalid.clear()
        if policy.name in self.claimed:
            self.claimed[policy.name] += len(kept)
        return [self._job(policy, p) for p in kept]

    def _claim_with_replacements(self, policy: Policy, want: int, proposals: list[Proposal]) -> list[Job]:
        jobs = self.claim(policy, proposals, want)
        for _ in range(REPLACEMENT_ASKS):
            if len(jobs) >= want or not proposals:
                break
            proposals = self.ask(policy, self.view(), want - len(jobs))
            jobs += self.claim(policy, proposals, want - len(jobs))
        return jobs

    def _job(self, policy: Policy, p: Proposal) -> Job:
        return Job(p.cell, job_seed(self.seed, p.cell.id, 0), 0, proposer=p.policy or policy.name, model=p.model,
                   rationale=p.rationale, round=self.round, tokens_in=p.tokens_in, tokens_out=p.tokens_out,
                   cost_usd=p.cost_usd)

    def _leader_reruns(self, k: int) -> list[Job]:
        """Top k cells trained under code older than the latest bug-fix event, re-run once each."""
        events = bugfix_events(self.home, self.campaign)
        if not events or self.history.empty:
            return []
        buggy = pre_fix(self.history, events)  # the one segmentation rule (lab.versions)
        before, after = self.history[buggy], self.history[~buggy]
        view = HistoryView(self.space, before[[c for c in VIEW_COLUMNS + self.space.axis_names if c in before.columns]])
        jobs = []
        for row in view.leaderboard(k).itertuples():
            if int(row.cell_id) in set(after.loc[after["proposer"] == "rerun", "cell_id"].astype(int)):
                continue  # already re-run after this fix
            cell = self.space.cell(int(row.cell_id))
            replicate = int((self.history["cell_id"] == cell.id).sum())
            jobs.append(Job(cell, job_seed(self.seed, cell.id, replicate), replicate, proposer="rerun", round=self.round,
                            rationale=f"re-run leader trained before bug fix {events[-1].get('id', '')}"))
        return jobs[: max(0, self.target - self.recorded)]

    # ---- training, recording, healing ---------------------------------------------------------
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
        pending = list(jobs)[: max(0, self.target - self.recorded)]
        while pending:
            retries: list[Job] = []
            left = len(pending)
            self.show_training(left)  # the bar's heartbeat says so while a long batch trains
            for batch, rows in self.executor.run(self.batches(pending)):
                left -= len(batch)
                self.show_training(left)
                retries += self.record(batch, rows)
            pending = retries[: max(0, self.target - self.recorded)]

    def show_training(self, n: int) -> None:
        """Tell the progress bar how many experiments are in training (or waiting for a trainer) now."""
        if self.bar is not None:
            self.bar.training(n)

    def record(self, batch: list[Job], rows: list[dict]) -> list[Job]:
        """Take in a recorded batch: history, progress, policies' observe, healing. Returns the retries."""
        self.count(rows)
        self._observe(rows)
        failed = [r for r in rows if r["status"] == "failed"]
        retries = self.wrap("heal", self._heal)(batch, failed) if failed else []
        if self.bar is not None:
            if rows:
                self.bar.result(_batch_line(rows))
            self.bar.update(len(rows))
            best = self.view().ok["val_ap"].max()
            rate = self.new / max(time.monotonic() - self.started, 1e-9) * 60
            self.bar.set_postfix_str(f"best val AP {best:.4f}, {rate:.0f} exp/min" if best == best else f"{rate:.0f} exp/min")
        if self.reporter is not None:
            self.reporter.batch(self.recorded)
        if (stop := self.failfast.observe(rows)) is not None:
            raise SystematicFailure(stop)
        return retries

    def count(self, rows: list[dict]) -> None:
        """Add rows now in the store to the history and this run's counts (all that a stopping run still does)."""
        if not rows:
            return
        self.train_seconds += sum(r.get("train_seconds") or 0.0 for r in rows)
        self.history = pd.concat([self.history, pd.DataFrame(rows)], ignore_index=True) if len(self.history) else pd.DataFrame(rows)
        self.new += len(rows)

    def _heal(self, batch: list[Job], failed: list[dict]) -> list[Job]:
        """Heal failed rows by rule or advisor; returns the retry jobs (their cells claimed)."""
        retries = []
        by_id = {j.experiment_id: j for j in batch}
        for row in failed:
            job = by_id[row["experiment_id"]]
            # an advisor hears about a failure once per run, not once per experiment repeating it
            advisors = self.advisors if self.failfast.first_time(row["error_class"], row["error_message"] or "") else []
            outcome = heal(job, row["error_class"], row.get("traceback") or row["error_message"] or "", self.space, advisors)
            if outcome.retry is not None and outcome.retry.cell.id != job.cell.id and outcome.retry.cell.id in self.deduper.seen:
                outcome.note += f" (skipped: cell {outcome.retry.cell.id} already run)"
                outcome.retry = None
            if outcome.retry is not None:
                self.deduper.seen.add(outcome.retry.cell.id)
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
        append_line(self.store.backend, campaign_key(self.campaign, "diagnoses.jsonl"), line)

    def _observe(self, rows: list[dict]) -> None:
        visible = [{k: v for k, v in r.items() if not k.startswith("test_")} for r in rows]
        for policy in self.policies:
            mine = [r for r in visible if r["proposer"] == policy.name]
            if mine:
                try:
                    if policy.concurrent_calls:
                        policy.observe(mine)
                    else:
                        with self.locks[policy.name]:
                            policy.observe(mine)
                except Exception as exc:
                    reraise_interrupt(exc)
                    self.log(f"policy {policy.name} failed to observe: {one_line(str(exc), 200)}")

    # ---- state and summary -------------------------------------------------------------------
    def _restore_state(self) -> None:
        if not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested beyond reason
            skip_entry(self.state_path, "the file", f"unreadable: {one_line(str(exc))}; the policies start afresh")
            return
        saved = state.get("policies") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            skip_entry(self.state_path, "entry 'policies'", "not an object; the policies start afresh")
            return
        for policy in self.policies:
            if policy.name not in saved:
                continue
            try:  # one bad entry (an older version's, a hand edit) costs that policy its memory, not the run
                policy.set_state(saved[policy.name])
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                skip_entry(self.state_path, f"entry 'policies.{policy.name}'", f"{one_line(str(exc))}; it starts afresh")

    def _save_state(self) -> None:
        policies = {}
        for p in self.policies:
            with self.locks[p.name]:
                policies[p.name] = p.get_state()
        _atomic_write(self.state_path, json.dumps({"round": self.round, "policies": policies}))

    def _campaign_info(self) -> dict:
        return {"campaign": self.campaign, "dataset": self.dataset.name, "dataset_path": str(self.dataset.root),
                **self.space_record, "space_path": self.space_path, "backbones": self.backbones,
                "policies": [p.name for p in self.policies],
                "budget": self.budget, "extend": self.config.extend, "hours": self.hours, "seeds": self.seeds,
                "weights": self.weights, "recorded": self.recorded, "pid": os.getpid(),
                "keep_models": self.config.keep_models,  # distributed workers read it (flows/train_batch.py)
                "dedup_dropped": self._dedup_totals()}

    def _dedup_totals(self) -> dict[str, dict[str, int]]:
        """Proposals dropped per policy and reason, over every run of this campaign."""
        totals = {p: dict(r) for p, r in self.dedup_before.items()}
        for policy, reasons in self.deduper.counts().items():
            for reason, count in reasons.items():
                totals.setdefault(policy, {})[reason] = totals.get(policy, {}).get(reason, 0) + count
        return totals

    def _summary(self, stopped: str) -> CampaignSummary:
        df = self.history
        per_policy: dict[str, dict[str, Any]] = {}
        for name in [p.name for p in self.policies] + ["replicate", "heal", "rerun"]:
            mine = df[df["proposer"] == name] if len(df) else df
            if name in ("replicate", "heal", "rerun") and mine.empty:
                continue
            ok = mine[mine["status"].isin(["ok", "healed"])] if len(mine) else mine
            per_policy[name] = {
                "proposed": int(len(mine)),
                "best_ap": float(ok["val_ap"].max()) if len(ok) and ok["val_ap"].notna().any() else None,
                "tokens": int(mine[["tokens_in", "tokens_out"]].fillna(0).to_numpy().sum()) if len(mine) else 0,
                "cost_usd": float(mine["cost_usd"].fillna(0).sum()) if len(mine) else 0.0,
            }
        for policy in self.policies:  # LLM agents know their true totals (rejected proposals, diagnoses)
            usage = policy.usage()
            if usage and policy.name in per_policy:
                per_policy[policy.name]["tokens"] = int(usage.get("tokens_in", 0) + usage.get("tokens_out", 0))
                per_policy[policy.name]["cost_usd"] = float(usage.get("cost_usd", 0.0))
        stats = dict(self.pipeline_stats)
        if stats:
            tokens = sum(s["tokens"] for n, s in per_policy.items() if n in {p.name for p in self.policies})
            stats["tokens_per_experiment"] = tokens / max(self.new, 1)
        board = self.view().leaderboard(5)
        min_runs = min(self.seeds, int(board["n"].max()) if len(board) else 1)
        confirmed = board[board["n"] >= min_runs]
        notes = [self.validation_note] if self.validation_note else []
        return CampaignSummary(
            campaign=self.campaign, dataset=self.dataset.name, home=self.home.root, recorded=self.recorded,
            new=self.new, budget=self.budget, stopped=stopped, wall_seconds=time.monotonic() - self.started,
            train_seconds=self.train_seconds, leaderboard=confirmed if len(confirmed) else board,
            per_policy=per_policy, dedup=self._dedup_totals(),
            failures=int((df["status"] == "failed").sum()) if len(df) else 0, code_bugs=self.code_bugs,
            unavailable=self.unavailable, weights=self.weights, mode=self.config.propose_mode, pipeline=stats,
            stop_line=self.stop_line, notes=notes + self._short_shares(),
            min_runs=min_runs if len(confirmed) and len(confirmed) < len(board) else 1, extend=self.config.extend,
            kept=disk_use(self.home, self.campaign))

    def _short_shares(self) -> list[str]:
        """One line per policy that claimed fewer new cells in this run than its even share, and why."""
        fair = allot(sum(self.claimed.values()), [0] * len(self.policies))
        lines = []
        dropped = self.deduper.counts()
        for policy, share in zip(self.policies, fair):
            got = self.claimed[policy.name]
            if got >= share:
                continue
            drops = dropped.get(policy.name, {})
            why = self.sat_out.get(policy.name) or (
                f"{sum(drops.values())} of its proposals were dropped ({', '.join(f'{k} {v}' for k, v in drops.items())})"
                if drops else "it returned fewer cells than it was asked for")
            lines.append(f"{policy.name} proposed {got} of its even share {share} of this run's new cells: {why}")
        return lines


def _batch_line(rows: list[dict]) -> str:
    """The progress bar's "last" result: a batch's size and its best run (or why it failed)."""
    ok = [r for r in rows if r.get("status") in ("ok", "healed") and r.get("val_ap") == r.get("val_ap")
          and r.get("val_ap") is not None]
    if ok:
        best = max(ok, key=lambda r: r["val_ap"])
        what = "/".join(str(best.get(k)) for k in ("backbone", "encoder", "size") if best.get(k) is not None)
        return f"{len(rows)} exp, best {what} val AP {best['val_ap']:.4f}"
    return f"{len(rows)} exp, none ok ({rows[-1].get('error_class') or rows[-1].get('status')})"


def _propose_call(policy: Policy, view: HistoryView, n: int) -> tuple[list[Proposal], str | None]:
    """One ``propose`` call: (up to n proposals, the policy's last_error)."""
    proposals = list(policy.propose(view, n))[:n]
    return proposals, policy.last_error


def _atomic_write(path: Path, text: str) -> None:
    """The one atomic writer (lab/_io.py): on a full disk its temp file is removed and the path named."""
    atomic_write(path, lambda f: f.write(text.encode()))


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
