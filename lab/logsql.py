"""The Parquet log's layout and the SQL that reads it, shared by the store and history.duckdb.

``lab/store.py`` (its in-memory views) and ``lab/catalog.py`` (history.duckdb's views) both read
the log with this dedup; keeping it here lets the catalog build on it without importing the store
(which builds the catalog after each write). The contract is in lab/store.py's docstring.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from crashsearch.lab.schema import BASE_FIELDS

LOG_DIR = "log"
PART_GLOB = "part-*.parquet"
MERGED_SUFFIX = ".merged.parquet"  # a full compaction: the campaign's base
MINOR_SUFFIX = ".minor.parquet"  # a minor compaction: recent files merged, still recent
REPLACES_KEY = b"crashsearch.replaces"  # footer metadata of a merged file: the file names it replaces


def experiments_sql(bases: list[Path], recent: list[Path]) -> str:
    """The SELECT behind the experiments view: one row per (campaign, experiment_id), over these files."""
    def files(paths: list[Path]) -> str:
        return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"

    if not bases and not recent:
        return empty_select(BASE_FIELDS)
    return dedup_sql(f"read_parquet({files(bases)}, union_by_name = true)" if bases else None,
                     f"read_parquet({files(recent)}, union_by_name = true, filename = true)" if recent else None)


def dedup_sql(base: str | None, recent: str | None) -> str:
    """The experiments dedup over two relations (SQL FROM items): one row per (campaign, experiment_id).

    ``base`` holds the bases' rows (unique by construction; they always win), ``recent`` every
    other live row plus a ``filename`` column; recent rows are deduplicated among themselves
    (earliest finished_at, then file name) and against the bases' ids (an anti join: its cost
    follows the recent rows). lab/catalog.py builds history.duckdb's view from it too.
    """
    parts = []
    if base:
        parts.append(f"SELECT * FROM {base}")
    if recent:
        fresh = (f"SELECT * EXCLUDE (filename) FROM {recent} "
                 "QUALIFY row_number() OVER (PARTITION BY campaign, experiment_id ORDER BY finished_at, filename) = 1")
        if base:
            fresh = (f"SELECT * FROM ({fresh}) AS recent ANTI JOIN "
                     f"(SELECT campaign, experiment_id FROM {base}) AS base USING (campaign, experiment_id)")
        parts.append(fresh)
    return " UNION ALL BY NAME ".join(f"({p})" for p in parts)


_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
               pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


def empty_select(fields: list[pa.Field]) -> str:
    """A SELECT of no rows with these columns and their DuckDB types."""
    cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[f.type]}) AS {ident(f.name)}" for f in fields)
    return f"SELECT {cols} WHERE false"


def ident(name: str) -> str:
    """A column name quoted as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'
