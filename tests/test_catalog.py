"""history.duckdb: views any DuckDB client opens read-only, equal to what ``crashsearch query`` sees."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import crashsearch.lab._io as io_module
from crashsearch.lab import catalog
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import declare_bugfix
from test_store import log_dir, make_rows

REPO = Path(__file__).resolve().parent.parent
VIEWS = ("experiments", "campaigns", "bugfix_events")


def read_only(home: Home) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(home.root / "history.duckdb"), read_only=True)


def frame(con_or_store, view: str) -> pd.DataFrame:
    """A view's rows in a fixed order, timestamps as UTC (the two connections name UTC differently)."""
    order = {"experiments": "campaign, experiment_id", "campaigns": "id", "bugfix_events": "declared_at, id"}[view]
    sql = f"SELECT * EXCLUDE (info) FROM {view} ORDER BY {order}" if view == "campaigns" else f"SELECT * FROM {view} ORDER BY {order}"
    df = con_or_store.query(sql) if isinstance(con_or_store, Store) else con_or_store.execute(sql).df()
    for column in df.columns:
        if isinstance(df[column].dtype, pd.DatetimeTZDtype):
            df[column] = df[column].dt.tz_convert("UTC")
    return df.reset_index(drop=True)


def assert_same_as_store(home: Home) -> None:
    store = Store(home)
    con = read_only(home)
    try:
        for view in VIEWS:
            pd.testing.assert_frame_equal(frame(con, view), frame(store, view), check_dtype=False)
    finally:
        con.close()


def test_the_first_write_creates_it_and_views_match_the_store_through_compactions(home, space, monkeypatch):
    store = Store(home)
    assert catalog.ensure(home) is None and not (home.root / "history.duckdb").exists()  # empty home: nothing yet
    store.write_campaign("c1", {"dataset": "synth", "policies": ["random", "tpe"], "budget": 10})
    store.append("c1", make_rows(space, 6), space)
    assert (home.root / "history.duckdb").exists()
    store.append("c1", make_rows(space, 3), space)  # re-appended e0..e2: shown once
    store.append("c2", make_rows(space, 4, prefix="x"), space)  # a campaign without campaign.json
    (home.campaign("c3")).joinpath("campaign.json").write_text("{not json")  # damaged: counts as empty
    store.append("c3", make_rows(space, 2, prefix="y"), space)
    assert_same_as_store(home)

    store.compact("c1")
    store.append("c1", make_rows(space, 5, seed=3, start=4), space)  # e4, e5 again, after the base
    declare_bugfix(home, "fixed the mask")
    declare_bugfix(home, "fixed c1's split", campaign="c1", at="2025-01-01T00:03:00Z")  # a time, one campaign
    with open(home.root / "bugfix_events.jsonl", "a") as fh:
        fh.write('{"id": "bad", "note": "x", "declared_at": "2025-01-02T00:00:00Z", "at": "not a time"}\nnot json\n')
    assert_same_as_store(home)

    # a compaction that died between its rename and the unlinks: replaced files stay on disk
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    store.compact("c1")
    monkeypatch.undo()
    assert len(store.generations("c1").replaced) > 0
    assert_same_as_store(home)
    store.compact("c2", full=False)  # a minor merge is recent, not a base
    assert_same_as_store(home)
    con = read_only(home)
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(6 + 3 + 4 + 2,)]  # e0..e8, x0..x3, y0, y1
    assert sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()) == sorted(VIEWS)
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]  # views only
    assert con.execute("SELECT count(*), count(version), count(\"at\"), count(campaign) FROM bugfix_events").fetchall() == [(2, 1, 1, 1)]
    con.close()


def test_an_open_read_only_connection_sees_new_rows_campaigns_and_columns(home, space, tmp_path):
    store = Store(home)
    store.append("c1", make_rows(space, 3), space)
    con = read_only(home)  # opened once, kept open (a notebook)
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(3,)]
    store.append("c1", make_rows(space, 4, start=3), space)
    other = Space.load(_small_space(tmp_path))
    store.append("c9", [{"experiment_id": "z0", "cell_id": 0, "status": "ok", "val_ap": 0.5}], other)
    store.compact("c1")
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(8,)]
    assert con.execute("SELECT count(*) FROM campaigns").fetchall() == [(2,)]
    assert "knob" in [r[0] for r in con.execute("DESCRIBE experiments").fetchall()]  # the other space's axis
    con.close()


