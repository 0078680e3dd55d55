"""Running flows quietly in one process against Prefect's temporary server.

Local runs start Prefect's temporary (ephemeral) server, a subprocess that writes to our
stderr. Two things made them noisy:

* the server's telemetry service: on a fresh PREFECT_HOME its first write races the database
  set-up and prints a "database is locked" traceback (and it needs the internet anyway).
  ``configure_prefect_env`` turns analytics off; the CLI calls it for every command, and the
  server subprocess inherits it. This is the only cure: a filter in our process cannot reach
  the server's output.
* asyncio cancellation tracebacks logged while things shut down. ``quiet_prefect`` filters
  them (and the telemetry message) out of every logging handler of this process. The temporary
  server stops at interpreter exit, after the ``with`` block, so the filter stays on the
  handlers until the process ends; it drops only those two kinds of record, real errors print.

The temporary server must also never outlive the command. Prefect stops it at interpreter exit,
which a SIGKILL (or a crash of the interpreter) skips. ``bind_server_to_parent`` gives each
temporary server a watchdog, a tiny process that polls the command's pid twice a second and
stops the server (SIGTERM, then SIGKILL) once the command is gone, however it went.

Nor may the server die before the command: a terminal's Ctrl-C (and ``timeout -s INT``) signals
the whole foreground process group, and a server in our group stopped at once, so the flow's
last state updates and the log/event workers retried a dead server for minutes ("Connection
refused" tracebacks, "Finished in state Running()"). The server therefore starts in its own
session: only the command hears the signal, and the server stops after it (at exit, or by the
watchdog).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from crashsearch.lab.console import quiet_prefect_info

from crashsearch.lab.errors import is_user_error

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # telemetry needs the internet and races the db set-up
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 2-core machines start it slowly
}


class _DropShutdownNoise(logging.Filter):
    """Drop cancellation tracebacks that a stopping temporary server logs (nothing failed)."""

    NOISE = ("CancelledError", "Failed to send telemetry", "Still processing items")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            if is_user_error(record.exc_info[1]) and text.startswith("Encountered exception"):
                return False  # a user's error: the CLI prints it in one line, without Prefect's traceback
            text += record.exc_info[0].__name__
        return not any(n in text for n in self.NOISE)


_NOISE = _DropShutdownNoise()
_AT_EXIT = []  # whether the exit-time pass is registered (once per process)


def configure_prefect_env() -> None:
    """Set the local-run defaults above unless the user set them."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


def prefect_home_with(root: Path) -> None:
    """Keep the Prefect state of a home's local runs with the home: ``PREFECT_HOME=<root>/.prefect``.

    Every temporary server otherwise shares ``~/.prefect/prefect.db``: two homes' runs raced for
    its lock ("database is locked") and the UI mixed their artifacts. Left alone when the user set
    PREFECT_HOME or PREFECT_API_URL points at a server. The user's profiles file stays in force
    (PREFECT_PROFILES_PATH), so a profile that names a server still does. Must run before prefect
    is imported: it reads its settings once."""
    if os.environ.get("PREFECT_HOME") or os.environ.get("PREFECT_API_URL"):
        return
    profiles = Path("~/.prefect/profiles.toml").expanduser()
    if profiles.exists():
        os.environ.setdefault("PREFECT_PROFILES_PATH", str(profiles))
    os.environ["PREFECT_HOME"] = str(Path(root) / ".prefect")


def filter_shutdown_noise() -> None:
    """Put the noise filter on every handler that exists now (root and every named logger)."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if _NOISE not in handler.filters:
                handler.addFilter(_NOISE)
    quiet_prefect_info()  # and Prefect's own INFO lines off the terminal unless verbose


@contextlib.contextmanager
def quiet_prefect():
    """Context for a CLI flow run: quiet defaults in, shutdown noise filtered out until the process ends."""
    configure_prefect_env()
    import prefect  # noqa: F401

    try:  # Prefect makes its console handler lazily, at the first flow run: make it now, for the filters
        from prefect.logging.configuration import ensure_logging_setup
    except ImportError:
        pass
    else:
        ensure_logging_setup()

    bind_server_to_parent()
    filter_shutdown_noise()
    try:
        yield
    finally:
        filter_shutdown_noise()  # handlers made during the run
        if not _AT_EXIT:
            # registered after the temporary server's own stop hook, so it runs just before it
            atexit.register(filter_shutdown_noise)
            _AT_EXIT.append(True)


WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
while alive(server):
    if not alive(parent):
        os.kill(server, signal.SIGTERM)
        for _ in range(50):
            if not alive(server):
                break
            time.sleep(0.1)
        else:
            os.kill(server, signal.SIGKILL)
        break
    time.sleep(0.5)
"""


class _OwnSession:
    """``subprocess`` as Prefect's server module sees it while it starts the server: every Popen
    gets its own session, out of reach of the signals a terminal sends to the command's group."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802  (subprocess's name)
        return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})


def bind_server_to_parent() -> None:
    """Give every temporary Prefect server this process starts a watchdog (see the module docstring).

    Wraps ``SubprocessASGIServer._run_uvicorn_command`` once per process; a Prefect without it
    is left alone."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return
    original = SubprocessASGIServer._run_uvicorn_command
    if getattr(original, "_crashsearch_watchdog", False):
        return

    def run_with_watchdog(self):
        module = sys.modules[SubprocessASGIServer.__module__]
        module.subprocess = _OwnSession()
        try:
            process = original(self)
        finally:
            module.subprocess = subprocess
        try:
            subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(process.pid)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own session: a Ctrl-C for the command spares it
        except OSError as exc:  # no watchdog: the server still stops at a normal exit
            logging.getLogger(__name__).warning("could not start the temporary server's watchdog: %s", exc)
        return process

    run_with_watchdog._crashsearch_watchdog = True
    SubprocessASGIServer._run_uvicorn_command = run_with_watchdog
