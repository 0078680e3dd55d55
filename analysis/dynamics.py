"""Multi-agent dynamics: how several agents divide the search between them over time.

The paper watches two LLM agents share one leaderboard and sees their proposal entropy cycle
(explore, then exploit, then explore again) and their proposal distributions diverge in spikes
of specialization that decay as one agent follows the other. Here, in sliding windows of the
history (global experiment order, so every agent's window covers the same stretch of time):

- ``windows``: per agent and window, the number of proposals, the Shannon entropy (bits) of
  the agent's proposal distribution over architecture groups, the innovation rates (share of
  proposals that opened a never-tried architecture group, and share that opened a new
  hyperparameter combination inside an already tried group); and per window the
  Jensen-Shannon divergence (base 2, in [0, 1]) between every pair of agents;
- ``cycles``: peaks, troughs and the dominant period (FFT, refined by the autocorrelation) of
  an entropy series;
- ``js_spikes``: specialization spikes of the mean JS divergence and how fast each decays;
- ``credit``: leaderboard improvements per arm and what each cost (tokens, dollars).

Entropy, JS and innovation describe what agents chose, so only their own proposals count
(orchestrator rows, ``replicate``, ``rerun`` and ``heal``, are left out); credit and cost go to
the arm of ``analysis.history`` (a re-run or heal is credited to the original cell's proposer).
Cell-level innovation is not reported: dedup forbids repeating a cell, so it is 1 by
construction. A *hyperparameter combination* is the values of every axis outside the
architecture (backbone, encoder, size). Windows are counted with one bincount per history so
1M rows are cheap.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.signal import find_peaks

from crashsearch.analysis.history import ARCH_AXES, SYSTEM_PROPOSERS, axis_columns, prepare


def default_window(n: int) -> tuple[int, int]:
    """(window, step) in experiments for a history of n rows: about 20 windows wide, step window/5."""
    window = int(np.clip(n // 20, 20, 1000))
    return window, max(1, window // 5)


def entropy_bits(counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in bits of count vectors along ``axis`` (0 for an empty vector)."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=axis, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis)


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between count or probability vectors."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    p = p / np.where(p.sum(axis=axis, keepdims=True) > 0, p.sum(axis=axis, keepdims=True), 1.0)
    q = q / np.where(q.sum(axis=axis, keepdims=True) > 0, q.sum(axis=axis, keepdims=True), 1.0)
    m = (p + q) / 2
    return entropy_bits(m, axis) - (entropy_bits(p, axis) + entropy_bits(q, axis)) / 2


def windows(df: pd.DataFrame, window: int | None = None, step: int | None = None,
            min_count: int = 5) -> dict:
    """Sliding-window entropy, innovation and JS divergence.

    Returns {"window", "step", "groups" (distinct arch groups), "agents": DataFrame (window,
    start, end, agent, n, entropy, entropy_norm, innovation_group, innovation_hp),
    "js": DataFrame (window, start, end, pair, js), "js_mean": DataFrame (window, start, end,
    js)}. ``entropy`` is NaN where the agent made fewer than ``min_count`` proposals in the
    window; JS needs both agents at ``min_count``.
    """
    df = df if "ok" in df.columns else prepare(df)
    n_rows = len(df)
    auto_w, auto_s = default_window(n_rows)
    window = int(window or auto_w)
    step = int(step or (auto_s if window == auto_w else max(1, window // 5)))
    window = max(step, (window // step) * step)  # a whole number of steps
    k = window // step
    own = df[~df["proposer"].isin(SYSTEM_PROPOSERS)]
    new_group, new_hp = _openings(df)
    empty = {"window": window, "step": step, "groups": int(df["arch_group"].nunique()),
             "agents": pd.DataFrame(columns=["window", "start", "end", "agent", "n", "entropy", "entropy_norm",
                                             "innovation_group", "innovation_hp"]),
             "js": pd.DataFrame(columns=["window", "start", "end", "pair", "js"]),
             "js_mean": pd.DataFrame(columns=["window", "start", "end", "js"])}
    if own.empty or n_rows < window:
        return empty
    g_codes, groups = pd.factorize(own["arch_group"])
    a_codes, agents = pd.factorize(own["proposer"])
    A, G = len(agents), len(groups)
    B = (n_rows + step - 1) // step
    block = own["order"].to_numpy() // step
    key = (block * A + a_codes) * G + g_codes
    counts = np.bincount(key, minlength=B * A * G).reshape(B, A, G)
    innov_g = np.bincount(block * A + a_codes, weights=new_group[own.index].to_numpy(float), minlength=B * A).reshape(B, A)
    innov_h = np.bincount(block * A + a_codes, weights=new_hp[own.index].to_numpy(float), minlength=B * A).reshape(B, A)

    def slide(x):  # sums over k consecutive blocks -> one row per window
        c = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
        return c[k:] - c[:-k]

    win = slide(counts)  # (W, A, G)
    n = win.sum(axis=2)  # (W, A)
    W = win.shape[0]
    starts = np.arange(W) * step
    ends = np.minimum(starts + window, n_rows)
    enough = n >= min_count
    ent = np.where(enough, entropy_bits(win, axis=2), np.nan)
    norm = math.log2(G) if G > 1 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ig = np.where(n > 0, slide(innov_g) / n, np.nan)
        ih = np.where(n > 0, slide(innov_h) / n, np.nan)
    agent_df = pd.DataFrame({
        "window": np.repeat(np.arange(W), A), "start": np.repeat(starts, A), "end": np.repeat(ends, A),
        "agent": np.tile(np.asarray(agents, dtype=object), W), "n": n.ravel().astype(int),
        "entropy": ent.ravel(), "entropy_norm": ent.ravel() / norm,
        "innovation_group": ig.ravel(), "innovation_hp": ih.ravel(),
    })
    js_parts = []
    for i, j in combinations(range(A), 2):
        both = enough[:, i] & enough[:, j]
        js = np.where(both, js_divergence(win[:, i, :], win[:, j, :], axis=1), np.nan)
        js_parts.append(pd.DataFrame({"window": np.arange(W), "start": starts, "end": ends,
                                      "pair": f"{agents[i]}|{agents[j]}", "js": js}))
    js_df = pd.concat(js_parts, ignore_index=True) if js_parts else empty["js"]
    js_mean = (js_df.groupby(["window", "start", "end"], as_index=False)["js"].mean()
               if len(js_df) else empty["js_mean"])
    return {"window": window, "step": step, "groups": G, "agents": agent_df, "js": js_df, "js_mean": js_mean}


def cycles(values, step: int = 1, prominence: float | None = None) -> dict:
    """Peaks, troughs and dominant period of a series sampled every ``step`` experiments.

    Returns {"period" (experiments, NaN if none), "period_windows", "strength" (share of
    spectral power at the dominant frequency), "peaks", "troughs" (window indices),
    "n_peaks", "n_troughs", "reason"}. NaN gaps are interpolated; the series is detrended
    linearly. ``prominence`` defaults to half the series' standard deviation.
    """
    x = pd.Series(np.asarray(values, dtype=float)).interpolate(limit_direction="both").to_numpy()
    out = {"period": math.nan, "period_windows": math.nan, "strength": math.nan, "peaks": [], "troughs": [],
           "n_peaks": 0, "n_troughs": 0, "reason": None}
    if len(x) < 6 or not np.isfinite(x).all():
        out["reason"] = f"{len(x)} windows are too few for a cycle (need 6)"
        return out
    t = np.arange(len(x))
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    sd = float(x.std())
    if sd == 0:
        out["reason"] = "the series is flat"
        return out
    prom = prominence if prominence is not None else 0.5 * sd
    peaks, _ = find_peaks(x, prominence=prom)
    troughs, _ = find_peaks(-x, prominence=prom)
    out.update(peaks=peaks.tolist(), troughs=troughs.tolist(), n_peaks=len(peaks), n_troughs=len(troughs))
    power = np.abs(np.fft.rfft(x)) ** 2
    if len(power) < 3:
        out["reason"] = "series too short for a spectrum"
        return out
    f = 1 + int(np.argmax(power[1:]))  # skip the constant term
    fft_period = len(x) / f
    out["strength"] = float(power[f] / power[1:].sum())
    # refine with the autocorrelation: its local maximum nearest the FFT period, interpolated
    acf = np.correlate(x, x, mode="full")[len(x) - 1:] / (sd**2 * len(x))
    lags = [i for i in range(2, len(acf) - 1) if acf[i] >= acf[i - 1] and acf[i] >= acf[i + 1] and acf[i] > 0]
    period = fft_period
    if lags:
        lag = min(lags, key=lambda i: abs(i - fft_period))
        if abs(lag - fft_period) <= 0.35 * fft_period:
            y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
            denom = y0 - 2 * y1 + y2
            period = lag + (0.5 * (y0 - y2) / denom if denom != 0 else 0.0)
    out["period_windows"] = float(period)
    out["period"] = float(period * step)
    return out


def js_spikes(js_mean: pd.DataFrame, step: int = 1, prominence: float = 0.1) -> dict:
    """Specialization spikes of the mean pairwise JS divergence and their decay.

    Returns {"baseline" (median JS), "max", "spikes": [{window, start, js, decay_windows,
    decay_experiments}]} where decay is how many windows it takes to fall halfway back to the
    baseline (None if it never does).
    """
    js = js_mean["js"].to_numpy(float) if len(js_mean) else np.array([])
    if not np.isfinite(js).any():
        return {"baseline": math.nan, "max": math.nan, "spikes": []}
    base = float(np.nanmedian(js))
    x = pd.Series(js).interpolate(limit_direction="both").to_numpy()
    peaks, _ = find_peaks(x, prominence=prominence)
    spikes = []
    for p in peaks:
        half = (x[p] + base) / 2
        after = np.flatnonzero(x[p:] <= half)
        decay = int(after[0]) if len(after) else None
        spikes.append({"window": int(p), "start": int(js_mean["start"].iloc[p]), "js": float(x[p]),
                       "decay_windows": decay, "decay_experiments": None if decay is None else decay * step})
    return {"baseline": base, "max": float(np.nanmax(js)), "spikes": spikes}


def _openings(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row (history order): opened a never-tried arch group; opened a new hyperparameter
    combination inside an already tried group. Only agents' own proposals open anything."""
    own = ~df["proposer"].isin(SYSTEM_PROPOSERS)
    hp_axes = [a for a in axis_columns(df) if a not in ARCH_AXES]
    first_group = ~df["arch_group"].duplicated()
    if hp_axes:
        key = df[["arch_group", *hp_axes]].astype(str).agg("|".join, axis=1)
        first_hp = ~key.duplicated()
    else:
        first_hp = pd.Series(False, index=df.index)
    return first_group & own, first_hp & ~first_group & own


