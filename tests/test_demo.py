"""`crashsearch demo --tiny`: the main job end to end through the CLI, Prefect included."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert numbers["history"]["experiments"] == 10
    assert {d["dataset"] for d in numbers["transfer"]["datasets"]} == {"synth-day", "synth-night"}
    assert "random" in (report / "report.md").read_text().lower()

    board = _cli("leaderboard", "--campaign", "demo-day", home=home)
    assert board.returncode == 0 and "mean_val_ap" in board.stdout
    query = _cli("query", "SELECT count(*) AS n, count(DISTINCT experiment_id) AS ids FROM experiments", home=home)
    assert query.returncode == 0 and query.stdout.split()[2:4] == ["18", "18"]  # 10 day + 8 night, none twice
    assert _cli("query", "DELETE FROM experiments", home=home).returncode != 0
