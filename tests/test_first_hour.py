"""The first hour of a new user (issue 21): threads sized to the cores free, a terminal that talks
during long batches and stays clean in a pipe, a cache hit without a Prefect server, each home's
own Prefect state, a wrong folder named as such, defaults in --help, README examples the demo backs."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from crashsearch.flows.campaign import run_campaign
from crashsearch.flows.cli import main as cli_main
from crashsearch.lab import console
from crashsearch.tasks.train import train_batch

from tests.test_campaign import lab_home  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


# ---- threads: the cores free, never more busy threads than cores ----------------------------------

def test_threads_are_the_cores_left_by_the_other_processes_load():
    from crashsearch.lab.cpu import cores_free, threads_per_worker

    assert cores_free(cores=2, load=0.2) == 2
    assert cores_free(cores=2, load=1.0) == 1  # one busy neighbour on 2 cores: one thread, not two spinning
    assert cores_free(cores=2, load=7.0) == 1  # never none
    assert cores_free(cores=16, load=3.4) == 13
    assert threads_per_worker(2, {"OMP_NUM_THREADS": "4"}) == 2 and threads_per_worker(3, {"OMP_NUM_THREADS": "2"}) == 1


def test_the_cli_lets_waiting_threads_sleep_and_keeps_the_users_own_settings():
    from crashsearch.lab.cpu import configure_cpu_threads

    env = {}
    n = configure_cpu_threads(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == str(n) and n >= 1
    mine = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert configure_cpu_threads(mine) == 3 and mine == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}


def test_pipeline_trainers_share_the_cores_instead_of_each_taking_all(lab_home, monkeypatch):
    # before: two trainer threads each ran torch's full team (one thread per core): 2x the cores busy
    import torch

    home, ds, space = lab_home
    seen = []

    def train(*args):
        seen.append(torch.get_num_threads())
        return train_batch(*args)

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        run_campaign(home, ds.root, "threads", budget=4, seeds=1, space_path=space, propose_mode="pipeline",
                     trainers_per_device=2, device="cpu", train_fn=train, log=lambda m: None)
        assert seen and set(seen) == {2}, seen  # 4 cores over 2 trainers
        assert torch.get_num_threads() == 4  # put back after the run
    finally:
        torch.set_num_threads(before)


# ---- a terminal that talks: the heartbeat ------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_between_results_the_bar_says_what_trains_for_how_long_and_the_last_result():
    clock = FakeClock()
    activity = console.Activity(clock)
    assert activity.text() == ""
    activity.training(12)
    clock.now += 95
    assert activity.text() == "12 in training for 1m35s"
    activity.result("12 exp, best pixels/gru/medium val AP 0.7812")
    activity.training(0)
    clock.now += 7
    assert activity.text() == "last: 12 exp, best pixels/gru/medium val AP 0.7812, 7s ago"


def test_in_a_pipe_the_heartbeat_writes_a_line_every_pipe_interval_during_a_long_batch(monkeypatch):
    clock, stream = FakeClock(), io.StringIO()
    bar = console._LineProgress(10, 0, "experiments", "exp", stream, [], clock=clock)
    bar.training(4)
    clock.now += console.PIPE_LINE_SECONDS / 2
    bar.beat()
    assert stream.getvalue() == ""  # not yet: at most one line per interval
    clock.now += console.PIPE_LINE_SECONDS / 2
    bar.beat()
    assert stream.getvalue() == f"experiments: 0/10 exp, {int(console.PIPE_LINE_SECONDS)}s elapsed " \
                                f"(4 in training for {int(console.PIPE_LINE_SECONDS)}s)\n"
    bar.close()


def test_on_a_terminal_the_heartbeat_redraws_the_bar_with_what_trains():
    from test_console import FakeTerminal

    stream = FakeTerminal()
    bar = console._routed_bar_class()(total=4, file=stream)
    bar.set_postfix_str("best val AP 0.8000")
    bar.training(3)
    bar.beat()
    shown = re.split(r"[\r\n]", stream.getvalue())[-1]
    assert "best val AP 0.8000; 3 in training for 0s" in shown
    bar.close()


def test_a_long_batch_never_leaves_the_campaign_silent(lab_home, monkeypatch):
    """The batch trains until the heartbeat has spoken (a real thread, stderr a pipe): before, the bar
    moved only when a batch ended, so a 5-minute batch was 5 minutes of silence."""
    home, ds, space = lab_home
    monkeypatch.setattr(console, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(console, "PIPE_LINE_SECONDS", 0.1)
    spoke = threading.Event()

    class Stderr(io.StringIO):
        def write(self, text):
            if "in training for" in text:
                spoke.set()
            return super().write(text)

    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)

    def slow_train(*args):
        assert spoke.wait(20), "nothing printed while the batch trained"
        return train_batch(*args)

    run_campaign(home, ds.root, "heartbeat", budget=2, round_size=2, seeds=1, space_path=space,
                 propose_mode="turns", progress=True, train_fn=slow_train, log=lambda m: None)
    lines = stderr.getvalue().splitlines()
    assert any(re.match(r"experiments: 0/2 exp, \d+s elapsed \(\d in training for \d+s\)", line) for line in lines), lines
    assert re.search(r"experiments: 2/2 exp, .*last: \d exp, best pixels/", lines[-1]), lines


# ---- each home keeps its Prefect state; a wrong folder says so; --help shows defaults ---------------

def test_a_homes_local_runs_keep_their_prefect_state_in_the_home(tmp_path, monkeypatch):
    from crashsearch.flows.runtime import prefect_home_with

    for key in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(key, raising=False)
    prefect_home_with(tmp_path / "home")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "home" / ".prefect")
    monkeypatch.setenv("PREFECT_HOME", "/somewhere/mine")  # the user's own choice wins
    prefect_home_with(tmp_path / "home")
    assert os.environ["PREFECT_HOME"] == "/somewhere/mine"
    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")  # a server keeps its own state
    prefect_home_with(tmp_path / "home")
    assert "PREFECT_HOME" not in os.environ


@pytest.mark.parametrize("argv", [["leaderboard"], ["query", "SELECT count(*) FROM experiments"], ["status"]])
def test_a_reading_command_in_the_wrong_folder_says_there_is_no_home_and_creates_none(argv, tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRASHSEARCH_HOME", raising=False)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"{argv[0]}: no crashsearch home at {tmp_path / 'crashsearch-data'} (no such folder); "
        f"point at one with --home DIR or CRASHSEARCH_HOME=DIR"]
    assert list(tmp_path.iterdir()) == []  # reading created nothing
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert cli_main([*argv, "--home", str(tmp_path / "notes")]) == 2
    assert "is not a crashsearch home" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    for argv, wanted in ((["synth", "--help"], ["--videos VIDEOS      (default: 48)", "--seed SEED          (default: 0)"]),
                         (["campaign", "--help"], ["(default: 60)", "(default: evolution,tpe,random)"]),
                         (["leaderboard", "--help"], ["(default: 10)"])):
        with pytest.raises(SystemExit):
            cli_main(argv)
        out = " ".join(capsys.readouterr().out.split())
        for text in wanted:
            assert " ".join(text.split()) in out, (argv, text)


# ---- the demo's closing lines and README's examples work after `make demo` --------------------------

def test_the_demo_prints_a_command_that_works_in_a_new_shell(tmp_path, monkeypatch):
    from crashsearch.flows.commands.demo import shell_command

    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "crashsearch").write_text("#!/bin/sh\n")
    (venv / "crashsearch").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as after `make demo`: .venv/bin is not on PATH
    assert shell_command() == ".venv/bin/crashsearch"
    monkeypatch.setenv("PATH", f"{venv}:/usr/bin:/bin")  # an activated venv
    assert shell_command() == "crashsearch"


def test_readme_examples_name_campaigns_the_demo_creates():
    text = (REPO / "README.md").read_text()
    demo = {"demo-day", "demo-night"}
    notebook = re.search(r"```python\nimport crashsearch as cs\n(.*?)```", text, re.S).group(1)
    named = set(re.findall(r'home\.(?:history|leaderboard|analyze|numbers)\("([^"]+)"', notebook))
    assert named and named <= demo, named
    commands = re.findall(r"^\s+crashsearch (?:leaderboard|benchmark|analyze|export)\b.*?--campaign (\S+)", text, re.M)
    assert commands and set(commands) <= demo | {"paper"}, commands  # paper: imported in the line before
    assert "source .venv/bin/activate" in text  # `make demo` does not put crashsearch or duckdb on PATH


# ---- extract: a clean pipe, a cache hit without a server, Prefect state in the home ------------------

@pytest.mark.slow
def test_extract_in_a_pipe_is_quiet_and_a_cache_hit_starts_no_prefect_server(synth_dataset, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL", "CRASHSEARCH_VERBOSE")}
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # what a user has: Prefect's default level
    cmd = [sys.executable, "-m", "crashsearch", "extract", "--home", str(home), "--dataset", str(synth_dataset.root),
           "--backbone", "pixels"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    assert "\r" not in out and "extract pixels: 12/12 video" in out  # plain lines, no carriage returns
    assert not re.search("Starting temporary server|Beginning flow run|Finished in state", out), out
    assert (home / ".prefect" / "prefect.db").exists()  # this home's runs, not ~/.prefect's shared database
    again = subprocess.run(cmd, capture_output=True, text=True, env={**env, "CRASHSEARCH_VERBOSE": "1"}, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "cache hit: synth-day/pixels/" in out, out[-3000:]
    assert "Starting temporary server" not in out and "flow run" not in out.lower()  # answered before any flow
