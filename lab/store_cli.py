"""The history store's commands: ``crashsearch query|leaderboard|import|export|compact``.

flows/cli.py parses the arguments and calls ``cli_main`` (re-exported by lab.store); this module
only runs the Store method and prints its result as a plain-text table or one line.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from crashsearch.lab._io import atomic_write
from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import CampaignLock
from crashsearch.lab.exchange import export, import_log
from crashsearch.lab.campaign_space import campaign_space, keep_space
from crashsearch.lab.settings import check_output_path
from crashsearch.lab.store import QueryCancelled, Store



def cli_main(args) -> int:
    """Run ``args.store_command`` on the store under ``args.home_dir``; return the exit code.

    A bad argument, query or file prints one line to stderr and returns 2.
    """
    store = Store(args.home_dir)
    command = args.store_command
    try:
        if command == "query":
            return _cli_query(store, args)
        if command == "leaderboard":
            if args.campaign:
                store.require_campaign(args.campaign)  # a typo is an error, not an empty board
            board = store.leaderboard(args.campaign, k=args.k, min_replicates=getattr(args, "min_replicates", 1))
            if board.empty:
                print("no finished experiments yet" + (f" in campaign {args.campaign}" if args.campaign else ""))
                return 0
            for col in ("ci_low", "ci_high"):  # one run has no interval (lab.leaderboard): "-", not NaN
                board[col] = [("-" if v != v else f"{v:.4f}") for v in board[col]]
            print(_table_text(board))
            return 0
        if command == "import":
            with CampaignLock(store.home.root, args.campaign):  # a running campaign is its only writer
                # --space, else the campaign's own; another space than the one it recorded is refused
                space, path = campaign_space(store.home, args.campaign, args.space,
                                             log=lambda line: print(line, file=sys.stderr))
                result = import_log(store, args.file, args.campaign, space)
                if result.new or result.already:  # the space stays with the campaign: benchmark needs no --space
                    store.write_campaign(args.campaign, keep_space(store.home, args.campaign, space, path))
            print(f"import into campaign {args.campaign}: {result}")
            return 0 if result.new or result.already else 1
        if command == "export":
            if Path(args.out).suffix.lower() != ".parquet":
                raise UserError(f"--out {args.out}: an export is one Parquet file; use a .parquet name")
            check_output_file(store.home, Path(args.out))
            path = export(store, args.campaign, args.out)
            print(f"exported campaign {args.campaign} to {path} ({pq.read_metadata(path).num_rows} rows)")
            return 0
        if command == "compact":
            targets = [args.campaign] if args.campaign else [c["id"] for c in store.campaigns() if store.log_files(c["id"])]
            for campaign in targets:
                merged, rows = store.compact(campaign)
                print(f"{campaign}: " + (f"merged {merged} files into one ({rows} rows)" if merged else "nothing to compact"))
            return 0
    except KeyboardInterrupt:
        print(f"{command}: cancelled (Ctrl-C); nothing was written", file=sys.stderr)
        return 130
    except QueryCancelled as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:  # a full disk goes to flows/cli.py (it names the path); the rest is a bug
        print(f"{command}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"unknown store command {command!r}", file=sys.stderr)
    return 2


def _cli_query(store: Store, args) -> int:
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
    print(_table_text(frame))
    return 0


def check_output_file(home, out: Path) -> None:
    """Raise UserError (one line) for an --out that is a folder or lies where outputs do not belong."""
    check_output_path(home, out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write")


def _table_text(frame: pd.DataFrame, max_rows: int = 60) -> str:
    """``frame`` as an aligned text table fitted to the terminal, with a row count below."""
    width = shutil.get_terminal_size((160, 40)).columns
    with pd.option_context("display.float_format", "{:.4f}".format):
        text = frame.to_string(index=False, max_rows=max_rows, max_colwidth=40, line_width=width)
    return text + f"\n({len(frame)} rows)"
