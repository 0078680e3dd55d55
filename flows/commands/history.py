"""The history store's commands: ``crashsearch query|leaderboard|import|export|compact|catalog|check``.

Each runs one Store (lab/store.py), exchange, catalog or check call and prints its result as a
plain-text table or one line. The five store commands share ``store_command``'s handling: Ctrl-C
cancels with nothing written (130), a cancelled query is 3, a user's mistake one line (2).
"""
from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Callable


# ---- arguments ----------------------------------------------------------------------------------

def add_query_arguments(p) -> None:
    p.add_argument("sql")
    p.add_argument("--out", default=None, help="write the result to .csv or .parquet instead of printing")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="cancel the query after this long")


def add_leaderboard_arguments(p) -> None:
    p.add_argument("--campaign", default=None)
    p.add_argument("-k", type=int, default=10)


def add_import_arguments(p) -> None:
    p.add_argument("file")
    p.add_argument("--campaign", required=True)
    p.add_argument("--space", default=None, help="the log's space YAML, kept with the campaign (default: the "
                                                 "campaign's own, else the collision space)")


def add_export_arguments(p) -> None:
    p.add_argument("--campaign", required=True)
    p.add_argument("--out", required=True)


def add_compact_arguments(p) -> None:
    p.add_argument("--campaign", default=None, help="default: every campaign")


def add_catalog_arguments(p) -> None:
    p.add_argument("--out", default=None, help="write it here instead (required for an s3:// home: a local file "
                                               "whose views read the s3:// objects through httpfs)")


def add_check_arguments(p) -> None:
    p.add_argument("--campaign", default=None, help="default: every campaign")
    p.add_argument("--repair", action="store_true", help="keep their readable rows, then move the files to quarantine")


# ---- the store's commands -----------------------------------------------------------------------

