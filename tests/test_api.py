"""The notebook API: ``import crashsearch as cs; cs.open_home(path)`` and its reads."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import crashsearch as cs
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from test_store import make_rows


@pytest.fixture(scope="module")
def space() -> Space:
    return Space.load()


@pytest.fixture
def home(tmp_path, space) -> Home:
    home = Home(tmp_path / "home")
    store = Store(home)
    store.write_campaign("night-1", {"dataset": "synth", "policies": ["random"], "budget": 20})
    store.append("night-1", make_rows(space, 20, seed=1), space)
    store.append("night-1", make_rows(space, 5, seed=1), space)  # re-appended: shown once
    store.append("other", make_rows(space, 4, prefix="o"), space)
    return home


def test_import_crashsearch_is_light():
    code = ("import sys, crashsearch as cs; assert callable(cs.open_home); "
            "print(sorted(m for m in ('duckdb', 'pandas', 'torch', 'prefect', 'numpy') if m in sys.modules))")
    # touching cs.open_home loads the API (duckdb, pandas, numpy), never torch or Prefect
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch" not in out.stdout and "prefect" not in out.stdout
    bare = subprocess.run([sys.executable, "-c", "import sys, crashsearch; print(sorted(m for m in "
                           "('duckdb', 'pandas', 'torch', 'prefect', 'numpy') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert bare.stdout.strip() == "[]", bare.stdout


def test_history_leaderboard_and_campaigns_match_the_store(home):
    lab = cs.open_home(home.root)
    store = Store(home)
    rel = lab.history()
    assert rel.aggregate("count(*)").fetchall() == [(24,)]
    frame = lab.history_df("night-1")
    expected = store.experiments("night-1")
    assert list(frame["experiment_id"]) == list(expected["experiment_id"]) and len(frame) == 20
    assert lab.sql("SELECT count(*) AS n FROM experiments WHERE campaign = ?", ["other"]).fetchall() == [(4,)]
    pd.testing.assert_frame_equal(lab.leaderboard("night-1", k=5), store.leaderboard("night-1", k=5))
    assert list(lab.campaigns()["id"]) == ["night-1", "other"]
    # the relation follows the log: rows appended later show up when it runs again
    store.append("other", make_rows(Space.load(), 2, prefix="p"), Space.load())
    assert rel.aggregate("count(*)").fetchall() == [(26,)]
    lab.close()


def test_analyze_writes_the_report_and_numbers_reads_it(home):
    lab = cs.open_home(home.root)
    with pytest.raises(ValueError, match=r"no report yet: run home.analyze\('night-1'\)"):
        lab.numbers("night-1")
    result = lab.analyze("night-1")
    numbers = lab.numbers("night-1")
    assert numbers == json.loads(open(result["numbers_path"]).read())
    assert numbers["headline"]["best_val_ap"] == pytest.approx(Store(home).experiments("night-1")["val_ap"].max())
    (home.campaigns / "night-1" / "report" / "numbers.json").write_text("{broken")
    with pytest.raises(ValueError, match="damaged"):
        lab.numbers("night-1")


def test_mistakes_get_one_clear_line(home, tmp_path):
    lab = cs.open_home(home.root)
    for call in (lambda: lab.history("nigth-1"), lambda: lab.leaderboard("nigth-1"), lambda: lab.numbers("nigth-1"),
                 lambda: lab.analyze("nigth-1")):
        with pytest.raises(ValueError, match=r"campaign 'nigth-1' has no experiments under .*\(campaigns: night-1, other\)"):
            call()
    with pytest.raises(ValueError, match="read-only"):
        lab.sql("DROP VIEW experiments")
    with pytest.raises(ValueError, match="no such folder"):
        cs.open_home(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()  # a typo never creates an empty home
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        cs.open_home(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not a crashsearch home"):
        cs.open_home(tmp_path)


def test_an_empty_home_has_empty_typed_history_and_reading_creates_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    lab = cs.open_home(tmp_path / "empty")
    frame = lab.history_df()
    assert frame.empty and "val_ap" in frame.columns
    assert lab.campaigns().empty and lab.leaderboard().empty
    with pytest.raises(ValueError, match=r"campaign 'x' has no experiments under .*\(campaigns: none\)"):
        lab.history("x")
    assert list((tmp_path / "empty").iterdir()) == []
