"""Reading ``<home>/bugfix_events.jsonl``: the declared bug-fix events, one JSON object per line.

The store (its ``bugfix_events`` view), lab/versions.py (declaring, segmenting) and the
``bugfix`` command (flows/commands/bugfix.py) need the events; reading them here keeps the store
from importing versions.py. Writing stays in versions.py. The log is read and appended through the
home's storage backend (lab/storage.py): on an s3:// home it is an object on the bucket, so every
machine of a pool sees the same events.
"""
from __future__ import annotations

import json

import pandas as pd

from crashsearch.lab.bounds import check_time, skip_entry
from crashsearch.lab.errors import UserError
from crashsearch.lab.settings import Home
from crashsearch.lab.storage import Backend, backend_for

EVENTS_FILE = "bugfix_events.jsonl"


def bugfix_events(home: Home, campaign: str | None = None, backend: Backend | None = None) -> list[dict]:
    """The declared events not removed (``bugfix --remove`` appends a removal line), oldest first; a line no reader accepts is named once and skipped.

    With ``campaign``, only the events that concern it (global ones and its own). ``backend``: the
    home's (default ``backend_for(home.location)``).
    """
    events, removals = read_events(home, backend)
    gone = {r["removes"] for r in removals}
    events = [e for e in events if e["id"] not in gone]
    return events if campaign is None else events_for(events, campaign)


def read_events(home: Home, backend: Backend | None = None) -> tuple[list[dict], list[dict]]:
    """(events, removals) in bugfix_events.jsonl, each oldest first, removed events included.

    A line that is not an event or a removal within lab.bounds' domains (a time pandas cannot hold,
    no declared_at, not JSON) is left out and named once (lab.bounds.skip_entry): one bad line,
    written by hand or by an older version, never stops the analysis of a home."""
    backend = backend if backend is not None else backend_for(home.location)
    path = backend.url(EVENTS_FILE)  # named with a bad line
    stray = home.root / EVENTS_FILE
    if home.url and stray.is_file():  # declared on this machine by a version that wrote the log to its scratch folder
        skip_entry(stray, "this machine's bug-fix log", f"an older crashsearch wrote it here, where no other machine "
                   f"reads it; the home's log is {path}: declare its events again with crashsearch bugfix")
    try:
        text = backend.read(EVENTS_FILE).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    events, removals = [], []
    # "\n" only, as the catalog's SQL splits: splitlines() also breaks at U+2028, \x1c, ... inside a value
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise UserError("not a JSON object")
            parsed = _parse_entry(entry)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            skip_entry(path, f"line {number}", f"not a bug-fix event: {exc}")
            continue
        (removals if "removes" in parsed else events).append(parsed)
    return sorted(events, key=lambda e: e["declared_at"]), sorted(removals, key=lambda e: e["declared_at"])


def events_location(home: Home) -> str:
    """Where the home's log is, for people: its local path, or its URL on the bucket."""
    return backend_for(home.location).url(EVENTS_FILE)


def _parse_entry(entry: dict) -> dict:
    declared = check_time(entry.get("declared_at"), "declared_at").to_pydatetime()
    if "removes" in entry:
        if not isinstance(entry["removes"], str) or not entry["removes"]:
            raise UserError(f"removes {entry['removes']!r} is not an event id")
        return {"id": str(entry.get("id", "")), "removes": entry["removes"], "note": str(entry.get("note") or ""),
                "declared_at": declared}
    at = entry.get("at")
    return {
        "id": str(entry.get("id", "")),
        "version": str(entry["version"]) if entry.get("version") else None,
        "at": None if at is None or at == "" else check_time(at, "at").to_pydatetime(),
        "campaign": str(entry["campaign"]) if entry.get("campaign") else None,
        "note": str(entry.get("note", "")),
        "declared_at": declared,
    }


def events_for(events: list[dict], campaign: str) -> list[dict]:
    """The events that concern ``campaign``: global ones and those scoped to it."""
    return [e for e in events if not e.get("campaign") or e["campaign"] == campaign]


def as_utc(value) -> pd.Timestamp:
    """A time (string, datetime, Timestamp) as a UTC Timestamp; a naive time is read as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
