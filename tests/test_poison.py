"""No single mistake can poison a home (issue 20, part 1).

Every value that enters persistent state is checked where it enters, in one line naming it; every
reader of persistent state (campaign.json, bugfix_events.jsonl, state.json, inflight.json, old log
rows) leaves out one bad entry, names it once and goes on; user-named outputs never land in the
home's records; reading a space file or running a benchmark cannot run forever; pool workers die
with their parent. Each test names the bug it guards against.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crashsearch.flows.cli import main as cli
from crashsearch.lab.exchange import import_log
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space, SpaceError
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, declare_bugfix, post_fix_mask

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
HUGE = "99999999999999999999"  # > 2**64: no BIGINT, int64 or uint64 holds it


def rows(space: Space, n: int, seed: int = 0, prefix: str = "e", **extra) -> list[dict]:
    rng = random.Random(seed)
    return [{"experiment_id": f"{prefix}{i}", "cell_id": cell.id, "status": "ok", "val_ap": 0.1 + i / 100, "seed": i,
             "finished_at": T0 + timedelta(minutes=i), **extra} for i, cell in enumerate(space.sample(rng, n))]


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """The real CLI in a child process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "crashsearch", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line(err: str) -> str:
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in this process, expect exit 2 and return its one stderr line."""
    capsys.readouterr()
    assert cli(list(args)) == 2
    return one_line(capsys.readouterr().err)


@pytest.fixture
def populated(home, space):
    store = Store(home)
    store.append("c1", rows(space, 20), space)
    store.write_campaign("c1", {"dataset": "synth-day", "status": "finished", "budget": 20})
    return store


# ---- values are checked where they enter ---------------------------------------------------------

def test_a_budget_no_reader_can_hold_is_refused_before_anything_is_written(tmp_path, populated):
    # bug: `campaign --budget 99999999999999999999` went into campaign.json; then status, leaderboard,
    # every query and every campaign start ended in an OverflowError traceback
    home = tmp_path / "h"
    (tmp_path / "ds").mkdir()
    for flag, value, needle in (("--budget", HUGE, f"budget {HUGE}"), ("--hours", "inf", "hours"),
                                ("--extend", HUGE, f"extend {HUGE}")):
        proc = run_cli("campaign", "--home", str(home), "--dataset", str(tmp_path / "ds"), flag, value)
        assert proc.returncode == 2 and needle in one_line(proc.stderr), proc.stderr
    assert not (home / "campaigns").exists()
    # every writer of campaign.json checks: nothing is written
    before = (populated.home.campaigns / "c1" / "campaign.json").read_bytes()
    for info in ({"budget": int(HUGE)}, {"pid": -1}, {"created_at": "3000-01-01T00:00:00Z"}, {"hours": float("inf")},
                 {"runs": [{"new": int(HUGE)}]}):
        with pytest.raises(ValueError, match=f"campaign.json: {next(iter(info))}"):
            populated.write_campaign("c1", info)
    assert (populated.home.campaigns / "c1" / "campaign.json").read_bytes() == before


def test_bugfix_refuses_a_time_outside_the_readers_range_or_in_the_future(home, capsys):
    # bug: `bugfix --at 2300-01-01T00:00:00Z` was accepted; every campaign and analyze then crashed
    for at in ("2300-01-01T00:00:00Z", "1500-01-01", "+275760-09-13"):
        err = cli_error(capsys, "bugfix", "--home", str(home.root), "--note", "typo", "--at", at)
        assert "--at" in err and ("out of range" in err or "not a time" in err), err
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    err = cli_error(capsys, "bugfix", "--home", str(home.root), "--note", "typo", "--at", tomorrow)
    assert "in the future" in err
    assert not (home.root / "bugfix_events.jsonl").exists()
    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert cli(["bugfix", "--home", str(home.root), "--note", "fine", "--at", hour_ago]) == 0
    assert [e["note"] for e in bugfix_events(home)] == ["fine"]


def test_import_refuses_times_and_numbers_the_readers_cannot_hold(store, space, tmp_path):
    # bug: an import with finished_at 3000-01-01 was accepted; analyze then failed
    # "Out of bounds nanosecond timestamp"
    cells = space.sample(random.Random(5), 6)
    bad = [{"finished_at": "3000-01-01T00:00:00Z"}, {"started_at": "1500-01-01"}, {"cost_usd": float("inf")},
           {"tokens_in": 1e20}, {"train_seconds": float("-inf")}, {}]
    frame = pd.DataFrame([{"cell_id": c.id, "val_ap": 0.5, **b} for c, b in zip(cells, bad)])
    csv = tmp_path / "log.csv"
    frame.to_csv(csv, index=False)
    errors: list[str] = []
    result = import_log(store, csv, "ext", space, on_error=errors.append)
    assert (result.new, result.bad) == (1, 5), errors
    for line, column in enumerate(["finished_at", "started_at", "cost_usd", "tokens_in", "train_seconds"], 2):
        assert any(e.startswith(f"log.csv line {line}: column {column}") for e in errors), (column, errors)
    # the other writers refuse the same values: the row path and the bulk path
    far = rows(space, 2, finished_at=datetime(3000, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError, match="row 0: column finished_at: 3000-01-01"):
        store.append("c2", far, space)
    table = pa.Table.from_pylist(rows(space, 2, prefix="t"))
    table = table.set_column(table.column_names.index("finished_at"), "finished_at",
                             pa.array([T0, datetime(3000, 1, 1, tzinfo=timezone.utc)], pa.timestamp("us", tz="UTC")))
    with pytest.raises(ValueError, match="row 1 column finished_at"):
        store.append_table("c2", table, space)
    inf = pa.Table.from_pylist(rows(space, 2, prefix="u", cost_usd=float("inf")))
    with pytest.raises(ValueError, match="row 0 column cost_usd"):
        store.append_table("c2", inf, space)
    assert store.log_files("c2") == []


def test_bugfix_version_unknown_where_imported_rows_have_none_is_one_line(populated, space, home, capsys, tmp_path):
    # bug: `bugfix --version nosuchversion` where imported rows lack a version: a TypeError traceback
    populated.append("c3", rows(space, 3, prefix="v", code_version="abc+123"), space)
    csv = tmp_path / "log.csv"
    pd.DataFrame([{"cell_id": c.id, "val_ap": 0.5} for c in space.sample(random.Random(8), 3)]).to_csv(csv, index=False)
    import_log(populated, csv, "ext", space)
    err = cli_error(capsys, "bugfix", "--home", str(home.root), "--note", "x", "--version", "nosuchversion")
    assert "no experiment has code version 'nosuchversion' (known: abc+123)" in err


# ---- bugfix --remove --------------------------------------------------------------------------------

def test_an_event_is_removed_by_a_recorded_removal_that_every_reader_applies(populated, home, capsys):
    # bug: there was no command to undo a mistaken bug-fix event
    from crashsearch.lab.catalog import build

    keep = declare_bugfix(home, "real fix", at="2025-01-01T00:05:00Z")
    typo = declare_bugfix(home, "typo", at="2025-01-01T00:10:00Z")
    capsys.readouterr()
    assert cli(["bugfix", "--home", str(home.root), "--remove", typo["id"], "--note", "declared by mistake"]) == 0
    assert f"removed bug-fix event {typo['id']}" in capsys.readouterr().out
    lines = [json.loads(line) for line in (home.root / "bugfix_events.jsonl").read_text().splitlines()]
    assert [entry["id"] for entry in lines[:2]] == [keep["id"], typo["id"]]  # append-only: the event stays
    assert lines[2]["removes"] == typo["id"] and lines[2]["note"] == "declared by mistake"
    assert [e["id"] for e in bugfix_events(home)] == [keep["id"]]
    assert populated.query("SELECT id FROM bugfix_events")["id"].tolist() == [keep["id"]]
    con = duckdb.connect(str(build(home)), read_only=True)
    try:
        assert [r[0] for r in con.execute("SELECT id FROM bugfix_events").fetchall()] == [keep["id"]]
    finally:
        con.close()
    assert cli(["bugfix", "--home", str(home.root), "--list"]) == 0
    listed = capsys.readouterr().out
    assert keep["id"] in listed and f"{typo['id']}  removed" in listed and "declared by mistake" in listed
    assert "already removed" in cli_error(capsys, "bugfix", "--home", str(home.root), "--remove", typo["id"])
    assert f"events: {keep['id']}, {typo['id']}" in cli_error(capsys, "bugfix", "--home", str(home.root), "--remove", "nope")
    assert "no bug-fix event ''" in cli_error(capsys, "bugfix", "--home", str(home.root), "--remove", "", "--note", "x")
    assert "--remove takes only --note" in cli_error(capsys, "bugfix", "--home", str(home.root), "--remove", keep["id"],
                                                     "--at", "2025-01-01")
    assert len((home.root / "bugfix_events.jsonl").read_text().splitlines()) == 3


# ---- readers survive one bad entry -----------------------------------------------------------------

def test_a_campaign_json_with_bad_entries_is_read_without_them_named_once(populated, home, caplog):
    from crashsearch.flows.status import campaign_status, format_status

    path = home.campaigns / "c1" / "campaign.json"
    info = json.loads(path.read_text())
    # what an older version or a hand edit may leave: every known key out of its domain
    path.write_text(json.dumps({**info, "budget": int(HUGE), "pid": int(HUGE), "created_at": "3000-01-01T00:00:00Z",
                                "runs": "x", "dedup_dropped": {"random": 5}, "hours": "soon", "custom": [1, 2],
                                "seeds": 3.0}))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            (c1,) = populated.campaigns()
            assert c1["dataset"] == "synth-day" and c1["status"] == "finished" and c1["custom"] == [1, 2]
            assert c1["seeds"] == 3 and isinstance(c1["seeds"], int)  # a whole float reads as the count it is
            assert not {"budget", "pid", "created_at", "runs", "dedup_dropped", "hours"} & set(c1)
        board = populated.leaderboard()
        view = populated.query("SELECT id, budget, status FROM campaigns")
        status = format_status(campaign_status(home))
    assert len(board) == 10 and view.to_dict("records") == [{"id": "c1", "budget": None, "status": "finished"}]
    assert "20/?" in status
    named = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    for key in ("budget", "pid", "created_at", "runs", "dedup_dropped", "hours"):
        assert sum(f"entry {key!r}" in m for m in named) == 1, (key, named)


def test_bad_lines_of_bugfix_events_are_skipped_and_named_and_every_view_agrees(populated, home, caplog):
    from crashsearch.lab.catalog import build

    good = declare_bugfix(home, "real fix", at="2025-01-01T00:05:00Z")
    now = datetime.now(timezone.utc).isoformat()
    with open(home.root / "bugfix_events.jsonl", "a") as f:
        for entry in ({"id": "far", "at": "2300-01-01T00:00:00Z", "note": "typo", "declared_at": now},
                      {"id": "old", "at": None, "note": "x", "declared_at": "3000-01-01T00:00:00Z"},
                      {"id": "num", "at": 5, "note": "x", "declared_at": now},
                      {"id": "rm", "removes": 7, "declared_at": now}):
            f.write(json.dumps(entry) + "\n")
        f.write("not json\n" + "[" * 100_000 + "\n")
    with caplog.at_level(logging.WARNING):
        assert [e["id"] for e in bugfix_events(home)] == [good["id"]]
        assert [e["id"] for e in bugfix_events(home)] == [good["id"]]
    named = [r.getMessage() for r in caplog.records if "bugfix_events.jsonl" in r.getMessage()]
    assert sorted(int(m.split("line ")[1].split()[0]) for m in named) == [2, 3, 4, 5, 6, 7], named
    assert populated.query("SELECT id FROM bugfix_events")["id"].tolist() == [good["id"]]
    con = duckdb.connect(str(build(home)), read_only=True)
    try:
        assert [r[0] for r in con.execute("SELECT id FROM bugfix_events").fetchall()] == [good["id"]]
    finally:
        con.close()


def test_old_log_rows_outside_the_nanosecond_range_are_segmented_without_overflow():
    # an older version let a row finished in the year 3000 into the log: the segmentation kept
    # failing with "Out of bounds nanosecond timestamp" in every analyze and campaign
    finished = pd.Series(pd.to_datetime(["2025-01-01", "3000-01-01", None, "1500-01-01"], utc=True, format="ISO8601")
                         .astype("datetime64[us, UTC]"))
    df = pd.DataFrame({"finished_at": finished, "code_version": ["a", "b", None, "a"]})
    event = {"at": datetime(2025, 6, 1, tzinfo=timezone.utc), "declared_at": datetime(2025, 6, 1, tzinfo=timezone.utc)}
    assert post_fix_mask(df, event).tolist() == [False, True, False, False]
    by_version = {"version": "b", "at": None, "declared_at": datetime(2025, 6, 1, tzinfo=timezone.utc)}
    assert post_fix_mask(df, by_version).tolist() == [False, True, False, False]


def test_status_survives_a_damaged_inflight_json(populated, home, caplog):
    from crashsearch.flows.status import campaign_status

    populated.write_campaign("c1", {"status": "running", "pid": os.getpid(), "host": socket.gethostname()})
    inflight = home.campaigns / "c1" / "inflight.json"
    inflight.write_text("[" * 100_000)  # bug: a RecursionError traceback from json.loads
    with caplog.at_level(logging.WARNING):
        (row,) = campaign_status(home)
    assert row["status"] == "running" and row["in_flight"] == 0
    assert any(str(inflight) in r.getMessage() for r in caplog.records)
    inflight.write_text(json.dumps({"runs": [5, {"experiment_ids": "x"}, {"experiment_ids": ["new1", "e0", 3]}]}))
    (row,) = campaign_status(home)
    assert row["in_flight"] == 1  # new1; e0 is recorded; the bad runs are named and left out


# ---- outputs never land in the home's records --------------------------------------------------------

def test_query_out_through_a_hard_link_leaves_the_recorded_file_alone(populated, home, tmp_path, capsys):
    # bug: `query --out FILE` through a hard link to a log part overwrote it in place (20 rows -> 0)
    populated.compact("c1")
    (part,) = populated.log_files("c1")
    data = part.read_bytes()
    link = tmp_path / "link.parquet"
    os.link(part, link)
    assert cli(["query", "--home", str(home.root), "SELECT 1 AS x WHERE false", "--out", str(link)]) == 0
    assert part.read_bytes() == data and len(populated.experiments("c1")) == 20
    assert pq.read_metadata(link).num_rows == 0
    csv_link = tmp_path / "link.csv"
    os.link(part, csv_link)
    assert cli(["query", "--home", str(home.root), "SELECT 1 AS x", "--out", str(csv_link)]) == 0
    assert part.read_bytes() == data and csv_link.read_text() == "x\n1\n"


def test_outputs_inside_the_home_are_refused_except_under_reports(populated, home, tmp_path, capsys):
    # bugs: `query --out <home>/datasets/<name>/train.csv` overwrote a dataset manifest;
    # `benchmark --out <home>/campaigns/newdir` wrote there and newdir showed as a phantom campaign
    manifest = home.root / "datasets" / "d" / "train.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("id,time_of_event,time_of_alert,target\n1,,,0\n")
    (tmp_path / "into-campaigns").symlink_to(home.campaigns)
    (home.root / "reports").mkdir()
    (home.root / "reports" / "sneaky").symlink_to(home.campaigns)
    h = str(home.root)
    for args in (["query", "SELECT 1 AS x", "--out", str(manifest)],
                 ["query", "SELECT 1 AS x", "--out", str(home.root / "x.csv")],
                 ["query", "SELECT 1 AS x", "--out", str(tmp_path / "into-campaigns" / "c1" / "x.csv")],
                 ["query", "SELECT 1 AS x", "--out", str(home.root / "reports" / "sneaky" / "x.csv")],
                 ["export", "--campaign", "c1", "--out", str(home.root / "datasets" / "c1.parquet")],
                 ["benchmark", "--campaign", "c1", "--out", str(home.campaigns / "newdir")],
                 ["benchmark", "--campaign", "c1", "--out", str(home.root / "cache" / "b")],
                 ["synth", "--videos", "2", "--out", str(home.campaigns / "ghost")]):
        err = cli_error(capsys, *args, "--home", h)
        assert "refusing to write inside the home" in err, (args, err)
    # found by the hostile pass: a folder as a file (a rename error naming the temp file) and a file
    # as the benchmark's folder (refused only after the whole benchmark ran)
    (tmp_path / "folder.csv").mkdir()
    assert "is a folder" in cli_error(capsys, "query", "SELECT 1 AS x", "--out", str(tmp_path / "folder.csv"), "--home", h)
    (tmp_path / "afile").write_text("")
    assert "is a file" in cli_error(capsys, "benchmark", "--campaign", "c1", "--out", str(tmp_path / "afile"), "--home", h)
    assert manifest.read_text() == "id,time_of_event,time_of_alert,target\n1,,,0\n"
    assert not (home.campaigns / "newdir").exists() and not (home.campaigns / "ghost").exists()
    assert not (home.root / "cache").exists()
    assert [c["id"] for c in populated.campaigns()] == ["c1"]
    assert cli(["query", "--home", h, "SELECT 1 AS x", "--out", str(home.root / "reports" / "x.csv")]) == 0
    assert (home.root / "reports" / "x.csv").read_text() == "x\n1\n"


# ---- nothing runs forever ---------------------------------------------------------------------------

def _limited() -> None:
    """In a child: at most 4 GB of address space, so a reader that never stops fails instead of the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_space_file_must_be_a_small_regular_file(tmp_path):
    # bug: `space --space /dev/zero` read until the kernel killed it at 21 GB
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \x01\x02\n")  # bug: a yaml ReaderError traceback
    for path, needle in ((big, "larger than"), (binary, "not valid YAML")):
        with pytest.raises(SpaceError, match=needle):
            Space.load(path)
    # a device or a FIFO only in a child with a memory cap and a timeout: the old code read them forever
    for path, needle in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (binary, "not valid YAML")):
        try:
            proc = run_cli("space", "--space", str(path), "--home", str(tmp_path / "h"), timeout=60, preexec_fn=_limited)
        except subprocess.TimeoutExpired:
            pytest.fail(f"space --space {path} still reading after 60 s")
        assert proc.returncode == 2 and needle in one_line(proc.stderr), (path, proc.stderr[-2000:])


