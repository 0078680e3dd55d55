"""The asynchronous pipeline: exact budget and dedup, bounded lookahead, overlap of proposing and training,
healing, replicates, --hours, SIGKILL and resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from crashsearch.agents import register_policy
from crashsearch.agents.evolution import EvolutionPolicy
from crashsearch.agents.random_search import RandomPolicy
from crashsearch.agents.tpe import TPEPolicy
from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.store import Store
from crashsearch.tasks.train import train_batch

from tests.test_campaign import TINY_SPACE, _faulty_train, lab_home  # noqa: F401 (fixture)

EVENTS: list[tuple[str, float, float]] = []  # (what, start, end) of proposal calls and training


class SlowRandom(RandomPolicy):
    """A random policy that answers after 0.3 s, like a (very fast) LLM; calls may overlap."""

    name = "slow-random"
    concurrent_calls = True

    def propose(self, view, n):
        t0 = time.monotonic()
        time.sleep(0.3)
        out = super().propose(view, n)
        EVENTS.append(("propose", t0, time.monotonic()))
        return [self._proposal(p.cell, p.rationale) for p in out]


def _timed_train(*args):
    t0 = time.monotonic()
    try:
        return train_batch(*args)
    finally:
        EVENTS.append(("train", t0, time.monotonic()))


@pytest.fixture
def slow_policy(monkeypatch):
    from crashsearch import agents

    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("slow-random", f"{__name__}:SlowRandom")
    EVENTS.clear()


def _history(home, campaign):
    return Store(home).experiments(campaign)


class _Gate:
    """Proposals wait for evidence: the first ``first`` cells go out at once, later calls wait until a
    batch is recorded (the reporter hook ``batch`` sets ``recorded``), as a slow agent would."""

    def __init__(self, first: int):
        self.first, self.returned = first, 0
        self.lock, self.recorded = threading.Lock(), threading.Event()

    def propose(self, propose, view, n):
        with self.lock:
            free = self.first - self.returned
        if free <= 0:
            assert self.recorded.wait(60), "no batch was recorded"
        out = list(propose(view, n))
        with self.lock:
            if not self.recorded.is_set():
                out = out[:max(0, self.first - self.returned)]
            self.returned += len(out)
        return out

    # the campaign's reporter interface (flows/progress.py): a recorded batch opens the gate
    def start(self, *args):
        pass

    def batch(self, recorded):
        self.recorded.set()

    def round(self, *args):
        pass

    def finish(self, *args):
        pass


GATE = _Gate(6)


class GatedRandom(RandomPolicy):
    def propose(self, view, n):
        return GATE.propose(super().propose, view, n)


class GatedTPE(TPEPolicy):
    def propose(self, view, n):
        return GATE.propose(super().propose, view, n)


class GatedEvolution(EvolutionPolicy):
    def propose(self, view, n):
        return GATE.propose(super().propose, view, n)


@pytest.fixture
def evidence_first(monkeypatch):
    """evolution, tpe and random, each waiting for the first recorded batch after the first 6 cells
    (GATE): the pipeline's order no longer depends on how fast this machine trains."""
    from crashsearch import agents

    global GATE
    GATE = _Gate(6)
    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    for name, cls in (("random", "GatedRandom"), ("tpe", "GatedTPE"), ("evolution", "GatedEvolution")):
        register_policy(name, f"{__name__}:{cls}")
    return GATE


def test_pipeline_spends_the_exact_budget_on_distinct_cells_and_confirms_leaders(lab_home, evidence_first):
    # Replicates of the leaders enter the queue only where it has room when a batch is recorded. Fast
    # proposers refill it first, so on a loaded machine, whose trainers were slow beside instant
    # proposals, a run could end without a replicate (issue 21); here proposals wait for the first
    # result (evidence_first), so when it is recorded the queue has room and a leader gets its replicate.
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-basic", budget=17, seeds=2, space_path=space, propose_mode="pipeline",
                           lookahead=6, group_wait_s=0.05, log=lambda m: None, reporter=evidence_first)
    df = _history(home, "p-basic")
    assert len(df) == summary.recorded == 17 and df["experiment_id"].is_unique
    firsts = df[df["replicate"] == 0]
    assert firsts["cell_id"].is_unique and set(firsts["proposer"]) <= {"evolution", "tpe", "random"}
    replicates = df[df["proposer"] == "replicate"]
    assert len(replicates) >= 1 and set(replicates["cell_id"]) <= set(firsts["cell_id"])
    assert not replicates.duplicated(["cell_id", "replicate"]).any()
    p = summary.pipeline
    assert p["max_queued"] <= 6 and 0 < p["busy_fraction"] <= 1 and p["proposal_calls"] >= 3
    assert "pipeline: trainers busy" in summary.format()
    assert 0 <= p["starved_fraction"] < 1 and p["lookahead"] == 6


