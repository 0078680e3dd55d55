"""The campaign's strict rounds ("turns" and "concurrent" propose modes) on lab/turns.py's loop.

Each round replicates leaders, asks every policy for its share (one after the other, each seeing
the earlier claims; or all at once in "concurrent" mode), trains the round in shape-grouped
batches, records and heals, saves the policies' state, then asks again. Reproducible: a policy
always sees every earlier result. The policy benchmark and replay run the same loop with a
surrogate or a table in place of training (tasks/benchmark.py, analysis/baselines.py).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from crashsearch.lab.turns import TurnsStats, run_turns
from crashsearch.tasks.campaign.context import RunContext
from crashsearch.tasks.campaign.stopping import Stopping
from crashsearch.tasks.record import Job


class Turns:
    """Strict rounds over a RunContext; ``run()`` returns (stop reason, stats)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.stats = TurnsStats()

    def run(self) -> tuple[str, dict]:
        with Stopping.cancelling():
            reason, self.stats = run_turns(self)
        return reason, self.stats_now()

    def stats_now(self) -> dict:
        """Rounds executed and rounds that planned nothing (complete once ``run`` returned)."""
        return {"rounds": self.stats.rounds, "idle_rounds": self.stats.idle_rounds}

    # ---- the TurnsHost steps (lab/turns.py) ---------------------------------------------------
    def stop_reason(self) -> str | None:
        ledger = self.ctx.ledger
        return self.ctx.stopping.before_round(ledger.recorded, ledger.target)

    def plan(self) -> list[Job]:
        """Replicates of leaders (within the room they may take now), then the policies' new cells."""
        ledger, config = self.ctx.ledger, self.ctx.config
        room = ledger.target - ledger.recorded
        slots = min(config.round_size, room)
        only_replicates = room - ledger.held_for_replicates(room) <= 0
        limit = min(ledger.replicate_room(room), slots if only_replicates else max(1, slots // 2))
        jobs = ledger.replicate_jobs(slots, limit=limit)
        jobs += self.propose_round(min(slots, room - ledger.held_for_replicates(room, pending_reps=len(jobs))) - len(jobs))
        return jobs

    def idle(self) -> str | None:
        if self.ctx.ledger.release_reserve():
            return None
        delay = self.ctx.proposers.retry_delay()
        if delay is not None:  # a policy failed (rejected answer, API error): ask again after a backoff
            time.sleep(delay)
            return None
        return self.ctx.proposers.nothing_to_propose()

    def execute(self, jobs: list[Job]) -> None:
        self.ctx.recorder.run_jobs(jobs)
        self.ctx.save_state()
        self.ctx.progress.round(self.ctx.ledger.next_round())

    # ---- asking -------------------------------------------------------------------------------
    def propose_round(self, slots: int) -> list[Job]:
        """Each policy's share of ``slots`` (allot.py); what a policy leaves unfilled goes to the ones that filled theirs."""
        if slots <= 0:
            return []
        proposers, ledger = self.ctx.proposers, self.ctx.ledger
        policies = proposers.policies
        shares = proposers.shares(slots)
        for name, want in shares.items():
            proposers.offer(name, want)
        got: dict[str, list[Job]] = {}
        if self.ctx.config.propose_mode == "concurrent":
            view = ledger.view()
            with ThreadPoolExecutor(max_workers=len(policies)) as pool:
                first = list(pool.map(lambda p: proposers.ask(p, view, shares[p.name]), policies))
            for policy, proposals in zip(policies, first):
                got[policy.name] = proposers.claim_with_replacements(policy, shares[policy.name], proposals)
        else:
            for policy in policies:
                want = shares[policy.name]
                got[policy.name] = proposers.claim_with_replacements(policy, want, proposers.ask(policy, ledger.view(), want))
        jobs = [j for name in got for j in got[name]]
        short = frozenset(name for name, mine in got.items() if len(mine) < shares[name])
        if short and len(short) < len(policies) and len(jobs) < slots:
            more = proposers.shares(slots - len(jobs), waiting=short)
            for policy in (p for p in policies if p.name not in short and more[p.name] > 0):
                proposers.offer(policy.name, more[policy.name])
                jobs += proposers.claim_with_replacements(policy, more[policy.name],
                                                          proposers.ask(policy, ledger.view(), more[policy.name]))
        return jobs