def _planted_home(root: Path, space: Space, n: int = 300) -> Home:
    home = Home(root)
    rng = np.random.default_rng(0)
    cells = space.sample(random.Random(0), n)
    Store(home).append("c1", [{"experiment_id": f"e{i}", "cell_id": c.id, "status": "ok",
                               "val_ap": float(0.5 + 0.3 * (c["encoder"] == "zipformer") + rng.normal(0, 0.02)),
                               "seed": i} for i, c in enumerate(cells)], space)
    return home


def test_a_benchmark_budget_beyond_the_space_is_refused_at_once(space, tmp_path):
    # bug: `benchmark --budget 1000000000000` ran until killed
    home = _planted_home(tmp_path / "h", space)
    proc = run_cli("benchmark", "--home", str(home.root), "--campaign", "c1", "--budget", "1000000000000",
                   "--repeats", "1", "--policies", "random", "--workers", "1", timeout=90, preexec_fn=_limited)
    assert proc.returncode == 2 and "budget 1,000,000,000,000 is more than" in one_line(proc.stderr), proc.stderr


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_benchmark_workers_die_with_a_killed_parent(space, tmp_path):
    # bug: after SIGKILL of `benchmark --workers 2` both workers ran on for minutes
    home = _planted_home(tmp_path / "h", space)
    proc = subprocess.Popen([sys.executable, "-m", "crashsearch", "benchmark", "--home", str(home.root), "--campaign", "c1",
                             "--policies", "tpe", "--budget", "2000", "--repeats", "40", "--workers", "2",
                             "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) == 2, f"no two workers: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "the workers outlived the killed benchmark"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---- a home poisoned in every file still answers every command --------------------------------------

TINY_SPACE = """
name: tiny
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.001, 0.003, 0.01]
    batch_size: [16, 32]
  data:
    window_s: [1.0, 2.0]
    augment: [none]
fixed:
  epochs: 1
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


def _poison(home: Home, space: Space) -> dict[str, Path]:
    """Write into every file of persistent state what an older version or a hand edit could leave."""
    from crashsearch.lab.rows import clean_row
    from crashsearch.lab.schema import experiment_schema

    c1 = home.campaigns / "c1"
    info = json.loads((c1 / "campaign.json").read_text())
    # "running" with a pid no reader can use, on another host (so status trusts "running" and reads inflight.json too:
    # on this host a damaged pid names no live run)
    (c1 / "campaign.json").write_text(json.dumps({**info, "status": "running", "host": "gpu-node-7",
                                                  "budget": int(HUGE), "pid": int(HUGE),
                                                  "created_at": "3000-01-01T00:00:00Z", "runs": [5]}))
    now = datetime.now(timezone.utc).isoformat()
    with open(home.root / "bugfix_events.jsonl", "a") as f:
        f.write(json.dumps({"id": "far", "at": "2300-01-01T00:00:00Z", "note": "typo", "declared_at": now}) + "\n")
        f.write("{not json\n")
    (c1 / "state.json").write_text(json.dumps({"round": 1, "policies": {"random": {"rng": "garbage"},
                                                                        "evolution": {"rng": [3, [HUGE], None]}}}))
    (c1 / "inflight.json").write_text("[" * 100_000)
    store = Store(home)
    schema = experiment_schema(space)
    far = clean_row({"experiment_id": "far-future", "cell_id": space.sample(random.Random(3), 1)[0].id, "status": "ok",
                     "val_ap": 0.5}, "c1", space, schema, T0)
    far["finished_at"] = datetime(3000, 1, 1, tzinfo=timezone.utc)  # bypasses the check, as an older version did
    store._write("c1", pa.Table.from_pylist([far], schema=schema))
    return {"campaign.json": c1 / "campaign.json", "bugfix_events.jsonl": home.root / "bugfix_events.jsonl",
            "state.json": c1 / "state.json", "inflight.json": c1 / "inflight.json"}


@pytest.mark.slow
def test_a_home_poisoned_in_every_file_still_answers_every_command(synth_dataset, tmp_path):
    from crashsearch.lab.settings import resolve_home
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path / "home")
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(TINY_SPACE)
    space = Space.load(space_file)

    def campaign(name: str, budget: int) -> subprocess.CompletedProcess:
        return run_cli("campaign", "--home", str(home.root), "--dataset", str(synth_dataset.root), "--campaign", name,
                       "--space", str(space_file), "--budget", str(budget), "--seeds", "1", "--round-size", "2",
                       "--policies", "random,evolution", "--propose-mode", "turns", timeout=600)

    first = campaign("c1", 4)
    assert first.returncode == 0, first.stderr[-3000:]
    files = _poison(home, space)
    h = str(home.root)
    runs = {"status": run_cli("status", "--home", h),
            "query": run_cli("query", "--home", h, "SELECT count(*) AS n, max(budget) AS b FROM experiments, campaigns"),
            "leaderboard": run_cli("leaderboard", "--home", h),
            "analyze": run_cli("analyze", "--home", h, "--campaign", "c1", timeout=600),
            "resume": campaign("c1", 6),
            "new campaign": campaign("c2", 2)}
    for name, proc in runs.items():
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
    said = "\n".join(p.stdout + p.stderr for p in runs.values())
    for name, path in files.items():
        assert str(path) in said, f"{name} was never named"
    assert len(Store(home).experiments("c1")) == 6 and len(Store(home).experiments("c2")) == 2  # 4 + the old row + 1
