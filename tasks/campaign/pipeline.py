"""The asynchronous pipeline: proposers and trainers at the same time, so training never waits for an agent.

One coordinator (the thread that calls ``Pipeline.run``) owns every piece of state: the history,
the claims (the Deduper), the queue of claimed jobs. Worker threads only call out:

- proposers: each policy keeps START_CALLS ``propose`` calls running (one for a policy that
  cannot take overlapping calls). A call sees the history when it starts plus the cells claimed
  and not yet recorded (``Campaign.view``), and asks for as many cells as the policy's share of
  the lookahead has free, so proposals per call follow demand (never more than the policy's
  ``max_per_call``). A policy whose replies carry fewer cells than asked (an LLM server that
  answers short) gets more calls at once, sized from the cells its replies carry and what the
  trainers take during one call (``calls_to_keep``), at most ``max_calls_in_flight``; its calls
  in flight count for the cells they are expected to carry, not the cells they asked for.
- the lookahead: ``lookahead`` when set, in equal shares per policy. By default each policy's
  share is sized from what is measured: what the trainers take from it during one of its calls
  (trainer capacity over the policies x its call latency) plus the gap between two of its
  answers (that over the calls it keeps in flight), never below an equal part of
  ``AUTO_LOOKAHEAD_MIN``. So a slow LLM agent runs far enough ahead to keep the trainers busy while
  a fast policy (TPE, evolution) still proposes a few cells at a time, close to the evidence.
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
from typing import TYPE_CHECKING

from crashsearch.agents.base import Policy
from crashsearch.lab.lock import ending_status
from crashsearch.tasks.campaign.executor import LocalExecutor
from crashsearch.tasks.errors import STOP
from crashsearch.tasks.record import Job

if TYPE_CHECKING:  # the engine picks this scheduler and imports it; here the Campaign is only a type
    from crashsearch.tasks.campaign.engine import Campaign

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


class Pipeline:
    """Runs a Campaign's proposers and trainers concurrently; ``run()`` returns why it stopped."""

    def __init__(self, campaign: Campaign):
        self.c = campaign
        cfg = campaign.config
        self.fixed_lookahead = None if cfg.lookahead is None else max(cfg.lookahead, 1)  # None: automatic
        self.max_calls = {p.name: max(1, cfg.max_calls_in_flight) if p.concurrent_calls else 1 for p in campaign.policies}
        # the cells a policy's replies carry at most, from its short replies (absent: what was asked)
        self.carried: dict[str, float] = {}
        self.queue: list[_Queued] = []
        self.calls: dict[Future, _Call] = {}
        self.training: dict[Future, _Training] = {}
        self.idle_until: dict[str, int] = {}  # a policy whose call claimed nothing waits for a new result
        self.retry_at: dict[str, float] = {}  # a policy whose call failed is asked again then (monotonic)
        self.latency: dict[str, float] = {}  # a policy's recent call duration (EWMA), seconds
        self.first_start: float | None = None  # when training first started
        self.started_jobs = 0
        self.trained_jobs, self.trainer_seconds = 0, 0.0  # finished batches: jobs and their trainer time
        self.stats = PipelineStats()
        # in-process training: groups at once on the device; a work pool: batches dispatched at once
        local = isinstance(campaign.executor, LocalExecutor)
        self.trainers = cfg.trainers_per_device if local else cfg.max_in_flight

    # ---- accounting ---------------------------------------------------------------------------
    def outstanding(self) -> int:
        """Experiments recorded, queued or training: what the budget already holds."""
        return self.c.recorded + len(self.queue) + sum(len(t.batch) for t in self.training.values())

    def room(self) -> int:
        return max(0, self.c.target - self.outstanding())

    def new_cell_room(self) -> int:
        """The room new cells may take: the room kept for the leaders' replicates (allot.py) is left to them."""
        reps = sum(1 for q in self._pending() if q.job.proposer == "replicate")
        room = self.room()
        return max(0, room - self.c.held_for_replicates(room, self._pending_new(), reps))

    def _pending_new(self) -> int:
        """New cells asked for, queued or training: results that may still change the leaders."""
        return sum(c.n for c in self.calls.values()) + sum(1 for q in self._pending() if q.job.proposer != "replicate")

    def _pending(self) -> list[_Queued]:
        return self.queue + [q for t in self.training.values() for q in t.batch]

    @property
    def lookahead(self) -> int:
        """How many claimed jobs may wait for a trainer: ``--lookahead``, or the policies' shares."""
        if self.fixed_lookahead is not None:
            return self.fixed_lookahead
        return sum(self.share(p.name) for p in self.c.policies)

    def share(self, name: str) -> int:
        """The part of the lookahead policy ``name``'s claimed jobs may fill (module docstring)."""
        n = len(self.c.policies)
        if self.fixed_lookahead is not None:
            return max(1, self.fixed_lookahead // n)
        need = math.ceil(self._consumed_during_call(name) * (1 + 1 / self._base_calls(name)))
        return max(math.ceil(AUTO_LOOKAHEAD_MIN / n), need)

    def _queued_by(self, name: str) -> int:
        return sum(1 for q in self.queue if q.job.proposer == name)

    def _expected(self, call: _Call) -> int:
        """The cells a call in flight is expected to carry: what it asked for, at most what its
        policy's short replies carried."""
        carried = self.carried.get(call.policy.name)
        return call.n if carried is None else min(call.n, math.ceil(carried))

    def _expected_by(self, name: str | None = None) -> int:
        return sum(self._expected(c) for c in self.calls.values() if name is None or c.policy.name == name)

    def _base_calls(self, name: str) -> int:
        return min(START_CALLS, self.max_calls[name])

    def _chunk(self, name: str, share: int, ahead: int, max_per_call: int | None) -> int:
        """What a full call asks for: its part of the share, or of what the trainers take during a
        call if that is more (within the share and what one reply can hold)."""
        return min(share, math.ceil(max(share, ahead) / self._base_calls(name)), max_per_call or share)

    def calls_kept(self, policy: Policy) -> int:
        """The calls ``policy`` keeps in flight now (``calls_to_keep`` over what is measured)."""
        name = policy.name
        ahead = self._consumed_during_call(name)
        per_call = min(self._chunk(name, self.share(name), ahead, policy.max_per_call), self.carried.get(name, math.inf))
        return calls_to_keep(ahead, per_call, self.max_calls[name])

    def _consumed_during_call(self, name: str) -> int:
        """Jobs the trainers can start, per policy, while one of its calls runs (rate x latency).

        The rate is what the trainers can take when kept busy (jobs per trainer-second of the
        finished batches, times the trainers), not what they took: a starved trainer's rate is the
        proposers' own supply, and sizing calls by it would keep it starved.
        """
        if self.first_start is None or name not in self.latency:
            return 0
        started = self.started_jobs / max(time.monotonic() - self.first_start, 1e-3)  # jobs started per second
        capacity = self.trained_jobs / self.trainer_seconds * self.trainers if self.trainer_seconds > 0 else 0.0
        return math.ceil(max(started, capacity) / len(self.c.policies) * self.latency[name])

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> str:
        c = self.c
        started = time.monotonic()
        trainers = ThreadPoolExecutor(max_workers=self.trainers, thread_name_prefix="train")
        threads = self._share_cores()
        stop = threading.Event()
        token = STOP.set(stop)  # the trainers' contexts are copies of this one: set, it cancels their batches
        stopped = "interrupted"
        try:
            while True:
                self.stats.max_lookahead = max(self.stats.max_lookahead, self.lookahead)
                late = c.out_of_time()
                if not late:
                    self._enqueue_replicates()
                    self._launch_calls()
                self._launch_training(trainers, late)
                if not late:  # the groups just started freed room in the queue: ask for more now, not after
                    self._launch_calls()  # the next event (a training can take as long as a call)
                if late and not self.training:  # calls still out are not waited for (an LLM call can take minutes)
                    if self.calls:
                        c.log(f"out of time: {len(self.calls)} proposal call(s) still running abandoned "
                              f"(their cells are not claimed; their tokens are not counted)")
                    stopped = "hours"
                    break
                if not self.training and not self.calls:
                    if c.recorded >= c.target:
                        stopped = c.goal_reason()
                        break
                    if not self.queue and c.release_reserve():  # too few leaders to replicate: room for new cells
                        self.idle_until.clear()
                        continue
                    # nothing claimed, nothing coming: every policy waits for news that cannot come, unless
                    # one failed and is asked again after its backoff
                    if not self.queue and not self.retry_at:
                        stopped = c.nothing_to_propose()
                        break
                self._wait(self._next_deadline())
        except BaseException as exc:
            if ending_status(exc) == "interrupted":  # Ctrl-C, SIGTERM: batches in training end at their next
                stop.set()  # step, unrecorded (a resume trains them), as in turns mode; the user is not kept waiting
            raise
        finally:
            # a proposal call still running ends on its own daemon thread; its cells are not claimed
            trainers.shutdown(wait=True, cancel_futures=True)
            for future in self.training:  # finished, and in the store, but not taken in: counted
                if future.done() and not future.cancelled() and future.exception() is None:
                    for _, rows in future.result():
                        c.count(rows)
            STOP.reset(token)
            if threads is not None:
                _set_torch_threads(threads)
            wall = time.monotonic() - started
            s = self.stats
            c.pipeline_stats = {
                "busy_fraction": s.busy_seconds() / wall if wall > 0 else 0.0, "wall_seconds": wall,
                "busy_seconds": s.busy_seconds(), "proposal_calls": s.calls, "max_queued": s.max_queued,
                "mean_staleness": sum(s.staleness) / len(s.staleness) if s.staleness else 0.0,
                "over_lookahead": s.over_lookahead, "starved_fraction": _fraction(s.starved_seconds, self.first_start),
                "lookahead": s.max_lookahead, "lookahead_auto": self.fixed_lookahead is None,
                "max_calls_in_flight": s.max_calls}
        return stopped

    def _share_cores(self) -> int | None:
        """On a CPU, the trainers share the cores free (lab/cpu.py): each group's torch threads are
        the cores over the trainers, never more busy threads than cores. Returns the count to put back."""
        if not isinstance(self.c.executor, LocalExecutor) or str(self.c.device) != "cpu":
            return None
        from crashsearch.lab.cpu import threads_per_worker

        return _set_torch_threads(threads_per_worker(self.trainers))

    def _next_deadline(self) -> float | None:
        """Seconds until the oldest queued group should start anyway, or the --hours deadline,
        whichever comes first (None: wait for an event)."""
        left = self.c.time_left()
        deadline = None if left is None else max(0.0, left) + 1e-3
        if self.retry_at:  # a failed policy's next call
            retry = max(0.0, min(self.retry_at.values()) - time.monotonic()) + 1e-3
            deadline = retry if deadline is None else min(retry, deadline)
        if not self.queue or len(self.training) >= self.trainers:
            return deadline
        oldest = min(q.since for q in self.queue)
        group = max(0.0, oldest + self.c.config.group_wait_s - time.monotonic()) + 1e-3
        return group if deadline is None else min(group, deadline)

    def _wait(self, timeout: float | None) -> None:
        pending = list(self.calls) + list(self.training)
        if not pending:
            if timeout:
                time.sleep(timeout)
            return
        starved = self.first_start is not None and not self.training and not self.queue  # only calls are out
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
        c = self.c
        for policy in c.policies:
            name = policy.name
            while sum(1 for k in self.calls.values() if k.policy is policy) < self.calls_kept(policy):
                if name in self.retry_at:
                    if self.retry_at[name] > time.monotonic():
                        break  # its last call failed: ask again after the backoff
                    del self.retry_at[name]
                    self.idle_until.pop(name, None)  # the retry asks again, news or not
                if self.idle_until.get(name, -1) >= c.new:
                    break  # its last call claimed nothing: ask again once a result has arrived
                # demand when the answer arrives: the free part of its lookahead share plus what the
                # trainers will have taken meanwhile; calls out count for the cells they are expected to
                # carry (a short reply is not a full one). The claim on return still respects the bound.
                asked = self._expected_by()
                ahead = self._consumed_during_call(name)
                share, lookahead = self.share(name), self.lookahead
                free = min(share - self._queued_by(name) - self._expected_by(name) + ahead,
                           lookahead - len(self.queue) - asked + ahead * len(c.policies), share)
                # its even part of the room not yet asked for (allot.py): every policy from the first call on
                waiting = frozenset(n for n, until in self.idle_until.items() if until >= c.new)
                budget_free = c.shares(self.new_cell_room() - asked, waiting)[name]
                want = min(free, budget_free)
                if want <= 0:
                    break
                # a call asks for a full chunk (a call costs its prompt whatever it returns): its part of
                # the share, or of what the trainers take during a call if that is more (within the
                # share); a smaller one only when the policy has nothing pending or the budget is nearly spent
                chunk = self._chunk(name, share, ahead, policy.max_per_call)
                pending = self._expected_by(name) + self._queued_by(name)
                if want < chunk and pending and budget_free > want:
                    break
                n = min(chunk, want)
                c.offered[name] += n
                view = c.view()
                future = _in_daemon_thread(c.ask, policy, view, n)
                self.calls[future] = _Call(policy, n, c.new, time.monotonic())
                self.stats.calls += 1
                self.stats.max_calls = max(self.stats.max_calls, sum(1 for k in self.calls.values() if k.policy is policy))

    def _finish_call(self, future: Future) -> None:
        call = self.calls.pop(future)
        proposals = future.result()  # Campaign.ask never raises: a failing policy returns []
        name = call.policy.name
        took = time.monotonic() - call.started
        self.latency[name] = took if name not in self.latency else 0.7 * self.latency[name] + 0.3 * took
        got = len(proposals)  # an empty answer is a failure or nothing new, not a short reply
        if 0 < got < call.n:  # a short reply: about this many cells is what a reply carries
            self.carried[name] = got if name not in self.carried else 0.7 * self.carried[name] + 0.3 * got
        elif got and got > self.carried.get(name, math.inf):  # a full reply beyond that: replies carry more
            self.carried[name] = float(got)
        limit = max(0, min(self.new_cell_room(), self.share(name) - self._queued_by(name), self.lookahead - len(self.queue)))
        jobs = self.c.claim(call.policy, proposals, limit)
        self.stats.over_lookahead += max(0, len(proposals) - limit)
        delay = self.c.retry_delay(name) if not proposals else None
        if delay is not None:  # a failed call (rejected answer, API error): not a sign the space is exhausted
            self.retry_at[name] = time.monotonic() + delay
            return
        self.retry_at.pop(name, None)  # answered, or given up on: no retry is pending (the loop's end test)
        if not jobs:
            self.idle_until[name] = self.c.new
        now = time.monotonic()
        self.queue += [_Queued(j, now, call.view_results) for j in jobs]
        self.stats.max_queued = max(self.stats.max_queued, len(self.queue))

    def _enqueue_replicates(self) -> None:
        c = self.c
        room = min(c.replicate_room(self.room(), self._pending_new()), max(0, self.lookahead - len(self.queue)))
        if room <= 0:
            return
        pending = {(q.job.cell.id, q.job.replicate) for q in self._pending()}
        jobs = c.replicate_jobs(min(room * 2, 2 * c.config.round_size), pending)[:room]
        now = time.monotonic()
        self.queue += [_Queued(j, now, c.new) for j in jobs]

    # ---- trainers -----------------------------------------------------------------------------
    def _launch_training(self, pool: ThreadPoolExecutor, late: bool) -> None:
        c = self.c
        if late:
            self.queue.clear()  # out of time: claimed jobs not started are given up (never recorded)
            return
        while self.queue and len(self.training) < self.trainers:
            groups: dict[tuple, list[_Queued]] = defaultdict(list)
            for q in self.queue:
                groups[_group_key(q.job)].append(q)
            now = time.monotonic()
            # the group whose oldest job has waited longest; full groups first
            key, members = max(groups.items(), key=lambda kv: (len(kv[1]) >= c.config.max_group, now - kv[1][0].since))
            full = len(members) >= c.config.max_group
            waited = now - members[0].since >= c.config.group_wait_s
            if not (full or waited or not self.calls):
                return
            batch = members[: c.config.max_group]
            chosen = {id(q) for q in batch}
            self.queue = [q for q in self.queue if id(q) not in chosen]
            for q in batch:
                self.stats.staleness.append(c.new - q.view_results)
            self.started_jobs += len(batch)
            if self.first_start is None:
                self.first_start = time.monotonic()
            ctx = contextvars.copy_context()
            record = _Training(batch, time.monotonic())
            self.training[pool.submit(ctx.run, self._train, [q.job for q in batch], record)] = record
            self.c.show_training(self._in_training())

    def _in_training(self) -> int:
        return sum(len(t.batch) for t in self.training.values())

    def _train(self, jobs: list[Job], record: _Training) -> list[tuple[list[Job], list[dict]]]:
        """Trainer thread: one group through the executor (rows are in the store when it returns)."""
        try:
            return list(self.c.executor.run([jobs]))
        finally:
            record.ended = time.monotonic()

    def _finish_training(self, future: Future) -> None:
        record = self.training.pop(future)
        self.c.show_training(self._in_training())
        self.stats.busy.append((record.started, record.ended or time.monotonic()))
        self.trained_jobs += len(record.batch)
        self.trainer_seconds += (record.ended or time.monotonic()) - record.started
        for batch, rows in future.result():
            retries = self.c.record(batch, rows)
            self.c.round += 1  # in the pipeline a "round" is one recorded batch
            if self.c.reporter is not None:
                self.c.reporter.round(self.c.round, self.c.recorded)
            room = self.room()
            now = time.monotonic()
            # retries of healed failures go first; beyond the budget they are dropped
            self.queue[:0] = [_Queued(j, now - self.c.config.group_wait_s, self.c.new) for j in retries[:room]]
        self.c._save_state()


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
