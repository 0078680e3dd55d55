"""Like-for-like search arms: each a from-scratch search with the same budget and space, repeated.

The verdict "do the LLM agents search better than random and TPE?" compares search strategies,
not mixtures: every arm here is one policy searching alone (``analyze --control-arms``, campaign
ids ``<campaign>-baseline-<policy>[-s<k>]``), repeated with independent seeds. A campaign's own
mixed arms (policies sharing one history) are reported elsewhere, labelled "in a shared campaign,
not from scratch".

Everything is a plain function of an *arm table*: one row per experiment with columns ``arm``,
``repeat``, ``n`` (1.. within the repeat, in order) and ``val_ap`` (NaN: no AP), so the benchmark
command (surrogate objectives) and the report share it:

- ``arm_best_at_n``: per arm and N, the mean over repeats of the best AP among the first N, with a
  95% bootstrap interval over repeats (no interval with one repeat);
- ``arm_power_laws``: per arm, a - b N^-c fitted to the mean running best over repeats (a, b, c, R²);
- ``arm_verdict``: at one N, which arm leads; "undecided" when the leader's interval overlaps
  another arm's. The sentence names the N and the arms.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from crashsearch.analysis.convergence import fit_power_law
from crashsearch.analysis.history import BASELINE_RE, prepare, running_best

TABLE_COLUMNS = ["arm", "repeat", "n", "val_ap"]
VERDICT_N = 50


def arm_table(histories: pd.DataFrame | None) -> pd.DataFrame:
    """The arm table of control-arm campaigns' rows: arm = the policy, repeat = the ``-s<k>`` index.

    Rows of campaigns that are not control arms are left out. Returns TABLE_COLUMNS.
    """
    if histories is None or histories.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    df = histories if "ok" in histories.columns else prepare(histories)
    parts = []
    for campaign, rows in df.groupby("campaign", sort=True):
        parsed = BASELINE_RE.match(str(campaign))
        if not parsed:
            continue
        rows = rows.sort_values("order", kind="stable")
        parts.append(pd.DataFrame({"arm": parsed["policy"], "repeat": int(parsed["rep"] or 0), "n": np.arange(1, len(rows) + 1),
                                   "val_ap": rows["val_ap"].where(rows["ok"]).to_numpy(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS)


def _runs(table: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """{arm: [AP sequence of each repeat, in order of n]}."""
    out: dict[str, list[np.ndarray]] = {}
    for (arm, _rep), rows in table.sort_values(["arm", "repeat", "n"]).groupby(["arm", "repeat"], sort=True):
        out.setdefault(str(arm), []).append(rows["val_ap"].to_numpy(float))
    return out


def arm_best_at_n(table: pd.DataFrame, ns: tuple[int, ...] | None = None, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """Per arm and N: best (mean over repeats of the best AP among the first N), lo, hi, repeats.

    The interval is the 2.5-97.5 percentile of the mean over repeats resampled with replacement;
    NaN with fewer than two repeats (one run has no interval). Only repeats that reached N count.
    ``ns`` defaults to 10, 25, 50, 100, 250, ... up to the shortest arm's longest repeat.
    """
    runs = _runs(table)
    rows = []
    if not runs:
        return pd.DataFrame(columns=["arm", "n", "best", "lo", "hi", "repeats"])
    if ns is None:
        reach = min(max(len(r) for r in rs) for rs in runs.values())
        ns = tuple(n for n in (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000) if n <= reach) or (reach,)
    rng = np.random.default_rng(seed)
    for arm, rs in runs.items():
        for n in ns:
            bests = np.array([np.nanmax(r[:n]) if np.isfinite(r[:n]).any() else np.nan for r in rs if len(r) >= n])
            bests = bests[np.isfinite(bests)]
            if not len(bests):
                continue
            lo = hi = math.nan
            if len(bests) >= 2:
                boot = bests[rng.integers(0, len(bests), (n_boot, len(bests)))].mean(axis=1)
                lo, hi = float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
            rows.append({"arm": arm, "n": int(n), "best": float(bests.mean()), "lo": lo, "hi": hi,
                         "repeats": int(len(bests))})
    return pd.DataFrame(rows, columns=["arm", "n", "best", "lo", "hi", "repeats"])


def arm_power_laws(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm: a, b, c, r2 of a - b N^-c fitted to the mean running best over repeats; n, repeats, reason."""
    rows = []
    for arm, rs in _runs(table).items():
        length = min(len(r) for r in rs)
        curves = np.array([running_best(r[:length]) for r in rs])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step where no repeat has an AP yet: NaN
            mean = np.nanmean(curves, axis=0) if len(curves) else np.array([])
        fit = fit_power_law(mean, n_boot=0)
        rows.append({"arm": arm, "a": fit["a"], "b": fit["b"], "c": fit["c"], "r2": fit["r2"], "n": int(length),
                     "repeats": len(rs), "reason": fit["reason"]})
    return pd.DataFrame(rows, columns=["arm", "a", "b", "c", "r2", "n", "repeats", "reason"])


