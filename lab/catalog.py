"""``<home>/history.duckdb``: the history as a DuckDB database any client can open read-only.

    duckdb -readonly <home>/history.duckdb -c "SELECT count(*) FROM experiments"
    duckdb.connect("<home>/history.duckdb", read_only=True)   # a notebook, or DBeaver

The file holds only views, ``experiments``, ``campaigns`` and ``bugfix_events``, the same as
``crashsearch query`` sees (lab/store.py). They read the Parquet log through globs at query time,
so the file never goes stale: new rows, new campaigns, compactions and new space columns show up
in the next query, also in a connection that stays open for hours. Why this shape:

* **Never blocks a writer.** Nothing writes rows into this file; campaigns write Parquet files as
  before. The file is built once, written to a temp name, closed, fsynced and renamed into place
  (atomic: lab/_io.publish, the atomic write's last step), so a DuckDB reader never meets a half-written file or a writer holding its lock. A
  reader opened read-only takes a shared lock that no crashsearch process ever waits on. (Open it
  read-only: a read-write session locks others out, and what it adds is lost at the next build.)
* **Same dedup as the store.** ``experiments`` is ``lab.logsql.dedup_sql`` over the log files,
  with the bases and replaced files worked out in SQL from the merged files' footers, as
  ``Store.generations`` does in Python. A compaction may unlink a file between a query's file
  listing and its read: that query fails with an IO error; run it again.
* **Absolute paths.** DuckDB resolves a relative path against the client's working directory,
  not the database file, so the views name the home's absolute path. When the home moves,
  ``ensure`` or ``crashsearch catalog`` rebuilds the file; a copied home (``cp -a``, the original
  still there) and a new crashsearch version that changes the views rebuild it at their first
  write. (The notebook API builds the same views in memory and needs no file.) Mount a shared home
  at the same path on every machine: one file serves one path (``crashsearch catalog`` on a
  machine rewrites it for that machine's path).
* **Old clients.** The file is written in DuckDB 1.0 storage format and the views use SQL that
  DuckDB 1.0 understands, so the duckdb CLI (``pip install duckdb-cli``) and DBeaver's driver
  open it even when they are older than the Python package.
* **Damaged files.** The store leaves a damaged log file out of its views; a glob cannot, so a
  query here fails with an error naming the file until ``crashsearch check --repair`` moves it
  to ``<home>/quarantine/``.
* **Empty home.** DuckDB cannot read an empty glob, so the file appears with the first
  experiment a store writes (the store calls ``ensure_exists`` after each write).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import duckdb

from crashsearch.lab._io import publish, temp_beside
from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import TIME_MAX, TIME_MIN
from crashsearch.lab.logsql import MERGED_SUFFIX, REPLACES_KEY, dedup_sql
from crashsearch.lab.logfiles import LOG_KEY
from crashsearch.lab.settings import Home
from crashsearch.lab.storage import attach, backend_for

log = logging.getLogger(__name__)

CATALOG_FILE = "history.duckdb"
CATALOG_VERSION = 3  # bump when the views change: ensure() rebuilds files of another version
STORAGE_VERSION = "v1.0.0"  # oldest DuckDB that can open the file
LOG_GLOB = "campaigns/*/log/part-*.parquet"  # Store.log_files, as a DuckDB glob


def catalog_path(home: Home) -> Path:
    """``<home>/history.duckdb`` (it may not exist yet)."""
    return home.root / CATALOG_FILE


_ensured: set[str] = set()  # homes whose catalog this process has checked (version and path)


def ensure_exists(home: Home) -> Path | None:
    """The store's hook after each write: build the catalog if it is missing or (checked once per
    home and process) of another crashsearch version, or built for another home that exists here
    (a copy: its views would show the original's rows). A writer never rebuilds it for its own
    view of a path that does not exist here: workers that mount a shared home elsewhere would take
    turns rewriting it."""
    path = catalog_path(home)
    if str(home.root) in _ensured and path.exists():
        return path
    stamp = built_for(path) if path.exists() else None
    current = stamp is not None and stamp.get("version") == CATALOG_VERSION and not _copied_from(stamp, home)
    path = path if current else build(home)
    if path is not None:
        _ensured.add(str(home.root))
    return path


def ensure(home: Home) -> Path | None:
    """The catalog's path, rebuilt first if it is missing, unreadable, of another crashsearch
    version or built for another home path (the home moved); None while the home has no
    experiment yet. Called by ``crashsearch.open_home``; ``crashsearch catalog`` always rebuilds."""
    if home.url:  # an object-store home's catalog is written on request only (build with out=)
        return None
    path = catalog_path(home)
    if path.exists() and built_for(path) == {"root": str(home.root.resolve()), "version": CATALOG_VERSION}:
        return path
    return build(home)


def _copied_from(stamp: dict, home: Home) -> bool:
    """Whether the catalog was built for another home that exists here: a copied home (``cp -a``)
    whose views would show the original's rows. (A path that does not exist here may be the same
    shared home mounted elsewhere: that is left to ``ensure`` and ``crashsearch catalog``.)"""
    built = stamp.get("root")
    if not isinstance(built, str) or built == str(home.root.resolve()):
        return False
    try:
        return Path(built).is_dir() and not os.path.samefile(built, home.root)
    except OSError:
        return False


def built_for(path: Path) -> dict | None:
    """The home path and catalog version a catalog file was built for; None if unreadable."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        row = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'experiments'").fetchone()
        return json.loads(row[0]) if row and row[0] else None
    except (duckdb.Error, ValueError):
        return None
    finally:
        con.close()