def test_proposals_and_training_overlap_and_lookahead_bounds_the_queue(lab_home, slow_policy):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-overlap", policies=["slow-random"], budget=16, seeds=1,
                           space_path=space, propose_mode="pipeline", lookahead=3, max_calls_in_flight=2,
                           group_wait_s=0.0, train_fn=_timed_train, log=lambda m: None)
    assert summary.recorded == 16 and _history(home, "p-overlap")["cell_id"].is_unique
    assert summary.pipeline["max_queued"] <= 3  # never more than `lookahead` claimed cells wait for a trainer
    calls = [(a, b) for kind, a, b in EVENTS if kind == "propose"]
    trains = [(a, b) for kind, a, b in EVENTS if kind == "train"]
    overlapping = [c for c in calls if any(a < c[1] and c[0] < b for a, b in trains)]
    assert overlapping, "no proposal call ran while a batch trained"
    assert max(b - a for a, b in calls) < 5  # and the calls themselves overlap (two in flight)
    assert any(c1[0] < c2[1] and c2[0] < c1[1] for i, c1 in enumerate(calls) for c2 in calls[i + 1:])
    assert summary.pipeline["mean_staleness"] >= 0
    # 0.3 s calls feeding a queue of 3 to fast trainers: they mostly wait, and the summary says what to do
    assert summary.pipeline["starved_fraction"] >= 0.2, summary.pipeline
    assert "hint: the trainers waited for proposals" in summary.format() and "--lookahead (now 3)" in summary.format()


def test_the_automatic_lookahead_holds_what_the_trainers_take_during_a_call():
    # before: a fixed lookahead of 24 by default; with an agent that thinks 8 s and trainers that take 13 jobs/s,
    # the trainers waited for proposals most of the run unless the user knew to raise --lookahead
    from types import SimpleNamespace

    from crashsearch.tasks.campaign.config import CampaignConfig
    from crashsearch.tasks.campaign.demand import AUTO_LOOKAHEAD_MIN, Demand

    assert CampaignConfig(dataset="ds").lookahead is None  # automatic is the default
    policies = [SimpleNamespace(name="claude", concurrent_calls=True), SimpleNamespace(name="random", concurrent_calls=False)]
    p = Demand(CampaignConfig(dataset="ds"), policies, trainers=2)
    assert p.lookahead == AUTO_LOOKAHEAD_MIN == 24 and p.share("claude") == p.share("random") == 12  # nothing measured
    p.first_start = time.monotonic() - 10
    p.trained_jobs, p.trainer_seconds = 130, 20.0  # 6.5 jobs per trainer-second, 2 trainers: 13 jobs/s
    p.latency = {"claude": 8.0, "random": 0.01}
    # during one 8 s claude call the trainers take 13 / 2 x 8 = 52 of claude's jobs; with 2 calls in flight an
    # answer comes every 4 s, so its share holds 52 + 26. Random answers at once: its share stays small, so it
    # proposes a few cells at a time, close to the evidence (a fast baseline is not handicapped by a slow agent)
    assert p.share("claude") == 52 + 26 and p.share("random") == 12 and p.lookahead == 78 + 12
    p.max_calls["claude"] = 1  # one call at a time: a whole call's worth more
    assert p.share("claude") == 52 + 52
    p.latency["claude"] = 0.2  # fast answers: the floor
    assert p.lookahead == AUTO_LOOKAHEAD_MIN
    fixed = Demand(CampaignConfig(dataset="ds", lookahead=6), policies, trainers=2)
    fixed.first_start, fixed.trained_jobs, fixed.trainer_seconds = p.first_start, 130, 20.0
    fixed.latency = {"claude": 8.0, "random": 0.01}
    assert fixed.lookahead == 6 and fixed.share("claude") == fixed.share("random") == 3  # a number set is a bound


class CappedRandom(SlowRandom):
    """A slow random policy whose replies hold at most 2 cells (an LLM with a small max_output_tokens)."""

    name = "capped-random"
    max_per_call = 2
    asked: list[int] = []

    def propose(self, view, n):
        type(self).asked.append(n)
        return super().propose(view, n)[:2]


