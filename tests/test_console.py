"""A clean terminal: log lines print above the progress bar, per-batch task logs only with --verbose."""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from crashsearch.lab import console
from test_catalog import CAMPAIGN_SPACE

TASKS = console.TASK_LOGGER + ".crashsearch-test"  # a child: its records are task-run records, without the API handler


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch):
    """Swap sys.stderr for a fake terminal and give a logger whose console handler writes to it."""
    def make(terminal: bool):
        stream = FakeTerminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s - %(message)s"))
        for name in ("crashsearch-test", TASKS):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        return stream, handler

    yield make
    for name in ("crashsearch-test", TASKS):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    console.set_verbose(False)


def segments(text: str) -> list[str]:
    """What the terminal shows line by line: the text between carriage returns and newlines."""
    return [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]


def test_log_lines_print_above_the_bar_not_glued_to_it(stderr):
    stream, handler = stderr(terminal=True)
    log, tasks = logging.getLogger("crashsearch-test"), logging.getLogger(TASKS)
    bar = console.progress_bar(4)
    bar.update(1)
    log.info("round 1 done")
    tasks.info("Task run 'train-batch-b17' - Finished in state Completed()")  # per batch: hidden
    tasks.warning("Task run 'train-batch-b18' - retrying")  # a warning always shows
    console.echo("experiment failed: cell 7 -> smaller batch")
    bar.update(3)
    bar.close()
    text = stream.getvalue()
    shown = segments(text)
    assert any(s.endswith("round 1 done") and s.startswith(tuple("0123456789")) for s in shown)  # a line of its own
    assert not any("experiments:" in s and ("round 1 done" in s or "retrying" in s) for s in shown)  # never glued
    assert "experiment failed: cell 7 -> smaller batch" in shown
    assert "train-batch-b17" not in text and "train-batch-b18' - retrying" in text
    assert "4/4" in shown[-1]  # the bar ends the output
    assert handler.stream is stream and not handler.filters  # put back when the bar closes
    tasks.info("after the bar: shown again")
    assert "shown again" in stream.getvalue()


def test_verbose_shows_the_per_batch_task_logs(stderr):
    stream, _ = stderr(terminal=True)
    console.set_verbose(True)
    bar = console.progress_bar(2)
    logging.getLogger(TASKS).info("Task run 'train-batch-b17' - Finished in state Completed()")
    bar.close()
    assert "train-batch-b17" in stream.getvalue()


def test_in_a_pipe_there_is_no_bar_only_plain_lines(stderr):
    stream, _ = stderr(terminal=False)
    bar = console.progress_bar(4)
    bar.update(2)
    logging.getLogger("crashsearch-test").info("round 1 done")
    logging.getLogger(TASKS).info("Task run 'train-batch-b17' - Finished in state Completed()")
    bar.set_postfix_str("best val AP 0.8123")
    bar.update(2)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b[" not in text and "train-batch" not in text
    lines = text.splitlines()
    assert lines[0].endswith("round 1 done") and re.fullmatch(r"experiments: 4/4 exp, \d+s elapsed \(best val AP 0.8123\)",
                                                              lines[-1]), lines


def _campaign_cmd(home, dataset, space, campaign: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "crashsearch", "campaign", "--home", str(home), "--dataset", str(dataset),
            "--space", str(space), "--campaign", campaign, "--budget", "8", "--round-size", "2", "--seeds", "1",
            "--policies", "random", *extra]


@pytest.fixture(scope="module")
def cli_lab(synth_dataset, tmp_path_factory):
    from crashsearch.lab.settings import resolve_home
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path_factory.mktemp("console-home"))
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space = home.root / "tiny.yaml"
    space.write_text(CAMPAIGN_SPACE)
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    return home.root, synth_dataset.root, space, env


@pytest.mark.slow
def test_a_campaign_in_a_pipe_prints_clean_lines(cli_lab):
    home, dataset, space, env = cli_lab
    run = subprocess.run(_campaign_cmd(home, dataset, space, "pipe"), capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\r" not in run.stderr and "Task run" not in run.stderr
    assert "experiments: 8/8 exp" in run.stderr  # the one-line summary stays
    # Prefect's own INFO lines (its server notice, flow-run states) stay off the terminal by default
    assert not re.search("Beginning flow run|Finished in state|Starting temporary server", run.stderr), run.stderr
    assert "campaign pipe on synth" in run.stdout


@pytest.mark.slow
def test_a_campaign_in_a_pseudo_terminal_keeps_logs_off_the_bar(cli_lab, tmp_path):
    script = shutil.which("script")
    if script is None:
        pytest.skip("no `script` command to give the campaign a pseudo-terminal")
    home, dataset, space, env = cli_lab
    out = tmp_path / "typescript"
    inner = "stty cols 120 rows 40; " + " ".join(_campaign_cmd(home, dataset, space, "tty", "--verbose"))
    run = subprocess.run([script, "-qec", inner, str(out)], capture_output=True, env=env, timeout=300)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.read_text(errors="replace"))
    assert run.returncode == 0, text[-3000:]
    shown = segments(text)
    assert any(s.startswith("experiments:") for s in shown)  # the bar was drawn
    assert any("Task run 'train-batch" in s for s in shown)  # --verbose: the per-batch lines
    glued = [s for s in shown if "experiments:" in s and re.search(r"\d\d:\d\d:\d\d\.\d{3} \| ", s)]
    assert glued == []  # no log line glued to the bar
