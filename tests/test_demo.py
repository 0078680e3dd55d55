"""`crashsearch demo --tiny`: the main job end to end through the CLI, Prefect included."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_campaign import lab_home  # noqa: F401 (fixture)

BIN = Path(sys.executable).parent / "crashsearch"


def _cli(*args, home, timeout=600):
    env = {**os.environ, "CRASHSEARCH_HOME": str(home)}
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end_and_says_weights_are_random(tmp_path):
    home = tmp_path / "home"
    run = _cli("demo", "--tiny", home=home)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RANDOM" in run.stdout and "Traceback" not in run.stderr
    report = home / "campaigns" / "demo-day" / "report"
    for name in ("report.md", "report.html", "numbers.json", "figures/convergence.png", "figures/coverage.png"):
        assert (report / name).stat().st_size > 0, name
    numbers = json.loads((report / "numbers.json").read_text())
    ablation = numbers["history"]["arms"].get("ablation", 0)  # the leading temporal cell and its twin, 3 runs each
    assert 1 <= ablation <= 6 and numbers["history"]["experiments"] == 10 + ablation
    (pixels,) = [t for t in numbers["temporal"] if t["backbone"] == "pixels"]
    assert pixels["paired"] and pixels["paired"]["meanpool"]["n"] == 3 and pixels["paired"]["temporal"]["n"] >= 3
    assert "like for like" in (report / "report.md").read_text()
    assert {d["dataset"] for d in numbers["transfer"]["datasets"]} == {"synth-day", "synth-night"}
    assert "random" in (report / "report.md").read_text().lower()

    board = _cli("leaderboard", "--campaign", "demo-day", home=home)
    assert board.returncode == 0 and "mean_val_ap" in board.stdout
    query = _cli("query", "SELECT count(*) AS n, count(DISTINCT experiment_id) AS ids FROM experiments", home=home)
    total = str(18 + ablation)  # 10 day + 8 night + the ablation's runs, none twice
    assert query.returncode == 0 and query.stdout.split()[2:4] == [total, total]
    assert _cli("query", "DELETE FROM experiments", home=home).returncode != 0


def test_the_encoder_ablation_reads_the_campaign_s_own_space(lab_home):
    # a campaign on a custom space: its cell ids mean other cells in the default space, which the
    # ablation used (it trained and recorded cells the campaign never ran, with the wrong space)
    from crashsearch.flows.campaign import run_campaign
    from crashsearch.flows.demo import encoder_ablation
    from crashsearch.lab.space import Space
    from crashsearch.lab.store import Store

    home, ds, space_path = lab_home
    run_campaign(home, ds.root, "abl", policies=["random"], budget=8, seeds=1, space_path=space_path,
                 backbones=["pixels"], log=lambda m: None)
    result = encoder_ablation(home.root, "abl", ds, runs=1)
    space = Space.load(space_path)
    df = Store(home).experiments("abl")
    leader, twin = space.cell(result["cell_id"]), space.cell(result["twin_cell_id"])
    assert leader["backbone"] == "pixels" and leader["encoder"] != "meanpool_mlp"
    assert twin.to_dict() == {**leader.to_dict(), "encoder": "meanpool_mlp"}
    ablation = df[df["proposer"] == "ablation"]
    assert result["trained"] >= 1 and len(ablation) == result["trained"]
    assert set(ablation["space"]) <= {space.name} and set(ablation["cell_id"]) <= {leader.id, twin.id}
    assert (ablation["backbone"] == "pixels").all() and set(ablation["status"]) <= {"ok", "healed"}
