"""The asynchronous pipeline: proposers and trainers at the same time, so training never waits for an agent.

One coordinator (the thread that calls ``Pipeline.run``) owns every piece of state: through the
run's parts (tasks/campaign/context.py) the history and the claims, and here the queue of
claimed jobs, the calls and trainings in flight. Worker threads only call out:

- proposers: each policy keeps some ``propose`` calls running (tasks/campaign/demand.py sizes
  them, and the lookahead). A call sees the history when it starts plus the cells claimed and
  not yet recorded (``Ledger.view``), and asks for as many cells as the policy's share of the
  lookahead has free, so proposals per call follow demand (never more than the policy's
  ``max_per_call``).
- trainers: up to ``trainers_per_device`` training groups at once. Queued jobs are grouped by
  shape across policies and calls; a group starts when it is full (``max_group``), when its
  oldest job has waited ``group_wait_s``, or when nothing else is coming (no call in flight).

Shares and replicates (tasks/campaign/allot.py): a call asks for at most its policy's even part of
the room not yet asked for, and new cells leave the room kept for the final leaders' replicates,
which start once every new cell is recorded (so replicates do not depend on how fast training is).

Invariants (tests/test_pipeline.py): the budget is exact (a cell is claimed only while
recorded + queued + training + 1 <= the goal); dedup is exact (claims go through one Deduper, in
one thread); at most ``lookahead`` claimed jobs wait for a trainer; each batch is in the store
when its trainer returns, so SIGKILL then resume loses no recorded row and repeats no cell.

Staleness of a job: results recorded between its proposal's view and the start of its training.
The busy fraction is the share of wall time during which at least one group was training.
"""
from __future__ import annotations

import contextvars
import math
import threading
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from crashsearch.agents.base import Policy
from crashsearch.tasks.campaign.context import RunContext
from crashsearch.tasks.campaign.demand import Demand
from crashsearch.tasks.campaign.executor import LocalExecutor
from crashsearch.tasks.campaign.stopping import Stopping
from crashsearch.tasks.record import Job


@dataclass
class _Queued:
    job: Job
    since: float  # time.monotonic() when claimed
    view_results: int  # results recorded (this run) when its proposal's view was taken


@dataclass
class _Call:
    policy: Policy
    n: int
    view_results: int
    started: float = 0.0


@dataclass
class _Training:
    batch: list[_Queued]
    started: float
    ended: float | None = None


@dataclass
class PipelineStats:
    calls: int = 0
    staleness: list[int] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)  # training intervals
    max_queued: int = 0
    over_lookahead: int = 0  # proposals returned beyond the free lookahead (not claimed)
    max_lookahead: int = 0  # the largest lookahead the run used (it grows with measurements when automatic)
    max_calls: int = 0  # the most propose calls of one policy in flight at once
    # after the first batch started: no group training, none queued, proposal calls out (waiting for agents);
    # the wait for the first answer is not counted, no lookahead can shorten it
    starved_seconds: float = 0.0

    def busy_seconds(self) -> float:
        """Length of the union of the training intervals."""
        total, end = 0.0, -math.inf
        for a, b in sorted(self.busy):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    def summary(self, wall: float, first_start: float | None, lookahead_auto: bool) -> dict:
        """The figures CampaignSummary.pipeline holds (its text names them)."""
        busy = self.busy_seconds()
        return {"busy_fraction": busy / wall if wall > 0 else 0.0, "wall_seconds": wall,
                "busy_seconds": busy, "proposal_calls": self.calls, "max_queued": self.max_queued,
                "mean_staleness": sum(self.staleness) / len(self.staleness) if self.staleness else 0.0,
                "over_lookahead": self.over_lookahead, "starved_fraction": _fraction(self.starved_seconds, first_start),
                "lookahead": self.max_lookahead, "lookahead_auto": lookahead_auto, "max_calls_in_flight": self.max_calls}


