"""Code versions, bug-fix events and history segmentation."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from crashsearch.flows.cli import main as cli
from crashsearch.lab import versions
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, code_version, declare_bugfix, post_bugfix, segment, source_hash

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


def test_code_version_of_this_repo():
    version = code_version()
    assert re.fullmatch(r"([0-9a-f]{4,40}|nogit)\+[0-9a-f]{12}", version), version
    assert code_version() is version  # cached per process
    assert version.endswith(source_hash(REPO))


def test_source_hash_follows_the_code_and_nothing_else(tmp_path):
    for folder in ("models", "tasks", "lab"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text(f"X = '{folder}'\n")
    first = source_hash(tmp_path)
    (tmp_path / "lab" / "notes.md").write_text("not code")
    (tmp_path / "lab" / "__pycache__").mkdir()
    (tmp_path / "lab" / "__pycache__" / "a.py").write_text("stale")
    (tmp_path / "analysis.py").write_text("outside the hashed folders")
    assert source_hash(tmp_path) == first
    (tmp_path / "models" / "a.py").write_text("X = 'changed'\n")
    assert source_hash(tmp_path) != first
    (tmp_path / "models" / "a.py").write_text("X = 'models'\n")
    (tmp_path / "models" / "a.py").rename(tmp_path / "models" / "b.py")
    assert source_hash(tmp_path) != first  # moving code is a change too
    assert code_version(tmp_path).startswith("nogit+")


def test_declare_and_read_events(home):
    first = declare_bugfix(home, "  focal loss\nignored gamma  ", version="abc+123")
    second = declare_bugfix(home, "mamba scan off by one")
    assert first["note"] == "focal loss ignored gamma"  # one line
    assert first["version"] == "abc+123" and second["version"] == code_version()
    events = bugfix_events(home)
    assert [e["id"] for e in events] == [first["id"], second["id"]]
    assert all(e["declared_at"].tzinfo is not None for e in events)
    with pytest.raises(ValueError, match="note"):
        declare_bugfix(home, "   ")


def test_malformed_event_lines_are_skipped(home):
    declare_bugfix(home, "one")
    with open(home.root / versions.EVENTS_FILE, "a") as f:
        f.write("{not json\n\n" + json.dumps({"id": "x", "note": "no time"}) + "\n")
    declare_bugfix(home, "two")
    assert [e["note"] for e in bugfix_events(home)] == ["one", "two"]


def test_concurrent_declarations_never_interleave(home):
    script = (
        "import sys; from pathlib import Path; from lab.settings import Home; from lab.versions import declare_bugfix\n"
        "home = Home(Path(sys.argv[1]))\n"
        "for i in range(25): declare_bugfix(home, sys.argv[2] + ' ' + 'x' * 2000, version='v')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(home.root), f"p{k}"], cwd=REPO) for k in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = (home.root / versions.EVENTS_FILE).read_text().splitlines()
    assert len(lines) == 75 and all(json.loads(line)["version"] == "v" for line in lines)
    assert len(bugfix_events(home)) == 75


def test_segment_and_post_bugfix():
    events = [{"declared_at": T0 + timedelta(hours=2)}, {"declared_at": T0}]  # any order
    finished = [T0 - timedelta(minutes=1), T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2, seconds=1), None]
    df = pd.DataFrame({"experiment_id": list("abcde"), "finished_at": pd.to_datetime(finished, utc=True)}, index=[5, 6, 7, 8, 9])
    seg = segment(df, events)
    assert list(seg.index) == [5, 6, 7, 8, 9]
    assert list(seg) == [0, 1, 1, 2, 0]  # equal time counts as after; no time counts as before
    assert list(post_bugfix(df, events)["experiment_id"]) == ["d"]
    assert post_bugfix(df, []) is df
    assert list(segment(df, [])) == [0] * 5
    with pytest.raises(ValueError, match="finished_at"):
        segment(df.drop(columns=["finished_at"]), events)


def test_segmenting_a_stored_history(home):
    space = Space.load()
    store = Store(home)
    cells = space.sample(__import__("random").Random(0), 4)
    store.append("c1", [{"experiment_id": f"a{i}", "cell_id": c.id, "status": "ok", "val_ap": 0.5} for i, c in enumerate(cells[:2])], space)
    event = declare_bugfix(home, "fixed the mask")
    store.append("c1", [{"experiment_id": f"b{i}", "cell_id": c.id, "status": "ok", "val_ap": 0.6} for i, c in enumerate(cells[2:])], space)
    frame = store.experiments("c1")
    events = bugfix_events(home)
    assert list(segment(frame, events)) == [0, 0, 1, 1]
    assert list(post_bugfix(frame, events)["experiment_id"]) == ["b0", "b1"]
    view = store.query("SELECT id, version, note FROM bugfix_events")
    assert view.to_dict("records") == [{"id": event["id"], "version": event["version"], "note": "fixed the mask"}]
    after = store.query("SELECT count(*) AS n FROM experiments WHERE finished_at >= (SELECT max(declared_at) FROM bugfix_events)")
    assert after["n"][0] == 2


def test_cli_bugfix(home, capsys):
    assert cli(["bugfix", "--home", str(home.root), "--note", "fixed the focal loss"]) == 0
    assert "declared bug-fix event" in capsys.readouterr().out
    assert [e["note"] for e in bugfix_events(home)] == ["fixed the focal loss"]
    assert cli(["bugfix", "--home", str(home.root), "--note", " "]) == 2
    assert "note" in capsys.readouterr().err
