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
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # telemetry needs the internet and races the db set-up
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 2-core machines start it slowly
}


class _DropShutdownNoise(logging.Filter):
    """Drop cancellation tracebacks that a stopping temporary server logs (nothing failed)."""

    NOISE = ("CancelledError", "Failed to send telemetry")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            text += record.exc_info[0].__name__
        return not any(n in text for n in self.NOISE)


_NOISE = _DropShutdownNoise()
_AT_EXIT = []  # whether the exit-time pass is registered (once per process)


def configure_prefect_env() -> None:
    """Set the local-run defaults above unless the user set them."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


def filter_shutdown_noise() -> None:
    """Put the noise filter on every handler that exists now (root and every named logger)."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if _NOISE not in handler.filters:
                handler.addFilter(_NOISE)


@contextlib.contextmanager
def quiet_prefect():
    """Context for a CLI flow run: quiet defaults in, shutdown noise filtered out until the process ends."""
    configure_prefect_env()
    import prefect  # noqa: F401  (sets up Prefect's logging handlers, which the filter goes on)

    filter_shutdown_noise()
    try:
        yield
    finally:
        filter_shutdown_noise()  # handlers made during the run
        if not _AT_EXIT:
            # registered after the temporary server's own stop hook, so it runs just before it
            atexit.register(filter_shutdown_noise)
            _AT_EXIT.append(True)