class Pipeline:
    """Runs a campaign's proposers and trainers concurrently; ``run()`` returns (stop reason, stats)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        # in-process training: groups at once on the device; a work pool: batches dispatched at once
        local = isinstance(ctx.executor, LocalExecutor)
        trainers = ctx.config.trainers_per_device if local else ctx.config.max_in_flight
        self.demand = Demand(ctx.config, ctx.proposers.policies, trainers)
        self.queue: list[_Queued] = []
        self.calls: dict[Future, _Call] = {}
        self.training: dict[Future, _Training] = {}
        self.idle_until: dict[str, int] = {}  # a policy whose call claimed nothing waits for a new result
        self.retry_at: dict[str, float] = {}  # a policy whose call failed is asked again then (monotonic)
        self.stats = PipelineStats()
        self.wall: float | None = None  # seconds the run took (set when it ends, however it ends)

    # ---- accounting ---------------------------------------------------------------------------
    def room(self) -> int:
        """What the goal has left beyond the experiments recorded, queued or training."""
        return max(0, self.ctx.ledger.target - self.ctx.ledger.recorded - len(self.queue) - self._in_training())

    def new_cell_room(self) -> int:
        """The room new cells may take: the room kept for the leaders' replicates (allot.py) is left to them."""
        pending = self.queue + [q for t in self.training.values() for q in t.batch]
        reps = sum(1 for q in pending if q.job.proposer == "replicate")
        room = self.room()
        return max(0, room - self.ctx.ledger.held_for_replicates(room, self._pending_new(), reps))

    def _pending_new(self) -> int:
        """New cells asked for, queued or training: results that may still change the leaders."""
        pending = self.queue + [q for t in self.training.values() for q in t.batch]
        return sum(c.n for c in self.calls.values()) + sum(1 for q in pending if q.job.proposer != "replicate")

    def _queued_by(self, name: str) -> int:
        return sum(1 for q in self.queue if q.job.proposer == name)

    def _expected_by(self, name: str | None = None) -> int:
        """The cells the calls in flight (of policy ``name``, or all) are expected to carry."""
        return sum(self.demand.expected(c.policy.name, c.n) for c in self.calls.values()
                   if name is None or c.policy.name == name)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> tuple[str, dict]:
        started = time.monotonic()
        trainers = ThreadPoolExecutor(max_workers=self.demand.trainers, thread_name_prefix="train")
        threads = self._share_cores()
        try:
            # the trainers' contexts are copies of this one: Ctrl-C or SIGTERM sets the STOP event on
            # the way out, so batches in training end at their next step, unrecorded (a resume trains
            # them), as in turns mode; the user is not kept waiting
            with Stopping.cancelling():
                stopped = self._loop(trainers)
        finally:
            # a proposal call still running ends on its own daemon thread; its cells are not claimed
            trainers.shutdown(wait=True, cancel_futures=True)
            for future in self.training:  # finished, and in the store, but not taken in: counted
                if future.done() and not future.cancelled() and future.exception() is None:
                    for _, rows in future.result():
                        self.ctx.ledger.count(rows)
            if threads is not None:
                _set_torch_threads(threads)
            self.wall = time.monotonic() - started
        return stopped, self.stats_now()

    def stats_now(self) -> dict:
        """The run's figures (busy and starved fractions, staleness, calls, lookahead) once it ended,
        however it ended; {} when it never ran."""
        if self.wall is None:
            return {}
        return self.stats.summary(self.wall, self.demand.first_start, self.demand.fixed_lookahead is None)

    def _loop(self, trainers: ThreadPoolExecutor) -> str:
        ctx, ledger = self.ctx, self.ctx.ledger
        while True:
            self.stats.max_lookahead = max(self.stats.max_lookahead, self.demand.lookahead)
            late = ctx.stopping.out_of_time()
            if not late:
                self._enqueue_replicates()
                self._launch_calls()
            self._launch_training(trainers, late)
            if not late:  # the groups just started freed room in the queue: ask for more now, not after
                self._launch_calls()  # the next event (a training can take as long as a call)
            if late and not self.training:  # calls still out are not waited for (an LLM call can take minutes)
                if self.calls:
                    ctx.log(f"out of time: {len(self.calls)} proposal call(s) still running abandoned "
                            f"(their cells are not claimed; their tokens are not counted)")
                return "hours"
            if not self.training and not self.calls:
                if ledger.recorded >= ledger.target:
                    return ctx.stopping.goal_reason(ledger.target)
                if not self.queue and ledger.release_reserve():  # too few leaders to replicate: room for new cells
                    self.idle_until.clear()
                    continue
                # nothing claimed, nothing coming: every policy waits for news that cannot come, unless
                # one failed and is asked again after its backoff
                if not self.queue and not self.retry_at:
                    return ctx.proposers.nothing_to_propose()
            self._wait(self._next_deadline())

    def _share_cores(self) -> int | None:
        """On a CPU, the trainers share the cores free (lab/cpu.py): each group's torch threads are
        the cores over the trainers, never more busy threads than cores. Returns the count to put back."""
        if not isinstance(self.ctx.executor, LocalExecutor) or str(self.ctx.device) != "cpu":
            return None
        from crashsearch.lab.cpu import threads_per_worker

        return _set_torch_threads(threads_per_worker(self.demand.trainers))

    def _next_deadline(self) -> float | None:
        """Seconds until the oldest queued group should start anyway, or the --hours deadline,
        whichever comes first (None: wait for an event)."""
        left = self.ctx.stopping.time_left()
        deadline = None if left is None else max(0.0, left) + 1e-3
        if self.retry_at:  # a failed policy's next call
            retry = max(0.0, min(self.retry_at.values()) - time.monotonic()) + 1e-3
            deadline = retry if deadline is None else min(retry, deadline)
        if not self.queue or len(self.training) >= self.demand.trainers:
            return deadline
        oldest = min(q.since for q in self.queue)
        group = max(0.0, oldest + self.ctx.config.group_wait_s - time.monotonic()) + 1e-3
        return group if deadline is None else min(group, deadline)

    def _wait(self, timeout: float | None) -> None:
        pending = list(self.calls) + list(self.training)
        if not pending:
            if timeout:
                time.sleep(timeout)
            return
        starved = self.demand.first_start is not None and not self.training and not self.queue  # only calls are out
        waited = time.monotonic()
        done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        if starved:
            self.stats.starved_seconds += time.monotonic() - waited
        for future in done:
            if future in self.training:
                self._finish_training(future)
            else:
                self._finish_call(future)

    # ---- proposers ----------------------------------------------------------------------------
    def _launch_calls(self) -> None:
        for policy in self.ctx.proposers.policies:
            while sum(1 for k in self.calls.values() if k.policy is policy) < self.demand.calls_kept(policy):
                n = self._call_size(policy)
                if n <= 0:
                    break
                ledger, proposers = self.ctx.ledger, self.ctx.proposers
                proposers.offer(policy.name, n)
                future = _in_daemon_thread(proposers.ask, policy, ledger.view(), n)
                self.calls[future] = _Call(policy, n, ledger.new, time.monotonic())
                self.stats.calls += 1
                self.stats.max_calls = max(self.stats.max_calls, sum(1 for k in self.calls.values() if k.policy is policy))

    def _call_size(self, policy: Policy) -> int:
        """How many cells ``policy``'s next call asks for now; 0: no call now."""
        name, new, demand = policy.name, self.ctx.ledger.new, self.demand
        if name in self.retry_at:
            if self.retry_at[name] > time.monotonic():
                return 0  # its last call failed: ask again after the backoff
            del self.retry_at[name]
            self.idle_until.pop(name, None)  # the retry asks again, news or not
        if self.idle_until.get(name, -1) >= new:
            return 0  # its last call claimed nothing: ask again once a result has arrived
        # demand when the answer arrives: the free part of its lookahead share plus what the
        # trainers will have taken meanwhile; calls out count for the cells they are expected to
        # carry (a short reply is not a full one). The claim on return still respects the bound.
        asked = self._expected_by()
        ahead = demand.consumed_during_call(name)
        share, lookahead = demand.share(name), demand.lookahead
        free = min(share - self._queued_by(name) - self._expected_by(name) + ahead,
                   lookahead - len(self.queue) - asked + ahead * len(demand.names), share)
        # its even part of the room not yet asked for (allot.py): every policy from the first call on
        waiting = frozenset(n for n, until in self.idle_until.items() if until >= new)
        budget_free = self.ctx.proposers.shares(self.new_cell_room() - asked, waiting)[name]
        want = min(free, budget_free)
        if want <= 0:
            return 0
        # a call asks for a full chunk (a call costs its prompt whatever it returns): its part of
        # the share, or of what the trainers take during a call if that is more (within the
        # share); a smaller one only when the policy has nothing pending or the budget is nearly spent
        chunk = demand.chunk(name, share, ahead, policy.max_per_call)
        pending = self._expected_by(name) + self._queued_by(name)
        if want < chunk and pending and budget_free > want:
            return 0
        return min(chunk, want)

    def _finish_call(self, future: Future) -> None:
        call = self.calls.pop(future)
        proposals = future.result()  # Proposers.ask never raises: a failing policy returns []
        name = call.policy.name
        self.demand.measure_call(name, call.n, len(proposals), time.monotonic() - call.started)
        limit = max(0, min(self.new_cell_room(), self.demand.share(name) - self._queued_by(name),
                           self.demand.lookahead - len(self.queue)))
        jobs = self.ctx.proposers.claim(call.policy, proposals, limit)
        self.stats.over_lookahead += max(0, len(proposals) - limit)
        delay = self.ctx.proposers.retry_delay(name) if not proposals else None
        if delay is not None:  # a failed call (rejected answer, API error): not a sign the space is exhausted
            self.retry_at[name] = time.monotonic() + delay
            return
        self.retry_at.pop(name, None)  # answered, or given up on: no retry is pending (the loop's end test)
        if not jobs:
            self.idle_until[name] = self.ctx.ledger.new
        now = time.monotonic()
        self.queue += [_Queued(j, now, call.view_results) for j in jobs]
        self.stats.max_queued = max(self.stats.max_queued, len(self.queue))

    def _enqueue_replicates(self) -> None:
        ledger = self.ctx.ledger
        room = min(ledger.replicate_room(self.room(), self._pending_new()), max(0, self.demand.lookahead - len(self.queue)))
        if room <= 0:
            return
        pending = {(q.job.cell.id, q.job.replicate) for q in self.queue + [q for t in self.training.values() for q in t.batch]}
        jobs = ledger.replicate_jobs(min(room * 2, 2 * self.ctx.config.round_size), pending)[:room]
        now = time.monotonic()
        self.queue += [_Queued(j, now, ledger.new) for j in jobs]

    # ---- trainers -----------------------------------------------------------------------------
    def _launch_training(self, pool: ThreadPoolExecutor, late: bool) -> None:
        config = self.ctx.config
        if late:
            self.queue.clear()  # out of time: claimed jobs not started are given up (never recorded)
            return
        while self.queue and len(self.training) < self.demand.trainers:
            groups: dict[tuple, list[_Queued]] = defaultdict(list)
            for q in self.queue:
                groups[_group_key(q.job)].append(q)
            now = time.monotonic()
            # the group whose oldest job has waited longest; full groups first
            key, members = max(groups.items(), key=lambda kv: (len(kv[1]) >= config.max_group, now - kv[1][0].since))
            full = len(members) >= config.max_group
            waited = now - members[0].since >= config.group_wait_s
            if not (full or waited or not self.calls):
                return
            batch = members[: config.max_group]
            chosen = {id(q) for q in batch}
            self.queue = [q for q in self.queue if id(q) not in chosen]
            for q in batch:
                self.stats.staleness.append(self.ctx.ledger.new - q.view_results)
            self.demand.training_started(len(batch))
            ctx = contextvars.copy_context()
            record = _Training(batch, time.monotonic())
            self.training[pool.submit(ctx.run, self._train, [q.job for q in batch], record)] = record
            self.ctx.progress.training(self._in_training())

    def _in_training(self) -> int:
        return sum(len(t.batch) for t in self.training.values())

    def _train(self, jobs: list[Job], record: _Training) -> list[tuple[list[Job], list[dict]]]:
        """Trainer thread: one group through the executor (rows are in the store when it returns)."""
        try:
            return list(self.ctx.executor.run([jobs]))
        finally:
            record.ended = time.monotonic()

    def _finish_training(self, future: Future) -> None:
        record = self.training.pop(future)
        self.ctx.progress.training(self._in_training())
        ended = record.ended or time.monotonic()
        self.stats.busy.append((record.started, ended))
        self.demand.training_ended(len(record.batch), ended - record.started)
        for batch, rows in future.result():
            retries = self.ctx.recorder.record(batch, rows)
            self.ctx.progress.round(self.ctx.ledger.next_round())  # in the pipeline a "round" is one recorded batch
            room = self.room()
            now = time.monotonic()
            # retries of healed failures go first; beyond the budget they are dropped
            self.queue[:0] = [_Queued(j, now - self.ctx.config.group_wait_s, self.ctx.ledger.new) for j in retries[:room]]
        self.ctx.save_state()


def _set_torch_threads(n: int) -> int:
    """Set torch's intra-op threads (every thread's next op uses them); return the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def _fraction(seconds: float, since: float | None) -> float:
    """``seconds`` as a fraction of the time from ``since`` (monotonic) to now; 0 when never started."""
    span = 0.0 if since is None else time.monotonic() - since
    return seconds / span if span > 0 else 0.0


def _in_daemon_thread(fn, *args) -> Future:
    """Run ``fn(*args)`` on a daemon thread (in a copy of the caller's context); its Future.

    Proposal calls run this way, not in a ThreadPoolExecutor, whose threads the interpreter joins
    at exit: a campaign that stops (--hours, Ctrl-C) must not wait minutes for an LLM call it will
    not use. At most ``max_calls_in_flight`` per policy run at once, so a thread per call is cheap.
    """
    future: Future = Future()
    ctx = contextvars.copy_context()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(ctx.run(fn, *args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=target, name="propose", daemon=True).start()
    return future


def _group_key(job: Job) -> tuple:
    from crashsearch.tasks.train import shape_key

    return shape_key(job.cell)