def build(home: Home, out: Path | None = None) -> Path | None:
    """Write the catalog to a temp file, close it and rename it into place; return its path.

    ``out``: where to write it (default ``<home>/history.duckdb``); an object-store home has no
    default (its catalog is a local file whose views name the s3:// objects, for clients with
    the httpfs extension). Returns None (and writes nothing) while the home has no log file.
    Raises ValueError when the home path cannot be used in a DuckDB glob, or an object-store
    home has no ``out``; duckdb.Error or OSError if the file cannot be written.
    """
    root = home.url or home.root.resolve()  # a relative path would resolve against the reader's folder
    if any(ch in str(root) for ch in "*?[]{}"):
        raise UserError(f"history.duckdb needs a home path without glob characters: {root}")
    if home.url and out is None:
        raise UserError(f"the home {home.url} is on object storage: write its catalog to a local file with --out FILE")
    if not _has_log(home):
        return None
    final = Path(out) if out is not None else catalog_path(home)
    temp = temp_beside(final)
    try:
        con = duckdb.connect(str(temp), config={"storage_compatibility_version": STORAGE_VERSION})
        try:
            if home.url:  # the views are bound now: read the s3:// objects through the home's own filesystem
                attach(con, backend_for(home.url))
            stamp = _sql_text(json.dumps({"root": str(root), "version": CATALOG_VERSION}))
            for name, sql in view_sql(root).items():
                con.execute(f"CREATE VIEW {name} AS {sql}")
                if name == "experiments":
                    con.execute(f"COMMENT ON VIEW experiments IS {stamp}")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        publish(temp, final)  # the atomic write's last step (lab/_io.py): DuckDB writes by path
    finally:
        temp.unlink(missing_ok=True)
        Path(f"{temp}.wal").unlink(missing_ok=True)
    return final


def _has_log(home: Home) -> bool:
    """Whether the home holds a log file (DuckDB cannot read an empty glob)."""
    if home.url:
        return any(LOG_KEY.fullmatch(k) for k in backend_for(home.url).list("campaigns/"))
    return next(iter(home.root.resolve().glob(LOG_GLOB)), None) is not None


