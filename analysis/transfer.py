"""Transfer: does the architecture that wins on one dataset win on another?

For a history spanning several datasets (the campaign's plus other datasets' campaigns):

- ``per_dataset``: the headline statistics per dataset: experiments, best validation AP and the
  cell that reached it, the winning backbone and encoder (highest mean AP over their runs),
  eta^2 of the architecture group and the power-law exponent c;
- ``rank_correlation``: Spearman and Kendall rank correlations (scipy.stats) of the
  architecture-group mean APs between every pair of datasets, over the groups both tried.
"""
from __future__ import annotations

import math
from itertools import combinations

import pandas as pd
from scipy import stats

from crashsearch.analysis.anova import one_way
from crashsearch.analysis.convergence import fit_power_law
from crashsearch.analysis.history import prepare

PER_DATASET_COLUMNS = ["dataset", "experiments", "ok", "best_ap", "best_arch_group", "best_cell_id",
                       "top_backbone", "top_encoder", "top_arch_group", "eta2_arch", "F_arch", "c"]


def _top(ok: pd.DataFrame, col: str) -> str | None:
    if col not in ok.columns or ok.empty:
        return None
    means = ok.groupby(col)["val_ap"].mean()
    return str(means.idxmax()) if len(means) else None


def per_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset with the columns PER_DATASET_COLUMNS (see the module docstring)."""
    df = df if "ok" in df.columns else prepare(df)
    rows = []
    for dataset, part in df.groupby("dataset", sort=True):
        ok = part[part["ok"]]
        best = ok.loc[ok["val_ap"].idxmax()] if len(ok) else None
        anova = one_way(part, "arch_group")
        fit = fit_power_law(part["val_ap"].where(part["ok"]).to_numpy(float), n_boot=0)
        rows.append({
            "dataset": str(dataset), "experiments": int(len(part)), "ok": int(len(ok)),
            "best_ap": float(best["val_ap"]) if best is not None else math.nan,
            "best_arch_group": str(best["arch_group"]) if best is not None else None,
            "best_cell_id": int(best["cell_id"]) if best is not None else None,
            "top_backbone": _top(ok, "backbone"), "top_encoder": _top(ok, "encoder"),
            "top_arch_group": _top(ok, "arch_group"),
            "eta2_arch": anova["eta2"], "F_arch": anova["F"], "c": fit["c"],
        })
    return pd.DataFrame(rows, columns=PER_DATASET_COLUMNS)


def group_means(df: pd.DataFrame, by: str = "arch_group") -> pd.DataFrame:
    """Mean validation AP per (dataset, ``by``) over ok runs, datasets as columns."""
    df = df if "ok" in df.columns else prepare(df)
    ok = df[df["ok"]]
    return ok.groupby([by, "dataset"])["val_ap"].mean().unstack("dataset")


def rank_correlation(df: pd.DataFrame, by: str = "arch_group", min_common: int = 3) -> pd.DataFrame:
    """Rank correlation of ``by`` means between every pair of datasets.

    Columns: dataset_a, dataset_b, common (groups tried on both), spearman, spearman_p,
    kendall, kendall_p, reason (None, or why the row is NaN: fewer than ``min_common``
    common groups, or constant means).
    """
    means = group_means(df, by)
    rows = []
    for a, b in combinations(list(means.columns), 2):
        both = means[[a, b]].dropna()
        row = {"dataset_a": str(a), "dataset_b": str(b), "common": int(len(both)), "spearman": math.nan,
               "spearman_p": math.nan, "kendall": math.nan, "kendall_p": math.nan, "reason": None}
        if len(both) < min_common:
            row["reason"] = f"only {len(both)} {by} values tried on both datasets (need {min_common})"
        elif both[a].nunique() < 2 or both[b].nunique() < 2:
            row["reason"] = "constant means on one dataset"
        else:
            rho = stats.spearmanr(both[a], both[b])
            tau = stats.kendalltau(both[a], both[b])
            row.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue),
                       kendall=float(tau.statistic), kendall_p=float(tau.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=["dataset_a", "dataset_b", "common", "spearman", "spearman_p", "kendall",
                                       "kendall_p", "reason"])


def winner(datasets: pd.DataFrame) -> dict:
    """Whether the winning backbone and arch group (highest mean AP) differ between datasets.

    Returns {backbone_differs, arch_group_differs (None with fewer than two datasets), text}:
    the text is the explicit line the report prints, e.g. "The winner differs between datasets:
    arch group vjepa2_vitl/gru on day, r2plus1d_18/tcn on night; backbone ...".
    """
    rows = datasets.dropna(subset=["top_arch_group"]) if len(datasets) else datasets
    if len(rows) < 2:
        return {"backbone_differs": None, "arch_group_differs": None,
                "text": "One dataset with results: no transfer comparison."}
    groups = dict(zip(rows["dataset"], rows["top_arch_group"]))
    backbones = dict(zip(rows["dataset"], rows["top_backbone"]))
    g_diff, b_diff = len(set(groups.values())) > 1, len(set(backbones.values())) > 1

    def listing(d):
        return ", ".join(f"{v} on {k}" for k, v in d.items())

    if g_diff:
        text = (f"The winner differs between datasets: arch group {listing(groups)}; backbone "
                + (f"differs too ({listing(backbones)})." if b_diff else f"{next(iter(backbones.values()))} on all."))
    else:
        text = f"The winner is the same on every dataset: arch group {next(iter(groups.values()))}."
    return {"backbone_differs": b_diff, "arch_group_differs": g_diff, "text": text}


def transfer(df: pd.DataFrame) -> dict:
    """{"datasets": per_dataset(df), "winner": winner(...), "arch_group": rank_correlation by group,
    "backbone": ..., "encoder": ...}."""
    df = df if "ok" in df.columns else prepare(df)
    datasets = per_dataset(df)
    out = {"datasets": datasets, "winner": winner(datasets), "arch_group": rank_correlation(df, "arch_group")}
    for col in ("backbone", "encoder"):
        if col in df.columns:
            out[col] = rank_correlation(df, col)
    return out
