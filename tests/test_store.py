"""History store: atomic appends, concurrent readers, import/export, compaction, leaderboard, CLI."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

import crashsearch.lab._io as io_module  # the atomic writer: its os.replace is where a crash is simulated
import crashsearch.lab.store as store_module
from crashsearch.lab.exchange import export, import_log
from crashsearch.flows.cli import main as cli
from crashsearch.lab.schema import BASE_COLUMNS
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store, check_read_only

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make_rows(space: Space, n: int, seed: int = 0, prefix: str = "e", start: int = 0) -> list[dict]:
    """n ok rows on random cells, finished one minute apart."""
    rng = random.Random(seed)
    return [
        {
            "experiment_id": f"{prefix}{start + i}",
            "cell_id": cell.id,
            "status": "ok",
            "val_ap": rng.random(),
            "test_ap": rng.random(),
            "seed": i,
            "finished_at": T0 + timedelta(minutes=start + i),
        }
        for i, cell in enumerate(space.sample(rng, n))
    ]


def as_dicts(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with every kind of missing value as None (DuckDB and Arrow differ there)."""
    frame = frame.reset_index(drop=True).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def log_dir(store: Store, campaign: str) -> Path:
    """The log folder of a campaign in a folder home (made if missing): where tests damage files by hand."""
    path = store.home.root / "campaigns" / campaign / "log"
    path.mkdir(parents=True, exist_ok=True)
    return path


def visible(store: Store, campaign: str) -> list[str]:
    return sorted(p.name for p in log_dir(store, campaign).iterdir())


# ---- appending ----------------------------------------------------------------------------------

def test_append_writes_one_complete_file_and_nothing_else(store, space):
    path = store.append("c1", make_rows(space, 4), space)
    assert visible(store, "c1") == [path.name]
    assert path.name.startswith("part-") and path.suffix == ".parquet"
    table = pq.read_table(path)
    assert table.num_rows == 4
    assert table.schema.names[: len(BASE_COLUMNS)] == BASE_COLUMNS


def test_missing_optional_columns_are_null_and_axes_come_from_cell_id(store, space):
    cell = space.cell(12345)
    store.append("c1", [{"experiment_id": "x", "cell_id": cell.id, "status": "failed",
                         "error_class": "OOMError", "finished_at": T0}], space)
    row = store.experiments("c1").iloc[0]
    assert row["campaign"] == "c1" and row["space"] == space.name
    assert pd.isna(row["val_ap"]) and pd.isna(row["seed"]) and row["rationale"] is None
    assert all(row[a] == cell[a] for a in space.axis_names)
    assert row["arch_group"] == cell.arch_group


@pytest.mark.parametrize("change, column", [
    ({"experiment_id": None}, "experiment_id"),
    ({"status": "done"}, "status"),
    ({"val_ap": "high"}, "val_ap"),
    ({"seed": 1.5}, "seed"),
    ({"unknown_column": 1}, "unknown_column"),
    ({"backbone": "no_such_backbone"}, "backbone"),
    ({"campaign": "other"}, "campaign"),
    ({"finished_at": datetime(2025, 1, 1)}, "finished_at"),  # naive: ambiguous
    ({"cell_id": 10 ** 9}, "cell_id"),
])
def test_append_rejects_a_bad_row_naming_row_and_column(store, space, change, column):
    rows = make_rows(space, 3)
    rows[2].update(change)
    with pytest.raises(ValueError) as info:
        store.append("c1", rows, space)
    message = str(info.value)
    assert "row 2" in message and column in message and "\n" not in message
    assert visible(store, "c1") == []  # nothing of the batch was written


def test_bulk_append_table_checks_columns(store, space):
    import pyarrow as pa

    table = pa.Table.from_pylist(make_rows(space, 5))
    store.append_table("c1", table, space)  # the campaign column is filled in
    assert len(store.experiments()) == 5
    bad = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["ok"] * 4 + ["nope"]))
    with pytest.raises(ValueError, match="row 4 column status"):
        store.append_table("c1", bad, space)
    with pytest.raises(ValueError, match="column experiment_id"):
        store.append_table("c1", pa.concat_tables([table, table.slice(0, 1)]), space)
    with pytest.raises(ValueError, match="row 0 column campaign"):
        store.append_table("c1", table.append_column("campaign", pa.array(["c2"] * 5)), space)


