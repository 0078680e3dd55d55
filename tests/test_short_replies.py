"""Short replies do not starve the trainers (issue 23 item 6).

Before: a pipeline call was counted for the cells it asked for and each agent kept two calls in
flight, so an LLM server whose replies carry 3 cells whatever was asked kept the trainers busy 13%
of the time. Now the reply schema states the count (minItems = maxItems, which structured-output
APIs enforce), and the calls in flight are sized from the cells replies actually carry and their
latency, within ``max_calls_in_flight``.
"""
from __future__ import annotations

import json
import random
import threading
import time
from types import SimpleNamespace

import pytest

from crashsearch.agents.base import HistoryView
from crashsearch.lab.space import Space
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.demand import START_CALLS, calls_to_keep
from crashsearch.tasks.campaign.pipeline import Pipeline, _Call
from tests.fake_llm_server import FakeLLMServer, tool_reply
from tests.test_campaign import lab_home  # noqa: F401 (fixture)
from tests.test_llm_agents import SPACE, answer, cells, server, wire  # noqa: F401 (fixtures)


def test_calls_in_flight_follow_the_cells_replies_carry():
    # the trainers take 52 of an agent's cells during one of its calls
    assert calls_to_keep(52, per_call=26, cap=8) == START_CALLS == 2  # full replies of 26: two calls, as before
    assert calls_to_keep(52, per_call=13, cap=8) == 4  # replies carry half of 26: twice the calls
    assert calls_to_keep(52, per_call=3, cap=8) == 8  # 3 cells a reply would need 18 calls: the cap
    assert calls_to_keep(0, per_call=3, cap=8) == START_CALLS  # nothing measured yet
    assert calls_to_keep(52, per_call=0, cap=8) == START_CALLS
    assert calls_to_keep(52, per_call=3, cap=1) == 1  # a policy that cannot overlap calls, or --max-calls-in-flight 1
    assert calls_to_keep(5, per_call=26, cap=8) == START_CALLS  # little demand: never fewer than START_CALLS


def _measured_pipeline(max_calls: int = 8) -> tuple[Pipeline, SimpleNamespace]:
    claude = SimpleNamespace(name="claude", concurrent_calls=True, max_per_call=81)
    random_policy = SimpleNamespace(name="random", concurrent_calls=False, max_per_call=None)
    config = CampaignConfig(dataset="ds", max_calls_in_flight=max_calls)
    ctx = SimpleNamespace(config=config, proposers=SimpleNamespace(policies=[claude, random_policy]), executor=None)
    p = Pipeline(ctx)
    d = p.demand
    d.trainers, d.first_start = 2, time.monotonic() - 10
    d.trained_jobs, d.trainer_seconds = 130, 20.0  # 13 jobs/s: 52 of claude's during one of its 8 s calls
    d.latency = {"claude": 8.0, "random": 0.01}
    return p, claude


def test_a_policy_whose_replies_carry_fewer_cells_gets_more_calls_within_the_cap():
    p, claude = _measured_pipeline()
    d = p.demand
    # claude's share is 78 (52 + 26), so a full call asks for 39
    assert d.calls_kept(claude) == START_CALLS  # no short reply: two calls, as before
    d.carried["claude"] = 39.0  # replies carry what is asked: still two
    assert d.calls_kept(claude) == START_CALLS
    d.carried["claude"] = 13.0  # a third of it: 52 / 13 calls
    assert d.calls_kept(claude) == 4
    d.carried["claude"] = 3.0  # 3 cells a reply
    assert d.calls_kept(claude) == 8  # 18 would cover the demand: the cap
    capped, claude2 = _measured_pipeline(max_calls=3)
    capped.demand.carried["claude"] = 3.0
    assert capped.demand.calls_kept(claude2) == 3
    # a call out counts for the cells its policy's replies carry, not for what it asked
    p.calls = {object(): _Call(claude, 39, 0), object(): _Call(claude, 39, 0)}
    assert p._expected_by("claude") == 6 and p._expected_by() == 6


