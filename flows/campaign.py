"""The campaign flow: observe -> propose -> validate + dedup -> train -> record -> heal, until the budget is spent.

One round:
1. observe: a read-only HistoryView of this campaign's log (validation metrics only).
2. replicates: leaders with fewer than ``seeds`` runs are re-run with new seeds first, so a
   cell is reported as a leader only with a mean and an interval (noise-aware leaderboard).
3. propose: every policy proposes its share of the round (in turns, each seeing the cells the
   earlier ones claimed, or concurrently); the Deduper drops cells already run, in flight or
   claimed this round, and the policy is asked for replacements a bounded number of times.
4. train: jobs are grouped by shape and trained as vectorised batches (tasks.train).
5. record + heal: each batch is appended to the store as soon as it finishes (a crash loses only
   the batch in flight); failures are healed by rule (OOM -> smaller batch, NaN -> lower lr) or
   by an LLM advisor, and the fix runs in the same round as a healed experiment.

Re-running a campaign id resumes it: the budget counts what the log already holds, dedup sees
every recorded cell, and the policies' state is restored from ``state.json``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from crashsearch.agents import create_policy
from crashsearch.agents.base import PRE_FIX, VIEW_COLUMNS, HistoryView, Policy, PolicyUnavailable, Proposal
from crashsearch.lab.classes import check_cached
from crashsearch.lab.console import echo, progress_bar, set_verbose
from crashsearch.lab.datasets import load_dataset
from crashsearch.lab.leaderboard import format_interval
from crashsearch.lab.lock import CampaignLock, ending_status
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, code_version, pre_fix
from crashsearch.tasks.campaign.config import CampaignConfig, from_cli_args
from crashsearch.tasks.dedup import Deduper
from crashsearch.tasks.execute import BatchContext, run_batch
from crashsearch.tasks.failfast import FailFast, SystematicFailure
from crashsearch.tasks.heal import heal
from crashsearch.tasks.record import Job, job_seed, make_row, one_line, utcnow

REPLACEMENT_ASKS = 2  # extra propose calls per policy and round to replace dropped proposals
LEADERS_TO_CONFIRM = 3  # top cells that get replicate runs before they are reported


@dataclass
class CampaignSummary:
    """What a campaign run did; ``format()`` is the text the CLI prints."""

    campaign: str
    dataset: str
    home: Path
    recorded: int  # experiments in the log for this campaign (all runs so far)
    new: int  # experiments this run added
    budget: int
    stopped: str  # "budget", "hours", "exhausted" or "failed" (systematic failure, tasks.failfast)
    wall_seconds: float
    train_seconds: float
    leaderboard: pd.DataFrame
    per_policy: dict[str, dict[str, Any]]
    dedup: dict[str, dict[str, int]]
    failures: int
    code_bugs: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    stop_line: str = ""  # why a failed campaign stopped, one line

    @property
    def best_ap(self) -> float | None:
        return None if self.leaderboard.empty else float(self.leaderboard.iloc[0]["mean_ap"])

    def format(self) -> str:
        lines = [f"campaign {self.campaign} on {self.dataset}: {self.new} new experiments "
                 f"({self.recorded}/{self.budget} recorded, stopped on {self.stopped}) in {self.wall_seconds:.1f}s "
                 f"({self.train_seconds:.1f}s training, {self.failures} failed)"]
        if self.stop_line:
            lines.append(self.stop_line)
        random_weights = sorted(b for b, w in self.weights.items() if w == "random")
        if random_weights:
            lines.append(f"note: backbones {', '.join(random_weights)} use RANDOM weights (offline); AP reflects that")
        for line in self.unavailable:
            lines.append(f"unavailable: {line}")
        lines.append("policy        proposed  dedup-dropped  best val AP  tokens  cost $")
        for name, stats in self.per_policy.items():
            dropped = sum(self.dedup.get(name, {}).values())
            best = stats.get("best_ap")
            lines.append(f"{name:<13} {stats['proposed']:>8}  {dropped:>13}  {best if best is None else round(best, 4)!s:>11}"
                         f"  {stats['tokens']:>6}  {stats['cost_usd']:>6.3f}")
        if not self.leaderboard.empty:
            lines.append("leaderboard (mean validation AP over replicates, 95% interval):")
            for row in self.leaderboard.itertuples():  # ranks and intervals of lab.leaderboard, as everywhere
                lines.append(f"  {row.rank}. AP {row.mean_ap:.4f} {format_interval(row.ci_lo, row.ci_hi, row.n)} n={row.n}  "
                             f"{row.backbone}/{row.encoder}/{row.size} {row.loss} lr={row.lr} bs={row.batch_size} "
                             f"window={row.window_s}s aug={row.augment}  (cell {row.cell_id})")
        for bug in self.code_bugs:
            lines.append(f"code bug flagged: {bug}  -> fix it, then `crashsearch bugfix --note ...`")
        return "\n".join(lines)


def default_campaign_id(dataset_name: str) -> str:
    return f"{dataset_name}"


def run_campaign(home: str | os.PathLike | Home | None, dataset: str | os.PathLike, campaign_id: str | None = None,
                 policies: tuple[str, ...] | list[str] = ("evolution", "tpe", "random"), budget: int = 60,
                 hours: float | None = None, space_path: str | None = None, backbones: list[str] | None = None,
                 seeds: int = 3, round_size: int = 12, device: str = "auto", seed: int = 0,
                 policy_kwargs: dict[str, dict] | None = None, progress: bool = False, propose_mode: str = "turns",
                 rerun_leaders_after_fix: int = 0, train_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None, executor: Any = None,
                 extend: int | None = None, reporter: Any = None) -> CampaignSummary:
    """Run or resume a campaign until ``budget`` experiments are recorded (or ``hours`` pass).

    ``train_fn(cells, features, seeds, fixed, device)`` trains a batch (default: tasks.train.
    train_batch, or a Prefect task wrapping it inside the flow). ``executor`` replaces the local
    in-process one (see LocalExecutor), e.g. to dispatch batches to a work pool. ``reporter``
    (flows/progress.py) hears of each batch, round and the end, for the Prefect UI. Returns a
    CampaignSummary.
    Raises ValueError when the dataset has no cached features or no policy can run.
    """
    runner = _Campaign(home if isinstance(home, Home) else resolve_home(home), Path(dataset), campaign_id,
                       list(policies), budget, hours, space_path, backbones, seeds, round_size, device, seed,
                       policy_kwargs or {}, progress, propose_mode, train_fn, log or echo,
                       executor, extend)
    runner.reporter = reporter
    return runner.run(rerun_leaders_after_fix)


class LocalExecutor:
    """Runs batches one after another in this process; rows are in the store as each one returns.

    An executor's ``run(batches)`` yields ``(batch, rows)`` as batches finish, in any order.
    A distributed executor (flows/distributed.py) has the same shape.
    """

    def __init__(self, features: dict, ctx: BatchContext, store: Store, train_fn: Callable | None = None):
        self.features, self.ctx, self.store, self.train_fn = features, ctx, store, train_fn

    def run(self, batches: list[list[Job]]):
        for batch in batches:
            yield batch, run_batch(batch, self.features[batch[0].cell["backbone"]], self.ctx, self.store, self.train_fn)


class _Campaign:
    """The state of one campaign run; ``run()`` is the loop described in the module docstring."""

    reporter: Any = None  # flows/progress.CampaignProgress in a flow run

    def __init__(self, home, dataset_path, campaign_id, policy_names, budget, hours, space_path, backbones, seeds,
                 round_size, device, seed, policy_kwargs, progress, propose_mode, train_fn, log, executor=None,
                 extend=None):
        from crashsearch.lab.cache import latest_partition, list_cached, load_features, weights_id

        assert propose_mode in ("turns", "concurrent"), f"propose_mode must be turns or concurrent, not {propose_mode!r}"
        self.home, self.log, self.progress = home, log, progress
        self.dataset = load_dataset(dataset_path)
        self.campaign = default_campaign_id(self.dataset.name) if campaign_id is None else campaign_id
        self.lock = CampaignLock(home.root, self.campaign).acquire()  # one writer per campaign (lab/lock.py)
        self.store = Store(home)
        self.budget, self.hours, self.seeds, self.round_size, self.seed = budget, hours, seeds, round_size, seed
        self.propose_mode = propose_mode
        self.train_fn = train_fn
        self.device = _resolve_device(device)
        self.started = time.monotonic()

        cached = [c for c in list_cached(home, self.dataset.name) if c.get("complete", True)]
        available = sorted({c["backbone"] for c in cached})
        wanted = backbones or available
        missing = sorted(set(wanted) - set(available))
        if missing or not wanted:
            raise ValueError(f"no cached features for dataset {self.dataset.name!r} and backbone(s) {missing or wanted}; "
                             f"run `crashsearch extract --dataset {dataset_path} --backbone NAME` first "
                             f"(cached: {available or 'none'})")
        check_cached(home, self.dataset.name, wanted)  # every split has both classes, or no round starts
        full_space = Space.load(space_path)
        self.space_path = str(Path(space_path).resolve()) if space_path else None  # control arms reuse the same space
        self.space = full_space.restrict(backbone=wanted)
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
        ctx = BatchContext(self.campaign, self.dataset.name, self.space, self.version, self.device)
        self.executor = executor or LocalExecutor(self.features, ctx, self.store, train_fn)

        self.policies: list[Policy] = []
        self.unavailable: list[str] = []
        for i, name in enumerate(policy_names):
            try:
                self.policies.append(create_policy(name, self.space, seed=seed + i, **policy_kwargs.get(name, {})))
            except (PolicyUnavailable, ValueError) as exc:  # no key or SDK; a bad option: the rest go on
                self.unavailable.append(one_line(str(exc)))
                log(f"policy {name} unavailable: {one_line(str(exc))}")
        if not self.policies:
            raise ValueError(f"no policy can run: {'; '.join(self.unavailable) or 'none given'}")
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
        # the run's goal: the budget, or (per-run allowance) what the campaign holds plus ``extend``
        self.target = min(budget, self.recorded + extend) if extend is not None else budget
        self.extend = extend
        self.round = int(self.history["round"].max()) + 1 if len(self.history) and self.history["round"].notna().any() else 0
        self.store.write_campaign(self.campaign, {
            "campaign": self.campaign, "dataset": self.dataset.name, "dataset_path": str(self.dataset.root),
            "space": self.space.name, "space_path": self.space_path, "backbones": wanted, "policies": [p.name for p in self.policies],
            "budget": budget, "hours": hours, "seeds": seeds, "status": "running", "pid": os.getpid(),
            "host": socket.gethostname(), "weights": self.weights, "updated_at": utcnow().isoformat(),
            "propose_mode": propose_mode, "policy_args": policy_kwargs,
        })

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, rerun_leaders_after_fix: int) -> CampaignSummary:
        bar = progress_bar(self.target, self.recorded) if self.progress else None
        stopped, status = "budget", "finished"
        if self.reporter is not None:
            self.reporter.start(self.campaign, self.recorded, self.target, self.budget)
        try:
            if rerun_leaders_after_fix:
                self._run_jobs(self._leader_reruns(rerun_leaders_after_fix), bar)
            while self.recorded < self.target:
                if self.hours is not None and time.monotonic() - self.started > self.hours * 3600:
                    stopped = "hours"
                    break
                slots = min(self.round_size, self.target - self.recorded)
                jobs = self._replicate_jobs(slots)
                jobs += self._propose(slots - len(jobs))
                if not jobs:
                    stopped = "exhausted"
                    self.log("no new cells could be proposed: the (sub-)space is exhausted or every policy sat out")
                    break
                self._run_jobs(jobs, bar)
                self._save_state()
                self.round += 1
                if self.reporter is not None:
                    self.reporter.round(self.round, self.recorded)
        except SystematicFailure as exc:  # the unspent budget stays for after the fix
            stopped, self.stop_line = "failed", exc.stop.line()
            self.log(self.stop_line)
        except BaseException as exc:
            status = stopped = ending_status(exc)  # Ctrl-C or SIGTERM: "interrupted", not "finished"
            raise
        finally:
            if bar is not None:
                bar.close()
            self._save_state()
            run = {"run": len(self.runs_before) + 1, "started_at": self.started_at, "finished_at": utcnow().isoformat(),
                   "new": self.new, "recorded": self.recorded, "extend": self.extend, "stopped": stopped}
            self.store.write_campaign(self.campaign, {**self._campaign_info(), "runs": self.runs_before + [run],
                                                      "status": "failed" if stopped == "failed" else status,
                                                      "stop_reason": self.stop_line or None,
                                                      "updated_at": utcnow().isoformat()})
            try:  # one file per campaign keeps queries fast; safe while others read
                self.store.compact(self.campaign)
            except Exception as exc:
                self.log(f"could not compact the log of {self.campaign}: {one_line(str(exc), 160)}")
            if self.reporter is not None and status != "interrupted":  # Ctrl-C: leave at once
                self.reporter.finish(self.recorded, stopped)
            try:
                if status == "interrupted":  # summary.txt still tells what this run recorded (the CLI prints it)
                    self._write_summary(stopped)
            finally:
                self.lock.release()
        return self._write_summary(stopped)

    def _write_summary(self, stopped: str) -> CampaignSummary:
        summary = self._summary(stopped)
        _atomic_write(self.home.campaign(self.campaign) / "summary.txt", summary.format() + "\n")
        return summary

    @property
    def recorded(self) -> int:
        """Experiments that count against the budget (invalid proposals do not)."""
        if self.history.empty:
            return 0
        return int((self.history["status"] != "invalid").sum())

    def view(self) -> HistoryView:
        df = self.history
        recorded = set(df["cell_id"].astype(int)) if len(df) else set()
        if self.events and len(df):  # agents see which leaderboard rows were trained before the latest fix
            df = df.assign(pre_fix=pre_fix(df, self.events))
        columns = [c for c in VIEW_COLUMNS + [PRE_FIX] + self.space.axis_names if c in df.columns]
        return HistoryView(self.space, df[columns].copy() if len(df) else HistoryView.empty(self.space).experiments,
                           in_flight=frozenset(self.deduper.seen - recorded), round=self.round)

    def _replicate_jobs(self, slots: int) -> list[Job]:
        """Re-runs of the current leaders that have fewer than ``seeds`` replicates."""
        if self.seeds <= 1 or self.history.empty:
            return []
        board = self.view().leaderboard(LEADERS_TO_CONFIRM)
        jobs: list[Job] = []
        for row in board.itertuples():
            for replicate in range(int(row.n), self.seeds):
                if len(jobs) >= max(1, slots // 2):  # leave room for new proposals
                    return jobs
                cell = self.space.cell(int(row.cell_id))
                jobs.append(Job(cell, job_seed(self.seed, cell.id, replicate), replicate, proposer="replicate",
                                rationale=f"confirm leader with seed replicate {replicate}", round=self.round))
        return jobs

    def _propose(self, slots: int) -> list[Job]:
        if slots <= 0:
            return []
        shares = _shares(slots, len(self.policies))
        jobs: list[Job] = []
        if self.propose_mode == "concurrent":
            view = self.view()
            with ThreadPoolExecutor(max_workers=len(self.policies)) as pool:
                first = list(pool.map(lambda ps: self._ask(ps[0], view, ps[1]), zip(self.policies, shares)))
            for policy, want, proposals in zip(self.policies, shares, first):
                jobs += self._claim(policy, want, proposals)
        else:
            for policy, want in zip(self.policies, shares):
                jobs += self._claim(policy, want, self._ask(policy, self.view(), want))
        return jobs

    def _ask(self, policy: Policy, view: HistoryView, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        try:
            proposals = list(policy.propose(view, n))[:n]
        except Exception as exc:  # a broken policy sits out the round; the campaign goes on
            self.log(f"policy {policy.name} failed to propose: {type(exc).__name__}: {one_line(str(exc), 200)}")
            return []
        if not proposals and getattr(policy, "last_error", None):
            self.log(f"policy {policy.name} sits out round {self.round}: {one_line(str(policy.last_error), 200)}")
        return proposals

    def _claim(self, policy: Policy, want: int, proposals: list[Proposal]) -> list[Job]:
        kept = self.deduper.claim(proposals, policy.name)
        for _ in range(REPLACEMENT_ASKS):
            if len(kept) >= want or not proposals:
                break
            proposals = self._ask(policy, self.view(), want - len(kept))
            kept += self.deduper.claim(proposals, policy.name)
        for proposal, reason in self.deduper.invalid:
            self.log(f"invalid proposal from {proposal.policy or policy.name}: {reason}")
        self.deduper.invalid.clear()
        return [Job(p.cell, job_seed(self.seed, p.cell.id, 0), 0, proposer=p.policy or policy.name, model=p.model,
                    rationale=p.rationale, round=self.round, tokens_in=p.tokens_in, tokens_out=p.tokens_out,
                    cost_usd=p.cost_usd) for p in kept[:want]]

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
    def _run_jobs(self, jobs: list[Job], bar) -> None:
        """Run jobs in shape-grouped batches through the executor; heal failures; repeat for retries."""
        from crashsearch.tasks.train import group_cells

        pending = [j for j in jobs][: max(0, self.target - self.recorded)]
        while pending:
            batches = []
            for backbone in sorted({j.cell["backbone"] for j in pending}):
                same = [j for j in pending if j.cell["backbone"] == backbone]
                batches += [[same[i] for i in group] for group in group_cells([j.cell for j in same])]
            retries: list[Job] = []
            for batch, rows in self.executor.run(batches):
                retries += self._after_batch(batch, rows, bar)
            pending = retries[: max(0, self.target - self.recorded)]

    def _after_batch(self, batch: list[Job], rows: list[dict], bar) -> list[Job]:
        """Take in a recorded batch: history, progress, policies' observe, and healing of failures."""
        t = [r.get("train_seconds") or 0.0 for r in rows]
        self.train_seconds += sum(t)
        self.history = pd.concat([self.history, pd.DataFrame(rows)], ignore_index=True) if len(self.history) else pd.DataFrame(rows)
        self.new += len(rows)
        self._observe(rows)
        retries = []
        by_id = {j.experiment_id: j for j in batch}
        for row in rows:
            if row["status"] != "failed":
                continue
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
        if bar is not None:
            bar.update(len(rows))
            best = self.view().ok["val_ap"].max()
            rate = self.new / max(time.monotonic() - self.started, 1e-9) * 60
            bar.set_postfix_str(f"best val AP {best:.4f}, {rate:.0f} exp/min" if best == best else f"{rate:.0f} exp/min")
        if self.reporter is not None:
            self.reporter.batch(self.recorded)
        if (stop := self.failfast.observe(rows)) is not None:
            raise SystematicFailure(stop)
        return retries

    def _note_diagnosis(self, job: Job, row: dict, note: str) -> None:
        """Append an LLM diagnosis for a failed experiment to diagnoses.jsonl (the row itself never changes)."""
        line = json.dumps({"experiment_id": row["experiment_id"], "cell_id": job.cell.id, "error_class": row["error_class"],
                           "note": note, "at": utcnow().isoformat()})
        with open(self.home.campaign(self.campaign) / "diagnoses.jsonl", "a") as fh:
            fh.write(line + "\n")

    def _observe(self, rows: list[dict]) -> None:
        visible = [{k: v for k, v in r.items() if not k.startswith("test_")} for r in rows]
        for policy in self.policies:
            mine = [r for r in visible if r["proposer"] == policy.name]
            if mine:
                try:
                    policy.observe(mine)
                except Exception as exc:
                    self.log(f"policy {policy.name} failed to observe: {one_line(str(exc), 200)}")

    # ---- state and summary -------------------------------------------------------------------
    def _restore_state(self) -> None:
        if not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            self.log(f"ignoring unreadable policy state {self.state_path}: {exc}")
            return
        for policy in self.policies:
            if policy.name in state.get("policies", {}):
                policy.set_state(state["policies"][policy.name])

    def _save_state(self) -> None:
        state = {"round": self.round, "policies": {p.name: p.get_state() for p in self.policies}}
        _atomic_write(self.state_path, json.dumps(state))

    def _campaign_info(self) -> dict:
        return {"campaign": self.campaign, "dataset": self.dataset.name, "dataset_path": str(self.dataset.root),
                "space": self.space.name, "space_path": self.space_path, "backbones": self.backbones,
                "policies": [p.name for p in self.policies],
                "budget": self.budget, "extend": self.extend, "hours": self.hours, "seeds": self.seeds, "weights": self.weights,
                "recorded": self.recorded, "pid": os.getpid(), "dedup_dropped": self._dedup_totals()}

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
            usage = policy.usage() if hasattr(policy, "usage") else None
            if usage and policy.name in per_policy:
                per_policy[policy.name]["tokens"] = int(usage.get("tokens_in", 0) + usage.get("tokens_out", 0))
                per_policy[policy.name]["cost_usd"] = float(usage.get("cost_usd", 0.0))
        board = self.view().leaderboard(5)
        confirmed = board[board["n"] >= min(self.seeds, board["n"].max() if len(board) else 1)]
        return CampaignSummary(
            campaign=self.campaign, dataset=self.dataset.name, home=self.home.root, recorded=self.recorded,
            new=self.new, budget=self.budget, stopped=stopped, wall_seconds=time.monotonic() - self.started,
            train_seconds=self.train_seconds, leaderboard=confirmed if len(confirmed) else board,
            per_policy=per_policy, dedup=self._dedup_totals(),
            failures=int((df["status"] == "failed").sum()) if len(df) else 0, code_bugs=self.code_bugs,
            unavailable=self.unavailable, weights=self.weights, stop_line=self.stop_line)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _shares(slots: int, parts: int) -> list[int]:
    """Split slots as evenly as possible, earlier parts first."""
    base, extra = divmod(slots, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- Prefect ------------------------------------------------------------------------------

def _prefect_train_task():
    from prefect import task

    from crashsearch.tasks.train import train_batch

    # GPU training carries the `gpu` tag: a Prefect concurrency limit on that tag caps batches per GPU.
    return task(train_batch, name="train-batch", tags=["gpu"], cache_policy=None, persist_result=False)


def campaign_flow_fn(dataset: str, campaign: str | None = None, home: str | None = None,
                     policies: str = "evolution,tpe,random", budget: int = 60, extend: int | None = None,
                     hours: float | None = None, space: str | None = None, backbones: str | None = None,
                     seeds: int = 3, round_size: int = 12, device: str = "auto", seed: int = 0,
                     rerun_leaders_after_fix: int = 0, progress: bool = False, propose_mode: str = "turns",
                     policy_args: dict | None = None, max_calls_in_flight: int = 2, lookahead: int = 24,
                     trainers_per_device: int = 2, group_wait_s: float = 0.5, max_group: int = 64,
                     distributed: str | None = None, max_in_flight: int = 4,
                     dispatch_timeout_s: float = 1800.0) -> dict:
    """Prefect flow body: run or resume a campaign; while it runs, its progress, leaderboard and
    per-policy counts show as artifacts of the flow run (flows/progress.py).

    ``policy_args`` maps a policy name to keyword arguments for it, e.g. {"claude": {"model":
    "claude-sonnet-4-5", "role": "explorer"}}; ``propose_mode`` "concurrent" asks all policies at
    once each round instead of in turns. ``distributed`` ("flow/deployment", e.g.
    "train-batch/gpu") trains the batches as flow runs of that deployment on its work pool
    (flows/distributed.py), up to ``max_in_flight`` at once; a batch not recorded
    ``dispatch_timeout_s`` after a worker took it is re-dispatched."""
    from crashsearch.flows.progress import CampaignProgress

    train_task = _prefect_train_task()
    executor = None
    if distributed:  # seam: the executor (owned by flows/distributed.py)
        from crashsearch.flows.distributed import executor_for_campaign

        executor = executor_for_campaign(distributed, home, dataset, campaign, space, device, max_in_flight,
                                         dispatch_timeout_s)
    config = CampaignConfig.from_params({k: v for k, v in locals().items() if k in _FLOW_PARAMS})
    summary = run_campaign(home, dataset, campaign, config.policy_list, budget,
                           hours, space, config.backbone_list, seeds, round_size, device, seed,
                           policy_kwargs=policy_args, progress=progress, propose_mode=propose_mode,
                           rerun_leaders_after_fix=rerun_leaders_after_fix,
                           train_fn=lambda *a: train_task(*a), executor=executor, extend=extend,
                           reporter=CampaignProgress(resolve_home(home), log=echo))
    return {"campaign": summary.campaign, "recorded": summary.recorded, "new": summary.new,
            "best_ap": summary.best_ap, "stopped": summary.stopped}


_FLOW_PARAMS = frozenset(f.name for f in CampaignConfig.fields("campaign"))


def parse_policy_args(items: list[str] | None, policies: str | None = None) -> dict[str, dict]:
    """``["claude.model=claude-sonnet-4-5", "tpe.n_startup_trials=5"]`` -> {"claude": {...}, "tpe": {...}}.

    A value is read as JSON when it parses (numbers, true/false, null, lists), else kept as a string.
    With ``policies`` (the comma list the campaign runs) each name must be one of them and each key
    one of that policy's options. Raises ValueError naming the bad item."""
    from crashsearch.agents import policy_options
    from crashsearch.agents.base import PolicyUnavailable

    running = {p.strip().lower() for p in policies.split(",") if p.strip()} if policies is not None else None
    out: dict[str, dict] = {}
    for item in items or []:
        target, sep, raw = item.partition("=")
        name, dot, key = target.partition(".")
        name, key = name.strip().lower(), key.strip()
        if not (sep and dot and name and key):
            raise ValueError(f"--policy-arg {item!r}: expected NAME.KEY=VALUE, e.g. claude.temperature=0.7")
        if running is not None and name not in running:
            raise ValueError(f"--policy-arg {item!r}: {name} is not among the policies ({', '.join(sorted(running))})")
        try:
            options = policy_options(name)
        except PolicyUnavailable:
            options = None  # its SDK is missing: the campaign reports that itself
        if options is not None and key not in options:
            raise ValueError(f"--policy-arg {item!r}: {name} has no option {key!r}; its options: {', '.join(options) or 'none'}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name, {})[key] = value
    return out


def get_campaign_flow():
    """The Prefect flow object (built lazily so importing this module stays light)."""
    from prefect import flow

    return flow(name="campaign", log_prints=True)(campaign_flow_fn)


def main(args) -> int:
    """`crashsearch campaign`: run the campaign flow and print the summary."""
    from crashsearch.flows.runtime import quiet_prefect

    if getattr(args, "distributed", None):  # seam: fail in one line before a flow run starts
        from crashsearch.flows.distributed import check_deployment

        try:
            check_deployment(args.distributed)
        except ValueError as exc:
            print(f"campaign: {exc}", file=sys.stderr)
            return 2
    try:
        policy_args = parse_policy_args(args.policy_args, args.policies)
        config = from_cli_args(args, home=str(args.home_dir.root), progress=True, policy_args=policy_args)
        _check_classes(args)
        # one writer per campaign: refused here in one line, before a flow run starts
        campaign_id = default_campaign_id(load_dataset(config.dataset).name) if config.campaign is None else config.campaign
        lock = CampaignLock(args.home_dir.root, campaign_id).acquire()
    except ValueError as exc:  # ClassCheckError and CampaignBusy included: one line, before any round
        print(f"campaign: {exc}", file=sys.stderr)
        return 2
    set_verbose(getattr(args, "verbose", False))
    started = time.time()
    try:
        with quiet_prefect():
            result = get_campaign_flow()(**{f.name: getattr(config, f.name) for f in CampaignConfig.fields("campaign")})
    except BaseException as exc:
        summary_path = args.home_dir.root / "campaigns" / campaign_id / "summary.txt"
        if ending_status(exc) == "interrupted" and summary_path.exists() and summary_path.stat().st_mtime >= started:
            print(summary_path.read_text(), end="")  # what the interrupted run recorded
        raise
    finally:
        lock.release()
    home = args.home_dir
    summary_path = home.campaign(result["campaign"]) / "summary.txt"
    print(summary_path.read_text() if summary_path.exists() else result)
    print(f"history: {home.campaign(result['campaign']) / 'log'}  (query: crashsearch query \"SELECT * FROM experiments\" --home {home.root})")
    return 0


def _check_classes(args) -> None:
    """The class check of the campaign's cached features, before a flow run starts; raises
    ClassCheckError. A missing dataset or cache is left for the campaign to report."""
    from crashsearch.lab.cache import FeaturesNotFound, list_cached
    from crashsearch.lab.datasets import DatasetError

    home = args.home_dir
    try:
        name = load_dataset(args.dataset).name
        cached = sorted({c["backbone"] for c in list_cached(home, name) if c["complete"]})
        check_cached(home, name, args.backbones.split(",") if args.backbones else cached)
    except (DatasetError, FeaturesNotFound):
        pass
