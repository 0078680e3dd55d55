"""Reading ``<home>/bugfix_events.jsonl``: the declared bug-fix events, one JSON object per line.

The store (its ``bugfix_events`` view) and lab/versions.py (declaring, segmenting, the
``bugfix`` command, which queries the store) both need the events; reading them here keeps the
store from importing versions.py, so the two form no import cycle. Writing stays in versions.py.
"""
from __future__ import annotations

import json
import logging

import pandas as pd

from crashsearch.lab.settings import Home

log = logging.getLogger("crashsearch.lab.versions")  # the logger these warnings always had

EVENTS_FILE = "bugfix_events.jsonl"


def bugfix_events(home: Home, campaign: str | None = None) -> list[dict]:
    """The declared events, oldest first; malformed lines are logged and skipped.

    With ``campaign``, only the events that concern it (global ones and its own).
    """
    path = home.root / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            at = event.get("at")
            events.append({
                "id": str(event.get("id", "")),
                "version": str(event["version"]) if event.get("version") else None,
                "at": as_utc(at).to_pydatetime() if at else None,
                "campaign": str(event["campaign"]) if event.get("campaign") else None,
                "note": str(event.get("note", "")),
                "declared_at": as_utc(event["declared_at"]).to_pydatetime(),
            })
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s line %d skipped: not a bug-fix event (%s)", path, number, exc)
    events = sorted(events, key=lambda e: e["declared_at"])
    return events if campaign is None else events_for(events, campaign)


def events_for(events: list[dict], campaign: str) -> list[dict]:
    """The events that concern ``campaign``: global ones and those scoped to it."""
    return [e for e in events if not e.get("campaign") or e["campaign"] == campaign]


def as_utc(value) -> pd.Timestamp:
    """A time (string, datetime, Timestamp) as a UTC Timestamp; a naive time is read as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