def _small_space(tmp_path: Path) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text("name: other\ngroups:\n  train:\n    knob: [a, b]\nfixed: {}\n")
    return path


def test_a_damaged_file_is_named_and_check_repair_clears_it(home, space, capsys):
    from crashsearch.flows.cli import main as cli

    store = Store(home)
    store.append("c1", make_rows(space, 3), space)
    damaged = log_dir(store, "c1") / "part-20990101T000000.000000Z-dead.parquet"
    damaged.write_bytes(b"PAR1 not parquet")
    con = read_only(home)
    with pytest.raises(duckdb.Error, match=damaged.name):
        con.execute("SELECT count(*) FROM experiments").fetchall()
    assert cli(["check", "--home", str(home.root), "--repair"]) in (0, 1)
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(3,)]  # the same open connection
    con.close()


def test_a_relative_home_path_is_stored_absolute(space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Store(Home(Path("rel-home"))).append("c1", make_rows(space, 2), space)
    monkeypatch.chdir(REPO)  # a reader elsewhere
    assert catalog.built_for(tmp_path / "rel-home" / "history.duckdb")["root"] == str(tmp_path / "rel-home")
    con = duckdb.connect(str(tmp_path / "rel-home" / "history.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(2,)]
    con.close()


def test_a_catalog_of_an_older_version_is_rebuilt_by_the_next_write(home, space, monkeypatch):
    store = Store(home)
    store.append("c1", make_rows(space, 2), space)
    path = home.root / "history.duckdb"
    monkeypatch.setattr(catalog, "CATALOG_VERSION", catalog.CATALOG_VERSION + 1)  # a newer crashsearch
    catalog._ensured.clear()  # a new process
    store.append("c1", make_rows(space, 2, start=2), space)
    assert catalog.built_for(path)["version"] == catalog.CATALOG_VERSION


def test_a_moved_home_is_rebuilt_by_ensure(home, space, tmp_path):
    Store(home).append("c1", make_rows(space, 3), space)
    moved = Home(tmp_path / "moved")
    shutil.move(str(home.root), moved.root)
    assert catalog.built_for(moved.root / "history.duckdb")["root"] == str(home.root)  # still the old path
    catalog._ensured.clear()  # a writer process (a worker that mounts a shared home elsewhere)...
    Store(moved).append("c1", make_rows(space, 1, prefix="w"), space)
    assert catalog.built_for(moved.root / "history.duckdb")["root"] == str(home.root)  # ...leaves it alone
    assert catalog.ensure(moved) == moved.root / "history.duckdb"
    assert catalog.built_for(moved.root / "history.duckdb") == {"root": str(moved.root), "version": catalog.CATALOG_VERSION}
    con = read_only(moved)
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(4,)]
    con.close()


def test_a_failed_build_never_fails_the_write_nor_leaves_a_file(home, space, monkeypatch):
    real_replace = os.replace

    def full_disk_for_the_catalog(src, dst):
        if "history.duckdb" in str(dst):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_the_catalog)
    Store(home).append("c1", make_rows(space, 2), space)  # the rows are written all the same
    monkeypatch.undo()
    assert len(Store(home).experiments("c1")) == 2
    assert not (home.root / "history.duckdb").exists()
    assert [p.name for p in home.root.iterdir() if p.name.startswith(".")] == []  # no temp files left
    Store(home).append("c1", make_rows(space, 2, start=2), space)  # the next write builds it
    assert_same_as_store(home)


READER = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM experiments").fetchall()[0][0], flush=True)
time.sleep(float(sys.argv[2]))
print(con.execute("SELECT count(*) FROM experiments").fetchall()[0][0], flush=True)
"""


def test_readers_holding_the_file_open_never_block_a_writer_or_a_rebuild(home, space):
    store = Store(home)
    store.append("c1", make_rows(space, 3), space)
    path = home.root / "history.duckdb"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), "4"], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "3"  # it holds the file open (a shared lock) from here
    start = time.monotonic()
    store.append("c1", make_rows(space, 2, start=3), space)
    assert catalog.build(home) == path  # a rebuild renames a new file over the open one
    assert time.monotonic() - start < 3
    assert reader.stdout.readline().strip() == "5"  # the old file's views still read the live log
    assert reader.wait(timeout=30) == 0
    assert_same_as_store(home)


def test_the_duckdb_cli_opens_it_read_only(home, space):
    cli = shutil.which("duckdb") or str(Path(sys.executable).parent / "duckdb")
    if not os.path.exists(cli):
        pytest.skip("the duckdb CLI is not installed (pip install duckdb-cli)")
    Store(home).append("c1", make_rows(space, 4), space)
    out = subprocess.run([cli, "-readonly", "-csv", str(home.root / "history.duckdb"), "-c",
                          "SELECT count(*) AS n FROM experiments"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", "4"]


def test_catalog_command_builds_and_says_how_to_open_it(home, space, capsys):
    from crashsearch.flows.cli import main as cli

    assert cli(["catalog", "--home", str(home.root / "typo")]) == 2  # a wrong folder is not an empty home
    assert "no crashsearch home" in capsys.readouterr().err and not (home.root / "typo").exists()  # creates no folder
    home.root.mkdir(parents=True, exist_ok=True)
    assert cli(["catalog", "--home", str(home.root)]) == 0
    assert "no experiments" in capsys.readouterr().out
    Store(home).append("c1", make_rows(space, 1), space)
    (home.root / "history.duckdb").unlink()
    assert cli(["catalog", "--home", str(home.root)]) == 0
    assert "duckdb -readonly" in capsys.readouterr().out and (home.root / "history.duckdb").exists()


CAMPAIGN_SPACE = """
name: tiny
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce]
  train:
    lr: [0.001, 0.003, 0.01, 0.03]
    batch_size: [16, 32, 64]
  data:
    window_s: [1.0]
    augment: [none]
