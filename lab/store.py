"""The history store: every experiment ever run, as an append-only Parquet log queried with DuckDB.

Contract (what writers may rely on and readers may assume):

* Storage is a ``Backend`` (lab/storage.py: list, read, atomic put, conditional create, delete,
  mtime, url): ``Store(home)`` uses ``backend_for(home.location)``, a LocalBackend for a folder; any
  backend with the same guarantees serves (an object store: issue 24). The store assumes no
  rename and no folder: only the backend's calls below.
* The system of record is the Parquet objects under ``campaigns/<id>/log/`` (keys relative to the
  home). Each finished experiment or small batch is a new object ``part-<utc timestamp>-<uuid>.parquet``,
  serialized in memory and written with one ``backend.put``, which is atomic: a row is complete or
  absent. (Locally: a hidden temp file in the same folder, fsynced, renamed into place by
  lab/_io.atomic_write; a writer that crashes leaves at most a hidden temp file that no listing
  shows, and ``compact`` removes those older than an hour.)
* Finished rows never change. Objects are only ever added, except by ``compact``. Within one file
  experiment ids are unique (``append`` refuses a batch that repeats one).
* One row per (campaign, experiment_id), whatever happens in storage. Compaction uses generations:
  it puts the merged rows as ``part-<ts>-<uuid>.merged.parquet`` whose footer lists the files it
  replaces, and only then deletes those files. Readers ignore every file a merged file replaces,
  so in the window between put and delete (or after a compaction that died there) nobody sees a
  row twice; the next compaction removes the leftovers. Per campaign the newest merged file is
  the *base*; every other file is *recent*. The ``experiments`` view is the base plus the recent
  rows whose id is not in the base, deduplicated among themselves (earliest finished_at, then
  file name, wins). So a re-appended row never shows twice, and the dedup costs in proportion to
  the recent rows: a compacted history of a million rows reads at the speed of a single Parquet file.
* DuckDB is the query layer only: ``connect()`` opens a fresh in-memory connection with views
  over the objects, named by ``backend.url`` (and small tables rebuilt from ``campaign.json``
  objects and ``bugfix_events.jsonl``). There is no database file and nothing to lock, so queries
  work while campaigns write. A connection sees the objects listed when it opened (the Store's
  read methods open one per call). A compaction may delete an object a reader listed just
  before; the read then fails with an IO error, and ``connect`` and the read methods retry
  (bounded) with a fresh listing, in which the rows are in the merged file.
* Minor compactions keep the recent files few: ``append`` merges a campaign's recent files
  (not its base) into one ``.minor.parquet`` file, by the same put-then-delete steps, once
  there are MINOR_COMPACT_FILES of them.
* ``campaign.json`` is read and written through the backend too (``write_campaign`` puts it
  whole); a campaign is a folder of ``campaigns/`` (``backend.folders``).

Views: ``experiments`` (every campaign under the home, ``union_by_name`` over spaces),
``campaigns`` (one row per campaign.json) and ``bugfix_events``; ``_log_rows`` is the live rows
before dedup, for internal lookups. Compact a campaign fully after it runs (``crashsearch
compact``): readers then read one file per campaign. A raw ``read_parquet('.../part-*.parquet')``
in the duckdb shell also reads replaced files and re-appended copies: query through these views.

Code: this file holds the Store (layout, writes, views, compaction); the storage seam in
lab/storage.py; the keys, footers and generations of single log objects in lab/logfiles.py; the
log's file names and read SQL in lab/logsql.py (history.duckdb builds on them too), the row checks
in lab/rows.py, import and export of external logs in lab/exchange.py, the commands in
flows/commands/history.py and the crash-safe file writes in lab/_io.py.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crashsearch.lab.logfiles import (
    LOG_KEY, Generations, campaign_key, footer, location, log_prefix, log_sql, read_object, source, warn_damaged)
from crashsearch.lab.errors import UserError
from crashsearch.lab.campaign_info import check_info, readable_info
from crashsearch.lab.rows import CAMPAIGN_ID, check_campaign_id, clean_row, clean_table
from crashsearch.lab.schema import BASE_COLUMNS, experiment_schema
from crashsearch.lab.settings import Home
from crashsearch.lab.storage import Backend, attach, backend_for
from crashsearch.lab.quarantine import QUARANTINE, keep_copy
from crashsearch.lab.space import Space
from crashsearch.lab.lease import check_lease
from crashsearch.lab.lock import campaign_liveness, reraise_interrupt
from crashsearch.lab.catalog import ensure_exists, view_sql
from crashsearch.lab.logsql import (  # noqa: F401 - LOG_DIR and MINOR_SUFFIX read as store's too
    LOG_DIR, MERGED_SUFFIX, MINOR_SUFFIX, REPLACES_KEY, ident as _ident)
from crashsearch.lab.leaderboard import interval, t_quantile  # noqa: F401 - t_quantile re-exported
from crashsearch.lab.bugfix_log import bugfix_events

log = logging.getLogger(__name__)

MINOR_COMPACT_FILES = 50  # append merges a campaign's recent files once there are this many
READ_STATEMENTS = (duckdb.StatementType.SELECT,)  # covers WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE
STALE_TEMP_SECONDS = 3600
READ_RETRIES = 5
# A query never fetches code: an extension it would need (httpfs for a URL, ...) is an error instead.
DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                 "allow_community_extensions": False}


def lock_to_campaigns(con: duckdb.DuckDBPyConnection, campaigns: Path | str, *copies: Path) -> None:
    """Let ``con`` read files under ``campaigns`` only, for good: a query over the views cannot read
    /etc/passwd or the cache with read_csv, read_text or glob (DuckDB's allowed_directories).
    ``campaigns`` is a folder or the URL of an object-store home's campaigns/ (s3://bucket/p/campaigns);
    ``copies``: the home's local read cache of an object-store home, which holds the log's copies."""
    folders = set()
    for folder in (campaigns, *copies):
        folders |= {str(folder)} if "://" in str(folder) else {str(folder), os.path.realpath(folder)}
    listed = ", ".join("'" + f.rstrip("/").replace("'", "''") + "/'" for f in sorted(folders))
    # DuckDB also allows its spill folder (default: .tmp under the working directory, whatever is
    # in it): no spill folder, so a query reads the home only and writes nowhere
    con.execute("SET temp_directory = ''")
    con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")


class QueryCancelled(Exception):
    """A query stopped by its timeout (a KeyboardInterrupt stops it too, and is re-raised as is)."""


class Store:
    """The history of every campaign under one home. See the module docstring for the contract."""

    def __init__(self, home: Home, backend: Backend | None = None):
        self.home = home
        self.backend = backend if backend is not None else backend_for(home.location)  # the storage seam

    # ---- layout -----------------------------------------------------------------------------
    def log_keys(self, campaign: str | None = None) -> list[str]:
        """The storage keys of every log file of one campaign (or all), replaced ones included; sorted."""
        prefix = log_prefix(campaign) if campaign is not None else "campaigns/"
        return [k for k in self.backend.list(prefix) if LOG_KEY.fullmatch(k)]

    def log_files(self, campaign: str | None = None) -> list[Path]:
        """Every log file of one campaign (or all), replaced ones included, by name: local paths
        (``location``). Listing creates nothing."""
        return [location(self.backend, k) for k in self.log_keys(campaign)]

    def generations(self, campaign: str | None = None) -> "Generations":
        """The files readers use, split into bases and recent, and the replaced files to ignore
        (as keys, ``PurePosixPath``s).

        Raises FileNotFoundError if a compaction removes a merged file while it is being read
        (callers retry)."""
        folders: dict[str, list[PurePosixPath]] = {}
        gens = Generations([], [], [])
        replaces: dict[PurePosixPath, bytes] = {}
        for key in self.log_keys(campaign):
            problem, replaces_raw = footer(self.backend, key)
            if problem:  # left out, named; the other files (and campaigns) stay readable
                gens.damaged.append((str(location(self.backend, key)), problem))
                continue
            path = PurePosixPath(key)
            replaces[path] = replaces_raw
            folders.setdefault(posixpath.dirname(key), []).append(path)
        for files in folders.values():
            merged = [f for f in files if f.name.endswith((MERGED_SUFFIX, MINOR_SUFFIX))]
            replaced = set()
            for path in merged:
                replaced.update(json.loads(replaces[path]))
            live = [f for f in files if f.name not in replaced]
            live_merged = [f for f in live if f.name.endswith(MERGED_SUFFIX)]
            base = live_merged[-1:]  # the newest generation; older live merged files are recent
            gens.bases.extend(base)
            gens.recent.extend(f for f in live if f not in base)
            gens.replaced.extend(f for f in files if f.name in replaced)
        for where, problem in gens.damaged:
            warn_damaged(where, problem)
        return gens

    # ---- writing ----------------------------------------------------------------------------
    def append(self, campaign: str, rows: list[dict], space: Space) -> Path:
        """Validate ``rows`` and write them as one new log file; return its path.

        Each row is a dict of schema columns (``experiment_schema(space)``). Missing optional
        columns become null; ``campaign`` and ``space`` default to the campaign id and space name;
        missing axis values and ``arch_group`` are filled from ``cell_id``, and axis values that
        are given must agree with it (except for status ``invalid``); ``finished_at`` defaults
        to now (a row is finished when it is appended). Raises ValueError naming the row and
        column of the first bad row; nothing is written then.
        """
        check_campaign_id(campaign)
        if not rows:
            raise ValueError("append needs at least one row")
        schema = experiment_schema(space)
        now = datetime.now(timezone.utc)
        clean = []
        seen: set[str] = set()
        for index, row in enumerate(rows):
            try:
                clean.append(clean_row(row, campaign, space, schema, now))
            except ValueError as exc:
                raise UserError(f"row {index}: {exc}") from None
            if clean[-1]["experiment_id"] in seen:
                raise UserError(f"row {index} column experiment_id: {clean[-1]['experiment_id']!r} appears twice in this batch")
            seen.add(clean[-1]["experiment_id"])
        table = pa.Table.from_pylist(clean, schema=schema)
        path = self._write(campaign, table)
        _minor_compact_if_many(self, campaign)
        return path

    def append_new(self, campaign: str, rows: list[dict], space: Space) -> tuple[Path | None, list[str]]:
        """Append only the rows whose experiment id is not recorded yet (idempotent: a retried or
        re-dispatched batch never writes a row twice). Returns (the new file or None, skipped ids)."""
        done = self.recorded_ids(campaign) if self.log_keys(campaign) else set()
        fresh = [r for r in rows if r["experiment_id"] not in done]
        return (Store.append(self, campaign, fresh, space) if fresh else None), [r["experiment_id"] for r in rows
                                                                          if r["experiment_id"] in done]

    def append_table(self, campaign: str, table: pa.Table, space: Space) -> Path:
        """Bulk path for trusted writers: one Arrow table, checked column-wise, written as one file.

        Checks the columns are schema columns, required ones have no nulls, statuses are valid,
        ids are unique and every row is of this campaign (a missing campaign column is filled);
        casts to the schema (missing columns null). Does not
        check axis values against cell_id (``append`` does). Raises ValueError naming the column.
        """
        check_campaign_id(campaign)
        path = self._write(campaign, clean_table(table, campaign, experiment_schema(space)))
        _minor_compact_if_many(self, campaign)
        return path

    def _write(self, campaign: str, table: pa.Table, replaces: list[str] | None = None, full: bool = True) -> Path:
        check_lease(self.home, campaign)  # a writer whose lease was taken over writes no more (lab/lease.py)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        if replaces is None:
            key = f"{log_prefix(campaign)}part-{stamp}-{uuid.uuid4().hex}.parquet"
        else:
            key = f"{log_prefix(campaign)}part-{stamp}-{uuid.uuid4().hex}{MERGED_SUFFIX if full else MINOR_SUFFIX}"
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   REPLACES_KEY: json.dumps(sorted(replaces)).encode()})
        sink = pa.BufferOutputStream()  # serialized first: the backend's put is one atomic write
        pq.write_table(table, sink, compression="zstd")
        self.backend.put(key, sink.getvalue().to_pybytes())
        _ensure_catalog(self.home)
        return location(self.backend, key)

    def write_campaign(self, campaign: str, info: dict) -> None:
        """Create or update ``campaigns/<id>/campaign.json`` atomically (merged with what is there).

        ``id``, ``created_at`` (kept from the first write) and ``updated_at`` are set here; values
        must be JSON-serialisable (others are written as strings). Raises ValueError (one line
        naming the key) for a known key whose value no reader accepts (lab/campaign_info.py).
        """
        check_info(info)
        key = campaign_key(campaign, "campaign.json")
        current = _current_campaign(self.backend, campaign, key)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        merged = {**current, **info, "id": campaign,
                  "created_at": current.get("created_at") or info.get("created_at") or now, "updated_at": now}
        self.backend.put(key, (json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n").encode())

    def campaigns(self) -> list[dict]:
        """One dict per campaign folder: its campaign.json, or just ``{"id": ...}`` if it has none."""
        out = []
        for campaign in [c for c in self.backend.folders("campaigns/") if CAMPAIGN_ID.match(c)]:
            key = campaign_key(campaign, "campaign.json")
            info = read_object(self.backend, key)  # a bad entry is named and left out, the rest kept
            clean = readable_info(info or {}, location(self.backend, key))
            if "pid" in (info or {}) and "pid" not in clean:  # a damaged pid names no live run (lab.lock.campaign_liveness)
                clean["pid_damaged"] = True
            out.append({**clean, "id": campaign})
        return out

    def require_campaign(self, campaign: str, experiments: bool = False) -> None:
        """Raise ``missing_campaign`` (a UserError) when this home has no campaign ``campaign`` (no
        folder); with ``experiments``, also when it has no log file."""
        found = self.log_keys(campaign) if experiments else campaign in self.backend.folders("campaigns/")
        if not found:
            raise self.missing_campaign(campaign)

    def missing_campaign(self, campaign: str, listed: Callable[[str], bool] | None = None) -> UserError:
        """The one-line error for a campaign this home has no experiments of: it names the home by its
        location (an object-store home's URL, not its scratch folder) and the campaigns it has (those
        ``listed`` accepts)."""
        known = [c for c in self.backend.folders("campaigns/") if CAMPAIGN_ID.match(c) and (listed is None or listed(c))]
        return UserError(f"campaign {campaign!r} has no experiments under {self.home.location} "
                         f"(campaigns: {', '.join(known) or 'none'})")

    # ---- reading ----------------------------------------------------------------------------
    def connect(self, follow: bool = False) -> duckdb.DuckDBPyConnection:
        """A fresh in-memory DuckDB connection with the views experiments, campaigns, bugfix_events.

        ``follow``: while no log file is damaged, ``experiments`` reads the log through globs
        (history.duckdb's SQL, lab/catalog.py), so a connection kept open sees new rows and
        compactions; otherwise it reads the files listed now, damaged ones left out and named.
        Nothing is written. Raises duckdb.IOException only if compactions keep removing files
        for several retries."""
        con = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
        attach(con, self.backend)
        con.execute("SET TimeZone = 'UTC'")
        for attempt in range(READ_RETRIES):
            try:
                gens = self.generations()
                # following globs is for a folder home: on an object store DuckDB reads the listed
                # parts' local copies (lab/storage_s3.py: its reads through s3fs were not reliable)
                if follow and not self.home.url and gens.live and not gens.damaged and \
                        not any(ch in self.home.location for ch in "*?[]{}"):
                    experiments = view_sql(self.home.url or self.home.root.resolve())["experiments"]
                else:
                    experiments = log_sql(self.backend, gens)
                con.execute(f"CREATE OR REPLACE VIEW experiments AS {experiments}")
                # every live row before the dedup: for lookups where a duplicate cannot matter
                con.execute(f"CREATE OR REPLACE VIEW _log_rows AS {log_sql(self.backend, gens, dedup=False)}")
                break
            except (duckdb.IOException, FileNotFoundError):  # a compaction removed a file: list again
                if attempt == READ_RETRIES - 1:
                    con.close()
                    raise
                time.sleep(0.05 * (attempt + 1))
        con.register("_campaigns", _campaigns_table(self.campaigns()))
        con.execute("CREATE VIEW campaigns AS SELECT * FROM _campaigns")
        con.register("_bugfix_events", _events_table(bugfix_events(self.home, backend=self.backend)))
        con.execute("CREATE VIEW bugfix_events AS SELECT * FROM _bugfix_events")
        cache = getattr(self.backend, "cache", None)  # an object store's read cache: the local copies of the log
        lock_to_campaigns(con, self.home.campaigns if not self.home.url else self.backend.url("campaigns"),
                          *([cache.folder] if cache is not None else []))
        return con

    def query(self, sql: str, params: list | None = None, timeout: float | None = None) -> pd.DataFrame:
        """Run one read-only statement over the views; return a DataFrame.

        The query runs on a worker thread so that Ctrl-C (KeyboardInterrupt, re-raised) and
        ``timeout`` seconds (QueryCancelled) stop DuckDB within a fraction of a second. Raises
        ValueError (one line) for anything but a single read (SELECT, WITH, DESCRIBE, SHOW,
        SUMMARIZE); duckdb.Error for a bad query.
        """
        check_read_only(sql)
        if timeout is not None and not timeout > 0:
            raise UserError(f"timeout must be positive, got {timeout}")
        return self._with_connection(lambda con: interruptible(con, sql, params, timeout))

    def _with_connection(self, work: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run ``work`` on a fresh connection, retrying when a compaction removes a listed file."""
        for attempt in range(READ_RETRIES):
            con = None
            try:
                con = self.connect()
                return work(con)
            except (duckdb.IOException, FileNotFoundError):
                # a compaction unlinked a file this query had listed; its rows are in the
                # merged file now, so a fresh listing reads them
                if attempt == READ_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
            finally:
                if con is not None:
                    con.close()
        raise AssertionError("unreachable")

    def recorded_ids(self, campaign: str) -> set[str]:
        """The experiment ids a campaign's log holds (every live file, before dedup)."""
        for attempt in range(READ_RETRIES):
            gens = self.generations(campaign)
            if not gens.live:
                return set()
            con = duckdb.connect(":memory:")
            attach(con, self.backend)
            try:
                rows = con.execute(f"SELECT DISTINCT experiment_id FROM ({log_sql(self.backend, gens, dedup=False)})").fetchall()
                return {r[0] for r in rows}
            except (duckdb.IOException, FileNotFoundError):  # compacted meanwhile: list again
                if attempt == READ_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
            finally:
                con.close()
        raise AssertionError("unreachable")

    def experiments(self, campaign: str | None = None) -> pd.DataFrame:
        """Every experiment (of one campaign, or all), ordered by finished_at, experiment_id."""
        if campaign is None:
            sql, params = "SELECT * FROM experiments ORDER BY finished_at, experiment_id", []
        else:
            sql, params = "SELECT * FROM experiments WHERE campaign = ? ORDER BY finished_at, experiment_id", [check_campaign_id(campaign)]
        return self._with_connection(lambda con: con.execute(sql, params).df())

    def leaderboard(self, campaign: str | None = None, k: int = 10, min_replicates: int = 1) -> pd.DataFrame:
        """The best ``k`` cells by mean validation AP over their ok/healed replicates.

        One row per (dataset, space, cell_id): ``rank, mean_val_ap, ci_low, ci_high`` (95%
        t-interval; NaN with one replicate), ``std_val_ap, n`` (replicates with a val_ap),
        ``cell_id, arch_group``, the axis values, ``dataset, space, campaigns`` and, apart at
        the end, ``best_test_ap`` (max test AP: for people, never for policies). Cells with fewer
        than ``min_replicates`` replicates are left out. Raises ValueError on k or
        min_replicates below 1 or a bad campaign id.
        """
        if k < 1 or min_replicates < 1:
            raise UserError("leaderboard needs k >= 1 and min_replicates >= 1")
        params: dict[str, Any] = {"min_n": int(min_replicates), "k": int(k)}
        where = "status IN ('ok', 'healed') AND val_ap IS NOT NULL AND NOT isnan(val_ap)"
        if campaign is not None:
            where += " AND campaign = $campaign"
            params["campaign"] = check_campaign_id(campaign)

        def run(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, list[str]]:
            columns = [row[0] for row in con.execute("DESCRIBE experiments").fetchall()]
            axes = [c for c in columns if c not in BASE_COLUMNS]
            axis_any = "".join(f", any_value({_ident(a)}) AS {_ident(a)}" for a in axes)
            axis_out = "".join(f", detail.{_ident(a)}" for a in axes)
            # Rank on the cheap aggregates first, then fetch the descriptive columns for the k cells
            # from the rows before dedup: a duplicate repeats its cell's axis values and campaign.
            sql = f"""
                WITH top AS MATERIALIZED (  -- referenced twice: compute once
                    SELECT dataset, space, cell_id, avg(val_ap) AS mean_val_ap, stddev_samp(val_ap) AS std_val_ap,
                           count(*) AS n, max(test_ap) AS best_test_ap
                    FROM experiments WHERE {where}
                    GROUP BY dataset, space, cell_id HAVING count(*) >= $min_n
                    ORDER BY mean_val_ap DESC, n DESC, cell_id LIMIT $k),
                detail AS (
                    SELECT dataset, space, cell_id, any_value(arch_group) AS arch_group{axis_any},
                           string_agg(DISTINCT campaign, ',' ORDER BY campaign) AS campaigns
                    FROM _log_rows WHERE {where} AND cell_id IN (SELECT cell_id FROM top)
                    GROUP BY dataset, space, cell_id)
                SELECT top.mean_val_ap, top.std_val_ap, top.n, top.cell_id, detail.arch_group{axis_out},
                       top.dataset, top.space, detail.campaigns, top.best_test_ap
                FROM top JOIN detail ON top.cell_id = detail.cell_id
                    AND top.dataset IS NOT DISTINCT FROM detail.dataset AND top.space IS NOT DISTINCT FROM detail.space
                ORDER BY top.mean_val_ap DESC, top.n DESC, top.cell_id"""
            return con.execute(sql, params).df(), axes

        board, axes = self._with_connection(run)
        low, high = interval(board["mean_val_ap"], board["std_val_ap"], board["n"])  # the one leaderboard's interval
        board.insert(1, "ci_low", low)
        board.insert(2, "ci_high", high)
        board.insert(0, "rank", np.arange(1, len(board) + 1))
        # axes of other spaces are all null here: drop them
        empty = [a for a in axes if board[a].isna().all()]
        return board.drop(columns=empty)

    # ---- compaction (import and export: lab/exchange.py; the CLI: flows/commands/history.py) ---------
    def compact(self, campaign: str, full: bool = True) -> tuple[int, int]:
        """Merge a campaign's log files into one; return (files merged, rows in the merged file).

        ``full`` merges every live file into a new base (cost: the whole campaign). ``full=False``
        merges only the recent files (cost: those rows), which ``append`` does by itself once a
        campaign has MINOR_COMPACT_FILES files. Safe beside readers, writers and other
        compactions (see the module docstring): the merged file names the files it replaces and
        is put before they are deleted; files appended meanwhile are left alone.
        Raises ValueError when the campaign has no log folder (nothing is created).
        Returns (0, 0) when there are fewer than two files to merge; it still removes leftovers
        of an interrupted compaction, and temp files older than an hour.
        """
        prefix = log_prefix(campaign)
        sweep = getattr(self.backend, "remove_stale_temps", None)  # local files: a killed writer's temp files
        if sweep is not None:
            sweep(prefix, STALE_TEMP_SECONDS)
        if LOG_DIR not in self.backend.folders(prefix.removesuffix(f"{LOG_DIR}/")):
            raise UserError(f"campaign {campaign!r} has no log under {self.home.location}")
        gens = self.generations(campaign)
        inputs = Generations(gens.bases, gens.recent, []) if full else Generations([], gens.recent, [])
        merged, rows = 0, 0
        remove = list(gens.replaced)  # a live merged file replaces them: finish its job
        if len(inputs.live) >= 2:
            table = self._merged(inputs)
            # leftovers stay listed: if their delete fails again, they must stay replaced
            self._write(campaign, table, replaces=[f.name for f in inputs.live + gens.replaced], full=full)
            merged, rows = len(inputs.live), table.num_rows
            remove += inputs.live
        for key in remove:  # missing: another compaction got there first. Not made durable: a
            self.backend.delete(str(key))  # replaced file a crash brings back stays replaced
        return merged, rows

    def _merged(self, gens: "Generations") -> pa.Table:
        """The rows the view shows for exactly these files, sorted, with the files' column types."""
        schema = pa.unify_schemas([pq.read_schema(source(self.backend, str(f))).remove_metadata() for f in gens.live])
        con = duckdb.connect(":memory:")
        attach(con, self.backend)
        try:
            con.execute("SET TimeZone = 'UTC'")
            sql = f"SELECT * FROM ({log_sql(self.backend, gens)}) ORDER BY finished_at, experiment_id"
            table = con.sql(sql).to_arrow_table()
        finally:
            con.close()
        return table.select(schema.names).cast(schema)


def _current_campaign(backend: Backend, campaign: str, key: str) -> dict:
    """The campaign.json ``write_campaign`` merges into ({} if none). One that does not parse is
    not lost: its bytes are kept under quarantine/<campaign>/ first, and a warning says where."""
    try:
        raw = backend.read(key)
    except FileNotFoundError:
        return {}
    except OSError:  # unreadable (not a regular file, ...): read_object names it
        return read_object(backend, key) or {}
    try:
        current = json.loads(raw.decode("utf-8"))  # as every reader of it (lab/_io.json_object)
        if isinstance(current, dict):
            return current
        problem = f"a JSON {type(current).__name__}, not an object"
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json parses
        problem = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    kept = keep_copy(backend, raw, f"{QUARANTINE}/{campaign}/campaign.json")
    log.warning("%s is damaged (%s): its bytes are kept at %s and a new one is written",
                backend.url(key), problem, kept)
    return {}


def _minor_compact_if_many(store: Store, campaign: str) -> None:
    """Merge the campaign's recent files once there are many: each costs readers a file open."""
    if len(store.log_keys(campaign)) < MINOR_COMPACT_FILES:
        return
    try:
        store.compact(campaign, full=False)
    except Exception as exc:  # the rows are written; a failed merge only leaves files to merge later
        reraise_interrupt(exc)
        log.warning("minor compaction of campaign %s failed: %s", campaign, exc)


def _ensure_catalog(home: Home) -> None:
    """Create ``<home>/history.duckdb`` with the home's first log file (lab/catalog.py); not for an
    object-store home, whose catalog is written on request (``crashsearch catalog --out``)."""
    if home.url:
        return
    try:
        ensure_exists(home)
    except Exception as exc:  # the rows are written; the catalog is a convenience built again later
        reraise_interrupt(exc)  # a Ctrl-C or SIGTERM during its query stops the run (lab/lock.py)
        log.warning("could not build %s: %s", home.root / "history.duckdb", str(exc).splitlines()[0])


def interruptible(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None,
                  timeout: float | None = None) -> pd.DataFrame:
    """``con.execute(sql).df()`` on a worker thread, interrupted by Ctrl-C or after ``timeout`` s.

    Re-raises KeyboardInterrupt; raises QueryCancelled on the timeout, else what the query raises.
    """
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can return early later

    def work() -> None:
        try:
            box["frame"] = con.execute(sql, params or []).df()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="crashsearch-query", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout

    def stop() -> None:
        # interrupt again until the worker is out: one sent before its query began is lost, and a
        # connection closed while still busy raises, which would replace the Ctrl-C with a DuckDB error
        until = time.monotonic() + 5
        while not done.is_set() and time.monotonic() < until:
            con.interrupt()
            done.wait(0.05)

    try:
        while not done.wait(0.05):
            if deadline is not None and time.monotonic() > deadline:
                stop()
                raise QueryCancelled(f"the query ran past its timeout of {timeout:g} s and was cancelled")
    except BaseException:  # Ctrl-C, and SIGTERM as Prefect's TerminationSignal (not a KeyboardInterrupt)
        stop()  # else the caller closes the busy connection, whose error replaces the signal
        raise
    if "error" in box:
        raise box["error"]
    return box["frame"]


def check_read_only(sql: str) -> None:
    """Raise ValueError (one line) unless ``sql`` is exactly one read statement."""
    try:
        statements = duckdb.connect(":memory:").extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"cannot parse the query: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise UserError(f"one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind not in READ_STATEMENTS:
        raise UserError(f"the history is read-only: {kind.name} statements are not allowed (use SELECT, WITH, DESCRIBE, SHOW)")


# ---- small DuckDB tables ------------------------------------------------------------------------

CAMPAIGN_FIELDS = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("space", pa.string()), ("status", pa.string()),
    ("policies", pa.string()), ("budget", pa.int64()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("updated_at", pa.timestamp("us", tz="UTC")),
    ("info", pa.string()),  # the whole campaign.json, for fields without a column (json_extract works)
])


def _campaigns_table(campaigns: list[dict]) -> pa.Table:
    rows = []
    for info in campaigns:
        policies = info.get("policies")
        budget = info.get("budget")
        rows.append({
            "id": info["id"],
            "dataset": None if info.get("dataset") is None else str(info["dataset"]),
            "space": None if info.get("space") is None else str(info["space"]),
            "status": None if info.get("status") is None else campaign_liveness(info),  # as `status` says
            "policies": ",".join(map(str, policies)) if isinstance(policies, list) else (None if policies is None else str(policies)),
            "budget": budget,  # checked by readable_info: an int64 or None
            "created_at": _time_or_none(info.get("created_at")),
            "updated_at": _time_or_none(info.get("updated_at")),
            "info": json.dumps(info, sort_keys=True, default=str),
        })
    return pa.Table.from_pylist(rows, schema=CAMPAIGN_FIELDS)


def _time_or_none(value: Any) -> datetime | None:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT or pd.isna(ts):
        return None
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


EVENT_FIELDS = pa.schema([("id", pa.string()), ("version", pa.string()), ("note", pa.string()),
                          ("declared_at", pa.timestamp("us", tz="UTC")), ("at", pa.timestamp("us", tz="UTC")),
                          ("campaign", pa.string())])


def _events_table(events: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(events, schema=EVENT_FIELDS)
