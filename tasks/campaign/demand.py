"""How far the pipeline runs ahead of the evidence: the lookahead, each policy's share of it, and
how many propose calls each policy keeps in flight, sized from what is measured.

- the lookahead: ``lookahead`` when set, in equal shares per policy. By default each policy's
  share is sized from what is measured: what the trainers take from it during one of its calls
  (trainer capacity over the policies x its call latency) plus the gap between two of its
  answers (that over the calls it keeps in flight), never below an equal part of
  ``AUTO_LOOKAHEAD_MIN``. So a slow LLM agent runs far enough ahead to keep the trainers busy while
  a fast policy (TPE, evolution) still proposes a few cells at a time, close to the evidence.
- calls in flight: START_CALLS per policy (one for a policy that cannot take overlapping calls).
  A policy whose replies carry fewer cells than asked (an LLM server that answers short) gets
  more calls at once, sized from the cells its replies carry and what the trainers take during
  one call (``calls_to_keep``), at most ``max_calls_in_flight``; its calls in flight count for
  the cells they are expected to carry, not the cells they asked for (``expected``).

The pipeline's coordinator feeds it (``measure_call``, ``training_started``, ``training_ended``)
and asks it; nothing else changes it.
"""
from __future__ import annotations

import math
import time

from crashsearch.agents.base import Policy
from crashsearch.tasks.campaign.config import CampaignConfig

AUTO_LOOKAHEAD_MIN = 24  # the automatic lookahead before anything is measured, and its floor
START_CALLS = 2  # calls in flight per policy while its replies carry what was asked (or nothing is measured)


def calls_to_keep(demand: int, per_call: float, cap: int) -> int:
    """How many propose calls a policy keeps running: enough that the cells its replies carry
    (``per_call``, measured) cover ``demand``, the cells the trainers take from it while one call
    runs (their rate x the call's latency); START_CALLS when nothing is measured or that is more;
    never more than ``cap`` (``max_calls_in_flight``: a provider's rate limit, the tokens spent)."""
    if cap <= 1:
        return 1
    if demand <= 0 or per_call <= 0:
        return min(START_CALLS, cap)
    return min(cap, max(START_CALLS, math.ceil(demand / per_call)))


class Demand:
    """The pipeline's measurements (call latency, cells per reply, trainer throughput) and the sizes
    it takes from them (module docstring). ``trainers``: training groups that run at once."""

    def __init__(self, config: CampaignConfig, policies: list[Policy], trainers: int):
        self.fixed_lookahead = None if config.lookahead is None else max(config.lookahead, 1)  # None: automatic
        self.max_calls = {p.name: max(1, config.max_calls_in_flight) if p.concurrent_calls else 1 for p in policies}
        self.names = [p.name for p in policies]
        self.trainers = trainers
        # the cells a policy's replies carry at most, from its short replies (absent: what was asked)
        self.carried: dict[str, float] = {}
        self.latency: dict[str, float] = {}  # a policy's recent call duration (EWMA), seconds
        self.first_start: float | None = None  # when training first started
        self.started_jobs = 0
        self.trained_jobs, self.trainer_seconds = 0, 0.0  # finished batches: jobs and their trainer time

    @property
    def lookahead(self) -> int:
        """How many claimed jobs may wait for a trainer: ``--lookahead``, or the policies' shares."""
        if self.fixed_lookahead is not None:
            return self.fixed_lookahead
        return sum(self.share(name) for name in self.names)

    def share(self, name: str) -> int:
        """The part of the lookahead policy ``name``'s claimed jobs may fill (module docstring)."""
        n = len(self.names)
        if self.fixed_lookahead is not None:
            return max(1, self.fixed_lookahead // n)
        need = math.ceil(self.consumed_during_call(name) * (1 + 1 / self.base_calls(name)))
        return max(math.ceil(AUTO_LOOKAHEAD_MIN / n), need)

    def base_calls(self, name: str) -> int:
        return min(START_CALLS, self.max_calls[name])

    def chunk(self, name: str, share: int, ahead: int, max_per_call: int | None) -> int:
        """What a full call asks for: its part of the share, or of what the trainers take during a
        call if that is more (within the share and what one reply can hold)."""
        return min(share, math.ceil(max(share, ahead) / self.base_calls(name)), max_per_call or share)

    def calls_kept(self, policy: Policy) -> int:
        """The calls ``policy`` keeps in flight now (``calls_to_keep`` over what is measured)."""
        name = policy.name
        ahead = self.consumed_during_call(name)
        per_call = min(self.chunk(name, self.share(name), ahead, policy.max_per_call), self.carried.get(name, math.inf))
        return calls_to_keep(ahead, per_call, self.max_calls[name])

    def consumed_during_call(self, name: str) -> int:
        """Jobs the trainers can start, per policy, while one of its calls runs (rate x latency).

        The rate is what the trainers can take when kept busy (jobs per trainer-second of the
        finished batches, times the trainers), not what they took: a starved trainer's rate is the
        proposers' own supply, and sizing calls by it would keep it starved.
        """
        if self.first_start is None or name not in self.latency:
            return 0
        started = self.started_jobs / max(time.monotonic() - self.first_start, 1e-3)  # jobs started per second
        capacity = self.trained_jobs / self.trainer_seconds * self.trainers if self.trainer_seconds > 0 else 0.0
        return math.ceil(max(started, capacity) / len(self.names) * self.latency[name])

    def expected(self, name: str, asked: int) -> int:
        """The cells a call in flight is expected to carry: what it asked for, at most what its
        policy's short replies carried."""
        carried = self.carried.get(name)
        return asked if carried is None else min(asked, math.ceil(carried))

    def measure_call(self, name: str, asked: int, got: int, took: float) -> None:
        """Take in a finished call: its latency, and the cells a reply carries when it came back short."""
        self.latency[name] = took if name not in self.latency else 0.7 * self.latency[name] + 0.3 * took
        # an empty answer is a failure or nothing new, not a short reply
        if 0 < got < asked:  # a short reply: about this many cells is what a reply carries
            self.carried[name] = got if name not in self.carried else 0.7 * self.carried[name] + 0.3 * got
        elif got and got > self.carried.get(name, math.inf):  # a full reply beyond that: replies carry more
            self.carried[name] = float(got)

    def training_started(self, jobs: int) -> None:
        self.started_jobs += jobs
        if self.first_start is None:
            self.first_start = time.monotonic()

    def training_ended(self, jobs: int, seconds: float) -> None:
        self.trained_jobs += jobs
        self.trainer_seconds += seconds
