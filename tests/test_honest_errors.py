"""Honest results, status and errors (issue 20, part 2): a few bad LLM replies do not end a campaign,
a home never shows another home, one liveness answer, user errors apart from internal ones, the
notebook API reads a read-only or damaged home."""
from __future__ import annotations

import json
import random

import pytest

from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from tests.fake_llm_server import error, text_reply, anthropic_text_reply
from tests.test_campaign import lab_home  # noqa: F401 (fixture)
from tests.test_llm_agents import _proposer, answer, server  # noqa: F401 (fixture)

FAST = dict(timeout_s=10.0, max_retries=0, retry_base_s=0.001, retry_max_s=0.01)  # the engine's backoff retries


def _bad_first_replies(server, space):
    """Each API answers malformed (twice: the repair turn too), out of range (twice), 429, 500, then valid cells."""
    bad_cell = dict(space.cell(0).to_dict(), lr=123.0)
    out_of_range = answer([space.cell(0)])
    out_of_range["proposals"][0] = dict(bad_cell, rationale="out of range")
    from tests.fake_llm_server import json_reply, tool_reply

    server.anthropic(anthropic_text_reply('{"proposals": ['), anthropic_text_reply("not json"),
                     tool_reply("propose_experiments", out_of_range), tool_reply("propose_experiments", out_of_range),
                     error(429, retry_after=0), error(500))
    stringified = {"proposals": [{k: (v if k == "rationale" else str(v)) for k, v in out_of_range["proposals"][0].items()}]}
    server.gemini(text_reply('{"proposals": ['), text_reply("not json"), json_reply(stringified), json_reply(stringified),
                  error(429, retry_after=0), error(500))
    pool = [space.cell(i) for i in range(space.full_size) if space.cell(i)["backbone"] == "pixels"]
    random.Random(0).shuffle(pool)
    counter = {"anthropic": 0, "gemini": 0}
    server.respond_with("anthropic", _proposer("anthropic", pool, counter))
    server.respond_with("gemini", _proposer("gemini", pool[len(pool) // 2:], counter))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [dict(propose_mode="pipeline", max_calls_in_flight=1),
                                  dict(propose_mode="pipeline", max_calls_in_flight=8, lookahead=1),
                                  dict(propose_mode="turns")], ids=["calls1", "calls8-lookahead1", "turns"])
def test_llm_only_campaign_retries_rejected_and_failed_calls(lab_home, server, mode):
    home, ds, space_path = lab_home
    _bad_first_replies(server, Space.load(space_path))
    campaign = f"llm-bad-{mode['propose_mode']}-{mode.get('max_calls_in_flight', 0)}"
    summary = run_campaign(home, ds.root, campaign, policies=("claude", "gemini"), budget=6, seeds=1, round_size=2,
                           space_path=space_path, policy_kwargs={"claude": FAST, "gemini": FAST},
                           group_wait_s=0.05, log=lambda m: None, **mode)
    assert summary.recorded == 6 and summary.stopped == "budget", summary.format()
    info = json.loads((home.root / "campaigns" / campaign / "campaign.json").read_text())
    assert info["status"] == "finished"


@pytest.mark.slow
def test_a_run_that_records_nothing_is_failed_with_its_last_error(lab_home, server):
    from crashsearch.flows.status import campaign_status

    home, ds, space_path = lab_home
    server.respond_with("anthropic", lambda request: error(500, "the model is down"))
    summary = run_campaign(home, ds.root, "llm-down", policies=("claude",), budget=4, seeds=1, space_path=space_path,
                           policy_kwargs={"claude": FAST}, propose_mode="pipeline", max_calls_in_flight=1,
                           log=lambda m: None)
    assert summary.recorded == 0 and summary.stopped == "failed"
    info = json.loads((home.root / "campaigns" / "llm-down" / "campaign.json").read_text())
    assert info["status"] == "failed" and "the model is down" in info["stop_reason"]
    row = next(r for r in campaign_status(home) if r["campaign"] == "llm-down")
    assert row["status"] == "failed" and "the model is down" in row["last_error"]
    assert len(server.received("anthropic")) >= 5  # retried with backoff before giving up
