"""Setting damaged objects aside on the home's own backend, never losing a byte.

``crashsearch check --repair`` (lab/check.py) moves a damaged log file to ``quarantine/<campaign>/``,
extract moves a damaged feature part to ``quarantine/<its key>`` (lab/cache.py) and the store keeps
the bytes of a campaign.json that no longer parses before it writes a new one (lab/store.py). An
object store has no rename, so a move is a copy, then a delete of the original once the copy is
written. The copy is a conditional create: a quarantined object is never overwritten by a later one
of the same name, which gets a unique suffix instead.
"""
from __future__ import annotations

import posixpath
import time
import uuid

from crashsearch.lab.storage import Backend

QUARANTINE = "quarantine"


def keep_copy(backend: Backend, data: bytes, target: str) -> str:
    """Write ``data`` to ``target`` (a key under ``quarantine/``), or beside it under a unique name if
    ``target`` exists; return the URL (or local path) it was written to."""
    key = target
    while not backend.create(key, data):
        stem, ext = posixpath.splitext(target)
        key = f"{stem}-{int(time.time())}-{uuid.uuid4().hex[:6]}{ext}"
    return backend.url(key)


def set_aside(backend: Backend, key: str, target: str) -> str:
    """Move the object ``key`` to ``target`` on the same backend (``keep_copy``, then delete ``key``:
    never deleted before the copy is written); return where it went. FileNotFoundError if ``key`` is gone."""
    where = keep_copy(backend, backend.read(key), target)
    backend.delete(key)
    return where
