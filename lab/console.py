"""The terminal while a campaign runs: one progress bar, log lines above it, no per-batch chatter.

* ``progress_bar`` opens a tqdm bar on stderr when stderr is a terminal. While it is open, every
  logging handler that writes to the terminal (Prefect's console handler included) writes through
  ``tqdm.write``, so a log line prints above the bar instead of being glued to its end
  (``experiments: 48%|... ]19:57:29.581 | INFO | Task run ...``). In a pipe or a file there is
  no bar (its carriage returns would garble the file): a plain line says how far the run got,
  at most every ``PIPE_LINE_SECONDS`` and when it ends.
* A heartbeat thread redraws every open bar each ``HEARTBEAT_SECONDS`` (a pipe: a line when the last
  is ``PIPE_LINE_SECONDS`` old) with what is in training, for how long, and the last result
  (``Activity``): a batch that trains for minutes never leaves the terminal silent.
* ``echo`` prints one line to stderr, above the bar when one is open: the campaign's own messages.
* Prefect's own INFO lines (its temporary server's notice, "Beginning flow run", "Finished in
  state Completed()") stay off the terminal unless verbose (``quiet_prefect_info``).
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
import os
import sys
import threading
import time

PIPE_LINE_SECONDS = 25.0
HEARTBEAT_SECONDS = 5.0  # how often an open bar is redrawn (a pipe gets a line every PIPE_LINE_SECONDS)
TASK_LOGGER = "prefect.task_runs"

_bars: list = []  # tqdm bars open now (a campaign opens one at a time)
_beating: list = []  # every open bar, tqdm or plain lines: the heartbeat redraws them
_heart = threading.Lock()
_verbose = [False]


def set_verbose(verbose: bool) -> None:
    """Show Prefect's per-batch task logs on the terminal (``--verbose``) or not (the default)."""
    _verbose[0] = bool(verbose)


def is_verbose() -> bool:
    """``--verbose``, or ``CRASHSEARCH_VERBOSE=1`` for any command: Prefect's INFO lines reach the terminal."""
    return _verbose[0] or os.environ.get("CRASHSEARCH_VERBOSE", "").strip().lower() in ("1", "true", "yes")


class _QuietPrefect(logging.Filter):
    """Drop the INFO lines of Prefect's own code on the terminal (the temporary server's notice,
    "Beginning flow run", "Finished in state Completed()") unless verbose. What a flow prints
    (``log_prints``) is logged from our code and passes; warnings and errors pass; the Prefect API
    (the UI's logs) is another handler and gets every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING or not record.pathname.startswith(_prefect_dir())
                or is_verbose())


@functools.cache
def _prefect_dir() -> str:
    import prefect

    return os.path.dirname(prefect.__file__) + os.sep


_QUIET_PREFECT = _QuietPrefect()


def quiet_prefect_info() -> None:
    """Put the filter above on every handler that writes to the terminal now."""
    for handler in console_handlers(sys.stderr):
        if _QUIET_PREFECT not in handler.filters:
            handler.addFilter(_QUIET_PREFECT)


def echo(message: str) -> None:
    """Print ``message`` on its own line on stderr, above an open progress bar."""
    if _bars:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def progress_bar(total: int, initial: int = 0, desc: str = "experiments", unit: str = "exp", disable: bool = False):
    """A progress bar on stderr with ``update(n)``, ``set_postfix_str(s)``, ``training(n)``,
    ``result(text)`` and ``close()``.

    A tqdm bar on a terminal (log lines print above it until ``close``); plain lines otherwise.
    Either way it is redrawn every ``HEARTBEAT_SECONDS`` while open, with what is in training and
    the last result, so a long batch never leaves the terminal silent. ``disable``: a bar that shows nothing.
    """
    if disable:
        return _NoBar()
    stream = sys.stderr
    quieted = _quiet_batches(stream)
    if not _is_terminal(stream):
        bar = _LineProgress(total, initial, desc, unit, stream, quieted)
    else:
        bar = _routed_bar_class()(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
        bar.routed, bar.quieted = _route_handlers(stream), quieted
        _bars.append(bar)
    _start_heartbeat(bar)
    return bar


class _NoBar:
    """The bar's interface, showing nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None: ...
    def training(self, n: int) -> None: ...
    def result(self, text: str) -> None: ...
    def close(self) -> None: ...


