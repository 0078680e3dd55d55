"""Fail fast on systematic failure: stop a campaign whose experiments keep failing the same way.

The rule (``FailFast``): a run stops when its last ``streak`` (8) recorded experiments all failed
with ONE error class and came from at least ``min_batches`` (2) batches. One batch is not enough
because a vectorised group shares its fate (a window longer than the cached history fails every
cell of that shape, and the next shape may train fine); a second batch failing the same way is
no longer one shape's bad luck. A success, or a failure of another class, resets the streak.
Out-of-memory and NaN failures count like any other: eight in a row means the space or the
device is wrong, not one cell.

Stopping is not spending: the experiments the campaign did not run stay in its budget, its
status becomes ``failed`` with the one line ``Stop.line()``, and re-running the same command
after the fix resumes it.

``FailFast.first_time`` also tells the campaign when a failure is new: an LLM advisor is asked
about a failure signature (error class and message, numbers masked) once per run, not once per
experiment that repeats it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

STREAK = 8
MIN_BATCHES = 2


@dataclass(frozen=True)
class Stop:
    """Why a campaign stopped: the shared error, one example, how many in a row."""

    error_class: str
    message: str  # the example's error message, one line
    example: str  # the example's cell, e.g. "cell 123 (backbone=pixels encoder=gru ...)"
    count: int

    def line(self) -> str:
        """The one line the campaign prints and records."""
        return (f"stopped: the last {self.count} experiments all failed with {self.error_class}: {self.message} "
                f"(e.g. {self.example}); fix the cause and re-run the same command to resume")


class SystematicFailure(Exception):
    """Raised inside the campaign loop to stop it; carries the Stop."""

    def __init__(self, stop: Stop):
        self.stop = stop
        super().__init__(stop.line())


@dataclass
class FailFast:
    """Watches recorded rows in order; ``observe`` returns a Stop once the rule (module docstring) fires."""

    streak: int = STREAK
    min_batches: int = MIN_BATCHES
    _run: list[tuple[str, int]] = field(default_factory=list)  # (error class, batch number) of the current streak
    _example: dict | None = None
    _batches: int = 0
    _seen: set[str] = field(default_factory=set)

    def observe(self, rows: list[dict]) -> Stop | None:
        """Take one recorded batch (history rows with status, error_class, error_message, cell_id)."""
        self._batches += 1
        for row in rows:
            if row.get("status") == "invalid":
                continue  # not an experiment: it never ran
            error = row.get("error_class") if row.get("status") == "failed" else None
            if error is None or (self._run and self._run[-1][0] != error):
                self._run, self._example = [], None
            if error is not None:
                self._run.append((error, self._batches))
                self._example = self._example or row
        if len(self._run) >= self.streak and len({b for _, b in self._run}) >= self.min_batches:
            row = self._example or {}
            error = self._run[-1][0]
            message = _strip_cell(row.get("error_message") or "").removeprefix(f"{error}: ")
            return Stop(error_class=error, message=message,
                        example=_describe(row), count=len(self._run))
        return None

    def first_time(self, error_class: str, message: str) -> bool:
        """True the first time a failure signature is seen in this run (then ask an advisor)."""
        key = f"{error_class}:{re.sub(r'[0-9.]+', '#', _strip_cell(message))}"
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _strip_cell(message: str) -> str:
    """The message without the ``[cell N: ...]`` suffix TrainingError adds, on one line, at most 200 chars."""
    text = " ".join(re.sub(r"\s*\[cell \d+:[^\]]*\]\s*$", "", str(message)).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(row: dict) -> str:
    axes = [f"{k}={row[k]}" for k in ("backbone", "encoder", "size", "window_s", "lr") if row.get(k) is not None]
    return f"cell {row.get('cell_id')} ({' '.join(axes)})"