def view_sql(root: Path) -> dict[str, str]:
    """The SELECT of each view over the home at ``root`` (absolute paths, DuckDB 1.0 SQL)."""
    logs = _sql_text(f"{root}/{LOG_GLOB}")
    folder = "regexp_replace({}, '[^/]*$', '')"  # a path's folder, with its trailing slash
    # Generations in SQL (Store.generations): a merged file's footer names the files it replaces;
    # per folder the newest live full merge is the base, every other live file is recent.
    files = f"""
        WITH replaced AS (
            SELECT {folder.format('file_name')} || unnest(from_json(decode(value), '["VARCHAR"]')) AS file
            FROM parquet_kv_metadata({logs}) WHERE decode(key) = {_sql_text(REPLACES_KEY.decode())}),
        bases AS (
            SELECT max(file) AS file FROM glob({logs})
            WHERE file LIKE {_sql_text('%' + MERGED_SUFFIX)} AND file NOT IN (SELECT file FROM replaced)
            GROUP BY {folder.format('file')}),
        live AS (
            SELECT * FROM read_parquet({logs}, union_by_name = true, filename = true)
            WHERE filename NOT IN (SELECT file FROM replaced))"""
    experiments = files + " " + dedup_sql(
        "(SELECT * EXCLUDE (filename) FROM live WHERE filename IN (SELECT file FROM bases))",
        "(SELECT * FROM live WHERE filename NOT IN (SELECT file FROM bases))")

    # One row per campaign folder with a campaign.json or a log (Store.campaigns); an unreadable
    # campaign.json counts as empty, as the store's read_json does.
    info = "CASE WHEN json_valid(content) AND json_type(content) = 'OBJECT' THEN content ELSE '{}' END"
    campaigns = f"""
        WITH found AS (
            SELECT regexp_extract(filename, '([^/]+)/campaign\\.json$', 1) AS id, {info} AS info
            FROM read_text({_sql_text(f'{root}/campaigns/*/campaign.json')})
            UNION ALL
            SELECT DISTINCT regexp_extract(file, '([^/]+)/log/[^/]*$', 1) AS id, '{{}}' AS info FROM glob({logs})),
        one AS (
            SELECT id, json_merge_patch(max(info) FILTER (WHERE info <> '{{}}'), json_object('id', id)) AS info
            FROM found WHERE regexp_matches(id, '^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$') GROUP BY id)
        SELECT id,
            json_extract_string(info, '$.dataset') AS dataset,
            json_extract_string(info, '$.space') AS space,
            json_extract_string(info, '$.status') AS status,
            CASE WHEN json_type(info, '$.policies') = 'ARRAY'
                 THEN array_to_string(from_json(json_extract(info, '$.policies'), '["VARCHAR"]'), ',')
                 ELSE json_extract_string(info, '$.policies') END AS policies,
            CASE WHEN json_type(info, '$.budget') IN ('BIGINT', 'UBIGINT')  -- lab/campaign_info.py: 1..int64
                 AND TRY_CAST(json_extract_string(info, '$.budget') AS BIGINT) >= 1
                 THEN TRY_CAST(json_extract_string(info, '$.budget') AS BIGINT) END AS budget,
            TRY_CAST(json_extract_string(info, '$.created_at') AS TIMESTAMPTZ) AS created_at,
            TRY_CAST(json_extract_string(info, '$.updated_at') AS TIMESTAMPTZ) AS updated_at,
            CAST(info AS VARCHAR) AS info
        FROM one ORDER BY id"""

    # bugfix_events.jsonl, one event or removal per line (lab/versions.py): the same lines as
    # bugfix_log.read_events accepts (times within lab.bounds' range), less the removed events.
    line = "json_extract_string(line, '$.{}')"
    in_range = f"BETWEEN {_sql_time(TIME_MIN)} AND {_sql_time(TIME_MAX)}"
    bugfix_events = f"""
        WITH entries AS (
            SELECT line, TRY_CAST({line.format('declared_at')} AS TIMESTAMPTZ) AS declared
            FROM (SELECT unnest(string_split(content, chr(10))) AS line
                  FROM read_text({_sql_text(f'{root}/bugfix_events.jsonl')}))
            WHERE json_valid(line) AND json_type(line) = 'OBJECT'),
        good AS (SELECT line FROM entries WHERE declared {in_range}),
        removed AS (
            SELECT {line.format('removes')} AS id FROM good
            WHERE json_type(line, '$.removes') = 'VARCHAR' AND {line.format('removes')} <> '')
        SELECT CAST(coalesce({line.format('id')}, '') AS VARCHAR) AS id,
               CAST(nullif({line.format('version')}, '') AS VARCHAR) AS version,
               CAST(coalesce({line.format('note')}, '') AS VARCHAR) AS note,
               TRY_CAST({line.format('declared_at')} AS TIMESTAMPTZ) AS declared_at,
               TRY_CAST({line.format('at')} AS TIMESTAMPTZ) AS at,
               CAST(nullif({line.format('campaign')}, '') AS VARCHAR) AS campaign
        FROM good
        WHERE json_extract(line, '$.removes') IS NULL
          AND (nullif({line.format('at')}, '') IS NULL
               OR TRY_CAST({line.format('at')} AS TIMESTAMPTZ) {in_range})  -- a bad time: the line is skipped
          AND coalesce({line.format('id')}, '') NOT IN (SELECT id FROM removed)
        ORDER BY declared_at"""
    return {"experiments": experiments, "campaigns": campaigns, "bugfix_events": bugfix_events}


def _sql_time(value) -> str:
    return f"TIMESTAMPTZ '{value.strftime('%Y-%m-%d %H:%M:%S')}+00'"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

