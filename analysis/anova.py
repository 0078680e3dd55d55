"""Architecture versus hyperparameters: how much of the AP variance each axis explains.

The paper's headline: a one-way ANOVA of validation AP by architecture group (backbone x
temporal encoder) gives F = 1324 and eta^2 = 0.94, i.e. the search explored architectures, not
only hyperparameters (the within-group share 1 - eta^2 is what hyperparameters and seeds can
explain at most). Here:

- ``one_way``: F, p, eta^2 and 1 - eta^2 from sums of squares (groupby, so 1M rows are cheap);
- ``arch_anova``: the one-way ANOVA by arch group, by backbone and by encoder;
- ``factorial``: OLS over every axis with two-way interactions among the arch axes and a Type II
  ANOVA table (statsmodels), eta^2 and partial eta^2 per term, plus the seed-replicate noise
  floor (pooled variance among replicates of the same cell, the "pure error").

Every function takes an experiment history (``analysis.history.prepare``d or raw) and returns
plain dicts/DataFrames; when a statistic is undefined (one level only, no residual degrees of
freedom) it returns NaN/None with a ``reason`` instead of raising.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from crashsearch.analysis.history import ARCH_AXES, axis_columns, ok_rows, prepare

FACTORIAL_MAX_ROWS = 100_000  # larger histories are fit on a seeded random subsample (stated in "note")


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    return ok_rows(df if "ok" in df.columns else prepare(df))


def one_way(df: pd.DataFrame, by: str = "arch_group", value: str = "val_ap") -> dict:
    """One-way ANOVA of ``value`` grouped by column ``by`` over ok rows.

    Returns a dict: by, n, k (groups), F, p, eta2, eta2_ci (95% noncentral-F interval [lo, hi]),
    omega2 (bias-corrected eta2), eta2_null ((k-1)/(n-1): what eta2 averages with no effect at all),
    within_share (1 - eta2), ss_between, ss_within, ss_total, df_between, df_within, reason (None when
    every number is defined).
    """
    rows = _usable(df)
    out = {"by": by, "n": int(len(rows)), "k": 0, "F": math.nan, "p": math.nan, "eta2": math.nan,
           "eta2_ci": [math.nan, math.nan], "omega2": math.nan, "eta2_null": math.nan, "within_share": math.nan,
           "ss_between": math.nan, "ss_within": math.nan, "ss_total": math.nan,
           "df_between": 0, "df_within": 0, "reason": None}
    if by not in rows.columns:
        out["reason"] = f"no column {by!r} in the history"
        return out
    rows = rows[rows[by].notna()]
    y = rows[value].to_numpy(float)
    g = rows.groupby(rows[by].astype(str), sort=False)[value].agg(["count", "mean", "var"])
    k, n = len(g), len(y)
    out.update(n=int(n), k=int(k), df_between=max(k - 1, 0), df_within=max(n - k, 0))
    if n > 1 and k >= 2:
        out["eta2_null"] = (k - 1) / (n - 1)
    if n == 0:
        out["reason"] = "no experiment with a validation AP"
        return out
    grand = y.mean()
    ss_total = float(((y - grand) ** 2).sum())
    ss_between = float((g["count"] * (g["mean"] - grand) ** 2).sum())
    ss_within = float(((g["count"] - 1) * g["var"].fillna(0.0)).sum())
    out.update(ss_between=ss_between, ss_within=ss_within, ss_total=ss_total)
    if k < 2:
        out["reason"] = f"only {k} level of {by}: nothing to compare"
        return out
    if ss_total <= 0:
        out["reason"] = "every AP is identical: no variance to explain"
        return out
    out["eta2"] = ss_between / ss_total
    out["within_share"] = 1.0 - out["eta2"]
    if n - k < 1:
        out["reason"] = f"{n} runs in {k} groups leave no within-group degrees of freedom"
        return out
    ms_within = ss_within / (n - k)
    if ms_within <= 0:
        out["F"], out["p"] = math.inf, 0.0
    else:
        out["F"] = (ss_between / (k - 1)) / ms_within
        out["p"] = float(stats.f.sf(out["F"], k - 1, n - k))
        out["omega2"] = (ss_between - (k - 1) * ms_within) / (ss_total + ms_within)
        out["eta2_ci"] = eta2_interval(out["F"], k - 1, n - k)
    return out


def eta2_interval(F: float, df1: int, df2: int, level: float = 0.95) -> list[float]:
    """95% interval [lo, hi] of the population eta^2 by inverting the noncentral F (Steiger 2004).

    The noncentrality lambda with F at the upper / lower tail quantile maps to eta^2 = lambda /
    (lambda + df1 + df2 + 1); lo is 0 when F is not significant at (1 - level) / 2. NaN for an
    undefined F.
    """
    from scipy.optimize import brentq

    if not (math.isfinite(F) and df1 >= 1 and df2 >= 1):
        return [math.nan, math.nan]
    n = df1 + df2 + 1

    def bound(q: float) -> float:
        g = lambda lam: stats.ncf.cdf(F, df1, df2, lam) - q  # noqa: E731  decreasing in lam
        if g(0.0) <= 0:
            return 0.0
        hi = max(10.0, F * df1 * 4)
        while g(hi) > 0:
            hi *= 4
            if hi > 1e9:
                return 1.0
        lam = brentq(g, 0.0, hi, xtol=1e-6)
        return lam / (lam + n)

    alpha = (1 - level) / 2
    return [bound(1 - alpha), bound(alpha)]


def arch_anova(df: pd.DataFrame) -> dict:
    """One-way ANOVAs by architecture group, by backbone and by encoder: {"arch_group": {...}, ...}."""
    rows = _usable(df)
    return {by: one_way(rows, by) for by in ("arch_group", "backbone", "encoder")}


def noise_floor(df: pd.DataFrame, value: str = "val_ap") -> dict:
    """Seed-replicate noise: pooled variance of ``value`` among runs of the same cell.

    Returns: var, sd, ss (pure-error sum of squares), df (sum of n_i - 1), cells (cells with
    two or more runs), share (var / total variance of the history), reason.
    """
    rows = _usable(df)
    g = rows.groupby("cell_id")[value].agg(["count", "var"])
    g = g[g["count"] >= 2]
    dof = int((g["count"] - 1).sum())
    out = {"var": math.nan, "sd": math.nan, "ss": math.nan, "df": dof, "cells": int(len(g)), "share": math.nan,
           "reason": None}
    if dof == 0:
        out["reason"] = "no cell was run more than once: no replicate noise estimate"
        return out
    ss = float(((g["count"] - 1) * g["var"]).sum())
    total_var = float(rows[value].var()) if len(rows) > 1 else math.nan
    out.update(var=ss / dof, sd=math.sqrt(ss / dof), ss=ss,
               share=(ss / dof) / total_var if total_var and total_var > 0 else math.nan)
    return out


def factorial(df: pd.DataFrame, axes: list[str] | None = None, interactions: bool = True,
              max_rows: int = FACTORIAL_MAX_ROWS, seed: int = 0) -> dict:
    """Factorial ANOVA (OLS, Type II) of validation AP over every axis that varies.

    Main effects for each axis with at least two levels, two-way interactions among the arch
    axes (backbone, encoder, size) when ``interactions``. Returns a dict:
    ``table`` (DataFrame indexed by term: df, sum_sq, F, p, eta2, partial_eta2; a row
    "Residual" and, when replicates exist, "seed noise (pure error)"), ``r2``, ``n``,
    ``terms``, ``noise`` (see ``noise_floor``), ``note`` (e.g. subsampling) and ``reason``
    (None, or why ``table`` is None).
    """
    rows = _usable(df)
    axes = axes or axis_columns(rows)
    out = {"table": None, "r2": math.nan, "n": int(len(rows)), "terms": [], "noise": noise_floor(rows),
           "note": None, "reason": None}
    varying = [a for a in axes if a in rows.columns and rows[a].nunique(dropna=True) >= 2]
    if not varying:
        out["reason"] = "no axis has two or more levels among the usable runs"
        return out
    data = rows[varying + ["val_ap"]].dropna()
    if len(data) > max_rows:
        data = data.sample(max_rows, random_state=seed)
        out["note"] = f"fit on a random subsample of {max_rows:,} of {len(rows):,} runs"
    # categorical codes: formula parsing never sees raw values like "focal_2.5", and patsy reads a
    # pandas Categorical without inspecting every cell (10x faster on 100k+ rows)
    design = pd.DataFrame({a: pd.Categorical(pd.factorize(data[a], sort=True)[0]) for a in varying}, index=data.index)
    design["y"] = data["val_ap"].to_numpy(float)
    terms = [f"C({a})" for a in varying]
    arch = [a for a in ARCH_AXES if a in varying]
    if interactions:
        terms += [f"C({a}):C({b})" for i, a in enumerate(arch) for b in arch[i + 1:]]
    n_params = 1 + sum(design[a].nunique() - 1 for a in varying)
    if len(design) <= n_params + 1:
        out["reason"] = f"{len(design)} runs are too few for {n_params} main-effect parameters"
        return out
    try:
        model, table = _fit(design, terms)
        mains = [t for t in terms if ":" not in t]
        if len(mains) < len(terms) and table.loc[mains, "sum_sq"].isna().any():
            # untried arch combinations make the interactions confounded with the main effects,
            # and Type II then cannot test the main effects: keep the main effects only
            terms = mains
            model, table = _fit(design, terms)
            out["note"] = "; ".join(filter(None, [out["note"], "interactions dropped: the tried arch combinations "
                                                  "cannot separate them from the main effects"]))
    except (ValueError, np.linalg.LinAlgError) as exc:
        out["reason"] = f"OLS failed: {str(exc).splitlines()[0]}"
        return out
    out["terms"] = terms
    table = table.rename(columns={"sum_sq": "sum_sq", "PR(>F)": "p"}).rename(index=lambda t: _term_name(t))
    # Type II SS of terms in an unbalanced design can come out slightly negative: clip to zero
    table["sum_sq"] = table["sum_sq"].clip(lower=0.0)
    ss_total = float(((design["y"] - design["y"].mean()) ** 2).sum())
    ss_resid = float(table.loc["Residual", "sum_sq"])
    table["eta2"] = table["sum_sq"] / ss_total if ss_total > 0 else math.nan
    table["partial_eta2"] = table["sum_sq"] / (table["sum_sq"] + ss_resid)
    table.loc["Residual", "partial_eta2"] = math.nan
    noise = out["noise"]
    if noise["df"] > 0 and ss_total > 0:
        table.loc["seed noise (pure error)", ["df", "sum_sq", "eta2"]] = [noise["df"], noise["ss"], noise["ss"] / ss_total]
    table["df"] = table["df"].round().astype(int)
    out.update(table=table[["df", "sum_sq", "F", "p", "eta2", "partial_eta2"]], r2=float(model.rsquared))
    return out


def _fit(design: pd.DataFrame, terms: list[str]):
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ols("y ~ " + " + ".join(terms), data=design).fit()
        return model, anova_lm(model, typ=2)


def _term_name(term: str) -> str:
    return term.replace("C(", "").replace(")", "").replace(":", " x ")


def eta2_table(result: dict) -> list[dict]:
    """The factorial table as a list of plain dicts (term, df, sum_sq, F, p, eta2, partial_eta2)."""
    table = result.get("table")
    if table is None:
        return []
    return [{"term": t, **{k: _num(v) for k, v in row.items()}} for t, row in table.iterrows()]


def _num(v):
    v = float(v)
    return None if math.isnan(v) else v