def test_a_short_reply_is_measured_and_lets_more_calls_out():
    # the pipeline's own bookkeeping of a finished call: 3 cells carried of 12 asked
    from concurrent.futures import Future

    p, claude = _measured_pipeline()
    d = p.demand
    p.ctx.proposers.claim = lambda policy, proposals, limit: []
    p.ctx.proposers.retry_delay = lambda name: None
    p.ctx.ledger = SimpleNamespace(new=0, recorded=0, target=400, held_for_replicates=lambda room, pending, reps: 0)
    future = Future()
    future.set_result([object()] * 3)
    p.calls[future] = _Call(claude, 12, 0, time.monotonic() - 8)
    p._finish_call(future)
    assert d.carried["claude"] == 3
    assert d.calls_kept(claude) > START_CALLS
    failed = Future()
    failed.set_result([])  # a failed or empty call says nothing about how much a reply carries
    p.calls[failed] = _Call(claude, 12, 0, time.monotonic())
    p.retry_at.clear()
    p._finish_call(failed)
    assert d.carried["claude"] == 3
    # a small ask answered in full says nothing new; a full reply beyond what was measured raises it
    for asked in (2, 6):
        done = Future()
        done.set_result([object()] * asked)
        p.calls[done] = _Call(claude, asked, 0, time.monotonic())
        p._finish_call(done)
        assert d.carried["claude"] == max(3, asked)


def test_the_reply_schema_states_the_count_asked_for(server, wire):  # noqa: F811 (fixtures)
    wire.script(server, wire.ok(answer(cells(3))))
    props = wire.make().propose(HistoryView.empty(SPACE), 3)
    assert len(props) == 3
    (req,) = wire.requests(server)
    if wire.name == "claude":
        schema = next(t for t in req.body["tools"] if t["name"] == "propose_experiments")["input_schema"]
    else:
        schema = req.body["generationConfig"]["responseSchema"]
    proposals = schema["properties"]["proposals"]
    low, high = ("minItems", "maxItems") if wire.name == "claude" else ("min_items", "max_items")  # google-genai's spelling
    assert proposals[low] == proposals[high] == 3, proposals
    if wire.name == "claude":  # the diagnose tool is unchanged
        diagnose = next(t for t in req.body["tools"] if t["name"] == "diagnose_failure")["input_schema"]
        assert "minItems" not in json.dumps(diagnose)


@pytest.mark.slow
def test_a_campaign_against_a_server_that_answers_short(lab_home, monkeypatch):  # noqa: F811 (fixture)
    """Claude through the real SDK against a server whose replies carry one cell whatever was asked:
    the budget and dedup stay exact, each request states its count, and the calls in flight stay
    within the cap (how many the pipeline keeps depends on measured speeds; the sizing itself is
    tested above)."""
    from crashsearch.flows.campaign import run_campaign

    home, ds, space_path = lab_home
    space = Space.load(space_path)
    pool = [space.cell(i) for i in range(space.full_size)]
    random.Random(1).shuffle(pool)
    lock = threading.Lock()
    state = {"now": 0, "most": 0, "counts": []}

    def short(request):
        schema = next(t for t in request.body["tools"] if t["name"] == "propose_experiments")["input_schema"]
        with lock:
            state["counts"].append(schema["properties"]["proposals"]["maxItems"])
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            cell = pool.pop()
        try:
            time.sleep(0.3)
        finally:
            with lock:
                state["now"] -= 1
        return tool_reply("propose_experiments", {"proposals": [dict(cell.to_dict(), rationale="one cell")]})

    srv = FakeLLMServer().start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-short")
        srv.respond_with("anthropic", short)
        summary = run_campaign(home, ds.root, "short", policies=["claude"], budget=10, seeds=1, space_path=space_path,
                               propose_mode="pipeline", max_calls_in_flight=4, group_wait_s=0.05,
                               policy_kwargs={"claude": dict(timeout_s=10.0, retry_base_s=0.001, retry_max_s=0.01)},
                               log=lambda m: None)
    finally:
        srv.stop()
    assert summary.recorded == 10 and srv.unscripted == 0
    assert state["counts"] and all(n >= 1 for n in state["counts"])
    assert 1 <= state["most"] <= 4 and 1 <= summary.pipeline["max_calls_in_flight"] <= 4