def arm_verdict(table: pd.DataFrame, n: int = VERDICT_N, n_boot: int = 2000, seed: int = 0) -> dict:
    """Which from-scratch arm reaches the best AP at N experiments, or "undecided".

    N is ``n`` or, when some arm's repeats are shorter, the largest N every arm reached (said in
    the text). The leader is decided only when its interval lies above every other arm's; with one
    repeat per arm there are no intervals and the verdict is undecided. Returns {text, n, arms,
    leader (None when undecided), undecided, per_arm [{arm, best, lo, hi, repeats}]}.
    """
    runs = _runs(table)
    out = {"text": "", "n": None, "arms": sorted(runs), "leader": None, "undecided": True, "per_arm": []}
    if len(runs) < 2:
        out["text"] = (f"No like-for-like verdict: {len(runs)} from-scratch arm(s) "
                       f"({', '.join(sorted(runs)) or 'none'}); run `crashsearch analyze --control-arms ...`.")
        return out
    reach = min(max(len(r) for r in rs) for rs in runs.values())
    used = min(n, reach)
    bat = arm_best_at_n(table, (used,), n_boot=n_boot, seed=seed).sort_values("best", ascending=False)
    if len(bat) < len(runs):
        missing = sorted(set(runs) - set(bat["arm"]))
        out["n"] = int(used)
        out["text"] = (f"At N={used}, from-scratch arms {', '.join(sorted(runs))}: undecided, arm(s) "
                       f"{', '.join(missing)} produced no AP in their first {used} experiments.")
        return out
    out["n"], out["per_arm"] = int(used), bat.drop(columns="n").to_dict("records")
    short = "" if used == n else f" (the largest N every arm reached; N={n} was not reached)"
    parts = [f"{r.arm} {r.best:.4f} " + (f"[{r.lo:.4f}, {r.hi:.4f}]" if np.isfinite(r.lo) else "(no interval)")
             + f" over {r.repeats} repeat{'s' if r.repeats != 1 else ''}" for r in bat.itertuples()]
    top, rest = bat.iloc[0], bat.iloc[1:]
    decided = bool(np.isfinite(bat["lo"]).all() and (top["lo"] > rest["hi"]).all())
    if decided:
        out.update(leader=str(top["arm"]), undecided=False)
        call = f"{top['arm']} leads: its interval lies above every other arm's"
    else:
        call = ("undecided: the intervals overlap" if np.isfinite(bat["lo"]).all()
                else "undecided: an arm has a single repeat, so no interval")
    out["text"] = (f"At N={used}{short}, from-scratch arms {', '.join(sorted(runs))} (same budget and space; mean best "
                   f"over repeats, 95% bootstrap interval): {'; '.join(parts)}. Verdict: {call}.")
    return out
