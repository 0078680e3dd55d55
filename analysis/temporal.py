"""Temporal heads vs mean pooling: does any encoder that reads the order of the steps beat the
order-blind baseline (``meanpool_mlp``) on the same backbone?

``temporal_vs_meanpool(df)`` compares, per backbone, the mean validation AP of mean pooling's runs
with that of each temporal encoder's runs (ok and healed runs; every hyperparameter the campaign
chose, replicates included), each with its 95% t-interval (lab.leaderboard.interval). The best
temporal encoder is the one with the highest mean among those with at least MIN_RUNS runs. The
verdict is "temporal ahead" or "mean pooling ahead" only when the two intervals do not overlap,
else "undecided". Picking the best of several encoders favours it a little (the maximum of noisy
means is biased upwards), so a "temporal ahead" verdict needs the intervals apart, not just the
means.

A search replicates its leaders, not the baseline it has left behind, so mean pooling often ends
with one or two runs. The like-for-like comparison (``paired``) needs no luck: a temporal cell
and its twin, the cell with the same values on every other axis and mean pooling as encoder,
each with at least MIN_RUNS runs (the demo trains such a pair, flows/demo.py). Of several such
pairs the one whose temporal cell has the most runs is reported. The temporal cell is usually a
leader, picked for its validation AP, whose validation mean is then biased up; so the pair is
judged on the held-out test AP (never used to pick anything) when both cells have it, and its
validation means are shown beside.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from crashsearch.analysis.history import axis_columns
from crashsearch.lab.leaderboard import OK_STATUSES, format_interval, interval

BASELINE = "meanpool_mlp"
MIN_RUNS = 3  # an encoder with fewer runs has no useful interval and is not a candidate


def _stats(ap: pd.Series) -> dict:
    n, mean = int(len(ap)), float(ap.mean())
    sd = float(ap.std()) if n >= 2 else math.nan
    lo, hi = interval(mean, sd, n)
    return {"n": n, "mean": mean, "sd": sd, "ci_lo": float(lo), "ci_hi": float(hi)}


def _verdict(temporal: dict | None, base: dict) -> str:
    if temporal is None or base["n"] < 2 or temporal["n"] < 2:
        return "undecided"
    if temporal["sd"] == 0 or base["sd"] == 0:  # identical runs (a few videos give few AP values):
        return "undecided"  # the zero-width interval shows no seed noise, not certainty
    if temporal["ci_lo"] > base["ci_hi"]:
        return "temporal ahead"
    if temporal["ci_hi"] < base["ci_lo"]:
        return "mean pooling ahead"
    return "undecided"


def paired(rows: pd.DataFrame) -> dict | None:
    """The like-for-like pair on one backbone's ok rows: {encoder, cell_id, twin_cell_id, temporal,
    meanpool (stats), verdict, text}, or None when no temporal cell and its mean-pooling twin both
    have MIN_RUNS runs."""
    if "cell_id" not in rows.columns:
        return None
    others = [c for c in axis_columns(rows) if c not in ("backbone", "encoder")]
    counts = rows.groupby("cell_id").size()
    cells = rows.drop_duplicates("cell_id").set_index("cell_id")
    cells = cells[counts.reindex(cells.index) >= MIN_RUNS]
    twins = {tuple(r[others]): cid for cid, r in cells[cells["encoder"] == BASELINE].iterrows()}
    best = None
    for cid, r in cells[cells["encoder"] != BASELINE].iterrows():
        twin = twins.get(tuple(r[others]))
        if twin is not None and (best is None or counts[cid] > counts[best[0]]):
            best = (cid, twin, str(r["encoder"]))
    if best is None:
        return None
    cid, twin, encoder = best
    mine, theirs = rows[rows["cell_id"] == cid], rows[rows["cell_id"] == twin]
    held_out = "test_ap" in rows.columns and all(
        int(np.isfinite(pd.to_numeric(r["test_ap"], errors="coerce")).sum()) >= MIN_RUNS for r in (mine, theirs))
    metric = "test_ap" if held_out else "val_ap"

    def stats(r: pd.DataFrame, column: str) -> dict:
        values = pd.to_numeric(r[column], errors="coerce")
        return _stats(values[np.isfinite(values)])

    t, m = stats(mine, metric), stats(theirs, metric)
    verdict = _verdict(t, m)
    head = {"temporal ahead": f"the temporal head beats mean pooling ({encoder}; intervals apart)",
            "mean pooling ahead": f"mean pooling beats the temporal head ({encoder}; intervals apart)",
            "undecided": "undecided (intervals overlap)"}[verdict]
    if held_out:
        tv, mv = stats(mine, "val_ap"), stats(theirs, "val_ap")
        judged = (f"held-out test AP, the split nothing was picked on; validation AP {tv['mean']:.4f} vs "
                  f"{mv['mean']:.4f}, the temporal cell's biased up by its pick")
    else:
        judged = "validation AP, no test AP recorded: the temporal cell's is biased up by its pick"
    text = (f"like for like, {head}: cell {int(cid)} ({encoder}) {_fmt(t)} vs its twin cell {int(twin)} with mean "
            f"pooling, every other axis equal, {_fmt(m)} ({judged}; seed replicates, 95% t-intervals)")
    return {"encoder": encoder, "cell_id": int(cid), "twin_cell_id": int(twin), "metric": metric, "temporal": t,
            "meanpool": m, "verdict": verdict, "text": text}


def temporal_vs_meanpool(df: pd.DataFrame) -> list[dict]:
    """One dict per backbone that has mean-pooling runs: {backbone, meanpool {n, mean, sd, ci_lo,
    ci_hi}, encoders {encoder: stats}, best (the leading temporal encoder or None), best_stats,
    verdict ("temporal ahead" | "mean pooling ahead" | "undecided"), text, paired (see ``paired``,
    or None)}. Empty without rows."""
    if df is None or not len(df) or not {"backbone", "encoder", "val_ap", "status"} <= set(df.columns):
        return []
    ok = df[df["status"].isin(OK_STATUSES)].copy()
    ok["val_ap"] = pd.to_numeric(ok["val_ap"], errors="coerce")
    ok = ok[np.isfinite(ok["val_ap"])]
    out = []
    for backbone, rows in ok.groupby("backbone", sort=True):
        base = rows.loc[rows["encoder"] == BASELINE, "val_ap"]
        if not len(base):
            continue
        mp = _stats(base)
        encoders = {str(e): _stats(g["val_ap"]) for e, g in rows[rows["encoder"] != BASELINE].groupby("encoder")}
        candidates = {e: s for e, s in encoders.items() if s["n"] >= MIN_RUNS}
        best = max(candidates, key=lambda e: (candidates[e]["mean"], candidates[e]["n"])) if candidates else None
        bs = candidates.get(best)
        verdict = _verdict(bs, mp)
        out.append({"backbone": str(backbone), "meanpool": mp, "encoders": encoders, "best": best,
                    "best_stats": bs, "verdict": verdict, "text": sentence(str(backbone), mp, best, bs, verdict),
                    "paired": paired(rows)})
    return out


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} {format_interval(s['ci_lo'], s['ci_hi'], s['n'])} over {s['n']} run(s)"


def sentence(backbone: str, mp: dict, best: str | None, bs: dict | None, verdict: str) -> str:
    """One line with scope, N and interval of both sides, and the verdict."""
    scope = "full history, every run of each encoder whatever its hyperparameters, 95% t-intervals"
    if bs is None:
        return (f"{backbone}: mean pooling {_fmt(mp)}; no temporal encoder has {MIN_RUNS} runs yet: "
                f"undecided ({scope}).")
    head = {"temporal ahead": f"a temporal head beats mean pooling ({best}; intervals apart)",
            "mean pooling ahead": f"mean pooling beats the best temporal head ({best}; intervals apart)",
            "undecided": "undecided (intervals overlap)"}[verdict]
    return f"{backbone}: {head}: {best} {_fmt(bs)} vs mean pooling {_fmt(mp)} ({scope})."
