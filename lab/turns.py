"""The turns scheduler: strict rounds, one after the other, until the host says stop.

A round is planned (the proposers asked, their cells claimed), then executed (trained, or
looked up in a table, or drawn from a surrogate) and recorded, and only then is the next round
planned, so a policy always sees every earlier result: a run is reproducible.

Three hosts drive it: the campaign's strict turns (tasks/campaign/turns.py, training through an
executor), the policy benchmark's surrogate runs (tasks/benchmark.py) and the replay of a
recorded history as a lookup table (analysis/baselines.py ``replay``). It lives in lab/ because
analysis/ may import only lab/ (tests/test_imports.py); it knows nothing of policies, jobs or
training, only the order of the steps, so the three loops cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class TurnsHost(Protocol):
    """What the turns scheduler asks of the run it drives."""

    def stop_reason(self) -> str | None:
        """Why to stop before the next round (the goal is recorded, time is up, ...); None: go on."""

    def plan(self) -> Sequence:
        """The next round's jobs: asked for, deduplicated and claimed, within what may still run."""

    def idle(self) -> str | None:
        """A round planned nothing: the reason to stop, or None to plan again (after any backoff)."""

    def execute(self, jobs: Sequence) -> None:
        """Run the round's jobs and record their results (the policies observe them)."""


@dataclass
class TurnsStats:
    """What a turns run did: rounds executed, and rounds that planned nothing."""

    rounds: int = 0
    idle_rounds: int = 0


def run_turns(host: TurnsHost) -> tuple[str, TurnsStats]:
    """Plan, execute and record rounds until ``host`` gives a stop reason; returns it and the stats."""
    stats = TurnsStats()
    while (reason := host.stop_reason()) is None:
        jobs = host.plan()
        if not jobs:
            stats.idle_rounds += 1
            reason = host.idle()
            if reason is not None:
                break
            continue
        host.execute(jobs)
        stats.rounds += 1
    return reason, stats
