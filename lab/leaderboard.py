"""The one leaderboard: cells ranked by mean validation AP over their replicates, with a 95% interval.

``crashsearch leaderboard`` (Store.leaderboard, aggregated in DuckDB), the campaign summary and
the agents' prompt (HistoryView.leaderboard) and the report (analysis.report) all rank with
``rank_cells`` and bound with ``interval``, so the same cell gets the same rank and the same
interval everywhere:

- ranking: mean validation AP (ok and healed runs) descending, then more runs first, then the
  smaller cell id;
- interval: Student t, mean ± t(0.975, n-1) · sd / √n. A cell with one run has no interval
  (NaN, printed "-"), never a zero-width one.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

OK_STATUSES = ("ok", "healed")
COLUMNS = ["rank", "cell_id", "mean_ap", "std_ap", "n", "ci_lo", "ci_hi"]


def t_quantile(df: np.ndarray, q: float = 0.975) -> np.ndarray:
    """Student-t quantile per degrees of freedom (NaN where df < 1)."""
    from scipy.special import stdtrit  # the t quantile; much lighter to import than scipy.stats

    df = np.asarray(df, dtype=float)
    out = np.full(df.shape, np.nan)
    ok = df >= 1
    out[ok] = stdtrit(df[ok], q)
    return out


def interval(mean, std, n) -> tuple[np.ndarray, np.ndarray]:
    """95% t-interval of a mean AP from (mean, sample sd, runs), clipped to [0, 1] where AP lives
    (a wide interval of a few runs reached 1.29); NaN bounds where n < 2."""
    mean, std, n = (np.asarray(v, dtype=float) for v in (mean, std, n))
    half = t_quantile(n - 1) * std / np.sqrt(np.maximum(n, 1))
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def rank_cells(agg: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Per-cell aggregates (cell_id, mean_ap, std_ap, n, ...) ranked, with rank, ci_lo and ci_hi added."""
    board = agg.sort_values(["mean_ap", "n", "cell_id"], ascending=[False, False, True], kind="stable")
    board = board.head(k) if k is not None else board
    board = board.reset_index(drop=True)
    board["ci_lo"], board["ci_hi"] = interval(board["mean_ap"], board["std_ap"], board["n"])
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board


def leaderboard(rows: pd.DataFrame, k: int | None = 10, axes: Iterable[str] = ()) -> pd.DataFrame:
    """The top ``k`` cells (None: all) of experiment rows: COLUMNS, the ``axes`` columns, and
    ``pre_fix_runs`` (runs trained before the latest bug fix) when ``rows`` has a ``pre_fix`` column.
    """
    axes = [a for a in axes if a in rows.columns]
    extra = ["pre_fix_runs"] if "pre_fix" in rows.columns else []
    ok = rows[rows["status"].isin(OK_STATUSES) & np.isfinite(pd.to_numeric(rows["val_ap"], errors="coerce"))] \
        if len(rows) else rows
    if ok.empty:
        return pd.DataFrame(columns=COLUMNS[:2] + axes + COLUMNS[2:] + extra)
    g = ok.assign(val_ap=ok["val_ap"].astype(float)).groupby("cell_id")
    agg = pd.DataFrame({"mean_ap": g["val_ap"].mean(), "std_ap": g["val_ap"].std(), "n": g.size()})
    if extra:
        agg["pre_fix_runs"] = g["pre_fix"].sum().astype(int)
    board = rank_cells(agg.reset_index(), k)
    if axes:
        first = ok.drop_duplicates("cell_id").set_index("cell_id")[axes]
        board = board.join(first, on="cell_id")
    return board[COLUMNS[:2] + axes + COLUMNS[2:] + extra]


def format_interval(lo, hi, n, digits: int = 4) -> str:
    """"[lo, hi]" or "-" for a cell with one run (no interval)."""
    if n is None or int(n) < 2 or lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "-"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"
