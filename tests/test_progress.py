"""A running campaign in the Prefect UI: artifacts read back through the Prefect client (temporary server)."""
from __future__ import annotations

import json

import pytest

from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from test_catalog import CAMPAIGN_SPACE
from test_store import make_rows


def _artifacts(key: str, flow_run_id=None) -> list:
    """Every version of the artifact ``key`` (oldest first), optionally of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    if flow_run_id is not None:
        flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=flt, sort=ArtifactSort.CREATED_DESC)[::-1]


@pytest.mark.slow
def test_the_reporter_shows_progress_tables_and_policy_costs_while_it_runs(tmp_path):
    """Drive the reporter's hooks inside a real flow run; after each, read the UI's view back."""
    from prefect import flow

    from crashsearch.flows.progress import CampaignProgress

    home = resolve_home(tmp_path / "home")
    space = Space.load()
    store = Store(home)
    seen = {}

    @flow(name="progress-check")
    def run() -> None:
        reporter = CampaignProgress(home, every_rounds=2, min_interval_s=0)
        assert reporter.enabled
        reporter.start("Night_1", recorded=0, target=8, budget=20)
        seen["start"] = _artifacts("night-1-progress")[-1]
        rows = make_rows(space, 4)
        rows[0].update(proposer="claude", tokens_in=1000, tokens_out=200, cost_usd=0.25)
        rows[1].update(proposer="claude", status="failed", val_ap=None, test_ap=None, error_class="OOMError",
                       tokens_in=500, tokens_out=100, cost_usd=0.125)
        rows[2].update(proposer="random")
        rows[3].update(proposer="random")
        store.append("Night_1", rows, space)
        reporter.batch(recorded=4)
        seen["batch"] = _artifacts("night-1-progress")[-1]
        reporter.round(1, recorded=4)  # not a table round (every 2)
        seen["tables_after_round_1"] = len(_artifacts("night-1-leaderboard"))
        reporter.round(2, recorded=4)
        seen["leaderboard"] = _artifacts("night-1-leaderboard")
        seen["policies"] = _artifacts("night-1-policies")[-1]
        store.append("Night_1", make_rows(space, 4, seed=5, prefix="x"), space)  # other cells
        reporter.finish(recorded=8, stopped="budget")
        seen["flow_run_id"] = reporter.flow_run_id

    run()
    assert seen["start"].type == "progress" and seen["start"].data == 0.0
    assert seen["start"].description == "Campaign Night_1: 0 of 8 experiments recorded, this run's allowance (campaign budget 20)"
    assert seen["batch"].data == 50.0 and "4 of 8" in seen["batch"].description
    assert seen["tables_after_round_1"] == 0
    board = json.loads(seen["leaderboard"][-1].data)
    assert seen["leaderboard"][-1].type == "table" and len(board) == 3  # three ok cells (one failed)
    assert board[0]["rank"] == 1 and {"mean_val_ap", "ci_low", "ci_high", "n", "cell_id"} <= set(board[0])
    policies = {row["policy"]: row for row in json.loads(seen["policies"].data)}
    assert policies["claude"] == {"policy": "claude", "experiments": 2, "ok": 1, "failed": 1,
                                  "best_val_ap": round(policies["claude"]["best_val_ap"], 4), "tokens": 1800, "cost_usd": 0.375}
    assert policies["random"]["experiments"] == 2 and policies["random"]["cost_usd"] == 0
    final = _artifacts("night-1-progress", seen["flow_run_id"])
    assert len(final) == 1 and final[0].data == 100.0 and "8 of 8" in final[0].description  # one bar, updated
    boards = _artifacts("night-1-leaderboard", seen["flow_run_id"])
    assert len(boards) == 2 and len(json.loads(boards[-1].data)) == 7  # round 2, then the end
    assert all(a.flow_run_id == seen["flow_run_id"] for a in boards)  # beside the run in the UI


def test_outside_a_flow_run_the_reporter_does_nothing(tmp_path):
    from crashsearch.flows.progress import CampaignProgress

    reporter = CampaignProgress(resolve_home(tmp_path / "home"))
    assert not reporter.enabled
    reporter.start("c", 0, 4, 4)
    reporter.batch(2)
    reporter.round(3, 2)
    reporter.finish(4, "budget")
    assert reporter.published == []


@pytest.mark.slow
def test_a_dead_server_costs_one_line_and_never_stops_the_campaign(tmp_path, monkeypatch):
    from prefect import flow

    import prefect.artifacts
    from crashsearch.flows.progress import CampaignProgress

    lines = []

    def refused(*_a, **_k):
        raise ConnectionError("All connection attempts failed")

    @flow(name="progress-dead-server")
    def run() -> int:
        reporter = CampaignProgress(resolve_home(tmp_path / "home"), log=lines.append, min_interval_s=0)
        monkeypatch.setattr(prefect.artifacts.ProgressArtifact, "create", refused)
        reporter.start("c", 0, 4, 4)
        for i in range(3):
            reporter.batch(i)
            reporter.round(i, i)
        reporter.finish(4, "budget")
        return len(lines)

    assert run() == 1 and "Prefect UI artifacts off" in lines[0] and "All connection attempts failed" in lines[0]


def test_a_ctrl_c_during_the_reporters_leaderboard_query_stops_the_campaign(tmp_path, monkeypatch):
    # bug (seen under load): Ctrl-C while the reporter read the leaderboard for the UI reached DuckDB,
    # which turns a signal during a query into RuntimeError("Query interrupted"); the reporter's
    # "the UI is a convenience" handler logged "Prefect UI artifacts off" and the campaign trained on
    from prefect import flow

    from crashsearch.flows.progress import CampaignProgress

    lines = []

    def interrupted(*_a, **_k):
        raise RuntimeError("Query interrupted")  # what DuckDB raises when a signal arrives mid-query

    @flow(name="progress-ctrl-c")
    def run() -> None:
        reporter = CampaignProgress(resolve_home(tmp_path / "home"), log=lines.append, min_interval_s=0)
        reporter.start("c", 0, 4, 4)
        monkeypatch.setattr(Store, "leaderboard", interrupted)
        reporter.finish(4, "budget")

    with pytest.raises(KeyboardInterrupt):
        run()
    assert not any("artifacts off" in line for line in lines), lines


@pytest.mark.slow
def test_the_campaign_flow_publishes_its_progress_and_the_report_links_its_files(synth_dataset, tmp_path):
    from crashsearch.flows.analyze import analyze_flow
    from crashsearch.flows.campaign import get_campaign_flow
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path / "home")
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space = tmp_path / "tiny.yaml"
    space.write_text(CAMPAIGN_SPACE)
    result = get_campaign_flow()(dataset=str(synth_dataset.root), campaign="ui-run", home=str(home.root), budget=8,
                                 round_size=2, seeds=1, policies="random", space=str(space), device="cpu",
                                 propose_mode="turns")  # rounds of 2: the table cadence below counts rounds
    assert result["recorded"] == 8
    (progress,) = _artifacts("ui-run-progress")
    assert progress.data == 100.0 and "8 of 8 experiments recorded, the budget" in progress.description
    boards = _artifacts("ui-run-leaderboard")
    assert len(boards) == 2  # after round 3 (of 4), and at the end
    assert len(json.loads(boards[-1].data)) == Store(home).leaderboard("ui-run").shape[0]
    (policies,) = _artifacts("ui-run-policies")[-1:]
    assert json.loads(policies.data)[0]["policy"] == "random" and json.loads(policies.data)[0]["experiments"] == 8
    assert progress.flow_run_id == boards[-1].flow_run_id == policies.flow_run_id

    analyze_flow(campaign="ui-run", home=str(home.root))
    (report,) = _artifacts("ui-run-report")
    report_dir = home.campaign("ui-run") / "report"
    for name in ("report.html", "numbers.json", "report.md"):
        assert f"]({(report_dir / name).resolve().as_uri()})" in report.data
    assert "](file://" in report.data.split("## Report files")[0]  # the figures link their files too
