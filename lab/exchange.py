"""Moving experiment logs in and out of the history store: import external CSV/Parquet logs, and
export one campaign as a single self-contained Parquet file (for sharing, or an open dataset).

Both are reached through ``Store.import_log`` and ``Store.export``; the functions here take the
Store as their first argument and use its writer and compaction helpers, so imported rows obey the
same contract as appended ones (see lab/store.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crashsearch.lab._io import atomic_write
from crashsearch.lab.campaign_space import check_space, space_axes, space_digest
from crashsearch.lab.errors import UserError
from crashsearch.lab.rows import arrow_value, clean_row
from crashsearch.lab.schema import experiment_schema
from crashsearch.lab.space import InvalidCell, Space
from crashsearch.lab.store import READ_RETRIES, Store, campaign_key, read_object

IMPORT_BATCH = 50_000  # rows per log file when importing


@dataclass
class ImportResult:
    """What an import did: rows written, rows whose id the campaign already had, bad rows skipped."""

    new: int = 0
    already: int = 0
    bad: int = 0

    def __str__(self) -> str:
        text = f"{self.new} new rows; {self.already} already recorded"
        return text + (f"; {self.bad} bad rows skipped" if self.bad else "")


def import_log(store: Store, file: str | Path, campaign: str, space: Space,
               on_error: Callable[[str], None] | None = None) -> ImportResult:
    """Import an external experiment log into ``campaign``; return an ImportResult.

    A row whose experiment_id the campaign already holds is never written (recorded rows never
    change): it is named through ``on_error`` and counted as already recorded. See
    ``Store.import_log`` for the columns, defaults and errors.
    """
    report = on_error or (lambda line: print(line, file=sys.stderr))
    path = Path(file)
    frame = _read_table_file(path)
    schema = experiment_schema(space)
    fields = {f.name: f for f in schema}
    if "val_ap" not in frame.columns:
        raise UserError(f"{path}: column val_ap is required")
    has_axes = all(a in frame.columns for a in space.axis_names)
    if not has_axes and "cell_id" not in frame.columns:
        missing = [a for a in space.axis_names if a not in frame.columns]
        raise UserError(f"{path}: needs cell_id or every axis column; missing {missing}")
    unknown = [c for c in frame.columns if c not in fields]
    if unknown:
        report(f"{path}: ignoring columns that are not in the experiment schema: {unknown}")
    csv = path.suffix.lower() != ".parquet"
    explicit_ids = "experiment_id" in frame.columns
    info = read_object(store.backend, campaign_key(campaign, "campaign.json")) or {}
    check_space(info, campaign, space)  # its cell ids are the recorded space's, or the import is refused
    recorded = store.recorded_ids(campaign)
    result = ImportResult()
    rows, seen = [], set()
    campaign_dataset = info.get("dataset")  # a campaign the engine ran: its rows are of this dataset only
    if campaign_dataset and "dataset" not in frame.columns:
        report(f"{path}: no dataset column; recording the rows as campaign {campaign}'s dataset {campaign_dataset!r}")
    for index, record in enumerate(frame.to_dict("records")):
        where = f"{path.name} line {index + 2}" if csv else f"{path.name} row {index + 1}"
        try:
            row = _import_row(record, fields, space, has_axes)
        except (ValueError, InvalidCell) as exc:
            report(f"{where}: {exc}; skipped")
            result.bad += 1
            continue
        problem = _check_outcome(row) or _check_dataset(row, "dataset" in frame.columns, campaign, campaign_dataset)
        if problem:
            report(f"{where}: {problem}; skipped")
            result.bad += 1
            continue
        row["campaign"] = campaign
        row.setdefault("dataset", campaign_dataset)
        row.setdefault("proposer", "import")
        if row.get("experiment_id") is None:
            key = json.dumps([campaign, index, record], sort_keys=True, default=str)
            row["experiment_id"] = "imp-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        # a duplicate within the file is one on every import, before and after its first copy is recorded
        if row["experiment_id"] in seen:
            report(f"{where}: experiment_id {row['experiment_id']!r} appears earlier in the file; skipped")
            result.bad += 1
            continue
        seen.add(row["experiment_id"])
        if row["experiment_id"] in recorded:
            if explicit_ids:  # a file that reuses ids: name each; a re-import of our own hashes: count them
                report(f"{where}: experiment_id {row['experiment_id']!r} is already recorded in campaign {campaign}; skipped")
            result.already += 1
            continue
        try:
            rows.append(clean_row(row, campaign, space, schema, datetime.now(timezone.utc)))
        except ValueError as exc:
            report(f"{where}: {exc}; skipped")
            result.bad += 1
            continue
        if len(rows) >= IMPORT_BATCH:
            store._write(campaign, pa.Table.from_pylist(rows, schema=schema))
            result.new, rows = result.new + len(rows), []
    if rows:
        store._write(campaign, pa.Table.from_pylist(rows, schema=schema))
        result.new += len(rows)
    if result.new and not info:
        store.write_campaign(campaign, {"space": space.name, "status": "imported", "source": str(path.resolve()),
                                        "dataset": None, "space_digest": space_digest(space),
                                        "space_axes": space_axes(space)})
    return result


def export(store: Store, campaign: str, out: str | Path) -> Path:
    """Write one campaign as a single Parquet file, atomically; return its path.

    See ``Store.export``. Raises ValueError if the campaign has no experiments.
    """
    for attempt in range(READ_RETRIES):
        gens = store.generations(campaign)
        if not gens.live:
            raise store.missing_campaign(campaign)
        try:
            table = store._merged(gens)
            break
        except (duckdb.IOException, FileNotFoundError):  # compacted meanwhile: list again
            if attempt == READ_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: pq.write_table(table.replace_schema_metadata(None), f, compression="zstd"))
    return out


def _check_outcome(row: dict) -> str | None:
    """Why a row without val_ap cannot be imported (None when it can). A row with no metric is a failed
    run only if the file says so; it then carries an error message (filled in when the file has none)."""
    if row.get("val_ap") is not None:
        row.setdefault("status", "ok")
        return None
    status = row.get("status")
    if status is None or status == "ok":
        return f"val_ap is empty but the status is {status or 'not given'}; a run without a metric must be marked failed"
    if not row.get("error_message"):
        row["error_message"] = f"imported as {status}; no message in the file"
    return None


def _check_dataset(row: dict, has_column: bool, campaign: str, dataset: str | None) -> str | None:
    """Why a row's dataset does not fit the campaign's (None when it does, or the campaign names none)."""
    if not dataset or not has_column or row.get("dataset") == dataset:
        return None
    return (f"dataset {row.get('dataset') or '(empty)'!r} is not campaign {campaign}'s dataset {dataset!r}")


def _import_row(record: dict, fields: dict, space: Space, has_axes: bool) -> dict:
    """One imported record as a row dict of schema columns, its cell validated by the space."""
    row = {}
    for name, value in record.items():
        if name not in fields or name in space.axis_names:
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
            continue
        kind = fields[name].type
        if pa.types.is_string(kind) and not isinstance(value, str):
            value = str(value)  # a CSV column of digits, e.g. a seed-like campaign tag
        if pa.types.is_integer(kind) and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise UserError(f"column {name}: {value!r} is not an integer") from None
        if pa.types.is_timestamp(kind) and isinstance(value, (str, pd.Timestamp, datetime)):
            try:
                value = pd.Timestamp(value)
            except ValueError:
                raise UserError(f"column {name}: {value!r} is not an ISO-8601 time") from None
            if value.tzinfo is None:  # external logs often write naive times; read them as UTC
                value = value.tz_localize("UTC")
        if pa.types.is_floating(kind) and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"column {name}: {value!r} is not a number") from None
        try:
            row[name] = arrow_value(value, kind)
        except ValueError as exc:
            raise UserError(f"column {name}: {exc}") from None
    if has_axes:
        cell = space.validate({a: record[a] for a in space.axis_names})
        if row.get("cell_id") is not None and row["cell_id"] != cell.id:
            raise UserError(f"column cell_id: {row['cell_id']} disagrees with the axis values (cell {cell.id})")
    else:
        if row.get("cell_id") is None:
            raise UserError("column cell_id: required when the file has no axis columns")
        cell = space.cell(row["cell_id"])
    row["cell_id"] = cell.id
    row.update(cell.to_dict())
    row.setdefault("arch_group", cell.arch_group if {"backbone", "encoder"} <= set(cell.values) else None)
    row.setdefault("space", space.name)
    return row


def _read_table_file(path: Path) -> pd.DataFrame:
    """The rows of a .csv/.tsv/.txt or .parquet file; raises ValueError (one line) naming the file."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():  # a device or pipe would be read until memory runs out, or forever
        raise UserError(f"{path}: not a regular file; import reads a .csv or .parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path).to_pandas()
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
