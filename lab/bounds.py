"""The domains readers of persistent state can handle, checked in one place by writers and readers.

A value that enters the home (campaign.json, bugfix_events.jsonl, state.json, the experiment log)
is checked here where it enters, and refused in one line naming it: once recorded, every later
command reads it, so one out-of-range value would break the whole home. Readers use the same
checks to skip an entry written by an older version or by hand, naming the file and the entry once.

- integers: what a DuckDB BIGINT, an Arrow int64 and a numpy int64 hold;
- times: what pandas' nanosecond timestamps hold (the analysis and the bug-fix segmentation
  compute in nanoseconds), rounded inward to whole years: 1678-01-01 to 2261-12-31 UTC;
- numbers: finite (an inf sorts above every real value and breaks every mean).
"""
from __future__ import annotations

import logging
import math
import numbers
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from crashsearch.lab.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
TIME_MIN = datetime(1678, 1, 1, tzinfo=timezone.utc)
TIME_MAX = datetime(2261, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
TIME_RANGE = f"{TIME_MIN.date()} .. {TIME_MAX.date()} UTC"


def check_int(value: Any, name: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """``value`` as an int in ``low..high``; raises ValueError naming ``name`` and the value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # numpy integers too
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} {value!r} is not an integer")
    if not low <= value <= high:
        raise UserError(f"{name} {value} is out of range: it must be {_span(low, high)}")
    return value


def check_number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``low..high``; raises ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"{name} {value} is not a finite number")
    if not low <= value <= high:
        raise UserError(f"{name} {value:g} is out of range: it must be {_span(low, high)}")
    return value


def check_time(value: Any, name: str) -> pd.Timestamp:
    """``value`` (ISO-8601 text, datetime or Timestamp; naive means UTC) as a UTC Timestamp in TIME_RANGE.

    Raises ValueError naming ``name`` and the value when it is not a time or lies outside the range."""
    import pandas as pd  # here: the CLI imports this module while it parses its arguments
    if isinstance(value, bool) or not isinstance(value, (str, datetime)):
        raise UserError(f"{name} {value!r} is not a time")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{name} {value!r} is not a time; use ISO 8601, e.g. 2025-03-01T12:00:00Z") from None
    if ts is pd.NaT or pd.isna(ts):
        raise UserError(f"{name} {value!r} is not a time; use ISO 8601, e.g. 2025-03-01T12:00:00Z")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if not TIME_MIN <= ts <= TIME_MAX:
        raise UserError(f"{name} {ts.isoformat()} is out of range: times must lie in {TIME_RANGE}")
    return ts


def _span(low: float, high: float) -> str:
    def text(x: float) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    if high == math.inf:
        return f"at least {text(low)}"
    if low == -math.inf:
        return f"at most {text(high)}"
    return f"in {text(low)}..{text(high)}"


_SKIPPED: set[tuple[str, str]] = set()


def skip_entry(path: Any, entry: str, why: str) -> None:
    """Say once per process that a reader leaves out ``entry`` of ``path`` (and why), in one line."""
    key = (str(path), f"{entry}: {why}")
    if key not in _SKIPPED:
        _SKIPPED.add(key)
        log.warning("%s: %s ignored (%s)", path, entry, why)
