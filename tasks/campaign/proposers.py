"""The proposers: a run's policies, how they are asked, what they claim, what they observe, their state.

``ask`` is one proposal call (a Prefect task run "propose-<policy>" in a flow): it never raises,
a failing policy returns [] and its failure is counted, so ``retry_delay`` backs off before it
is asked again and a policy that failed ``SIT_OUT_RETRIES`` calls in a row is given up on.
``claim`` validates and deduplicates proposals through the ledger's Deduper and turns the kept
ones into jobs. ``offered`` and ``claimed`` count each policy's part of the run (allot.py's even
shares). A policy that cannot take overlapping calls (``concurrent_calls`` False) is called,
``propose`` and ``observe``, under its own lock: the pipeline asks from several threads.

The policies' memory lives in ``state.json`` (``restore``, ``states``) beside the round.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable

from crashsearch.agents.base import HistoryView, Policy, Proposal
from crashsearch.lab.bounds import skip_entry
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.storage import Backend
from crashsearch.tasks.campaign.allot import allot
from crashsearch.tasks.campaign.ledger import Ledger
from crashsearch.tasks.record import Job, job_seed, one_line

REPLACEMENT_ASKS = 2  # turns mode: extra propose calls per policy and round to replace dropped proposals
# A policy whose calls keep failing (rejected answers, API errors after its own retries) is asked
# again after a backoff, this many times in a row, before the run goes on without it: a few bad
# replies must not end a campaign as "exhausted".
SIT_OUT_RETRIES = 5

# ``wrap(name, fn)`` returns fn or a traced version of it (the flow makes Prefect tasks), so the
# engine stays free of Prefect: "propose-<policy>", "heal".
Wrap = Callable[[str, Callable], Callable]


def plain(name: str, fn: Callable) -> Callable:
    """The ``Wrap`` that traces nothing."""
    return fn


class Proposers:
    """The run's policies and what each was offered, claimed, failed and said."""

    def __init__(self, policies: list[Policy], ledger: Ledger, wrap: Wrap = plain,
                 log: Callable[[str], None] = print, unavailable: list[str] | None = None):
        self.policies, self.ledger, self.wrap, self.log = policies, ledger, wrap, log
        self.unavailable = list(unavailable or [])  # policies that could not be created, one line each
        self.locks = {p.name: threading.Lock() for p in policies}
        self.advisors = [p for p in policies if type(p).diagnose is not Policy.diagnose]
        # the run's shares (tasks/campaign/allot.py): experiments offered to and claimed by each policy
        self.offered = {p.name: 0 for p in policies}
        self.claimed = {p.name: 0 for p in policies}
        self.sat_out: dict[str, str] = {}  # a policy's last reason for returning nothing
        self.failed_calls: dict[str, int] = {}  # a policy's failed calls in a row (see SIT_OUT_RETRIES)
        self.last_error: str | None = None  # the latest reason a policy came back empty
        self.gave_up = ""  # the line that says every policy gave up on errors (nothing_to_propose)
        self._failed_at: dict[str, float] = {}  # when a policy's last counted failure came back (monotonic)
        self._calls_lock = threading.Lock()  # ask() runs in proposal threads

    # ---- shares ------------------------------------------------------------------------------
    def shares(self, free: int, waiting: frozenset[str] = frozenset()) -> dict[str, int]:
        """``free`` experiments offered to the policies: even over the run, remainder by order (allot.py).
        ``waiting``: policies not asked now (their last call claimed nothing); the others share their part."""
        asked = [p for p in self.policies if p.name not in waiting] or self.policies
        parts = dict(zip([p.name for p in asked], allot(free, [self.offered[p.name] for p in asked])))
        return {p.name: parts.get(p.name, 0) for p in self.policies}

    def offer(self, name: str, n: int) -> None:
        """Count ``n`` experiments as offered to policy ``name`` (its share of the run)."""
        self.offered[name] += n

    # ---- asking ------------------------------------------------------------------------------
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
            self.log(f"policy {policy.name} sits out round {self.ledger.round}: {one_line(str(error), 200)}")
        return proposals, error

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
        up on errors (``gave_up`` names the last one)."""
        gave_up = [p.name for p in self.policies if self.failed_calls.get(p.name, 0) >= SIT_OUT_RETRIES]
        if len(self.ledger.deduper.seen) < self.ledger.space.size and len(gave_up) == len(self.policies):
            self.gave_up = (f"every policy failed {SIT_OUT_RETRIES} calls in a row ({', '.join(gave_up)}); "
                            f"last error: {self.last_error}")
            self.log(self.gave_up)
            return "failed"
        self.log("no new cells could be proposed: the (sub-)space is exhausted or every policy sat out")
        return "exhausted"

    # ---- claiming ----------------------------------------------------------------------------
    def claim(self, policy: Policy, proposals: list[Proposal], limit: int | None = None) -> list[Job]:
        """Validate, dedup and claim up to ``limit`` proposals; return their jobs (invalid ones are logged).

        Proposals beyond ``limit`` are left unclaimed (not counted as duplicates)."""
        deduper = self.ledger.deduper
        kept = deduper.claim(proposals if limit is None else [], policy.name)
        if limit is not None:
            for proposal in proposals:
                if len(kept) >= limit:
                    break
                kept += deduper.claim([proposal], policy.name)
        for proposal, reason in deduper.invalid:
            self.log(f"invalid proposal from {proposal.policy or policy.name}: {reason}")
        deduper.invalid.clear()
        if policy.name in self.claimed:
            self.claimed[policy.name] += len(kept)
        return [self._job(policy, p) for p in kept]

    def claim_with_replacements(self, policy: Policy, want: int, proposals: list[Proposal]) -> list[Job]:
        """Claim up to ``want`` of ``proposals``; ask again (REPLACEMENT_ASKS times) for what was dropped."""
        jobs = self.claim(policy, proposals, want)
        for _ in range(REPLACEMENT_ASKS):
            if len(jobs) >= want or not proposals:
                break
            proposals = self.ask(policy, self.ledger.view(), want - len(jobs))
            jobs += self.claim(policy, proposals, want - len(jobs))
        return jobs

    def _job(self, policy: Policy, p: Proposal) -> Job:
        seed = self.ledger.seed
        return Job(p.cell, job_seed(seed, p.cell.id, 0), 0, proposer=p.policy or policy.name, model=p.model,
                   rationale=p.rationale, round=self.ledger.round, tokens_in=p.tokens_in, tokens_out=p.tokens_out,
                   cost_usd=p.cost_usd)

    # ---- observing and state -----------------------------------------------------------------
    def observe(self, rows: list[dict]) -> None:
        """Show each policy its own recorded rows (validation metrics only); a failing observe is logged."""
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

    def restore(self, backend: Backend, key: str) -> None:
        """Give each policy its memory back from ``state.json`` (``key`` in the store's backend); an
        unreadable file or entry is named and skipped."""
        state_path = backend.url(key)
        try:
            state = json.loads(backend.read(key))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested beyond reason
            skip_entry(state_path, "the file", f"unreadable: {one_line(str(exc))}; the policies start afresh")
            return
        saved = state.get("policies") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            skip_entry(state_path, "entry 'policies'", "not an object; the policies start afresh")
            return
        for policy in self.policies:
            if policy.name not in saved:
                continue
            try:  # one bad entry (an older version's, a hand edit) costs that policy its memory, not the run
                policy.set_state(saved[policy.name])
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                skip_entry(state_path, f"entry 'policies.{policy.name}'", f"{one_line(str(exc))}; it starts afresh")

    def states(self) -> dict:
        """Each policy's state (``get_state``), taken under its lock: what state.json keeps."""
        policies = {}
        for p in self.policies:
            with self.locks[p.name]:
                policies[p.name] = p.get_state()
        return policies


def _propose_call(policy: Policy, view: HistoryView, n: int) -> tuple[list[Proposal], str | None]:
    """One ``propose`` call: (up to n proposals, the policy's last_error)."""
    proposals = list(policy.propose(view, n))[:n]
    return proposals, policy.last_error
