"""How a campaign run stops: the one place for its deadline, its goal, its signals and the STOP event.

A run stops for one of these reasons (``CampaignSummary.stopped``):

- "budget" or "allowance": its goal is recorded (``goal_reason``; "allowance" when ``--extend``
  set a goal below the budget);
- "hours": ``--hours`` passed (``out_of_time``; the pipeline also waits no longer than
  ``time_left``);
- "exhausted" or "failed": nothing new can be proposed, or every policy gave up on errors
  (``Proposers.nothing_to_propose``), or a systematic failure (tasks/failfast.py) raised
  ``SystematicFailure``;
- "interrupted": Ctrl-C or SIGTERM. The CLI makes SIGTERM raise like Ctrl-C
  (lab/lock.py ``raise_on_sigterm``), so the exception unwinds the scheduler and every
  ``finally`` runs. While a scheduler runs, ``cancelling()`` holds the STOP event
  (tasks/errors.py) in the context: the trainers' contexts are copies of it, so setting it on
  the way out ends their batches at the next step, unrecorded (a resume trains them), and the
  user is not kept waiting for a batch nobody will take in.

``ending(exc)`` turns the exception that ended a run into its campaign.json status and stop
reason. Nothing else in the engine decides how a run ended.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from crashsearch.lab.lock import ending_status
from crashsearch.tasks.errors import STOP
from crashsearch.tasks.failfast import SystematicFailure


class Stopping:
    """The run's clock and goal: started at set-up, ``hours`` long (None: no deadline)."""

    def __init__(self, hours: float | None, budget: int):
        self.hours, self.budget = hours, budget
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.hours is not None and self.elapsed() > self.hours * 3600

    def time_left(self) -> float | None:
        """Seconds until the --hours deadline (None: no deadline)."""
        return None if self.hours is None else self.hours * 3600 - self.elapsed()

    def goal_reason(self, target: int) -> str:
        """Why a run that recorded its goal stopped: "budget", or "allowance" when ``--extend`` set a lower goal."""
        return "allowance" if target < self.budget else "budget"

    def before_round(self, recorded: int, target: int) -> str | None:
        """The reason to stop before planning another round: the goal recorded, then the deadline."""
        if recorded >= target:
            return self.goal_reason(target)
        if self.out_of_time():
            return "hours"
        return None

    @staticmethod
    @contextlib.contextmanager
    def cancelling() -> Iterator[threading.Event]:
        """Hold the STOP event in this context while a scheduler runs; set it when Ctrl-C or SIGTERM
        leaves through here, so training in copies of this context ends at its next step."""
        event = threading.Event()
        token = STOP.set(event)
        try:
            yield event
        except BaseException as exc:
            if ending_status(exc) == "interrupted":
                event.set()
            raise
        finally:
            STOP.reset(token)


def ending(exc: BaseException) -> tuple[str, str, str]:
    """The (campaign status, stop reason, stop line) of a run that ``exc`` ended.

    A systematic failure ends the run "finished" with reason "failed" (the unspent budget stays for
    after the fix); Ctrl-C or SIGTERM "interrupted"; anything else "failed". Only a systematic
    failure is taken in; the caller raises anything else again (``reraise_interrupt`` first, so a
    signal DuckDB caught mid-query leaves as the Ctrl-C it was)."""
    if isinstance(exc, SystematicFailure):
        return "finished", "failed", exc.stop.line()
    status = ending_status(exc)
    return status, status, ""