def test_crash_before_rename_leaves_no_visible_rows(store, space, monkeypatch):
    store.append("c1", make_rows(space, 2), space)

    def crash(*args):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(io_module.os, "replace", crash)
    with pytest.raises(OSError):
        store.append("c1", make_rows(space, 3, start=10), space)
    monkeypatch.undo()
    assert len(visible(store, "c1")) == 1  # the in-process failure also cleans its temp file
    assert len(store.experiments("c1")) == 2


def test_killed_writer_leaves_only_a_hidden_temp_file(store, space, home):
    # a writer process killed between fsync and rename: its temp file stays, readers never see it
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from datetime import datetime, timezone
        import crashsearch.lab._io
        import crashsearch.lab.store as s
        from crashsearch.lab.settings import Home
        from crashsearch.lab.space import Space
        space = Space.load()
        crashsearch.lab._io.os.replace = lambda *a: os._exit(9)
        cell = space.cell(7)
        s.Store(Home(Path({str(home.root)!r}))).append("c1", [{{"experiment_id": "lost", "cell_id": 7,
            "status": "ok", "val_ap": 0.5}}], space)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    names = visible(store, "c1")
    assert len(names) == 1 and names[0].startswith(".part-") and names[0].endswith(".tmp")
    assert store.query("SELECT count(*) AS n FROM experiments")["n"][0] == 0
    # compaction sweeps temp files whose writer is long dead
    old = time.time() - 2 * store_module.STALE_TEMP_SECONDS
    os.utime(log_dir(store, "c1") / names[0], (old, old))
    store.compact("c1")
    assert visible(store, "c1") == []


def test_experiments_view_dedupes_reappended_rows(store, space):
    rows = make_rows(space, 5)
    store.append("c1", rows, space)
    store.append("c1", rows[:3], space)  # a campaign re-appending after a crash
    frame = store.experiments("c1")
    assert len(frame) == 5 and frame["experiment_id"].is_unique
    assert list(frame["experiment_id"]) == [r["experiment_id"] for r in rows]  # ordered by finished_at


def test_empty_home_has_typed_empty_views(store):
    con = store.connect()
    columns = [r[0] for r in con.execute("DESCRIBE experiments").fetchall()]
    assert columns == BASE_COLUMNS
    for view in ("experiments", "campaigns", "bugfix_events"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0
    assert store.leaderboard().empty
    assert store.experiments().empty


def test_campaigns_view_reads_campaign_json(store, space):
    store.write_campaign("c1", {"dataset": "synth-day", "policies": ["evolution", "tpe"], "budget": 60, "status": "running"})
    first = json.loads((store.home.campaigns / "c1" / "campaign.json").read_text())
    store.write_campaign("c1", {"status": "done"})
    info = store.campaigns()[0]
    assert info["status"] == "done" and info["budget"] == 60 and info["created_at"] == first["created_at"]
    frame = store.query("SELECT id, dataset, policies, budget, status FROM campaigns")
    assert frame.to_dict("records") == [{"id": "c1", "dataset": "synth-day", "policies": "evolution,tpe",
                                         "budget": 60, "status": "done"}]


def test_bad_campaign_ids_are_refused(store, space):
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="campaign id"):
            store.append(bad, make_rows(space, 1), space)


# ---- queries ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO 'x.csv'",
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO experiments SELECT * FROM experiments",
    "DROP VIEW experiments",
    "SELECT 1; DROP VIEW experiments",
    "ATTACH 'other.db'",
    "SET threads = 1",
    "PRAGMA version",
    "INSTALL httpfs",
    "not sql at all",
])
def test_query_rejects_anything_but_a_read(store, sql):
    with pytest.raises(ValueError) as info:
        store.query(sql)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sql", ["SELECT 1 AS x", "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
                                 "DESCRIBE experiments", "SHOW TABLES", "FROM experiments"])
def test_query_accepts_reads(sql):
    check_read_only(sql)


