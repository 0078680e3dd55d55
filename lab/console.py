"""The terminal while a campaign runs: one progress bar, log lines above it, no per-batch chatter.

* ``progress_bar`` opens a tqdm bar on stderr when stderr is a terminal. While it is open, every
  logging handler that writes to the terminal (Prefect's console handler included) writes through
  ``tqdm.write``, so a log line prints above the bar instead of being glued to its end
  (``experiments: 48%|... ]19:57:29.581 | INFO | Task run ...``). In a pipe or a file there is
  no bar (its carriage returns would garble the file): a plain line says how far the run got,
  at most every ``PIPE_LINE_SECONDS`` and when it ends.
* ``echo`` prints one line to stderr, above the bar when one is open: the campaign's own messages.
* Prefect logs a line per finished task run, one per training batch. While a bar (or its pipe
  form) is open, the terminal shows only their warnings and errors unless ``set_verbose(True)``
  (``crashsearch campaign --verbose``); the Prefect API (the UI's logs tab) still gets every line.
  The bar applies this when it opens, inside the flow run: Prefect sets up its handlers again when
  a flow starts, so a filter put on them before would miss the new ones.
"""
from __future__ import annotations

import functools
import io
import logging
import sys
import time

PIPE_LINE_SECONDS = 30.0
TASK_LOGGER = "prefect.task_runs"

_bars: list = []  # bars open now (a campaign opens one at a time)
_verbose = [False]


def set_verbose(verbose: bool) -> None:
    """Show Prefect's per-batch task logs on the terminal (``--verbose``) or not (the default)."""
    _verbose[0] = bool(verbose)


def echo(message: str) -> None:
    """Print ``message`` on its own line on stderr, above an open progress bar."""
    if _bars:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def progress_bar(total: int, initial: int = 0, desc: str = "experiments", unit: str = "exp"):
    """A progress bar on stderr with ``update(n)``, ``set_postfix_str(s)`` and ``close()``.

    A tqdm bar on a terminal (log lines print above it until ``close``); plain lines otherwise.
    """
    stream = sys.stderr
    quieted = _quiet_batches(stream)
    if not _is_terminal(stream):
        return _LineProgress(total, initial, desc, unit, stream, quieted)
    bar = _routed_bar_class()(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    bar.routed, bar.quieted = _route_handlers(stream), quieted
    _bars.append(bar)
    return bar


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _AboveBar(io.TextIOBase):
    """A text stream that writes through ``tqdm.write``: the bar is cleared, the text printed, the bar redrawn."""

    def __init__(self, real):
        self.real = real

    def write(self, text: str) -> int:
        if text:
            from tqdm import tqdm

            tqdm.write(text, file=self.real, end="")
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return _is_terminal(self.real)

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.real, "encoding", "utf-8")


def _console_handlers(stream) -> list[logging.StreamHandler]:
    """Handlers of every logger that write to ``stream`` (or to the other standard stream)."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    out = []
    for logger in loggers:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler) and handler.stream in (stream, sys.stdout, sys.stderr)
                    and handler not in out):
                out.append(handler)
    return out


def _route_handlers(stream) -> list[tuple[logging.StreamHandler, object]]:
    """Point terminal handlers at ``_AboveBar``; return (handler, old stream) to put back."""
    routed = []
    for handler in _console_handlers(stream):
        old = handler.stream
        proxy = _AboveBar(old)
        handler.setStream(proxy)
        console = getattr(handler, "console", None)  # Prefect's handler prints through a rich Console
        if console is not None and getattr(console, "file", None) is old:
            console.file = proxy
        routed.append((handler, old))
    return routed


def _unroute(routed: list) -> None:
    for handler, old in routed:
        if isinstance(handler.stream, _AboveBar):
            handler.setStream(old)
        console = getattr(handler, "console", None)
        if console is not None and isinstance(getattr(console, "file", None), _AboveBar):
            console.file = old


@functools.cache
def _routed_bar_class():
    from tqdm import tqdm  # imported only when a bar opens

    class RoutedBar(tqdm):
        """tqdm that puts the logging handlers back when it closes."""

        routed: list = []
        quieted: list = []

        def close(self):
            try:
                super().close()
            finally:
                if self in _bars:
                    _bars.remove(self)
                _unroute(self.routed)
                _unquiet(self.quieted)
                self.routed = self.quieted = []

    return RoutedBar


class _LineProgress:
    """The bar's interface for a pipe: a plain progress line now and then, and one at the end."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, stream, quieted: list):
        self.total, self.n, self.desc, self.unit, self.stream, self.quieted = total, initial, desc, unit, stream, quieted
        self.postfix = ""
        self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= PIPE_LINE_SECONDS:
            self._line()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()
            _unquiet(self.quieted)

    def _line(self) -> None:
        self.last = time.monotonic()
        tail = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{tail}", file=self.stream, flush=True)


class _QuietBatches(logging.Filter):
    """Drop per-task INFO lines (one per training batch) on the terminal; keep warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(TASK_LOGGER) and record.levelno < logging.WARNING)


_QUIET = _QuietBatches()


def _quiet_batches(stream) -> list[logging.Handler]:
    """Unless verbose, filter per-batch task INFO lines out of the terminal handlers; return them."""
    if _verbose[0]:
        return []
    handlers = [h for h in _console_handlers(stream) if _QUIET not in h.filters]
    for handler in handlers:
        handler.addFilter(_QUIET)
    return handlers


def _unquiet(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        handler.removeFilter(_QUIET)