def innovation(df: pd.DataFrame) -> pd.DataFrame:
    """Per agent (own proposals only): proposals, new_groups and group_rate (share opening a
    never-tried arch group), new_hp and hp_rate (share opening a new hyperparameter combination
    inside a tried group)."""
    df = df if "ok" in df.columns else prepare(df)
    new_group, new_hp = _openings(df)
    flags = pd.DataFrame({"agent": df["proposer"], "new_group": new_group, "new_hp": new_hp})
    flags = flags[~flags["agent"].isin(SYSTEM_PROPOSERS)]
    g = flags.groupby("agent")
    out = pd.DataFrame({"proposals": g.size(), "new_groups": g["new_group"].sum().astype(int),
                        "new_hp": g["new_hp"].sum().astype(int)})
    out["group_rate"] = out["new_groups"] / out["proposals"]
    out["hp_rate"] = out["new_hp"] / out["proposals"]
    return out.reset_index()[["agent", "proposals", "new_groups", "group_rate", "new_hp", "hp_rate"]]


def credit(df: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard improvements per arm and what they cost.

    An improvement is a run whose validation AP beats every earlier run (the first AP counts as
    one, with gain 0). Columns: arm, experiments, improvements, share, gain (sum of AP
    increments), tokens (in + out), cost_usd, tokens_per_improvement, usd_per_improvement
    (NaN without improvements).
    """
    df = df if "ok" in df.columns else prepare(df)
    vals = df["val_ap"].where(df["ok"]).to_numpy(float)
    filled = np.nan_to_num(vals, nan=-np.inf)
    before = np.concatenate([[-np.inf], np.maximum.accumulate(filled)[:-1]]) if len(vals) else filled
    improved = filled > before
    gain = np.where(improved & np.isfinite(before), filled - before, 0.0)
    tok = sum(pd.to_numeric(df[c], errors="coerce").fillna(0) for c in ("tokens_in", "tokens_out") if c in df.columns)
    cost = pd.to_numeric(df["cost_usd"], errors="coerce").fillna(0.0) if "cost_usd" in df.columns else 0.0
    frame = pd.DataFrame({"arm": df["arm"], "improved": improved, "gain": gain,
                          "tokens": tok if isinstance(tok, pd.Series) else 0, "cost_usd": cost})
    g = frame.groupby("arm")
    out = pd.DataFrame({"experiments": g.size(), "improvements": g["improved"].sum().astype(int),
                        "gain": g["gain"].sum(), "tokens": g["tokens"].sum().astype(int), "cost_usd": g["cost_usd"].sum()})
    total = max(int(out["improvements"].sum()), 1)
    out["share"] = out["improvements"] / total
    has = out["improvements"] > 0
    out["tokens_per_improvement"] = np.where(has, out["tokens"] / out["improvements"].where(has, 1), np.nan)
    out["usd_per_improvement"] = np.where(has, out["cost_usd"] / out["improvements"].where(has, 1), np.nan)
    cols = ["experiments", "improvements", "share", "gain", "tokens", "cost_usd", "tokens_per_improvement",
            "usd_per_improvement"]
    return out[cols].reset_index().sort_values("improvements", ascending=False, ignore_index=True)


def dynamics(df: pd.DataFrame, window: int | None = None, step: int | None = None) -> dict:
    """Everything above for one history: windows, per-agent cycles, JS spikes, innovation, credit."""
    df = df if "ok" in df.columns else prepare(df)
    w = windows(df, window, step)
    agent_cycles = {}
    for agent, rows in w["agents"].groupby("agent", sort=True):
        agent_cycles[str(agent)] = cycles(rows.sort_values("window")["entropy"].to_numpy(), w["step"])
    return {"windows": w, "cycles": agent_cycles, "js": js_spikes(w["js_mean"], w["step"]),
            "innovation": innovation(df), "credit": credit(df)}