def test_leaderboard_matches_a_direct_computation(store, space):
    rng = np.random.default_rng(3)
    cells = space.sample(random.Random(3), 4)
    replicates = {cells[0].id: 5, cells[1].id: 3, cells[2].id: 1, cells[3].id: 2}
    rows, expected = [], {}
    for cell in cells:
        values = rng.uniform(0.5, 0.9, replicates[cell.id])
        tests = rng.uniform(0.4, 0.8, replicates[cell.id])
        expected[cell.id] = (values, tests)
        for r, (v, t) in enumerate(zip(values, tests)):
            rows.append({"experiment_id": f"{cell.id}-{r}", "cell_id": cell.id, "status": "ok" if r else "healed",
                         "val_ap": float(v), "test_ap": float(t), "replicate": r})
    # failed and invalid rows never count, whatever their numbers
    rows.append({"experiment_id": "f", "cell_id": cells[2].id, "status": "failed", "val_ap": 1.0})
    rows.append({"experiment_id": "i", "cell_id": cells[2].id, "status": "invalid", "val_ap": 1.0})
    store.append("c1", rows, space)

    board = store.leaderboard("c1", k=10)
    assert len(board) == 4
    assert list(board["mean_val_ap"]) == sorted(board["mean_val_ap"], reverse=True)
    for _, row in board.iterrows():
        values, tests = expected[row["cell_id"]]
        assert row["n"] == len(values)
        assert row["mean_val_ap"] == pytest.approx(values.mean())
        assert row["best_test_ap"] == pytest.approx(tests.max())
        assert all(row[a] == space.cell(row["cell_id"])[a] for a in space.axis_names)
        if len(values) > 1:
            low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
            low, high = max(low, 0.0), min(high, 1.0)  # AP lives in [0, 1]
            assert row["std_val_ap"] == pytest.approx(values.std(ddof=1))
            assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        else:
            assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert list(board.columns)[-1] == "best_test_ap"
    assert len(store.leaderboard("c1", k=2)) == 2
    assert set(store.leaderboard("c1", min_replicates=3)["cell_id"]) == {cells[0].id, cells[1].id}


# ---- import / export ----------------------------------------------------------------------------

