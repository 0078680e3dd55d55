"""Code versions and bug-fix events: which code produced a result, and which results to distrust.

Every experiment row records ``code_version()``: the git short commit plus a hash of the Python
sources under models/, tasks/ and lab/ (so an uncommitted edit is a new version too). When a bug
is found and fixed, ``crashsearch bugfix --note "..."`` declares a bug-fix event; the events live
in ``<home>/bugfix_events.jsonl``, one JSON object per line, appended through the home's storage
backend (``Backend.append``: one O_APPEND write in a folder, a conditional PUT on a bucket), so
concurrent declarations, from any machine of a pool, all land and never interleave. The log is
append-only: ``bugfix --remove ID`` appends a removal (``{"removes": ID}``) and readers leave that
event out. ``segment`` splits a history at the events by time (a row belongs to the segment of the
last event declared before it finished), and the analysis reports the full history beside
``post_bugfix`` (the rows after the latest event).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crashsearch.lab.bugfix_log import (EVENTS_FILE, as_utc as _as_utc, bugfix_events, events_for,  # noqa: F401 (re-exported)
                                        events_location, read_events)  # noqa: F401
from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import check_time
from crashsearch.lab.settings import Home
from crashsearch.lab.storage import backend_for

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HASHED_DIRS = ("models", "tasks", "lab")
MAX_CLOCK_SKEW = pd.Timedelta(minutes=10)  # how far a declared fix time may lie ahead of this machine's clock


# ---- code versions ----------------------------------------------------------------------------

def code_version(root: Path | None = None) -> str:
    """``"<git short commit or 'nogit'>+<12 hex of sha256 over models/, tasks/, lab/ *.py>"``.

    Computed once per process and root (a running campaign keeps the version it started with,
    which is the code it actually imported).
    """
    return _code_version(Path(root or REPO_ROOT).resolve())


@functools.lru_cache(maxsize=None)
def _code_version(root: Path) -> str:
    return f"{_git_commit(root)}+{source_hash(root)}"


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "nogit"


def source_hash(root: Path) -> str:
    """12 hex digits of sha256 over the relative paths and contents of models/, tasks/, lab/ *.py."""
    digest = hashlib.sha256()
    for folder in HASHED_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            # the path goes in too: moving code between files is a change
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# ---- bug-fix events ---------------------------------------------------------------------------

def declare_bugfix(home: Home, note: str, version: str | None = None, campaign: str | None = None,
                   at: Any = None) -> dict:
    """Append a bug-fix event ``{id, version, at, campaign, note, declared_at}`` and return it.

    The event names either a code ``version`` (default: the current ``code_version()``; rows of
    that version and of every version first seen after it are post-fix) or a time ``at`` (rows
    finished at or after it are post-fix), never both. ``campaign``: the one campaign it
    concerns (None: all). Raises ValueError on an empty note, both version and at, or a bad time.
    """
    note = " ".join(str(note).split())
    if not note:
        raise UserError("a bug-fix event needs a note saying what was fixed")
    if version and at is not None:
        raise UserError("a bug-fix event names a code version or a time (--version or --at), not both")
    when = None if at is None else _fix_time(at)
    event = {
        "id": uuid.uuid4().hex[:12],
        "version": None if when is not None else (version or code_version()),
        "at": when.isoformat() if when is not None else None,
        "campaign": campaign or None,
        "note": note,
        "declared_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    _append_line(home, event)
    return event


def _fix_time(at: Any) -> pd.Timestamp:
    """``--at`` as a UTC time; raises ValueError (one line) outside lab.bounds' range or in the future.

    A fix takes effect when it is in the code, so its time is now or earlier; a later time would
    mark every row trained meanwhile, with the fixed code, as buggy (2300 for 2030 is a typo, not a
    plan). MAX_CLOCK_SKEW allows for a worker's clock running ahead of this machine's."""
    if isinstance(at, str) and not at.strip():
        raise UserError("--at '' is not a time; use ISO 8601, e.g. 2025-03-01T12:00:00Z")
    when = check_time(at, "--at")
    latest = pd.Timestamp.now(tz="UTC") + MAX_CLOCK_SKEW
    if when > latest:
        raise UserError(f"--at {when.isoformat()} is in the future: a fix dates from when it is in the code "
                         f"(now or earlier, {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew allowed)")
    return when


def remove_bugfix(home: Home, event_id: str, note: str | None = None) -> dict:
    """Append a removal ``{id, removes, note, declared_at}`` of the event ``event_id`` and return it.

    The log stays append-only: the event keeps its line and readers (``bugfix_events``, the views)
    leave it out from then on. Raises ValueError (one line) for an unknown or already removed id.
    """
    events, removals = read_events(home)
    if any(r["removes"] == event_id for r in removals):
        raise UserError(f"bug-fix event {event_id!r} is already removed")
    if not any(e["id"] == event_id for e in events):
        known = ", ".join(e["id"] for e in events) or "none"
        raise UserError(f"no bug-fix event {event_id!r} under {home.location} (events: {known})")
    removal = {"id": uuid.uuid4().hex[:12], "removes": event_id, "note": " ".join(str(note or "").split()) or None,
               "declared_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    _append_line(home, removal)
    return removal


def _append_line(home: Home, entry: dict) -> None:
    # the home's backend: on an s3:// home the log is on the bucket, where every machine reads it
    # (Home.root is then this machine's scratch folder); concurrent appends all land whole
    backend_for(home.location).append(EVENTS_FILE, json.dumps(entry, ensure_ascii=False, allow_nan=False))


def describe_event(event: dict) -> str:
    """One line: what the event marks as post-fix, for which campaigns."""
    if event.get("at") is not None:
        rule = f"rows finished at or after {_as_utc(event['at']).isoformat()}"
    elif event.get("version"):
        rule = f"code version {event['version']} and any version first seen after it"
    else:
        rule = f"rows finished at or after {_as_utc(event['declared_at']).isoformat()} (declared)"
    scope = f"campaign {event['campaign']}" if event.get("campaign") else "all campaigns"
    return f"{scope}: {rule}"


def post_fix_mask(df: pd.DataFrame, event: dict) -> np.ndarray:
    """Per row of ``df``: True when the row is not buggy by ``event`` (post-fix, or another campaign's row).

    The one segmentation rule (analysis, the agents' prompt and leader re-runs all use it):
    - an event with ``at`` (or with neither ``at`` nor ``version``: its ``declared_at``) splits by
      time: rows finished at or after it are post-fix; rows without a finish time are pre-fix;
    - an event with ``version`` V splits by the rows' ``code_version``: V and every version first
      seen (earliest finish, else earliest row) after V are post-fix. When no row has V, the
      versions first seen at or after the declaration are post-fix. A row without a recorded
      version is split by the declaration time.
    Rows of a campaign the event is not scoped to are never marked buggy by it.
    """
    n = len(df)
    concerned = np.ones(n, dtype=bool)
    if event.get("campaign"):
        if "campaign" not in df.columns:
            raise ValueError("a campaign-scoped bug-fix event needs a campaign column")
        concerned = (df["campaign"].astype(str) == event["campaign"]).to_numpy()
    finished = _finish_ns(df)
    version = event.get("version")
    if event.get("at") is None and version and "code_version" in df.columns:
        codes, names = pd.factorize(df["code_version"].astype("string"))  # code -1: no version recorded
        timed = finished != _NO_TIME
        by_time = bool(timed.any())
        # when each version was first seen: earliest finish time, else position in the log
        key = np.where(timed, finished, np.iinfo("int64").max) if by_time else np.arange(n, dtype="int64")
        first = pd.Series(key[codes >= 0]).groupby(codes[codes >= 0]).min().reindex(range(len(names))).to_numpy("int64")
        if version in set(names):
            start = first[list(names).index(version)]
        else:  # the fixed version has no row yet: versions that appeared after the declaration
            start = _as_utc(event["declared_at"]).value if by_time else np.iinfo("int64").max
        by_version = first[np.maximum(codes, 0)] >= start if len(names) else np.zeros(n, dtype=bool)
        post = np.where(codes >= 0, by_version, timed & (finished >= _as_utc(event["declared_at"]).value))
    else:
        cut = _as_utc(event["at"] if event.get("at") is not None else event["declared_at"]).value
        post = (finished != _NO_TIME) & (finished >= cut)
    return post | ~concerned


def segment(df: pd.DataFrame, events: list[dict]) -> pd.Series:
    """Per row of ``df``: how many of ``events`` it is post-fix of (0 .. len(events)); see post_fix_mask.

    A row that finished exactly at an event's time counts as after it; rows without a finish
    time are before every time-based event. Raises ValueError if ``df`` has no finished_at column.
    """
    if "finished_at" not in df.columns:
        raise ValueError("segment needs a finished_at column")
    seg = np.zeros(len(df), dtype="int64")
    for event in events:
        seg += post_fix_mask(df, event)
    return pd.Series(seg, index=df.index, name="segment")


def post_bugfix(df: pd.DataFrame, events: list[dict]) -> pd.DataFrame:
    """The rows of ``df`` that are post-fix for every event (all rows when there is none)."""
    if not events:
        return df
    return df[(segment(df, events) == len(events)).to_numpy()]


def pre_fix(df: pd.DataFrame, events: list[dict]) -> np.ndarray:
    """Per row of ``df``: True when trained before a fix in ``events`` that concerns it (not post_bugfix)."""
    if not events or not len(df):
        return np.zeros(len(df), dtype=bool)
    return (segment(df, events) < len(events)).to_numpy()


_NO_TIME = np.iinfo("int64").min


def _finish_ns(df: pd.DataFrame) -> np.ndarray:
    """finished_at as int64 nanoseconds since the epoch; _NO_TIME where missing (or no column)."""
    if "finished_at" not in df.columns:
        return np.full(len(df), _NO_TIME, dtype="int64")
    finished = pd.to_datetime(df["finished_at"], utc=True, errors="coerce")
    # via microseconds: a row outside the nanosecond range (an older version let one in) is clipped
    # to the range's end, which keeps it on the right side of every event (events lie inside it)
    micros = finished.astype("datetime64[us, UTC]").array.asi8
    limit = (np.iinfo("int64").max - 1) // 1000
    values = np.clip(micros, -limit, limit) * 1000
    values[finished.isna().to_numpy()] = _NO_TIME
    return values

