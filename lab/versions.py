"""Code versions and bug-fix events: which code produced a result, and which results to distrust.

Every experiment row records ``code_version()``: the git short commit plus a hash of the Python
sources under models/, tasks/ and lab/ (so an uncommitted edit is a new version too). When a bug
is found and fixed, ``crashsearch bugfix --note "..."`` declares a bug-fix event; the events live
in ``<home>/bugfix_events.jsonl``, one JSON object per line, appended with a single O_APPEND
write so concurrent declarations never interleave. ``segment`` splits a history at the events
by time (a row belongs to the segment of the last event declared before it finished), and the
analysis reports the full history beside ``post_bugfix`` (the rows after the latest event).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from crashsearch.lab.settings import Home

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HASHED_DIRS = ("models", "tasks", "lab")
EVENTS_FILE = "bugfix_events.jsonl"


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

def declare_bugfix(home: Home, note: str, version: str | None = None) -> dict:
    """Append a bug-fix event ``{id, version, note, declared_at}`` and return it.

    ``version`` defaults to the current ``code_version()``. Raises ValueError on an empty note.
    """
    note = " ".join(str(note).split())
    if not note:
        raise ValueError("a bug-fix event needs a note saying what was fixed")
    event = {
        "id": uuid.uuid4().hex[:12],
        "version": version or code_version(),
        "note": note,
        "declared_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    line = (json.dumps(event, ensure_ascii=False) + "\n").encode()
    home.root.mkdir(parents=True, exist_ok=True)
    # One write() on an O_APPEND descriptor: concurrent writers' lines never interleave.
    fd = os.open(home.root / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return event


def bugfix_events(home: Home) -> list[dict]:
    """The declared events, oldest first; malformed lines are logged and skipped."""
    path = home.root / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            events.append({
                "id": str(event.get("id", "")),
                "version": str(event.get("version", "")),
                "note": str(event.get("note", "")),
                "declared_at": _as_utc(event["declared_at"]).to_pydatetime(),
            })
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s line %d skipped: not a bug-fix event (%s)", path, number, exc)
    return sorted(events, key=lambda e: e["declared_at"])


def segment(df: pd.DataFrame, events: list[dict]) -> pd.Series:
    """Per row of ``df``: 0 before the first event, 1 after it, ... (by finished_at vs declared_at).

    A row that finished exactly when an event was declared counts as after it. Rows without a
    finished_at count as segment 0 (the conservative side: possibly buggy code). Raises
    ValueError if ``df`` has no finished_at column.
    """
    if "finished_at" not in df.columns:
        raise ValueError("segment needs a finished_at column")
    finished = pd.to_datetime(df["finished_at"], utc=True)
    declared = np.sort(np.array([_as_utc(e["declared_at"]).value for e in events], dtype="int64"))
    # compare as integer nanoseconds since the epoch; NaT rows are set to segment 0 below
    values = finished.astype("datetime64[ns, UTC]").array.asi8
    seg = np.searchsorted(declared, values, side="right")
    seg[finished.isna().to_numpy()] = 0
    return pd.Series(seg.astype("int64"), index=df.index, name="segment")


def post_bugfix(df: pd.DataFrame, events: list[dict]) -> pd.DataFrame:
    """The rows of ``df`` that finished after the latest event (all rows when there is none)."""
    if not events:
        return df
    return df[segment(df, events) == len(events)]


def _as_utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# ---- CLI --------------------------------------------------------------------------------------

def cli_bugfix(args) -> int:
    """``crashsearch bugfix --note "..."``: declare that the current code version fixes a bug."""
    try:
        event = declare_bugfix(args.home_dir, args.note)
    except (ValueError, OSError) as exc:
        print(f"bugfix: {exc}", file=sys.stderr)
        return 2
    print(f"declared bug-fix event {event['id']} at {event['declared_at']} for code version {event['version']}")
    print("analysis now reports the full history and the post-bugfix subset; "
          "re-run the leaders trained before it with `crashsearch campaign ... --rerun-leaders-after-fix K`")
    return 0