fixed:
  epochs: 60  # slow enough that the reader sees the log grow, even on an idle machine
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0]
"""


@pytest.mark.slow
def test_a_separate_connection_during_a_campaign_counts_what_crashsearch_query_counts(synth_dataset, tmp_path):
    from crashsearch.tasks.extract import extract_dataset
    from crashsearch.lab.settings import resolve_home

    home = resolve_home(tmp_path / "home")
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space = tmp_path / "tiny.yaml"
    space.write_text(CAMPAIGN_SPACE)
    cmd = [sys.executable, "-m", "crashsearch", "campaign", "--home", str(home.root), "--dataset", str(synth_dataset.root),
           "--space", str(space), "--campaign", "live", "--budget", "20", "--round-size", "2", "--seeds", "1",
           "--policies", "random", "--propose-mode", "turns"]  # strict rounds: 10 batches of 2, recorded one by one
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    campaign = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def query_count() -> int:
        out = subprocess.run([sys.executable, "-m", "crashsearch", "query", "--home", str(home.root),
                              "SELECT count(*) AS n FROM experiments"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[1])

    path = home.root / "history.duckdb"
    seen_during = []
    deadline = time.monotonic() + 600
    while campaign.poll() is None and time.monotonic() < deadline:
        if path.exists():
            con = duckdb.connect(str(path), read_only=True)  # a separate connection, kept open meanwhile
            before = con.execute("SELECT count(*) FROM experiments").fetchall()[0][0]
            cli_count = query_count()
            after = con.execute("SELECT count(*) FROM experiments").fetchall()[0][0]
            con.close()
            assert before <= cli_count <= after  # rows only arrive; both read the same rows
            seen_during.append((before, cli_count, after))
        time.sleep(0.5)
    assert campaign.wait(timeout=60) == 0, campaign.stderr.read()
    assert any(0 < b < 20 for b, _, _ in seen_during), seen_during  # really read while it ran
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT experiment_id) FROM experiments").fetchall() == [(20, 20)]
    con.close()
    assert query_count() == 20
    assert_same_as_store(home)