def test_a_call_never_asks_for_more_than_the_policy_can_answer(lab_home, monkeypatch):
    # before: a call asked for its whole share of the lookahead (12 here); an LLM whose reply holds fewer
    # cells is cut off at max_tokens and returns nothing
    from crashsearch import agents

    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("capped-random", f"{__name__}:CappedRandom")
    CappedRandom.asked = []
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-capped", policies=["capped-random", "random"], budget=14, seeds=1,
                           space_path=space, propose_mode="pipeline", lookahead=None, group_wait_s=0.0,
                           log=lambda m: None)
    assert summary.recorded == 14 and _history(home, "p-capped")["cell_id"].is_unique
    assert CappedRandom.asked and max(CappedRandom.asked) <= 2, CappedRandom.asked
    p = summary.pipeline
    assert p["lookahead_auto"] and p["lookahead"] >= 24 and p["max_queued"] <= p["lookahead"]


class SlowFirstAnswer(SlowRandom):
    """Answers after 0.4 s: with one call covering the budget, the trainers only wait for the first answer."""

    name = "slow-first-answer"

    def propose(self, view, n):
        time.sleep(0.4)
        return super().propose(view, n)


def test_waiting_for_the_first_answer_is_not_a_lookahead_hint(lab_home, monkeypatch):
    # one call brings the whole budget (lookahead 8 > budget 4): the trainers waited ~90% of the run, all of
    # it for the first answer, which no lookahead shortens; the summary still told the user to raise it
    from crashsearch import agents

    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("slow-first-answer", f"{__name__}:SlowFirstAnswer")
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-first", policies=["slow-first-answer"], budget=4, seeds=1, round_size=4,
                           space_path=space, propose_mode="pipeline", lookahead=8, group_wait_s=0.0, log=lambda m: None)
    assert summary.recorded == 4 and summary.pipeline["proposal_calls"] == 1
    assert summary.pipeline["starved_fraction"] < 0.2, summary.pipeline
    assert "hint: the trainers waited" not in summary.format()


def test_turns_mode_never_overlaps_proposals_and_training(lab_home, slow_policy):
    """The strict mode stays strict: the control for the test above."""
    home, ds, space = lab_home
    run_campaign(home, ds.root, "p-turns", policies=["slow-random"], budget=6, round_size=3, seeds=1,
                 space_path=space, propose_mode="turns", train_fn=_timed_train, log=lambda m: None)
    calls = [(a, b) for kind, a, b in EVENTS if kind == "propose"]
    trains = [(a, b) for kind, a, b in EVENTS if kind == "train"]
    assert calls and trains and not any(a < c[1] and c[0] < b for c in calls for a, b in trains)


def test_pipeline_heals_failures_within_the_budget(lab_home):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-heal", policies=["random"], budget=12, seeds=1, space_path=space,
                           propose_mode="pipeline", lookahead=4, group_wait_s=0.0, train_fn=_faulty_train,
                           log=lambda m: None)
    df = _history(home, "p-heal")
    assert len(df) == 12 == summary.recorded and df["experiment_id"].is_unique
    failed = df[df["status"] == "failed"]
    assert len(failed) >= 1
    healed = df[df["healed_from"].notna()]
    assert set(healed["healed_from"]) <= set(failed["experiment_id"])
    assert len(healed) >= 1


def _slow_train(*args):
    time.sleep(0.25)  # a batch takes a while, so 2 s of --hours end before the tiny space runs out
    return train_batch(*args)


def test_pipeline_stops_on_hours_with_nothing_half_recorded(lab_home):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "p-hours", budget=500, seeds=1, space_path=space, propose_mode="pipeline",
                           hours=2 / 3600, lookahead=4, max_group=2, train_fn=_slow_train, log=lambda m: None)
    df = _history(home, "p-hours")
    assert summary.stopped == "hours" and 0 < len(df) == summary.recorded < 500 and df["cell_id"].is_unique


class StuckAfterFirst(RandomPolicy):
    """Answers its first call at once, then takes 60 s per call (an LLM call stuck on a slow network)."""

    name = "stuck-after-first"
    concurrent_calls = True
    calls = 0

    def propose(self, view, n):
        type(self).calls += 1
        if type(self).calls > 1:
            time.sleep(60)
        return super().propose(view, n)


def test_hours_does_not_wait_for_proposal_calls_in_flight(lab_home, monkeypatch):
    """Before: at the --hours deadline the pipeline waited for every proposal call still running
    (an LLM call can take minutes), and the process then waited for its thread at exit."""
    from crashsearch import agents

    home, ds, space = lab_home
    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("stuck-after-first", f"{__name__}:StuckAfterFirst")
    StuckAfterFirst.calls = 0
    logs: list[str] = []
    t0 = time.monotonic()
    summary = run_campaign(home, ds.root, "p-stuck", policies=["stuck-after-first"], budget=100, seeds=1,
                           space_path=space, propose_mode="pipeline", hours=3 / 3600, lookahead=4,
                           log=logs.append)
    took = time.monotonic() - t0
    assert summary.stopped == "hours" and took < 30, (took, summary.stopped)
    assert any("proposal call" in line and "abandoned" in line for line in logs), logs
    assert _history(home, "p-stuck")["experiment_id"].is_unique


