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
from tests.fake_llm_server import anthropic_text_reply, error, json_reply, text_reply, tool_reply
from tests.test_campaign import lab_home  # noqa: F401 (fixture)
from tests.test_llm_agents import _proposer, answer, server  # noqa: F401 (fixture)

FAST = dict(timeout_s=10.0, max_retries=0, retry_base_s=0.001, retry_max_s=0.01)  # the engine's backoff retries


def _bad_first_replies(server, space):
    """Each API answers malformed (twice: the repair turn too), out of range (twice), 429, 500, then valid cells."""
    bad_cell = dict(space.cell(0).to_dict(), lr=123.0)
    out_of_range = answer([space.cell(0)])
    out_of_range["proposals"][0] = dict(bad_cell, rationale="out of range")
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
    (tmp_path / "new-home").mkdir()  # an empty folder: a new home, which a reading command does not write into
    code = cli(["status", "--home", str(tmp_path / "new-home")])
    err = capsys.readouterr().err.strip()
    assert code == 70 and "internal error" in err, err
    files = list((tmp_path / "tmp" / "crashsearch-logs").glob("internal-*.txt"))
    assert len(files) == 1 and str(files[0]) in err and not any((tmp_path / "new-home").iterdir())


# ---- a home shows itself only -----------------------------------------------------------------------

