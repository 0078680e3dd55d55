"""Shared test set-up: an isolated Prefect home and small thread counts (2-core machines)."""
from __future__ import annotations

import os
import signal
import tempfile

import pytest

# A test run started in the background of a non-interactive shell (`make test &` in a script) inherits
# SIGINT ignored, and so would every command a test starts: the Ctrl-C tests would signal processes
# that cannot hear it and wait forever. Catch it again here: exec resets a caught signal to its
# default, so the commands start as they would from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Before anything imports prefect: every test session gets its own Prefect home and ephemeral
# server, so tests never touch a user's Prefect state or a running server.
_PREFECT_HOME = tempfile.mkdtemp(prefix="crashsearch-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# no test may reach the internet, and no test may spend a real API key
for key in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
    os.environ.pop(key, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the local scratch of s3:// homes and their object cache (lab/storage_s3.py): never the user's ~/.cache
os.environ.setdefault("CRASHSEARCH_SCRATCH", tempfile.mkdtemp(prefix="crashsearch-scratch-"))


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A tiny synthetic day dataset made once per session: 12 videos (6 positive), 64x48, 8 fps, 8 s.

    Positive events sit at 6.8-7.7 s, so extraction has its 6.5 s of history. Returns the loaded
    lab.datasets.Dataset; treat its files as read-only.
    """
    from crashsearch.lab.synth import generate  # lazy, so conftest stays cheap to import

    return generate(tmp_path_factory.mktemp("synth") / "synth-day", videos=12, seed=0, style="day",
                    width=64, height=48, fps=8, seconds=8.0)


# The default space, an empty home and its store: shared by the store, catalog and safety tests
# (a test module that needs another kind defines its own fixture of the same name).
@pytest.fixture(scope="module")
def space():
    from crashsearch.lab.space import Space

    return Space.load()


@pytest.fixture
def home(tmp_path):
    from crashsearch.lab.settings import Home

    return Home(tmp_path / "home")


@pytest.fixture
def store(home):
    from crashsearch.lab.store import Store

    return Store(home)


# ---- a real S3 API on 127.0.0.1 (tests/s3_server.py): one moto server per session, a bucket per test ----
@pytest.fixture(scope="session")
def s3_server():
    from tests.s3_server import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_home(s3_server, monkeypatch):
    """``s3://<fresh bucket>/home`` on the session's S3 server, with the AWS environment pointing at it."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{s3_server.make_bucket()}/home"