def test_import_csv_skips_bad_rows_and_round_trips_through_export(store, space, tmp_path):
    cells = space.sample(random.Random(5), 4)
    records = [{**c.to_dict(), "val_ap": 0.5 + i / 10, "seed": i, "finished_at": f"2025-02-0{i + 1} 10:00:00"}
               for i, c in enumerate(cells)]
    records.insert(2, {**cells[0].to_dict(), "lr": 0.5, "val_ap": 0.7})  # not a value of the lr axis
    records.insert(4, {**cells[1].to_dict(), "val_ap": "abc"})  # not a number
    frame = pd.DataFrame(records)
    frame["notes"] = "x"  # an unknown column: reported once, ignored
    csv = tmp_path / "external.csv"
    frame.to_csv(csv, index=False)

    errors: list[str] = []
    assert import_log(store, csv, "ext", space, on_error=errors.append).new == 4
    assert len(errors) == 3
    assert "notes" in errors[0]
    assert "line 4" in errors[1] and "lr" in errors[1]
    assert "line 6" in errors[2] and "val_ap" in errors[2]
    assert all("\n" not in e for e in errors)
    # importing the same file again adds nothing (ids are derived from the rows)
    again = import_log(store, csv, "ext", space, on_error=lambda line: None)
    assert (again.new, again.already) == (0, 4)
    imported = store.experiments("ext")
    assert len(imported) == 4
    assert list(imported["cell_id"]) == [c.id for c in cells]
    assert set(imported["proposer"]) == {"import"} and set(imported["status"]) == {"ok"}
    assert store.campaigns()[0]["status"] == "imported"

    out = export(store, "ext", tmp_path / "export" / "ext.parquet")
    exported = pq.read_table(out)
    assert exported.schema.names[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert exported.num_rows == 4
    assert as_dicts(exported.to_pandas()) == as_dicts(imported)

    # the export is itself an importable log (cell_id, no axis columns needed)
    assert import_log(store, out, "ext2", space).new == 4
    again = store.experiments("ext2")
    assert set(again["campaign"]) == {"ext2"}
    assert as_dicts(again.drop(columns=["campaign"])) == as_dicts(imported.drop(columns=["campaign"]))


def test_import_needs_val_ap_and_a_cell(store, space, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"seed": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="val_ap"):
        import_log(store, bad, "x", space)
    pd.DataFrame({"val_ap": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="cell_id"):
        import_log(store, bad, "x", space)
    with pytest.raises(ValueError, match="no such file"):
        import_log(store, tmp_path / "missing.csv", "x", space)


# ---- compaction ---------------------------------------------------------------------------------

def test_compaction_loses_and_duplicates_nothing(store, space):
    for batch in range(6):
        store.append("c1", make_rows(space, 7, seed=batch, start=batch * 7), space)
    store.append("c2", make_rows(space, 3, prefix="other"), space)
    before = store.experiments("c1")
    assert store.compact("c1") == (6, 42)
    assert len(store.log_files("c1")) == 1 and len(store.log_files("c2")) == 1
    pd.testing.assert_frame_equal(store.experiments("c1"), before)
    assert store.compact("c1") == (0, 0)
    assert len(store.experiments()) == 45


def test_readers_see_each_row_once_between_rename_and_unlink(store, space, monkeypatch):
    for batch in range(3):
        store.append("c1", make_rows(space, 5, seed=batch, start=batch * 5), space)
    seen = []
    real_unlink = Path.unlink

    def observe_then_unlink(path, *args, **kwargs):
        # the merged file is already in place; the originals are still there
        seen.append(store.query("SELECT count(*) AS n, count(DISTINCT experiment_id) AS d FROM experiments").iloc[0].tolist())
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", observe_then_unlink)
    store.compact("c1")
    assert seen and all(s == [15, 15] for s in seen)


def test_compaction_interrupted_before_unlink_is_finished_by_the_next_one(store, space, monkeypatch):
    for batch in range(3):
        store.append("c1", make_rows(space, 4, seed=batch, start=batch * 4), space)

    def crash(path, *args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the rename, before removing originals

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        store.compact("c1")
    monkeypatch.undo()
    assert len(store.log_files("c1")) == 4  # three originals and the merged copy
    assert len(store.generations("c1").replaced) == 3  # readers skip the originals
    assert len(store.experiments("c1")) == 12
    assert store.compact("c1") == (0, 0)  # nothing left to merge: it only removes the leftovers
    assert len(store.log_files("c1")) == 1 and len(store.experiments("c1")) == 12


def test_rows_reappended_after_compaction_show_once(store, space):
    rows = make_rows(space, 6)
    store.append("c1", rows[:3], space)
    store.append("c1", rows[3:], space)
    store.compact("c1")
    changed = [{**r, "val_ap": 0.0} for r in rows[1:3]]  # a re-append may even differ: the first copy wins
    store.append("c1", changed + make_rows(space, 2, seed=7, start=100), space)
    store.append("c1", changed[:1], space)
    frame = store.experiments("c1")
    assert len(frame) == 8 and frame["experiment_id"].is_unique
    assert (frame.set_index("experiment_id").loc[[r["experiment_id"] for r in rows], "val_ap"]
            == [r["val_ap"] for r in rows]).all()
    store.compact("c1")
    pd.testing.assert_frame_equal(store.experiments("c1"), frame)


def test_two_compactions_at_once_and_interrupted_chains_never_duplicate(store, space, monkeypatch):
    for batch in range(3):
        store.append("c1", make_rows(space, 4, seed=batch, start=batch * 4), space)
    # two compactors list the same files and both rename their merged copy into place
    gens = store.generations("c1")
    for _ in range(2):
        store._write("c1", store._merged(gens), replaces=[f.name for f in gens.live])
    assert len(store.generations("c1").live) == 2 and len(store.experiments("c1")) == 12
    # a compaction that dies before unlinking, twice in a row, with an append in between
    monkeypatch.setattr(Path, "unlink", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.compact("c1")
    store.append("c1", make_rows(space, 2, seed=9, start=50), space)
    with pytest.raises(KeyboardInterrupt):
        store.compact("c1")
    monkeypatch.undo()
    assert len(store.log_files("c1")) == 8
    assert len(store.generations("c1").live) == 1
    frame = store.experiments("c1")
    assert len(frame) == 14 and frame["experiment_id"].is_unique
    assert store.compact("c1") == (0, 0)
    assert len(store.log_files("c1")) == 1
    pd.testing.assert_frame_equal(store.experiments("c1"), frame)


def test_append_merges_recent_files_without_touching_the_base(store, space, monkeypatch):
    monkeypatch.setattr(store_module, "MINOR_COMPACT_FILES", 4)
    first = make_rows(space, 6)
    store.append("c1", first[:3], space)
    store.append("c1", first[3:], space)
    store.compact("c1")
    base = store.generations("c1").bases
    for batch in range(1, 11):
        store.append("c1", make_rows(space, 2, seed=batch, start=10 * batch), space)
        assert len(store.log_files("c1")) <= 4
    store.append("c1", first[:2], space)  # re-appended ids of the base stay hidden after minor merges
    store.append("c1", make_rows(space, 2, seed=99, start=500), space)
    gens = store.generations("c1")
    assert gens.bases == base and any(f.name.endswith(store_module.MINOR_SUFFIX) for f in gens.recent)
    frame = store.experiments("c1")
    assert len(frame) == 28 and frame["experiment_id"].is_unique
    assert len(gens.recent) == 2  # the last minor merge (which took the re-append) and one new file
    assert store.compact("c1", full=False)[0] == len(gens.recent)
    after = store.generations("c1")
    assert after.bases == base and len(after.recent) == 1
    pd.testing.assert_frame_equal(store.experiments("c1"), frame)
    assert store.compact("c1")[1] == 28 and len(store.log_files("c1")) == 1
    pd.testing.assert_frame_equal(store.experiments("c1"), frame)


READER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store
    store = Store(resolve_home(sys.argv[1], create=False))  # a folder or an s3:// URL
    stop, deadline = Path(sys.argv[2]), time.time() + float(sys.argv[3])
    counts, errors = [], []
    while time.time() < deadline and (not stop.exists() or len(counts) < 3):
        try:
            n, d = store.query("SELECT count(*), count(DISTINCT experiment_id) FROM experiments").iloc[0].tolist()
            counts.append([int(n), int(d)])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        if stop.exists() and len(counts) >= 3:
            break
    print(json.dumps({"counts": counts, "errors": errors}))
""")


def _start_reader(home: Home, stop: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, home.location, str(stop), str(seconds)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reader_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_reader_process_queries_while_a_writer_process_appends(store, space, home, tmp_path):
    store.append("c1", make_rows(space, 1, prefix="seed"), space)  # the reader starts on a non-empty home
    writer = textwrap.dedent(f"""
        import random, time
        from pathlib import Path
        from crashsearch.lab.settings import Home
        from crashsearch.lab.space import Space
        import crashsearch.lab.store
        from crashsearch.lab.store import Store
        crashsearch.lab.store.MINOR_COMPACT_FILES = 6  # the writer also merges its files now and then
        space, store = Space.load(), Store(Home(Path({str(home.root)!r})))
        rng = random.Random(1)
        for batch in range(25):
            rows = [{{"experiment_id": f"w{{batch}}-{{i}}", "cell_id": c.id, "status": "ok", "val_ap": rng.random()}}
                    for i, c in enumerate(space.sample(rng, 4))]
            store.append("c1", rows, space)
            time.sleep(0.02)
    """)
    stop = tmp_path / "stop"
    reader = _start_reader(home, stop, seconds=40)
    subprocess.run([sys.executable, "-c", writer], cwd=REPO, check=True, timeout=60)
    stop.touch()
    result = _reader_result(reader)
    counts = [n for n, _ in result["counts"]]
    assert result["errors"] == []
    assert all(n == d for n, d in result["counts"])
    assert counts == sorted(counts) and counts[-1] == 101
    assert len(store.experiments()) == 101
    assert len(store.log_files("c1")) < 6  # minor compactions ran under the reader


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", pytest.param("s3", marks=pytest.mark.slow)])
def test_compaction_beside_a_concurrent_reader(where, space, tmp_path, request):
    """A reader in another process never sees a row twice or a row vanish while the writer appends
    and compacts; on an s3:// home too, where compaction is a PUT and deletes, never a rename."""
    from crashsearch.lab.settings import resolve_home

    home = resolve_home(request.getfixturevalue("s3_home") if where == "s3" else tmp_path / "home")
    store = Store(home)
    for batch in range(20):
        store.append("c1", make_rows(space, 5, seed=batch, start=batch * 5), space)
    stop = tmp_path / "stop"
    reader = _start_reader(home, stop, seconds=40)
    time.sleep(1.5)  # let the reader start querying
    total = 100
    for round_ in range(8):
        for batch in range(5):
            start = total + batch * 3
            store.append("c1", make_rows(space, 3, seed=1000 + start, start=start), space)
        total += 15
        store.compact("c1")
        time.sleep(0.1)
    stop.touch()
    result = _reader_result(reader)
    assert result["errors"] == []
    assert len(result["counts"]) >= 3
    assert all(n == d for n, d in result["counts"]), "a reader saw a row twice"
    counts = [n for n, _ in result["counts"]]
    assert counts == sorted(counts), "a reader saw rows disappear"
    assert len(store.experiments("c1")) == total == 220
    assert len(store.log_keys("c1")) == 1


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_query_leaderboard_export_compact(store, space, home, tmp_path, capsys):
    for batch in range(2):
        store.append("c1", make_rows(space, 6, seed=batch, start=batch * 6), space)
    root = str(home.root)
    assert cli(["query", "--home", root, "SELECT count(*) AS n FROM experiments"]) == 0
    assert "12" in capsys.readouterr().out
    out_csv = tmp_path / "q.csv"
    assert cli(["query", "--home", root, "SELECT experiment_id, val_ap FROM experiments", "--out", str(out_csv)]) == 0
    assert len(pd.read_csv(out_csv)) == 12
    out_pq = tmp_path / "q.parquet"
    assert cli(["query", "--home", root, "SELECT * FROM experiments", "--out", str(out_pq)]) == 0
    assert pq.read_metadata(out_pq).num_rows == 12
    capsys.readouterr()

    assert cli(["query", "--home", root, "DELETE FROM experiments"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and len(err.strip().splitlines()) == 1

    assert cli(["leaderboard", "--home", root, "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert "mean_val_ap" in text and "(3 rows)" in text

    assert cli(["export", "--home", root, "--campaign", "c1", "--out", str(tmp_path / "c1.parquet")]) == 0
    assert pq.read_metadata(tmp_path / "c1.parquet").num_rows == 12
    assert cli(["compact", "--home", root]) == 0
    assert "merged 2 files" in capsys.readouterr().out
    assert cli(["export", "--home", root, "--campaign", "nothing", "--out", str(tmp_path / "n.parquet")]) == 2


def test_cli_import_reports_bad_rows(home, space, tmp_path, capsys):
    csv = tmp_path / "log.csv"
    cells = space.sample(random.Random(9), 2)
    pd.DataFrame([{"cell_id": cells[0].id, "val_ap": 0.8}, {"cell_id": -4, "val_ap": 0.7},
                  {"cell_id": cells[1].id, "val_ap": 0.6}]).to_csv(csv, index=False)
    assert cli(["import", "--home", str(home.root), str(csv), "--campaign", "ext"]) == 0
    captured = capsys.readouterr()
    assert "2 new rows" in captured.out
    assert "line 3" in captured.err and "-4" in captured.err


# ---- a damaged campaign.json is kept before a new one replaces it ------------------------------------

@pytest.mark.parametrize("damaged", [b'{"id": "c1", "budget": 4', b"[1, 2]", b"\xff\xfe not utf-8"])
def test_a_campaign_json_that_does_not_parse_is_copied_to_quarantine_before_it_is_overwritten(home, damaged, caplog):
    """Before: the next run of the campaign read it as missing and wrote a new one over it, its bytes lost."""
    import logging

    store = Store(home)
    store.write_campaign("c1", {"dataset": "synth-day", "status": "finished"})
    info = home.root / "campaigns" / "c1" / "campaign.json"
    info.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="crashsearch"):
        store.write_campaign("c1", {"status": "running"})
    kept = home.root / "quarantine" / "c1" / "campaign.json"
    assert kept.read_bytes() == damaged
    assert json.loads(info.read_text())["status"] == "running"
    lines = [r.getMessage() for r in caplog.records if "campaign.json" in r.getMessage()]
    assert len(lines) == 1 and str(info) in lines[0] and str(kept) in lines[0] and "\n" not in lines[0], lines
    info.write_bytes(b"{damaged again")  # a second damage is kept beside the first, which stays as it was
    store.write_campaign("c1", {"status": "finished"})
    copies = sorted((home.root / "quarantine" / "c1").iterdir())
    assert len(copies) == 2 and kept.read_bytes() == damaged
    assert {p.read_bytes() for p in copies} == {damaged, b"{damaged again"}
    store.write_campaign("c1", {"status": "running"})  # a readable one is merged, nothing kept
    assert len(list((home.root / "quarantine" / "c1").iterdir())) == 2
