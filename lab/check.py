"""``crashsearch check [--campaign ID] [--repair]``: find damaged files in the history, and move
them aside without ever deleting one.

A log file is damaged when its Parquet footer or pages cannot be read, or when it is not a log
file at all (it lacks the experiment columns). Readers already leave such files out and name
them (lab/store.py); ``check`` reads every file in full and lists them. ``--repair`` first copies
the rows that are still readable (whole row groups) into a new log file, then moves the damaged
file to ``<home>/quarantine/<campaign>/``, where it can be inspected or restored by hand. Hidden
temp files of writes that were interrupted (older than STALE_TEMP_SECONDS) are moved there too.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crashsearch.lab.errors import UserError
from crashsearch.lab.rows import CAMPAIGN_ID, check_campaign_id
from crashsearch.lab.store import LOG_DIR, Store, damage

QUARANTINE = "quarantine"
STALE_TEMP_SECONDS = 600  # a temp file this old has no live writer (writes take seconds)


@dataclass
class Finding:
    """One damaged file: where, what is wrong, and (after a repair) what became of it."""

    path: Path
    problem: str
    readable_rows: int = 0
    moved_to: Path | None = None

    def line(self) -> str:
        text = f"damaged: {self.path} ({self.problem})"
        if self.moved_to is not None:
            text += f"; moved to {self.moved_to}, {self.readable_rows} readable rows kept in the log"
        return text


@dataclass
class CheckReport:
    campaigns: int = 0
    files: int = 0
    findings: list[Finding] = field(default_factory=list)


def read_problem(path: Path) -> str:
    """What is wrong with a log file ("" if every row reads), reading it in full."""
    problem = damage(path)
    if problem:
        return problem
    try:
        pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    return ""


def readable_rows(path: Path) -> pa.Table | None:
    """The row groups of a damaged file that still read and carry the log's columns, or None."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        return None
    tables = []
    for index in range(parquet.num_row_groups):
        try:
            tables.append(parquet.read_row_group(index))
        except (OSError, pa.ArrowException):
            continue
    tables = [t for t in tables if {"experiment_id", "campaign", "cell_id", "status"} <= set(t.column_names)]
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="default").replace_schema_metadata(None)
    except (pa.ArrowException, ValueError):
        return None


def check(store: Store, campaign: str | None = None, repair: bool = False) -> CheckReport:
    """Read every log file of one campaign (or all) in full; with ``repair``, salvage and quarantine.

    Never deletes a file. Raises ValueError for a bad or unknown campaign id."""
    root = store.home.root / "campaigns"
    if campaign is not None:
        check_campaign_id(campaign)
        if not (root / campaign).is_dir():
            raise UserError(f"no campaign {campaign!r} under {store.home.root}")
        names = [campaign]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and CAMPAIGN_ID.match(p.name)) if root.is_dir() else []
    report = CheckReport(campaigns=len(names))
    for name in names:
        folder = root / name / LOG_DIR
        files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        report.files += len(files)
        for path in files:
            problem = read_problem(path)
            if problem:
                report.findings.append(Finding(path, problem))
        now = time.time()
        for temp in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                report.findings.append(Finding(temp, "temp file of an interrupted write"))
        if repair:
            for finding in [f for f in report.findings if f.path.parent == folder]:
                _repair(store, name, finding)
    return report


def _repair(store: Store, campaign: str, finding: Finding) -> None:
    if finding.path.name.endswith(".parquet"):
        table = readable_rows(finding.path)
        if table is not None and table.num_rows:
            # rows already in other files show once: the view deduplicates by experiment_id
            store._write(campaign, table)
            finding.readable_rows = table.num_rows
    target_dir = store.home.root / QUARANTINE / campaign
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / finding.path.name.lstrip(".")
    if target.exists():
        target = target_dir / f"{target.stem}-{int(time.time())}{target.suffix}"
    shutil.move(finding.path, target)  # a rename on one file system: nothing is ever deleted
    finding.moved_to = target