class Activity:
    """What a bar says between two results, so a long batch never leaves the terminal silent:
    experiments in training and for how long, the last result and how long ago.

    ``clock`` is injectable (tests); ``training(n)`` and ``result(text)`` are called by the campaign."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.n, self.since = 0, clock()
        self.last, self.last_at = "", None

    def training(self, n: int) -> None:
        if n != self.n:
            self.n, self.since = n, self.clock()

    def result(self, text: str) -> None:
        self.last, self.last_at = text, self.clock()

    def text(self) -> str:
        now, parts = self.clock(), []
        if self.n:
            parts.append(f"{self.n} in training for {_duration(now - self.since)}")
        if self.last:
            parts.append(f"last: {self.last}, {_duration(now - self.last_at)} ago")
        return "; ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def _start_heartbeat(bar) -> None:
    """Register ``bar`` with the heartbeat thread (started with the first bar, ends with the last)."""
    with _heart:
        _beating.append(bar)
        if len(_beating) == 1:
            threading.Thread(target=_heartbeat, name="progress-heartbeat", daemon=True).start()


def _stop_heartbeat(bar) -> None:
    with _heart:
        if bar in _beating:
            _beating.remove(bar)


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        with _heart:
            bars = list(_beating)
        if not bars:
            return
        for bar in bars:
            try:
                bar.beat()
            except Exception:  # a closed stream: the bar is gone, the campaign is not
                _stop_heartbeat(bar)


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


def console_handlers(stream) -> list[logging.StreamHandler]:
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
    for handler in console_handlers(stream):
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
        """tqdm that puts the logging handlers back when it closes, and says what trains meanwhile."""

        routed: list = []
        quieted: list = []
        activity: Activity | None = None
        postfix_text = ""

        def training(self, n: int) -> None:
            self._activity().training(n)

        def result(self, text: str) -> None:
            self._activity().result(text)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            self.postfix_text = s
            self._show(refresh)

        def beat(self) -> None:
            """Redraw (the elapsed time, what trains and for how long): the heartbeat calls it."""
            if not self.disable:
                self._show(True)

        def _activity(self) -> Activity:
            if self.activity is None:
                self.activity = Activity()
            return self.activity

        def _show(self, refresh: bool) -> None:
            extra = self.activity.text() if self.activity is not None else ""
            super().set_postfix_str("; ".join(t for t in (self.postfix_text, extra) if t), refresh=refresh)

        def close(self):
            _stop_heartbeat(self)
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

    def __init__(self, total: int, initial: int, desc: str, unit: str, stream, quieted: list, clock=time.monotonic):
        self.total, self.n, self.desc, self.unit, self.stream, self.quieted = total, initial, desc, unit, stream, quieted
        self.postfix = ""
        self.clock, self.started = clock, clock()
        self.last = self.started
        self.closed = False
        self.activity = Activity(clock)
        self.lock = threading.Lock()  # the heartbeat thread prints too

    def update(self, n: int = 1) -> None:
        self.n += n
        self.beat()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def training(self, n: int) -> None:
        self.activity.training(n)

    def result(self, text: str) -> None:
        self.activity.result(text)

    def beat(self) -> None:
        """A line when the last is ``PIPE_LINE_SECONDS`` old (the heartbeat calls it between results)."""
        if self.clock() - self.last >= PIPE_LINE_SECONDS:
            self._line()

    def close(self) -> None:
        _stop_heartbeat(self)
        if not self.closed:
            self.closed = True
            self._line()
            _unquiet(self.quieted)

    def _line(self) -> None:
        with self.lock:
            self.last = self.clock()
            tail = "; ".join(t for t in (self.postfix, self.activity.text()) if t)
            tail = f" ({tail})" if tail else ""
            # written, not printed: a flow with log_prints would turn a print into a Prefect log record
            self.stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit}, "
                              f"{_duration(self.last - self.started)} elapsed{tail}\n")
            self.stream.flush()


class _QuietBatches(logging.Filter):
    """Drop per-task INFO lines (one per training batch) on the terminal; keep warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(TASK_LOGGER) and record.levelno < logging.WARNING)


_QUIET = _QuietBatches()


def _quiet_batches(stream) -> list[logging.Handler]:
    """Unless verbose, filter per-batch task INFO lines out of the terminal handlers; return them."""
    if _verbose[0]:
        return []
    handlers = [h for h in console_handlers(stream) if _QUIET not in h.filters]
    for handler in handlers:
        handler.addFilter(_QUIET)
    return handlers


def _unquiet(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        handler.removeFilter(_QUIET)
