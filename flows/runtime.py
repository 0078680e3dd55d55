"""Running flows quietly in one process against Prefect's temporary server.

Local runs start Prefect's temporary (ephemeral) server. Two things made them noisy: the
server's telemetry service, which fails on machines without internet, and asyncio
cancellation tracebacks logged while the temporary server shuts down. ``quiet_prefect``
turns the first off and filters the second; real errors still print.
"""
from __future__ import annotations

import contextlib
import logging
import os

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # telemetry needs the internet
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


def configure_prefect_env() -> None:
    """Set the local-run defaults above unless the user set them."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def quiet_prefect():
    """Context for a CLI flow run: quiet defaults in, shutdown noise filtered out."""
    configure_prefect_env()
    noise = _DropShutdownNoise()
    loggers = [logging.getLogger(n) for n in ("prefect", "prefect.server", "uvicorn.error", "asyncio", "prefect.server.services")]
    handlers = [h for lg in loggers for h in lg.handlers] + logging.getLogger().handlers
    for item in loggers + handlers:
        item.addFilter(noise)
    try:
        yield
    finally:
        for item in loggers + handlers:
            item.removeFilter(noise)