def test_a_ctrl_c_cancels_batches_in_training_and_counts_the_finished_ones(lab_home):
    """Before: the pipeline waited for every batch in training before it ended (minutes for a long
    batch), and rows a trainer had recorded that the coordinator had not taken in were missing from
    campaign.json's counts."""
    import _thread
    import json

    home, ds, space = lab_home
    calls: list[float] = []

    def train(cells, features, seeds, fixed, device):
        calls.append(time.monotonic())
        if len(calls) == 1:  # the first group: a normal batch; the user presses Ctrl-C as it is recorded
            out = train_batch(cells, features, seeds, fixed, device)
            time.sleep(1.0)  # the second group is training by now
            _thread.interrupt_main()
            return out
        return train_batch(cells, features, seeds, {**fixed, "epochs": 100000}, device)  # hours, unless cancelled

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_campaign(home, ds.root, "p-ctrl-c", policies=["random"], budget=12, seeds=1, space_path=space,
                     propose_mode="pipeline", lookahead=12, max_group=3, trainers_per_device=2, group_wait_s=0.0,
                     train_fn=train, log=lambda m: None)
    assert time.monotonic() - t0 < 60 and len(calls) >= 2
    rows = _history(home, "p-ctrl-c")
    info = json.loads((home.root / "campaigns" / "p-ctrl-c" / "campaign.json").read_text())
    assert info["status"] == "interrupted"
    assert len(rows) == 3 == info["runs"][-1]["recorded"] == info["runs"][-1]["new"]  # the finished group, counted
    assert (rows["status"] == "ok").all()  # the cancelled group is not recorded (a resume trains it)


CHILD = textwrap.dedent("""
    import sys
    from crashsearch.flows.campaign import run_campaign
    home, dataset, space = sys.argv[1:4]
    run_campaign(home, dataset, "p-kill", budget=int(sys.argv[4]), seeds=2, space_path=space,
                 policies=["random", "evolution"], propose_mode="pipeline", lookahead=4, group_wait_s=0.0)
""")


@pytest.mark.slow
def test_a_killed_pipeline_resumes_without_loss_or_duplicates(lab_home):
    home, ds, space = lab_home
    args = [sys.executable, "-c", CHILD, str(home.root), str(ds.root), space]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args + ["60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_history(home, "p-kill")) >= 6:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the campaign ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _history(home, "p-kill")
    assert 6 <= len(before) < 60
    subprocess.run(args + ["24"], env=env, check=True, capture_output=True, timeout=300)
    after = _history(home, "p-kill")
    assert set(before["experiment_id"]) <= set(after["experiment_id"])  # nothing finished is lost
    assert after["experiment_id"].is_unique
    assert not after.duplicated(["cell_id", "replicate"]).any()  # no cell (or replicate) run twice
    assert len(after) == max(24, len(before))  # the budget holds exactly


@pytest.mark.slow
def test_the_campaign_flow_shows_proposals_training_and_healing_as_task_runs(lab_home):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    from crashsearch.flows.campaign import get_campaign_flow

    home, ds, space = lab_home
    state = get_campaign_flow()(dataset=str(ds.root), campaign="p-flow", home=str(home.root), policies="random",
                                budget=6, seeds=1, space=space, propose_mode="pipeline", group_wait_s=0.0,
                                return_state=True)
    assert state.result()["recorded"] == 6
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                                     task_run_filter=TaskRunFilter())
    names = {r.name.rsplit("-", 1)[0] for r in runs}
    assert {"propose-random", "train-batch"} <= names, names  # proposer threads report to the same flow run


def test_append_new_writes_each_experiment_once(lab_home):
    from crashsearch.lab.space import Space
    from crashsearch.tasks.record import Job, make_row, utcnow

    home, ds, space_path = lab_home
    space = Space.load(space_path)
    jobs = [Job(space.cell(i), 0) for i in (1, 2)]
    rows = [make_row(j, campaign="p-once", dataset="synth-day", space=space, code_version="v", status="failed",
                     error=RuntimeError("x"), started_at=utcnow(), finished_at=utcnow()) for j in jobs]
    store = Store(home)
    assert store.append_new("p-once", rows[:1], space)[1] == []
    path, skipped = store.append_new("p-once", rows, space)
    assert skipped == [rows[0]["experiment_id"]] and path is not None
    assert store.append_new("p-once", rows, space) == (None, [r["experiment_id"] for r in rows])
    assert len(store.experiments("p-once")) == 2
