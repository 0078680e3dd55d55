"""Convergence: how the best validation AP grows with the number of experiments.

The paper fits the running best after the bug fix with a power law

    AP*(N) = a - b * N^(-c)        (a: the ceiling the search approaches, c: how fast)

and finds c = 0.11, R^2 = 0.93. Here:

- ``curves``: running best against experiment count and GPU-hours (cumulative train_seconds),
  overall and per arm (see ``analysis.history``);
- ``fit_power_law``: a, b, c and R^2 for one sequence of AP values, with bootstrap intervals
  (experiments resampled with replacement, kept in their order, running best recomputed);
- ``forecast``: the expected best AP after N more experiments, with the bootstrap interval.

Fitting: for a fixed c the model is linear in (a, b), so a grid over c with closed-form least
squares finds the basin, and ``scipy.optimize.curve_fit`` (bounded: b >= 0, 0 < c <= 5,
a <= a_max) refines it. Points are taken on a log-spaced grid of N (at most ``max_points``) so
the early, informative part of the curve is not outweighed by the long flat tail.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from crashsearch.analysis.history import prepare, running_best

C_GRID = np.geomspace(1e-3, 5.0, 160)
BOOT_BUDGET = 20_000_000  # experiments resampled per fit in all; long histories get fewer resamples (>= 20)


def power_law(n, a, b, c):
    """AP*(N) = a - b * N^(-c)."""
    return a - b * np.power(n, -c)


def curves(df: pd.DataFrame, by_arm: bool = True) -> pd.DataFrame:
    """Running best per scope: columns scope ("overall" or an arm), n (1.. within the scope),
    gpu_hours (cumulative), val_ap, best_ap, order (position in the whole history)."""
    df = df if "ok" in df.columns else prepare(df)
    parts = [_curve(df, "overall")]
    if by_arm:
        for arm, rows in df.groupby("arm", sort=True):
            parts.append(_curve(rows, str(arm)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _curve(rows: pd.DataFrame, scope: str) -> pd.DataFrame:
    vals = rows["val_ap"].where(rows["ok"]).to_numpy(float)
    secs = pd.to_numeric(rows.get("train_seconds", pd.Series(0.0, index=rows.index)), errors="coerce")
    return pd.DataFrame({
        "scope": scope,
        "n": np.arange(1, len(rows) + 1),
        "gpu_hours": secs.fillna(0.0).to_numpy(float).cumsum() / 3600.0,
        "val_ap": vals,
        "best_ap": running_best(vals),
        "order": rows["order"].to_numpy(),
    })


def _grid_points(n_total: int, max_points: int) -> np.ndarray:
    """0-based indices of the points a fit uses: all, or log-spaced when there are many."""
    if n_total <= max_points:
        return np.arange(n_total)
    return np.unique(np.geomspace(1, n_total, max_points).astype(int) - 1)


def _fit_once(n: np.ndarray, y: np.ndarray, a_max: float, refine: bool = True) -> tuple[float, float, float]:
    # profile over c: for each c, y = a - b x with x = n^-c is ordinary least squares in (a, b)
    x = np.power(n[:, None], -C_GRID[None, :])  # (P, C)
    xm, ym = x.mean(0), y.mean()
    sxx = ((x - xm) ** 2).sum(0)
    sxy = ((x - xm) * (y - ym)[:, None]).sum(0)
    slope = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
    b = np.clip(-slope, 0.0, None)
    a = np.minimum(ym + b * xm, a_max)
    sse = ((y[:, None] - (a - b * x)) ** 2).sum(0)
    i = int(np.argmin(sse))
    p0 = (float(a[i]), float(b[i]), float(C_GRID[i]))
    if not refine:
        return p0
    lo = (float(y.min()) - 1.0, 0.0, 1e-4)
    hi = (a_max, np.inf, 5.0)
    p0 = tuple(min(max(v, l + 1e-9), h - 1e-9) if np.isfinite(h) else max(v, l + 1e-9) for v, l, h in zip(p0, lo, hi))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(power_law, n, y, p0=p0, bounds=(lo, hi), maxfev=2000)
        if ((y - power_law(n, *popt)) ** 2).sum() <= sse[i]:
            return tuple(float(v) for v in popt)
    except (RuntimeError, ValueError):
        pass
    return p0


def at_bounds(a: float, b: float, c: float, a_max: float = 1.0) -> list[str]:
    """The parameters of a fit that sit at a bound of the search (a fit there is a cap, not an estimate)."""
    out = []
    if a >= a_max - 1e-9:
        out.append(f"a = {a_max:g}")
    if b <= 1e-12:
        out.append("b = 0")
    if c <= C_GRID[0] * (1 + 1e-6):
        out.append(f"c <= {C_GRID[0]:g}")
    if c >= C_GRID[-1] * (1 - 1e-6):
        out.append(f"c = {C_GRID[-1]:g}")
    return out


def fit_power_law(values, n_boot: int = 200, seed: int = 0, a_max: float = 1.0, max_points: int = 300) -> dict:
    """Fit AP*(N) = a - b N^-c to the running best of ``values`` (AP per experiment, in order; NaN = failed).

    Returns a dict: a, b, c, r2, rmse, n (experiments), points (used in the fit), improvements
    (times the running best rose), a_ci, b_ci, c_ci (95% bootstrap [lo, hi] or None), samples
    (array of bootstrap (a, b, c) rows, for ``forecast``), n_boot (successful bootstrap fits),
    at_bound (the parameters the fit pushed to a bound of the search, e.g. "a = 1.0": the ceiling
    is the cap ``a_max``, not an estimate; empty when none), reason (None or why NaN). The bootstrap is a Poisson bootstrap (each experiment kept
    Poisson(1) times in its place), so the order of the search is preserved; histories over
    BOOT_BUDGET / n_boot experiments get fewer resamples (at least 20; ``n_boot`` says how many).
    """
    vals = np.asarray(values, dtype=float)
    best = running_best(vals)
    out = {"a": math.nan, "b": math.nan, "c": math.nan, "r2": math.nan, "rmse": math.nan, "n": int(len(vals)),
           "points": 0, "improvements": 0, "a_ci": None, "b_ci": None, "c_ci": None,
           "samples": np.empty((0, 3)), "n_boot": 0, "at_bound": [], "reason": None}
    defined = ~np.isnan(best)
    out["improvements"] = int(np.sum(np.diff(best[defined]) > 0)) if defined.any() else 0
    if out["improvements"] < 3:
        k = out["improvements"]
        out["reason"] = (f"the running best rose {k} time{'' if k == 1 else 's'} in {len(vals)} experiments; "
                         "a three-parameter fit needs at least 3 rises")
        return out
    idx = _grid_points(len(vals), max_points)
    idx = idx[defined[idx]]
    n, y = idx + 1.0, best[idx]
    a, b, c = _fit_once(n, y, a_max)
    resid = y - power_law(n, a, b, c)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    out.update(a=a, b=b, c=c, points=int(len(y)), rmse=float(np.sqrt(np.mean(resid**2))),
               r2=1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan,
               at_bound=at_bounds(a, b, c, a_max))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(min(n_boot, max(20, BOOT_BUDGET // len(vals)))):
            # Poisson bootstrap: each experiment appears Poisson(1) times, in its place in the order
            bb = running_best(np.repeat(vals, rng.poisson(1.0, len(vals))))
            grid = _grid_points(len(bb), max_points)
            keep = grid[~np.isnan(bb[grid])]
            if len(keep) < 4 or np.unique(bb[keep]).size < 3:
                continue
            samples.append(_fit_once(keep + 1.0, bb[keep], a_max))
        if samples:
            s = np.array(samples)
            out["samples"] = s
            for j, key in enumerate(("a_ci", "b_ci", "c_ci")):
                out[key] = [float(np.percentile(s[:, j], 2.5)), float(np.percentile(s[:, j], 97.5))]
    out["n_boot"] = int(len(out["samples"]))
    return out


def forecast(fit: dict, n_now: int, more: int) -> dict:
    """Expected best AP after ``more`` experiments beyond ``n_now``, from a ``fit_power_law`` result.

    Returns: n_now, more, now (fitted AP*(n_now)), expected (AP*(n_now + more)), gain, and
    expected_ci / gain_ci (95% over the bootstrap samples, None without them). NaN if unfit.
    """
    out = {"n_now": int(n_now), "more": int(more), "now": math.nan, "expected": math.nan, "gain": math.nan,
           "expected_ci": None, "gain_ci": None}
    if not np.isfinite(fit.get("a", math.nan)) or n_now < 1:
        return out
    now = power_law(n_now, fit["a"], fit["b"], fit["c"])
    later = power_law(n_now + more, fit["a"], fit["b"], fit["c"])
    out.update(now=float(now), expected=float(later), gain=float(later - now))
    s = fit.get("samples")
    if s is not None and len(s):
        exp = power_law(n_now + more, s[:, 0], s[:, 1], s[:, 2])
        gain = exp - power_law(n_now, s[:, 0], s[:, 1], s[:, 2])
        out["expected_ci"] = [float(np.percentile(exp, 2.5)), float(np.percentile(exp, 97.5))]
        out["gain_ci"] = [float(np.percentile(gain, 2.5)), float(np.percentile(gain, 97.5))]
    return out


def convergence(df: pd.DataFrame, n_boot: int = 200, seed: int = 0, per_arm_boot: int = 0,
                forecast_more: int | None = None) -> dict:
    """Power-law fits for the whole history and per arm, plus the forecast for the overall curve.

    Returns {"overall": fit, "arms": {arm: fit}, "forecast": forecast(...), "best_ap",
    "gpu_hours"}. ``forecast_more`` defaults to the history's size (what another campaign of the
    same length is worth).
    """
    df = df if "ok" in df.columns else prepare(df)
    vals = df["val_ap"].where(df["ok"]).to_numpy(float)
    overall = fit_power_law(vals, n_boot=n_boot, seed=seed)
    arms = {str(arm): fit_power_law(rows["val_ap"].where(rows["ok"]).to_numpy(float), n_boot=per_arm_boot, seed=seed)
            for arm, rows in df.groupby("arm", sort=True)}
    more = forecast_more if forecast_more is not None else max(len(df), 1)
    secs = pd.to_numeric(df.get("train_seconds", pd.Series(dtype=float)), errors="coerce")
    return {
        "overall": overall,
        "arms": arms,
        "forecast": forecast(overall, len(df), more),
        "best_ap": float(np.nanmax(vals)) if np.isfinite(vals).any() else math.nan,
        "gpu_hours": float(secs.fillna(0.0).sum() / 3600.0),
    }
