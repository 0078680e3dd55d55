"""The log's objects through the storage seam: their keys, their footers and the SQL over their URLs.

The store (lab/store.py) lists, writes and compacts the log through a ``Backend``
(lab/storage.py); this module holds what it needs about single objects: the keys of the log and of
a campaign's small files, a listing split into generations, a Parquet footer's health and the
files a merged file replaces (read once per object and process), and small JSON and text objects.
The contract is in lab/store.py's docstring.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from crashsearch.lab._io import json_object
from crashsearch.lab.logsql import LOG_DIR, REPLACES_KEY, experiments_sql
from crashsearch.lab.rows import check_campaign_id
from crashsearch.lab.storage import Backend, is_url

log = logging.getLogger("crashsearch.lab.store")  # its warnings read as the store's, as before

LOG_KEY = re.compile(rf"campaigns/[^/]+/{LOG_DIR}/part-[^/]*\.parquet")  # PART_GLOB under any campaign
LOG_COLUMNS = {"experiment_id", "campaign", "cell_id", "status"}  # a file without them is not a log file


@dataclass
class Generations:
    """A listing of log files, as storage keys: ``bases`` (one merged file per campaign at most),
    ``recent`` (every other live file) and ``replaced`` (stored but replaced by a merged file;
    readers skip them)."""

    bases: list[PurePosixPath]
    recent: list[PurePosixPath]
    replaced: list[PurePosixPath]
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (where, why): left out of every view

    @property
    def live(self) -> list[PurePosixPath]:
        return self.bases + self.recent


def log_prefix(campaign: str) -> str:
    """The key prefix of a campaign's log, ``campaigns/<id>/log/``. Raises ValueError on a bad id."""
    return f"campaigns/{check_campaign_id(campaign)}/{LOG_DIR}/"


def campaign_key(campaign: str, name: str) -> str:
    """The key of a campaign's file ``name`` (campaign.json, state.json, ...). Raises ValueError on a bad id."""
    return f"campaigns/{check_campaign_id(campaign)}/{name}"


def append_line(backend: Backend, key: str, line: str) -> None:
    """Add one line to a text object (diagnoses.jsonl) with ``backend.append`` (lab/storage.py): the
    old lines are kept, and concurrent writers' lines all land whole."""
    backend.append(key, line)


def read_object(backend: Backend, key: str) -> dict | None:
    """The JSON object stored at ``key``, or None if it is missing, unreadable or not an object."""
    try:
        raw = backend.read(key)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s is unreadable (%s); treated as missing", backend.url(key), str(exc)[:120])
        return None
    return json_object(raw, backend.url(key))


def location(backend: Backend, key: str) -> Path:
    """Where an object is, for people and pyarrow: a local path (an object store's URL as is)."""
    url = backend.url(key)
    return url if is_url(url) else Path(url)  # type: ignore[return-value]  # a URL is no Path


def log_sql(backend: Backend, gens: Generations, dedup: bool = True) -> str:
    """``experiments_sql`` over these files, named by the local paths DuckDB reads them by (an object
    store's copies: ``Backend.local_path``); ``dedup=False``: every live row before the dedup. Raises
    FileNotFoundError when a compaction removed a file since the listing."""
    def urls(keys: list[PurePosixPath]) -> list[str]:
        return [backend.local_path(str(k)) for k in keys]

    return experiments_sql(urls(gens.bases), urls(gens.recent)) if dedup else experiments_sql(urls(gens.live), [])


def source(backend: Backend, key: str) -> Any:
    """What pyarrow reads ``key`` from: a local path (it reads only the footer; an object store's copy)."""
    return backend.local_path(key)


def read_local(backend: Backend, key: str, read: Callable[[Any], Any]) -> Any:
    """``read(source(backend, key))``; when that fails on an object store's local copy, the copy is
    fetched again and read once more, so damage to this disk's copy is never taken for the object's
    (check --repair would quarantine a sound object). Raises what ``read`` raises."""
    try:
        return read(source(backend, key))
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException):
        forget = getattr(backend, "forget_copy", None)
        if forget is None:
            raise
        forget(key)
        return read(source(backend, key))


_FOOTERS: dict[tuple[str, float], tuple[str, bytes]] = {}  # (url, mtime) -> (problem, replaces): read once
_WARNED: set[str] = set()


def footer(backend: Backend, key: str) -> tuple[str, bytes]:
    """(what is wrong with a log file's footer and schema, in a few words, "" when it is readable;
    the JSON list of file names its footer says it replaces, b"[]" when none).

    Raises FileNotFoundError when the file is gone (a compaction removed it: callers list again)."""
    ident = (backend.url(key), backend.mtime(key))  # a file rewritten in place (damage) has a new mtime
    if ident not in _FOOTERS:
        try:
            meta = read_local(backend, key, pq.read_metadata)
            names = meta.schema.to_arrow_schema().names
            problem = "" if LOG_COLUMNS <= set(names) else \
                "not a log file: it lacks the experiment_id, campaign, cell_id or status column"
            replaces = (meta.metadata or {}).get(REPLACES_KEY, b"[]")
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            problem, replaces = f"unreadable Parquet ({(str(exc).splitlines() or [type(exc).__name__])[0]})", b"[]"
        _FOOTERS[ident] = (problem, replaces)
    return _FOOTERS[ident]


def warn_damaged(where: str | Path, problem: str) -> None:
    """Name a damaged log file once per process, in one line."""
    if str(where) not in _WARNED:
        _WARNED.add(str(where))
        log.warning("%s is damaged (%s); its rows are left out (see crashsearch check --repair)", where, problem)