def store_command(fn: Callable) -> Callable:
    """Run ``fn(store, args)`` on the store under ``args.home_dir``; return its exit code.

    A bad argument, query or file prints one line to stderr and returns 2.
    """
    @functools.wraps(fn)
    def run(args) -> int:
        from crashsearch.lab.errors import UserError
        from crashsearch.lab.store import QueryCancelled, Store

        store, command = Store(args.home_dir), args.command
        try:
            return fn(store, args)
        except KeyboardInterrupt:
            print(f"{command}: cancelled (Ctrl-C); nothing was written", file=sys.stderr)
            return 130
        except QueryCancelled as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            return 3
        except UserError as exc:  # a full disk goes to flows/cli.py (it names the path); the rest is a bug
            print(f"{command}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 2

    return run


@store_command
def query(store, args) -> int:
    import duckdb

    from crashsearch.lab._io import atomic_write
    from crashsearch.lab.errors import UserError

    out = Path(args.out) if args.out else None
    if out is not None:  # checked before the query runs: a refused --out costs nothing
        suffix = out.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise UserError(f"--out {out}: use a .csv or .parquet file name")
        check_output_file(store.home, out)
    try:
        frame = store.query(args.sql, timeout=getattr(args, "timeout", None))
    except duckdb.Error as exc:  # the user's SQL: a typo, a missing column, a refused file
        raise UserError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a temp file renamed over the target: a hard link to a recorded file keeps its content
        atomic_write(out, (lambda f: frame.to_csv(f, index=False)) if suffix == ".csv"
                     else (lambda f: frame.to_parquet(f, index=False)))
        print(f"wrote {len(frame)} rows to {out}")
        return 0
    print(table_text(frame))
    return 0


@store_command
def leaderboard(store, args) -> int:
    if args.campaign:
        store.require_campaign(args.campaign)  # a typo is an error, not an empty board
    board = store.leaderboard(args.campaign, k=args.k, min_replicates=getattr(args, "min_replicates", 1))
    if board.empty:
        print("no finished experiments yet" + (f" in campaign {args.campaign}" if args.campaign else ""))
        return 0
    for col in ("ci_low", "ci_high"):  # one run has no interval (lab.leaderboard): "-", not NaN
        board[col] = [("-" if v != v else f"{v:.4f}") for v in board[col]]
    print(table_text(board))
    return 0


@store_command
def import_(store, args) -> int:
    from crashsearch.lab.campaign_space import campaign_space, keep_space
    from crashsearch.lab.exchange import import_log
    from crashsearch.lab.lease import campaign_lock

    with campaign_lock(store.home, args.campaign):  # a running campaign is its only writer
        # --space, else the campaign's own; another space than the one it recorded is refused
        space, path = campaign_space(store.home, args.campaign, args.space,
                                     log=lambda line: print(line, file=sys.stderr))
        result = import_log(store, args.file, args.campaign, space)
        if result.new or result.already:  # the space stays with the campaign: benchmark needs no --space
            store.write_campaign(args.campaign, keep_space(store.home, args.campaign, space, path))
    print(f"import into campaign {args.campaign}: {result}")
    return 0 if result.new or result.already else 1


@store_command
def export(store, args) -> int:
    import pyarrow.parquet as pq

    from crashsearch.lab.errors import UserError
    from crashsearch.lab.exchange import export as export_campaign

    if Path(args.out).suffix.lower() != ".parquet":
        raise UserError(f"--out {args.out}: an export is one Parquet file; use a .parquet name")
    check_output_file(store.home, Path(args.out))
    path = export_campaign(store, args.campaign, args.out)
    print(f"exported campaign {args.campaign} to {path} ({pq.read_metadata(path).num_rows} rows)")
    return 0


@store_command
def compact(store, args) -> int:
    targets = [args.campaign] if args.campaign else [c["id"] for c in store.campaigns() if store.log_files(c["id"])]
    for campaign in targets:
        merged, rows = store.compact(campaign)
        print(f"{campaign}: " + (f"merged {merged} files into one ({rows} rows)" if merged else "nothing to compact"))
    return 0


# ---- catalog and check --------------------------------------------------------------------------

def catalog(args) -> int:
    """``crashsearch catalog``: (re)build ``<home>/history.duckdb`` and say how to open it."""
    from crashsearch.lab.catalog import build
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.settings import check_output_path

    try:
        out = None if args.out is None else check_output_path(args.home_dir, args.out)
        path = build(args.home_dir, out)
    except UserError as exc:
        print(f"catalog: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if path is None:
        print(f"no experiments under {args.home_dir.location} yet: history.duckdb appears with the first one")
        return 0
    print(f"{path}\nopen it read-only: duckdb -readonly {path}   (Python: duckdb.connect(path, read_only=True))")
    if args.home_dir.url:  # its views name s3:// objects: the client reads them with httpfs and its own credentials
        print("its views read s3:// objects: the client needs the httpfs extension and S3 credentials "
              "(CREATE SECRET (TYPE s3, PROVIDER credential_chain))")
    return 0


def check(args) -> int:
    """``crashsearch check``: one line per damaged file and a total; exit 1 if damage stays."""
    from crashsearch.lab.check import check as check_files
    from crashsearch.lab.store import Store

    report = check_files(Store(args.home_dir), args.campaign, args.repair)
    for finding in report.findings:
        print(finding.line(), file=sys.stdout)
    damaged = len(report.findings)
    print(f"checked {report.files} log files in {report.campaigns} campaigns: "
          + ("no damage" if not damaged else f"{damaged} damaged" + (" (moved to quarantine)" if args.repair
                                                                     else "; run with --repair to move them aside")))
    return 0 if not damaged or args.repair else 1


# ---- output -------------------------------------------------------------------------------------

def check_output_file(home, out: Path) -> None:
    """Raise UserError (one line) for an --out that is a folder or lies where outputs do not belong."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.settings import check_output_path

    check_output_path(home, out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write")


def table_text(frame, max_rows: int = 60) -> str:
    """``frame`` (a DataFrame) as an aligned text table fitted to the terminal, with a row count below."""
    import pandas as pd

    width = shutil.get_terminal_size((160, 40)).columns
    with pd.option_context("display.float_format", "{:.4f}".format):
        text = frame.to_string(index=False, max_rows=max_rows, max_colwidth=40, line_width=width)
    return text + f"\n({len(frame)} rows)"
