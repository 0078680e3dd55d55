"""``crashsearch check [--campaign ID] [--repair]``: find damaged files in the history, and move
them aside without ever deleting one.

A log file is damaged when its Parquet footer or pages cannot be read, or when it is not a log
file at all (it lacks the experiment columns). Readers already leave such files out and name
them (lab/store.py); ``check`` reads every file in full and lists them. ``--repair`` first copies
the rows that are still readable (whole row groups) into a new log file, then moves the damaged
file to ``<home>/quarantine/<campaign>/``, where it can be inspected or restored by hand. Hidden
temp files of writes that were interrupted (older than STALE_TEMP_SECONDS; a local home's only,
an object store's PUTs leave none) are moved there too. Everything goes through the store's
backend (lab/storage.py), so an s3:// home is checked on the bucket and its damage named by URL;
a move is a copy, then a delete (lab/quarantine.py): an object store has no rename.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crashsearch.lab.logfiles import LOG_COLUMNS, footer, log_prefix, read_local
from crashsearch.lab.quarantine import QUARANTINE, set_aside
from crashsearch.lab.rows import CAMPAIGN_ID, check_campaign_id
from crashsearch.lab.storage import Backend, LocalBackend
from crashsearch.lab.store import Store

STALE_TEMP_SECONDS = 600  # a temp file this old has no live writer (writes take seconds)


@dataclass
class Finding:
    """One damaged file: its key, where it is (path or URL), what is wrong, and (after a repair)
    what became of it."""

    key: str
    where: str
    problem: str
    readable_rows: int = 0
    moved_to: str | None = None

    def line(self) -> str:
        text = f"damaged: {self.where} ({self.problem})"
        if self.moved_to is not None:
            text += f"; moved to {self.moved_to}, {self.readable_rows} readable rows kept in the log"
        return text


@dataclass
class CheckReport:
    campaigns: int = 0
    files: int = 0
    findings: list[Finding] = field(default_factory=list)


def read_problem(backend: Backend, key: str) -> str:
    """What is wrong with a log file ("" if every row reads), reading it in full.

    Raises FileNotFoundError when it is gone (a compaction removed it)."""
    problem = footer(backend, key)[0]
    if problem:
        return problem
    try:
        read_local(backend, key, pq.read_table)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    return ""


def readable_rows(backend: Backend, key: str) -> pa.Table | None:
    """The row groups of a damaged file that still read and carry the log's columns, or None."""
    try:
        parquet = read_local(backend, key, pq.ParquetFile)
    except (OSError, pa.ArrowException):
        return None
    tables = []
    for index in range(parquet.num_row_groups):
        try:
            tables.append(parquet.read_row_group(index))
        except (OSError, pa.ArrowException):
            continue
    tables = [t for t in tables if LOG_COLUMNS <= set(t.column_names)]
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="default").replace_schema_metadata(None)
    except (pa.ArrowException, ValueError):
        return None


def check(store: Store, campaign: str | None = None, repair: bool = False) -> CheckReport:
    """Read every log file of one campaign (or all) in full; with ``repair``, salvage and quarantine.

    Never deletes a file before its copy is in the quarantine. Raises ValueError for a bad campaign
    id, UserError for one the home does not have."""
    if campaign is not None:
        check_campaign_id(campaign)
        store.require_campaign(campaign)
        names = [campaign]
    else:
        names = [c for c in store.backend.folders("campaigns/") if CAMPAIGN_ID.match(c)]
    report = CheckReport(campaigns=len(names))
    for name in names:
        keys = store.log_keys(name)
        report.files += len(keys)
        findings = []
        for key in keys:
            try:
                problem = read_problem(store.backend, key)
            except FileNotFoundError:  # compacted away meanwhile: its rows are in the merged file
                continue
            if problem:
                findings.append(Finding(key, store.backend.url(key), problem))
        findings += [Finding(key, store.backend.url(key), "temp file of an interrupted write")
                     for key in _stale_temps(store.backend, log_prefix(name))]
        if repair:
            for finding in findings:
                _repair(store, name, finding)
        report.findings += findings
    return report


def _stale_temps(backend: Backend, prefix: str) -> list[str]:
    """The keys of a local log folder's hidden temp files older than STALE_TEMP_SECONDS (listings hide them)."""
    if not isinstance(backend, LocalBackend):
        return []
    folder = Path(backend.url(prefix.rstrip("/")))
    now, keys = time.time(), []
    for temp in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                keys.append(prefix + temp.name)
        except FileNotFoundError:  # its writer finished or a sweep removed it
            pass
    return keys


def _repair(store: Store, campaign: str, finding: Finding) -> None:
    if finding.key.endswith(".parquet"):
        table = readable_rows(store.backend, finding.key)
        if table is not None and table.num_rows:
            # rows already in other files show once: the view deduplicates by experiment_id
            store._write(campaign, table)
            finding.readable_rows = table.num_rows
    name = finding.key.rsplit("/", 1)[-1].lstrip(".")
    finding.moved_to = set_aside(store.backend, finding.key, f"{QUARANTINE}/{campaign}/{name}")