def test_a_copied_home_shows_its_own_rows_in_history_duckdb(store, space, tmp_path):
    import shutil
    import subprocess

    import duckdb

    from crashsearch.lab.settings import Home
    from tests.test_safety import rows

    _recorded(store, space, "c1", 4)
    assert (store.home.root / "history.duckdb").exists()
    copy = tmp_path / "home3"
    subprocess.run(["cp", "-a", str(store.home.root), str(copy)], check=True)
    Store(Home(copy)).append("c1", rows(space, 3, seed=1, prefix="copy-"), space)  # the copy is used
    con = duckdb.connect(str(copy / "history.duckdb"), read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT experiment_id FROM experiments").fetchall()}
    finally:
        con.close()
    assert ids == set(Store(Home(copy)).experiments()["experiment_id"]) and len(ids) == 7
    shutil.rmtree(store.home.root)  # the copy never read the original's files
    con = duckdb.connect(str(copy / "history.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 7
    con.close()


def test_campaigns_view_and_status_agree_on_a_killed_campaign(store, space, capsys):
    import subprocess
    import sys

    import crashsearch as cs
    from crashsearch.flows.cli import main as cli
    from crashsearch.flows.status import campaign_status

    _recorded(store, space, "c1", 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that was a campaign's and is gone (SIGKILL leaves campaign.json 'running')
    store.write_campaign("c1", {"status": "running", "pid": dead.pid, "host": __import__("socket").gethostname()})
    assert next(r for r in campaign_status(store.home) if r["campaign"] == "c1")["status"] == "stopped (crashed?)"
    assert store.query("SELECT status FROM campaigns WHERE id = 'c1'")["status"][0] == "stopped (crashed?)"
    assert cs.open_home(store.home.root).campaigns()["status"][0] == "stopped (crashed?)"
    assert cli(["query", "SELECT status FROM campaigns", "--home", str(store.home.root)]) == 0
    assert "stopped (crashed?)" in capsys.readouterr().out


# ---- the notebook API -------------------------------------------------------------------------------

def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_api_reads_without_writing_to_the_home(store, space):
    import crashsearch as cs

    _recorded(store, space, "c1", 4)
    (store.home.root / "history.duckdb").unlink()  # e.g. a home copied read-only without it
    before = _listing(store.home.root)
    home = cs.open_home(store.home.root)
    assert home.sql("SELECT count(*) AS n FROM experiments").df()["n"][0] == 4
    assert len(home.history_df("c1")) == 4 and len(home.campaigns()) == 1
    assert _listing(store.home.root) == before  # nothing written: a read-only home reads the same


def test_a_read_only_home_reads_through_the_api(store, space, tmp_path):
    import subprocess

    import crashsearch as cs

    _recorded(store, space, "c1", 4)
    (store.home.root / "history.duckdb").unlink()
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(store.home.root), str(mount)], capture_output=True).returncode:
        pytest.skip("no read-only bind mount here (needs root); test_the_api_reads_without_writing covers it")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True)
        assert cs.open_home(mount).sql("SELECT count(*) AS n FROM experiments").df()["n"][0] == 4
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_damaged_part_file_of_one_campaign_leaves_the_others_readable_in_the_api(store, space):
    import crashsearch as cs
    from tests.test_safety import rows

    store.append("c1", rows(space, 3), space)
    store.append("c2", rows(space, 4, seed=2, prefix="f"), space)
    part = store.log_files("c1")[0]
    part.write_bytes(b"PAR1 not really parquet")  # a damaged file
    home = cs.open_home(store.home.root)
    assert len(home.history_df("c2")) == 4
    assert home.sql("SELECT count(*) AS n FROM experiments").df()["n"][0] == 4
    assert len(home.history_df()) == 4 and set(home.history_df()["campaign"]) == {"c2"}


def test_queries_read_the_home_only_not_the_working_directorys_tmp(store, space, tmp_path, monkeypatch, capsys):
    import crashsearch as cs
    from crashsearch.flows.cli import main as cli

    _recorded(store, space, "c1", 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    secret = tmp_path / ".tmp" / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    for path in (".tmp/secret.csv", str(secret)):
        with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
            cs.open_home(store.home.root).sql(f"SELECT * FROM read_csv('{path}')").df()
        assert cli(["query", f"SELECT * FROM read_csv('{path}')", "--home", str(store.home.root)]) == 2
        assert "a,b" not in capsys.readouterr().out


# ---- user errors refused before any flow starts -----------------------------------------------------

@pytest.fixture
def own_home(lab_home, tmp_path):
    """A copy of lab_home's home (cache and space) that a test may damage."""
    import shutil

    from crashsearch.lab.settings import resolve_home

    home, ds, space_path = lab_home
    root = tmp_path / "home"
    shutil.copytree(home.root / "cache", root / "cache")
    shutil.copy(space_path, tmp_path / "tiny.yaml")
    return resolve_home(root), ds, str(tmp_path / "tiny.yaml")


def _refused_in_one_line(capsys, argv, code=2):
    from crashsearch.flows.cli import main as cli

    got = cli(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert got == code, (got, err)
    assert "Traceback" not in err + captured.out and len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow  # only the code before the fix starts a Prefect server here
def test_a_dataset_whose_cached_features_belong_to_another_is_refused_before_the_flow(own_home, tmp_path, capsys):
    from crashsearch.lab.synth import generate

    home, ds, space = own_home
    other = generate(tmp_path / "elsewhere" / ds.root.name, videos=8, seed=7, width=64, height=48, fps=8, seconds=8.0)
    err = _refused_in_one_line(capsys, ["campaign", "--dataset", str(other.root), "--home", str(home.root),
                                        "--space", space, "--budget", "2", "--campaign", "wrong-data"])
    assert "another dataset" in err
    assert not (home.root / "campaigns" / "wrong-data").exists()  # no folder holding only a lock


@pytest.mark.slow  # only the code before the fix starts a Prefect server here
def test_a_cache_missing_videos_is_refused_before_the_flow(own_home, capsys):
    home, ds, space = own_home
    parts = sorted((home.root / "cache").rglob("part-*.parquet"))
    assert parts
    for part in parts:
        part.unlink()
    err = _refused_in_one_line(capsys, ["campaign", "--dataset", str(ds.root), "--home", str(home.root),
                                        "--space", space, "--budget", "2", "--campaign", "no-videos"])
    assert "missing" in err and "crashsearch extract" in err
    assert not (home.root / "campaigns" / "no-videos").exists()


@pytest.mark.slow  # three CLI processes
def test_extract_with_weights_that_do_not_exist_is_refused_before_the_flow(synth_dataset, tmp_path):
    from tests.test_safety import one_line_error, run_cli

    for backbone in ("pixels", "r2plus1d_18", "vjepa2_vitl"):  # the child process shows Prefect's own logging too
        proc = run_cli("extract", "--dataset", str(synth_dataset.root), "--backbone", backbone,
                       "--weights", "/nonexistent", "--home", str(tmp_path / "h"))
        err = one_line_error(proc)
        assert proc.returncode == 2 and "/nonexistent" in err and "Flow run" not in proc.stdout + err


# ---- a full disk during a campaign ------------------------------------------------------------------

class _FullDisk:
    """A disk that fills at the ``at``-th log part written: from then on, writes of log parts,
    state.json and summary.txt fail with ENOSPC after creating their (empty) temp file, as a
    full disk does; campaign.json, a few hundred bytes, still fits."""

    def __init__(self, at: int):
        self.at, self.parts, self.failed = at, 0, []

    def fails(self, name: str) -> bool:
        if ".part-" in name or name.startswith("part-"):
            self.parts += 1
        full = self.parts >= self.at and "campaign.json" not in name
        if full:
            self.failed.append(name)
        return full and (".part-" in name or "state.json" in name or "summary.txt" in name)

    def patch(self, monkeypatch):
        import builtins
        import errno
        import pathlib

        from crashsearch.lab import _io

        disk, real_open, real_write_text = self, builtins.open, pathlib.Path.write_text

        def full_open(path, mode="r", *args, **kw):
            if "w" in mode and disk.fails(pathlib.Path(path).name):
                real_open(path, mode).close()  # the temp file appears, then no byte fits
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, mode, *args, **kw)

        def full_write_text(self, *args, **kw):
            if disk.fails(self.name):
                real_open(self, "w").close()
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real_write_text(self, *args, **kw)

        monkeypatch.setattr(_io, "open", full_open, raising=False)
        monkeypatch.setattr(pathlib.Path, "write_text", full_write_text)


def test_a_full_disk_during_a_campaign_names_the_path_ends_it_honestly_and_loses_nothing(own_home, monkeypatch):
    import errno

    home, ds, space = own_home
    disk = _FullDisk(at=2)
    with monkeypatch.context() as m:
        disk.patch(m)
        with pytest.raises(OSError) as raised:
            run_campaign(home, ds.root, "full", budget=8, round_size=2, seeds=1, space_path=space, policies=["random"],
                         log=lambda line: None)
    assert raised.value.errno == errno.ENOSPC and "part-" in str(raised.value.filename)
    chain, exc = [], raised.value
    while exc is not None:
        chain.append(str(getattr(exc, "filename", "")))
        exc = exc.__context__
    assert not any("state.json" in f or "summary.txt" in f for f in chain), chain  # no second error chained on
    folder = home.root / "campaigns" / "full"
    info = json.loads((folder / "campaign.json").read_text())
    assert info["status"] == "failed"
    kept = set(Store(home).experiments("full")["experiment_id"])
    assert len(kept) == 2 and info["recorded"] == 2
    assert not list(folder.rglob("*.tmp"))  # every failed write removed its temp file
    summary = run_campaign(home, ds.root, "full", budget=8, round_size=2, seeds=1, space_path=space,
                           policies=["random"], log=lambda line: None)  # space freed: resume
    assert summary.recorded == 8 and kept <= set(Store(home).experiments("full")["experiment_id"])
    assert not list(folder.rglob("*.tmp"))


def test_a_full_disk_in_the_cli_is_one_line_naming_the_path(own_home, monkeypatch, capsys):
    from crashsearch.flows import campaign as campaign_flow

    home, ds, space = own_home

    def full_campaign(**params):  # the flow's Campaign, on a disk that fills at the first log part
        return run_campaign(home, params["dataset"], params["campaign"], budget=2, seeds=1, space_path=space,
                            policies=["random"], log=lambda line: None)

    monkeypatch.setattr(campaign_flow, "get_campaign_flow", lambda: full_campaign)
    _FullDisk(at=1).patch(monkeypatch)
    err = _refused_in_one_line(capsys, ["campaign", "--dataset", str(ds.root), "--home", str(home.root),
                                        "--space", space, "--budget", "2", "--campaign", "full-cli",
                                        "--policies", "random"])
    assert "part-" in err and "No space left on device" in err and "everything recorded is kept" in err


def test_a_folder_that_cannot_be_created_is_the_users_mistake(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["synth", "--out", str(blocker / "ds"), "--videos", "1", "--home", str(tmp_path / "h")],
                 ["synth", "--videos", "1", "--home", str(blocker / "home")],
                 ["synth", "--out", "/proc/no-such-folder", "--videos", "1", "--home", str(tmp_path / "h")]):
        err = _refused_in_one_line(capsys, argv)
        assert "internal error" not in err and ("a-file" in err or "/proc" in err), err


@pytest.mark.slow
def test_calls_that_fail_together_count_once(lab_home, server):
    """Eight calls out at once when the API answers 500 are one failure, not eight: the agents are
    not given up on after a single burst."""
    home, ds, space_path = lab_home
    space = Space.load(space_path)
    server.anthropic(*[error(500) for _ in range(8)])
    server.gemini(*[error(500) for _ in range(8)])
    pool = [space.cell(i) for i in range(space.full_size) if space.cell(i)["backbone"] == "pixels"]
    counter = {"anthropic": 0, "gemini": 0}
    server.respond_with("anthropic", _proposer("anthropic", pool, counter))
    server.respond_with("gemini", _proposer("gemini", pool[len(pool) // 2:], counter))
    summary = run_campaign(home, ds.root, "llm-burst", policies=("claude", "gemini"), budget=12, seeds=1,
                           space_path=space_path, policy_kwargs={"claude": dict(FAST, proposals_per_round=1),
                                                                 "gemini": dict(FAST, proposals_per_round=1)},
                           propose_mode="pipeline", max_calls_in_flight=8, group_wait_s=0.05, log=lambda m: None)
    assert summary.recorded == 12 and summary.stopped == "budget", summary.format()


def test_a_damaged_pid_in_campaign_json_is_no_live_run(store, space):
    from crashsearch.flows.status import campaign_status

    _recorded(store, space, "c1", 2)
    for pid in (0, -1, True, 10 ** 30, "123"):
        # written by hand (write_campaign refuses such a pid where it enters: tests/test_poison.py)
        path = store.home.root / "campaigns" / "c1" / "campaign.json"
        info = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**info, "status": "running", "pid": pid,
                                    "host": __import__("socket").gethostname()}))
        assert next(r for r in campaign_status(store.home) if r["campaign"] == "c1")["status"] == "stopped (crashed?)", pid
        assert store.query("SELECT status FROM campaigns")["status"][0] == "stopped (crashed?)"


def test_a_bad_keep_models_is_the_users_mistake_and_a_home_with_only_logs_is_still_a_home(tmp_path, capsys):
    # found merging: CampaignConfig re-raised parse_keep's error as a plain ValueError (internal error, exit 70),
    # and the internal-error log it wrote made the fresh home "not a crashsearch home" for every reading command
    from crashsearch.flows.cli import main as cli

    home = tmp_path / "home"
    assert cli(["campaign", "--home", str(home), "--dataset", str(tmp_path / "nowhere"), "--keep-models", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--keep-models" in err and "internal error" not in err, err
    (home / "logs").mkdir(parents=True, exist_ok=True)  # what an internal error of a first command leaves
    (home / "logs" / "internal-x.txt").write_text("Traceback ...")
    assert cli(["status", "--home", str(home)]) == 0, capsys.readouterr().err
