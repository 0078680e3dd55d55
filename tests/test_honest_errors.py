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


# ---- whose fault an error is ------------------------------------------------------------------------

def _recorded(store, space, campaign="c1", n=4):
    from tests.test_safety import rows

    store.append(campaign, rows(space, n), space)
    return store


def test_a_bug_is_an_internal_error_with_its_traceback_in_a_file_not_a_user_error(store, space, monkeypatch, capsys):
    from crashsearch.flows import analyze as analyze_module
    from crashsearch.flows.cli import main as cli

    _recorded(store, space)

    def broken_solver(**kw):  # a numerical bug deep in the code, as scipy raises it
        raise ValueError("The function value at x=2637.27 is NaN; solver cannot continue")

    monkeypatch.setattr(analyze_module, "analyze_flow", broken_solver)
    code = cli(["analyze", "--campaign", "c1", "--home", str(store.home.root)])
    err = capsys.readouterr().err.strip()
    assert code == 70, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("analyze: internal error: The function value") and "traceback in" in err
    report = store.home.root / "logs"
    files = list(report.glob("internal-*.txt"))
    assert len(files) == 1 and str(files[0]) in err
    assert "Traceback" in files[0].read_text() and "broken_solver" in files[0].read_text()


def test_user_errors_stay_one_line_exit_2(store, space, capsys):
    from crashsearch.flows.cli import main as cli

    _recorded(store, space)
    home = str(store.home.root)
    for argv in (["query", "SELECT nosuchcolumn FROM experiments", "--home", home],
                 ["query", "DELETE FROM experiments", "--home", home],
                 ["analyze", "--campaign", "nosuch", "--home", home],
                 ["leaderboard", "--campaign", "nosuch", "--home", home],
                 ["import", "/nonexistent.csv", "--campaign", "c2", "--home", home]):
        code = cli(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "internal error" not in err, (argv, err)
    assert not (store.home.root / "logs").exists()


def test_an_internal_error_without_a_home_folder_is_written_to_the_temp_folder(monkeypatch, capsys, tmp_path):
    import tempfile

    import crashsearch.flows.status as status_module
    from crashsearch.flows.cli import main as cli

    monkeypatch.setattr(status_module, "campaign_status", lambda home: {}["missing"])  # a KeyError: a bug
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code = cli(["status", "--home", str(tmp_path / "no-home")])  # a reading command creates no home
    err = capsys.readouterr().err.strip()
    assert code == 70 and "internal error" in err, err
    files = list((tmp_path / "tmp" / "crashsearch-logs").glob("internal-*.txt"))
    assert len(files) == 1 and str(files[0]) in err and not (tmp_path / "no-home").exists()
