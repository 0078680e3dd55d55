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

import functools
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
    eta2_ci_method (how the interval was computed: ``eta2_interval``; None without one),
    omega2 (bias-corrected eta2), eta2_null ((k-1)/(n-1): what eta2 averages with no effect at all),
    within_share (1 - eta2), ss_between, ss_within, ss_total, df_between, df_within, reason (None when
    every number is defined).
    """
    rows = _usable(df)
    out = one_way_blank(by, None, len(rows))
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
        out["eta2_ci"], out["eta2_ci_method"] = eta2_interval(out["F"], k - 1, n - k, detail=True)
    return out


ETA2_CI_EXACT = "noncentral-F inversion (Steiger 2004)"
ETA2_CI_NORMAL = "normal approximation of the noncentral F (noncentrality above {:,.0f})"
NCF_EXACT_MAX_LAMBDA = 2e6  # above this the Poisson window holds >25k terms: a normal approximation, error < 1e-5 in eta^2


def ncf_cdf(F: float, df1: float, df2: float, lam: float) -> float:
    """P(F' <= F) for F' noncentral F(df1, df2, lam): never NaN, monotone decreasing in ``lam``.

    The Poisson mixture of regularized incomplete betas, summed over the window of Poisson terms
    that holds all but 1e-30 of the mass (scipy's ``ncf.cdf`` returns NaN for small df1, large F and
    large lam); above NCF_EXACT_MAX_LAMBDA a normal approximation of chi2'(df1, lam) - c chi2(df2).
    """
    from scipy import special

    if F <= 0:
        return 0.0
    if not math.isfinite(F):
        return 1.0
    if lam > NCF_EXACT_MAX_LAMBDA:
        return _ncf_normal(F, df1, df2, lam)
    x = df1 * F / (df1 * F + df2)
    m = lam / 2
    half = 12 * math.sqrt(m) + 12
    j = np.arange(max(0, math.floor(m - half)), math.ceil(m + half) + 1, dtype=float)
    logw = -m + j * math.log(m) - special.gammaln(j + 1) if m > 0 else np.where(j == 0, 0.0, -np.inf)
    value = float(np.sum(np.exp(logw) * special.betainc(df1 / 2 + j, df2 / 2, x)))
    return min(max(value, 0.0), 1.0)


def _ncf_normal(F: float, df1: float, df2: float, lam: float) -> float:
    """P(chi2'(df1, lam) <= c chi2(df2)), c = F df1 / df2: the noncentral chi2 as a normal (skewness
    3 / sqrt(lam), negligible past NCF_EXACT_MAX_LAMBDA), averaged over chi2(df2) at its quantiles."""
    from scipy import special

    x2 = _chi2_nodes(float(df2))
    z = (F * df1 / df2 * x2 - df1 - lam) / math.sqrt(2 * (df1 + 2 * lam))
    return float(np.mean(special.ndtr(z)))


@functools.lru_cache(maxsize=8)
def _chi2_nodes(df: float) -> np.ndarray:
    # 20,000 equal-probability nodes: the average of a cdf over them is within 5e-5 of the integral
    return stats.chi2.ppf((np.arange(20_000) + 0.5) / 20_000, df)


def _normal_root(F: float, df1: float, df2: float, q: float) -> float:
    """The lambda at which ``_ncf_normal`` is q (0 when it is below q already at lambda 0)."""
    from scipy.optimize import brentq

    f = lambda lam: _ncf_normal(F, df1, df2, lam) - q  # noqa: E731  decreasing in lam
    if f(0.0) <= 0:
        return 0.0
    hi = max(F * df1, 1.0) * 2 + 100
    while f(hi) > 0:
        hi *= 4
        if hi > 1e15:
            return hi
    return brentq(f, 0.0, hi, xtol=1e-6)


def one_way_blank(by: str, reason: str | None, n: int = 0) -> dict:
    """``one_way``'s dict with every statistic undefined (NaN) and ``reason``."""
    return {"by": by, "n": int(n), "k": 0, "F": math.nan, "p": math.nan, "eta2": math.nan,
            "eta2_ci": [math.nan, math.nan], "omega2": math.nan, "eta2_null": math.nan, "within_share": math.nan,
            "ss_between": math.nan, "ss_within": math.nan, "ss_total": math.nan,
            "df_between": 0, "df_within": 0, "eta2_ci_method": None, "reason": reason}


def eta2_interval(F: float, df1: int, df2: int, level: float = 0.95, detail: bool = False):
    """95% interval [lo, hi] of the population eta^2 by inverting the noncentral F (Steiger 2004).

    The noncentrality lambda with F at the upper / lower tail quantile maps to eta^2 = lambda /
    (lambda + df1 + df2 + 1); lo is 0 when F is not significant at (1 - level) / 2. NaN for an
    undefined F. Works for any F >= 0, df1 >= 1, df2 >= 1 (``ncf_cdf``); with ``detail`` returns
    (interval, method), the method naming the normal approximation when a bound needed it.
    """
    from scipy.optimize import brentq

    if not (math.isfinite(F) and F >= 0 and df1 >= 1 and df2 >= 1):
        return ([math.nan, math.nan], None) if detail else [math.nan, math.nan]
    n = df1 + df2 + 1
    approx = False

    def bound(q: float) -> float:
        nonlocal approx
        seen: dict[float, float] = {}

        def g(lam: float) -> float:  # decreasing in lam; memoized: brentq re-reads the bracket's ends
            if lam not in seen:
                seen[lam] = ncf_cdf(F, df1, df2, lam) - q
            return seen[lam]

        if g(0.0) <= 0:
            return 0.0
        # start from the normal approximation's root (cheap) and widen a bracket of half its sd
        # until it holds the exact root: a few steps of brentq instead of 40 over [0, huge]
        guess = _normal_root(F, df1, df2, q)
        step = 0.5 * math.sqrt(2 * (df1 + 2 * guess) + 2 * (F * df1) ** 2 / df2) + 1
        lo, hi = max(0.0, guess - step), guess + step
        while lo > 0 and g(lo) <= 0:
            lo, step = max(0.0, lo - step), step * 2
        while g(hi) > 0:
            hi, step = hi + step, step * 2
            if hi > 1e15:  # eta^2 within 1e-6 of 1 for any history
                return 1.0
        lam = brentq(g, lo, hi, xtol=1e-9, rtol=1e-9)
        approx = approx or lam > NCF_EXACT_MAX_LAMBDA
        return lam / (lam + n)

    alpha = (1 - level) / 2
    ci = [bound(1 - alpha), bound(alpha)]
    method = ETA2_CI_NORMAL.format(NCF_EXACT_MAX_LAMBDA) if approx else ETA2_CI_EXACT
    return (ci, method) if detail else ci


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
