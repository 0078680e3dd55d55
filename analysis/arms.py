"""Like-for-like search arms: each a from-scratch search with the same budget and space, repeated.

The verdict "do the LLM agents search better than random and TPE?" compares search strategies,
not mixtures: every arm here is one policy searching alone (``analyze --control-arms``, campaign
ids ``<campaign>-baseline-<policy>[-s<k>]``), repeated with independent seeds. A campaign's own
mixed arms (policies sharing one history) are reported elsewhere, labelled "in a shared campaign,
not from scratch".

Everything is a plain function of an *arm table*: one row per experiment with columns ``arm``,
``repeat``, ``n`` (1.. within the repeat, in order), ``val_ap`` (NaN: no AP) and, optionally,
``cell_id`` (absent: every experiment its own cell) and ``heldout`` (the experiment's held-out
AP: the test split's, or a surrogate's noise-free mean), so the benchmark command and the report
share it.

Selection bias. The best validation AP an arm has *seen* by N is a maximum over noisy runs: it
rewards luck (the paper's N=50 figure, 0.985, is above its best cell's 0.9245). So an arm is
judged at N by the cell it would *pick* at N, its best by validation (highest mean validation AP
over its runs of the cell among the first N; the earliest on a tie), scored by that cell's
held-out AP (the mean over the repeat's runs of the cell), or, where no held-out AP was recorded,
by the cell's replicate mean of validation AP (labelled: still biased when the cell ran once).

- ``arm_best_at_n``: per arm and N, the held-out AP of the picked cell (``picked``) and the best
  validation AP seen (``best``, selection-biased, kept for comparison), each the mean over
  repeats with a 95% bootstrap interval over repeats (none with one repeat);
- ``arm_power_laws``: per arm, a - b N^-c fitted to the mean running best over repeats, with a
  95% interval of c from a bootstrap over repeats and the parameters that sit at a bound;
- ``arm_verdict``: at one N, which arm's picked cell is best held out; "undecided" unless the
  95% interval of the leader's difference to every other arm lies above 0 (paired by repeat; a
  bootstrap over repeats, Student t below MIN_BOOT_REPEATS repeats).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from crashsearch.analysis.convergence import fit_power_law
from crashsearch.analysis.history import BASELINE_RE, prepare, running_best

TABLE_COLUMNS = ["arm", "repeat", "n", "val_ap", "cell_id", "heldout"]
BEST_COLUMNS = ["arm", "n", "picked", "picked_lo", "picked_hi", "best", "lo", "hi", "repeats", "judge"]
LAW_COLUMNS = ["arm", "a", "b", "c", "c_lo", "c_hi", "r2", "at_bound", "n", "repeats", "interval", "reason"]
VERDICT_N = 50
MIN_BOOT_REPEATS = 10  # fewer repeats: Student t for a difference, since a bootstrap understates the spread
LAW_BOOT = 200  # bootstrap resamples of the repeats for the interval of c
JUDGES = {"heldout": "held-out AP", "replicates": "replicate mean of validation AP (no held-out AP recorded)",
          "mixed": "held-out AP where recorded, else the replicate mean of validation AP"}


def arm_table(histories: pd.DataFrame | None) -> pd.DataFrame:
    """The arm table of control-arm campaigns' rows: arm = the policy, repeat = the ``-s<k>`` index,
    heldout = the row's test AP (NaN when not recorded).

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
        test = pd.to_numeric(rows["test_ap"], errors="coerce") if "test_ap" in rows.columns else np.nan
        parts.append(pd.DataFrame({"arm": parsed["policy"], "repeat": int(parsed["rep"] or 0), "n": np.arange(1, len(rows) + 1),
                                   "val_ap": rows["val_ap"].where(rows["ok"]).to_numpy(float),
                                   "cell_id": rows["cell_id"].to_numpy(np.int64),
                                   "heldout": pd.Series(test, index=rows.index).where(rows["ok"]).to_numpy(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS)


@dataclass
class _Run:
    """One repeat of an arm: validation AP per experiment and, per N, the pick's score."""

    repeat: int
    val: np.ndarray  # (L,) validation AP in order, NaN: no AP
    picked: np.ndarray  # (L,) score of the cell picked at N = 1..L (NaN before the first AP)
    by_heldout: np.ndarray  # (L,) bool: that score is a held-out AP (else the replicate mean)

    def __len__(self) -> int:
        return len(self.val)


def _picks(val: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Row position of the cell picked at each N (highest mean validation AP so far; -1 before any AP)."""
    if len(np.unique(cells)) == len(cells):  # one run per cell: the pick is the running argmax
        filled = np.where(np.isnan(val), -np.inf, val)
        prev = np.maximum.accumulate(np.r_[-np.inf, filled[:-1]])
        return np.maximum.accumulate(np.where(filled > prev, np.arange(len(val)), -1))
    first: dict[int, int] = {}
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    out = np.full(len(val), -1)
    lead, lead_mean = None, -np.inf
    for i, (v, c) in enumerate(zip(val, cells.tolist())):
        first.setdefault(c, i)
        if np.isfinite(v):
            total[c] = total.get(c, 0.0) + v
            count[c] = count.get(c, 0) + 1
            mean = total[c] / count[c]
            if c == lead and mean < lead_mean:  # a replicate lowered the leader: look again
                lead = max(count, key=lambda k: (total[k] / count[k], -first[k]))
                lead_mean = total[lead] / count[lead]
            elif c == lead or mean > lead_mean or (mean == lead_mean and first[c] < first[lead]):
                lead, lead_mean = c, mean
        out[i] = first[lead] if lead is not None else -1
    return out


def _run(rows: pd.DataFrame) -> _Run:
    val = rows["val_ap"].to_numpy(float)
    cells = rows["cell_id"].to_numpy() if "cell_id" in rows.columns else np.arange(len(rows))
    cells = np.where(pd.isna(cells), -1 - np.arange(len(rows)), cells).astype(np.int64)  # unknown: own cell
    held = rows["heldout"].to_numpy(float) if "heldout" in rows.columns else np.full(len(rows), np.nan)
    frame = pd.DataFrame({"cell": cells, "val": val, "held": held})
    g = frame.groupby("cell")
    held_mean, val_mean = g["held"].transform("mean").to_numpy(), g["val"].transform("mean").to_numpy()
    pos = _picks(val, cells)
    ok = pos >= 0
    safe = np.where(ok, pos, 0)
    by_held = ok & np.isfinite(held_mean[safe])
    score = np.where(by_held, held_mean[safe], val_mean[safe])
    return _Run(int(rows["repeat"].iloc[0]) if len(rows) else 0, val, np.where(ok, score, np.nan), by_held)


def _runs(table: pd.DataFrame) -> dict[str, list[_Run]]:
    """{arm: [each repeat, in order of repeat]}."""
    out: dict[str, list[_Run]] = {}
    for (arm, _rep), rows in table.sort_values(["arm", "repeat", "n"]).groupby(["arm", "repeat"], sort=True):
        out.setdefault(str(arm), []).append(_run(rows))
    return out


def _judge(flags: list[bool]) -> str:
    return JUDGES["heldout" if all(flags) else "replicates" if not any(flags) else "mixed"]


def _interval(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return math.nan, math.nan
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _default_ns(runs: dict[str, list[_Run]]) -> tuple[int, ...]:
    reach = min(max(len(r) for r in rs) for rs in runs.values())
    return tuple(n for n in (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000) if n <= reach) or (reach,)


def _at_n(rs: list[_Run], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bool]]:
    """(repeat ids, picked scores, best validation seen, judged held out) of the repeats with an AP by N."""
    long = [r for r in rs if len(r) >= n and np.isfinite(r.val[:n]).any()]
    return (np.array([r.repeat for r in long], dtype=int), np.array([r.picked[n - 1] for r in long]),
            np.array([np.nanmax(r.val[:n]) for r in long]), [bool(r.by_heldout[n - 1]) for r in long])


def arm_best_at_n(table: pd.DataFrame, ns: tuple[int, ...] | None = None, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """Per arm and N: picked, picked_lo, picked_hi (held-out AP of the cell picked at N), best, lo, hi
    (best validation AP seen by N: selection-biased), repeats, judge (what scored the pick).

    Each figure is the mean over the repeats that reached N with an AP; the interval is the
    2.5-97.5 percentile of that mean over repeats resampled with replacement (the same resamples
    for both figures), NaN with one repeat. ``ns`` defaults to 10, 25, 50, 100, 250, ... up to the
    shortest arm's longest repeat.
    """
    runs = _runs(table)
    if not runs:
        return pd.DataFrame(columns=BEST_COLUMNS)
    rng = np.random.default_rng(seed)
    rows = []
    for arm, rs in runs.items():
        for n in ns or _default_ns(runs):
            _, picked, best, flags = _at_n(rs, int(n))
            if not len(best):
                continue
            p_lo = p_hi = lo = hi = math.nan
            if len(best) >= 2:
                idx = rng.integers(0, len(best), (n_boot, len(best)))
                lo, hi = _interval(best[idx].mean(axis=1))
                p_lo, p_hi = _interval(picked[idx].mean(axis=1))
            rows.append({"arm": arm, "n": int(n), "picked": float(np.mean(picked)), "picked_lo": p_lo, "picked_hi": p_hi,
                         "best": float(best.mean()), "lo": lo, "hi": hi, "repeats": int(len(best)), "judge": _judge(flags)})
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def _mean_running_best(rs: list[_Run], length: int) -> np.ndarray:
    curves = np.array([running_best(r.val[:length]) for r in rs])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where no repeat has an AP yet: NaN
        return np.nanmean(curves, axis=0) if len(curves) else np.array([])


def arm_power_laws(table: pd.DataFrame, n_boot: int = LAW_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per arm: a, b, c, r2 of a - b N^-c fitted to the mean running best (validation AP, the paper's
    curve) over repeats; c_lo, c_hi: 95% interval of c from a bootstrap over repeats (repeats
    resampled with replacement, the mean curve refitted; NaN with one repeat, ``interval`` says
    so); at_bound: the parameters the fit pushed to a bound ("a = 1.0": the ceiling is the cap, not
    an estimate), empty when none; n, repeats, reason."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, rs in _runs(table).items():
        length = min(len(r) for r in rs)
        fit = fit_power_law(_mean_running_best(rs, length), n_boot=0)
        c_lo = c_hi = math.nan
        interval = "one repeat: no interval"
        if len(rs) >= 2 and fit["reason"] is None:
            cache: dict[tuple, float] = {}  # few repeats give few distinct resamples: fit each once
            cs = []
            for _ in range(n_boot):
                key = tuple(sorted(rng.integers(0, len(rs), len(rs))))
                if key not in cache:
                    cache[key] = fit_power_law(_mean_running_best([rs[i] for i in key], length), n_boot=0)["c"]
                cs.append(cache[key])
            c_lo, c_hi = _interval(np.array(cs, dtype=float))
            interval = f"bootstrap over {len(rs)} repeats ({n_boot} resamples, {len(cache)} distinct)"
        rows.append({"arm": arm, "a": fit["a"], "b": fit["b"], "c": fit["c"], "c_lo": c_lo, "c_hi": c_hi, "r2": fit["r2"],
                     "at_bound": ", ".join(fit["at_bound"]), "n": int(length), "repeats": len(rs),
                     "interval": interval if fit["reason"] is None else None, "reason": fit["reason"]})
    return pd.DataFrame(rows, columns=LAW_COLUMNS)


def _difference(a: list[_Run], b: list[_Run], n: int, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean picked score of a minus b at N with a 95% interval over repeats.

    Paired by repeat id when both arms ran the same repeat ids (each repeat's difference is one
    observation), else the two arms' repeats apart. With MIN_BOOT_REPEATS repeats or more the
    interval is the bootstrap percentile interval (repeats resampled); with fewer, a bootstrap
    understates the spread (3 repeats have 10 distinct resamples), so it is Student t (Welch when
    unpaired). ``method`` names which.
    """
    ra, pa, _, _ = _at_n(a, n)
    rb, pb, _, _ = _at_n(b, n)
    out = {"diff": float(pa.mean() - pb.mean()), "lo": math.nan, "hi": math.nan, "paired": False, "method": None}
    if min(len(pa), len(pb)) < 2:
        return out
    if len(ra) == len(rb) and (np.sort(ra) == np.sort(rb)).all():
        d = pa[np.argsort(ra)] - pb[np.argsort(rb)]
        out["paired"] = True
        if len(d) >= MIN_BOOT_REPEATS:
            out["lo"], out["hi"] = _interval(d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1))
            out["method"] = f"paired bootstrap over {len(d)} repeats"
        else:
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            out["lo"], out["hi"] = out["diff"] - half, out["diff"] + half
            out["method"] = f"Student t over {len(d)} paired repeats"
    elif min(len(pa), len(pb)) >= MIN_BOOT_REPEATS:
        boot = (pa[rng.integers(0, len(pa), (n_boot, len(pa)))].mean(axis=1)
                - pb[rng.integers(0, len(pb), (n_boot, len(pb)))].mean(axis=1))
        out["lo"], out["hi"] = _interval(boot)
        out["method"] = f"bootstrap over {len(pa)} and {len(pb)} repeats"
    else:
        va, vb = pa.var(ddof=1) / len(pa), pb.var(ddof=1) / len(pb)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va**2 / (len(pa) - 1) + vb**2 / (len(pb) - 1)) or math.inf) if se > 0 else 1.0
        half = stats.t.ppf(0.975, max(df, 1.0)) * se
        out["lo"], out["hi"] = out["diff"] - half, out["diff"] + half
        out["method"] = f"Welch t over {len(pa)} and {len(pb)} repeats"
    return out


def arm_verdict(table: pd.DataFrame, n: int = VERDICT_N, n_boot: int = 2000, seed: int = 0) -> dict:
    """Which from-scratch arm picks the best cell by N experiments (judged held out), or "undecided".

    N is ``n`` or, when some arm's repeats are shorter, the largest N every arm reached (said in
    the text). The leader (highest mean held-out AP of its pick) is decided only when the 95%
    bootstrap interval of its difference to every other arm lies above 0; with one repeat per arm
    there are no intervals and the verdict is undecided. Returns {text, n, arms, leader (None when
    undecided), undecided, judge, per_arm [{arm, picked, picked_lo, picked_hi, best, lo, hi,
    repeats}], differences [{arm, other, diff, lo, hi, paired, method}]}.
    """
    runs = _runs(table)
    out = {"text": "", "n": None, "arms": sorted(runs), "leader": None, "undecided": True, "judge": None,
           "per_arm": [], "differences": []}
    if len(runs) < 2:
        out["text"] = (f"No like-for-like verdict: {len(runs)} from-scratch arm(s) "
                       f"({', '.join(sorted(runs)) or 'none'}); run `crashsearch analyze --control-arms ...`.")
        return out
    reach = min(max(len(r) for r in rs) for rs in runs.values())
    used = min(n, reach)
    bat = arm_best_at_n(table, (used,), n_boot=n_boot, seed=seed).sort_values("picked", ascending=False, kind="stable")
    out["n"] = int(used)
    if len(bat) < len(runs):
        missing = sorted(set(runs) - set(bat["arm"]))
        out["text"] = (f"At N={used}, from-scratch arms {', '.join(sorted(runs))}: undecided, arm(s) "
                       f"{', '.join(missing)} produced no AP in their first {used} experiments.")
        return out
    out["per_arm"] = bat.drop(columns=["n", "judge"]).to_dict("records")
    judges = set(bat["judge"])
    out["judge"] = judges.pop() if len(judges) == 1 else JUDGES["mixed"]
    rng = np.random.default_rng(seed + 1)
    top = str(bat["arm"].iloc[0])
    diffs = [{"arm": top, "other": str(o), **_difference(runs[top], runs[str(o)], used, n_boot, rng)}
             for o in bat["arm"].iloc[1:]]
    out["differences"] = diffs
    short = "" if used == n else f" (the largest N every arm reached; N={n} was not reached)"
    parts = [f"{r.arm} {r.picked:.4f} " + (f"[{r.picked_lo:.4f}, {r.picked_hi:.4f}]" if np.isfinite(r.picked_lo) else "(no interval)")
             + f" over {r.repeats} repeat{'s' if r.repeats != 1 else ''} (best validation AP seen {r.best:.4f})"
             for r in bat.itertuples()]
    gaps = [f"{d['arm']} - {d['other']} {d['diff']:+.4f} " + (f"[{d['lo']:+.4f}, {d['hi']:+.4f}], {d['method']}"
                                                              if np.isfinite(d["lo"]) else "(no interval)")
            for d in diffs]
    if all(np.isfinite(d["lo"]) and d["lo"] > 0 for d in diffs):
        out.update(leader=top, undecided=False)
        call = f"{top} leads: the interval of its difference to every other arm lies above 0"
    elif all(np.isfinite(d["lo"]) for d in diffs):
        call = "undecided: the intervals overlap (an interval of the leader's difference includes 0)"
    else:
        call = "undecided: an arm has a single repeat, so no interval"
    out["text"] = (f"At N={used}{short}, from-scratch arms {', '.join(sorted(runs))} (same budget and space), each judged "
                   f"by the {out['judge']} of the cell it would pick at N (its best by validation), mean over repeats with "
                   f"a 95% bootstrap interval: {'; '.join(parts)}. Differences (95%): {'; '.join(gaps)}. "
                   f"Verdict: {call}.")
    return out
