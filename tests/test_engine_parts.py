"""The engine's small parts (docs/engine.md): the turns loop, stopping, and an interrupted run's count."""
from __future__ import annotations

import json
import threading

import pytest

from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.store import Store
from crashsearch.lab.turns import run_turns
from crashsearch.tasks.campaign.stopping import Stopping, ending
from crashsearch.tasks.errors import STOP, stopping
from tests.test_campaign import lab_home  # noqa: F401 (fixture)


class _Host:
    """A turns host over a list of rounds: [] is a round that plans nothing."""

    def __init__(self, rounds, goal, give_up_after=2):
        self.rounds, self.goal, self.give_up_after = list(rounds), goal, give_up_after
        self.done, self.idles, self.steps = [], 0, []

    def stop_reason(self):
        self.steps.append("stop?")
        return "budget" if len(self.done) >= self.goal else None

    def plan(self):
        self.steps.append("plan")
        return self.rounds.pop(0) if self.rounds else []

    def idle(self):
        self.idles += 1
        return "exhausted" if self.idles >= self.give_up_after else None

    def execute(self, jobs):
        self.steps.append("execute")
        self.done += jobs


def test_the_turns_loop_plans_executes_and_stops_where_its_host_says():
    host = _Host([[1, 2], [], [3]], goal=3)
    reason, stats = run_turns(host)
    assert reason == "budget" and host.done == [1, 2, 3]
    assert (stats.rounds, stats.idle_rounds) == (2, 1)  # the empty round was planned again, not executed
    assert host.steps[:3] == ["stop?", "plan", "execute"]
    host = _Host([[1], [], []], goal=5)
    assert run_turns(host)[0] == "exhausted" and host.done == [1]  # the host's idle() gave the reason


def test_stopping_sets_the_stop_event_only_for_an_interrupt_and_puts_the_context_back():
    assert STOP.get() is None
    with pytest.raises(KeyboardInterrupt):
        with Stopping.cancelling() as event:
            assert STOP.get() is event and not stopping()
            raise KeyboardInterrupt
    assert event.is_set() and STOP.get() is None
    with pytest.raises(ValueError):
        with Stopping.cancelling() as event:
            raise ValueError("a bug")
    assert not event.is_set() and STOP.get() is None  # a failure is not a stop: trainers are not cancelled
    assert ending(KeyboardInterrupt()) == ("interrupted", "interrupted", "")
    assert ending(RuntimeError("Query interrupted")) == ("interrupted", "interrupted", "")  # DuckDB's word for it
    assert ending(ValueError("x")) == ("failed", "failed", "")


def test_stopping_knows_the_goal_and_the_deadline():
    clock = Stopping(hours=None, budget=10)
    assert clock.before_round(3, 10) is None and clock.before_round(10, 10) == "budget"
    assert clock.before_round(4, 4) == "allowance"  # an --extend goal below the budget
    late = Stopping(hours=1e-9, budget=10)
    threading.Event().wait(0.01)
    assert late.out_of_time() and late.before_round(3, 10) == "hours" and late.time_left() < 0


def test_an_interrupt_after_a_batch_is_appended_still_counts_its_rows(lab_home, monkeypatch):  # noqa: F811 (fixture)
    # bug: in turns mode a Ctrl-C that landed after a batch's rows were appended (while the leaders'
    # heads were kept) left them uncounted: summary.txt said "0 new experiments" and campaign.json
    # recorded 0 while the log held 2 rows
    from crashsearch.tasks.keep import Keeper

    home, ds, space = lab_home

    def interrupted(self, rows, results, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(Keeper, "keep_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_campaign(home, ds.root, "c-late-int", policies=["random"], budget=6, round_size=2, space_path=space,
                     seeds=1, log=lambda m: None)
    logged = len(Store(home).experiments("c-late-int"))
    assert logged == 2
    folder = home.campaign("c-late-int")
    info = json.loads((folder / "campaign.json").read_text())
    assert info["status"] == "interrupted" and info["recorded"] == logged and info["runs"][-1]["new"] == logged
    assert (folder / "summary.txt").read_text().startswith(f"campaign c-late-int on {ds.name}: {logged} new experiments")


def test_a_sigterm_during_a_store_query_stays_a_signal(tmp_path):
    # bug: under a Prefect flow SIGTERM raises TerminationSignal, not a KeyboardInterrupt; when it landed in
    # a store query (the keeper's ranking read right after a batch's append) the busy connection was closed
    # under the query and DuckDB's "connection is busy" error replaced the signal; run_batch's keeper took
    # that error for a failed weight save, and the campaign trained on for minutes after the SIGTERM
    import signal

    from crashsearch.lab.settings import resolve_home

    class Termination(BaseException):  # the shape of prefect.exceptions.TerminationSignal
        pass

    def raise_termination(signum, frame):
        raise Termination

    store = Store(resolve_home(tmp_path / "home"))
    previous = signal.signal(signal.SIGALRM, raise_termination)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Termination):
            store.query("SELECT sum(i) FROM range(20000000000) t(i)")  # minutes of work: interrupted
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
