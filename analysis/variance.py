"""How much of the AP variance each axis explains over the space, not over the rows the search ran.

The paper's eta^2 is a property of the rows: agents crowd into good architectures and into the
learning rates that work there, which shrinks the spread within an architecture in the sample and
inflates eta^2. The question "does the architecture matter more than the hyperparameters?" is
about the space, so it is answered here over the uniform distribution of cells:

- ``space_shares``: a functional ANOVA (Hutter, Hoos and Leyton-Brown 2014) of the project's
  boosted-tree surrogate (``analysis.surrogate``): the surrogate predicts every cell's mean AP
  (the full grid when the space has at most GRID_LIMIT cells, else a uniform Monte Carlo sample),
  the main effect of a set of axes is the mean prediction over the other axes, and its share is
  its variance over uniform cells divided by the variance of one run's AP over the space: the
  variance of the cell means plus the seed noise the replicates measure (pooled within-cell
  variance). Shares for the architecture axes together, for backbone x encoder (the grouping of
  the naive figure), for every axis, and the largest pairwise interactions; 95% intervals of
  +- 1.96 sd of refits of the surrogate on cells resampled with replacement (each cell with all
  its runs, so the replicate noise is resampled with it), each refit evaluated on one fixed
  uniform sample of REFIT_CELLS cells. The interval holds the sampling error,
  not the surrogate's bias where the search never went; the held-out fidelity says how far to
  trust it.
- ``cell_capped_eta2``: eta^2 of the cells' mean APs by architecture group, each cell counted
  once however often it ran.
- ``random_arm_eta2``: eta^2 on the from-scratch random arms' rows (control-arm campaigns): a
  uniform sample of the space, so a model-free check of the surrogate's figure.
- ``compare``: whether the naive eta^2 lies above (inflated), below (deflated) or within the
  interval of the share over the space, in a sentence.

Every result names its estimator, scope, N and interval; a figure that cannot be computed has a
``reason`` instead of a value.
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd

from crashsearch.analysis import anova
from crashsearch.analysis.history import BASELINE_RE, prepare
from crashsearch.lab.space import Space

DEFAULT_BOOT = 20  # surrogate refits for the interval: about 8 CPU-seconds at 10,469 rows (benchmarks/README.md)
GRID_LIMIT = 1_000_000  # spaces up to this many cells are predicted whole; larger ones by Monte Carlo
MC_CELLS = 200_000
REFIT_CELLS = 20_000  # cells each refit predicts (a fixed uniform sample when the grid is larger)
MAX_ROWS = 50_000  # larger histories: the runs of randomly chosen cells up to this many (stated in "note")
TOP_INTERACTIONS = 5
LEVEL = 0.95

ESTIMATOR = ("functional ANOVA (Hutter et al. 2014) of the boosted-tree surrogate: the variance of a main effect "
             "over the uniform distribution of cells, divided by the variance of one run's AP over the space "
             "(cell means plus seed noise)")
NAIVE_ESTIMATOR = "naive eta² on the rows run: one-way ANOVA of every run's AP by architecture group"
CAPPED_ESTIMATOR = "cell-capped eta²: one-way ANOVA of each cell's mean AP by architecture group, each cell once"
RANDOM_ESTIMATOR = "eta² on the from-scratch random arm's rows: one-way ANOVA by architecture group of a uniform sample"


def _groups(space: Space) -> dict[str, tuple[int, ...]]:
    """The sets of axes whose main effects are reported: architecture, backbone x encoder, each axis."""
    names = space.axis_names
    arch = tuple(i for i, a in enumerate(space.axes) if a.group == "arch")
    out = {}
    if arch:
        out["architecture"] = arch
    if {"backbone", "encoder"} <= set(names):
        out["arch_group"] = (names.index("backbone"), names.index("encoder"))
    out.update({name: (i,) for i, name in enumerate(names)})
    return out


def closed_variance(codes: np.ndarray, pred: np.ndarray, axes: tuple[int, ...]) -> float:
    """Variance over the cells of the mean prediction given ``axes`` (their closed main effect).

    ``codes``: (cells, axes) value indices of a full grid or a uniform sample; ``pred``: each
    cell's prediction. On a full grid this is exact: every level combination is equally frequent.
    """
    key = np.ravel_multi_index(tuple(codes[:, j] for j in axes), tuple(int(codes[:, j].max()) + 1 for j in axes))
    sums = np.bincount(key, weights=pred)
    counts = np.bincount(key)
    means = sums[key] / counts[key]
    return float(np.mean((means - pred.mean()) ** 2))


def decompose(codes: np.ndarray, pred: np.ndarray, noise_var: float, space: Space) -> dict[str, float]:
    """Shares of one run's AP variance over the cells: each group and axis, each pair's interaction, seed noise.

    Keys: group names (``_groups``), "a x b" for the pure interaction of two axes (closed variance
    of the pair minus both main effects), "seed noise", and "total_var" (variance, not a share).
    """
    total = float(np.var(pred)) + noise_var
    if total <= 0:
        raise ValueError("the surrogate predicts the same AP for every cell and no seed noise was measured")
    groups = _groups(space)
    main = {name: closed_variance(codes, pred, axes) for name, axes in groups.items()}
    out = {name: v / total for name, v in main.items()}
    names = space.axis_names
    for a, b in itertools.combinations(range(len(names)), 2):
        pure = closed_variance(codes, pred, (a, b)) - main[names[a]] - main[names[b]]
        out[f"{names[a]} x {names[b]}"] = max(pure, 0.0) / total
    out["seed noise"] = noise_var / total
    out["total_var"] = total
    return out


def _grid(space: Space, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Every allowed cell (or MC_CELLS uniform draws) as (cells, axes) indices into each axis's choices and
    into its values, and a phrase saying which."""
    sizes = [len(a.choices) for a in space.axes]
    index = [np.array([a.values.index(v) for v in a.choices]) for a in space.axes]
    if space.size <= GRID_LIMIT:
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
        local = np.stack([g.ravel() for g in grids], axis=1)
        how = f"every one of the {space.size:,} cells"
    else:
        rng = np.random.default_rng(seed)
        local = np.stack([rng.integers(0, s, MC_CELLS) for s in sizes], axis=1)
        how = f"{MC_CELLS:,} cells drawn uniformly from {space.size:,} (Monte Carlo)"
    full = np.stack([index[j][local[:, j]] for j in range(len(sizes))], axis=1)
    return local, full, how


def _cap(ok: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, str | None]:
    """At most MAX_ROWS runs: every run of randomly chosen cells (so replicates stay together), and a note."""
    if len(ok) <= MAX_ROWS:
        return ok, None
    counts = ok.groupby("cell_id").size()
    counts = counts.iloc[np.random.default_rng(seed).permutation(len(counts))]
    keep = counts.index[counts.cumsum().to_numpy() <= MAX_ROWS]
    part = ok[ok["cell_id"].isin(keep)]
    return part, (f"fit on the {len(part):,} runs of {len(keep):,} randomly chosen cells (of {len(ok):,} runs; "
                  f"the cap of {MAX_ROWS:,} keeps analyze fast)")


def _noise(cell: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct cell: its row indices' inverse map, run count and within-cell sum of squares."""
    cells, inv = np.unique(cell, return_inverse=True)
    counts = np.bincount(inv)
    means = np.bincount(inv, weights=y) / counts
    ss = np.bincount(inv, weights=(y - means[inv]) ** 2)
    return inv, counts, ss


def _pooled(counts: np.ndarray, ss: np.ndarray, weight: np.ndarray | None = None) -> float:
    w = np.ones(len(counts)) if weight is None else weight
    dof = float(np.sum(w * (counts - 1)))
    return float(np.sum(w * ss) / dof) if dof > 0 else 0.0


def space_shares(rows: pd.DataFrame, space: Space, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                 top: int = TOP_INTERACTIONS) -> dict:
    """The functional-ANOVA shares of AP variance over the space (see the module docstring).

    ``rows``: a history (prepared or raw; ok rows are used). Returns {estimator, n, cells_run,
    space_cells, grid (which cells were averaged), shares {name: {share, lo, hi}} for
    "architecture", "arch_group" (backbone and encoder), every axis and "seed noise", interactions [{term, share,
    lo, hi}] (the ``top`` largest), noise_sd, noise_reason, surrogate {kind, holdout_r2,
    holdout_spearman}, n_boot, level, seconds, note (a subsample past MAX_ROWS runs), reason (None,
    or why nothing was computed)}.
    """
    from crashsearch.analysis.surrogate import MIN_CELLS, MIN_OK_ROWS, SurrogateError, features, fit_surrogate, \
        make_model, observed_space, row_codes

    t0 = time.perf_counter()
    out = {"estimator": ESTIMATOR, "n": 0, "cells_run": 0, "space_cells": 0, "grid": None, "shares": {},
           "interactions": [], "noise_sd": math.nan, "noise_reason": None, "surrogate": None, "n_boot": 0,
           "level": LEVEL, "seconds": 0.0, "total_var": math.nan, "restricted": [], "arch_axes": [], "note": None,
           "reason": None}
    ok = rows[rows["ok"]] if "ok" in rows.columns else prepare(rows).query("ok")
    recorded = set(ok["space"].dropna().astype(str)) if "space" in ok.columns else set()
    if recorded and recorded != {space.name}:
        out["reason"] = (f"the runs were recorded in space {', '.join(sorted(recorded))}, and the analysis was given "
                         f"space {space.name!r}: its axes would not describe the runs")
        return out
    if len(ok) < MIN_OK_ROWS or ok["cell_id"].nunique() < MIN_CELLS:
        out["reason"] = (f"{len(ok)} runs with an AP over {ok['cell_id'].nunique()} cells; the surrogate needs at least "
                         f"{MIN_OK_ROWS} runs over {MIN_CELLS} cells")
        return out
    try:
        sub = observed_space(space, ok)
        ok, out["note"] = _cap(ok, seed)
        sur = fit_surrogate(ok, space, seed=seed, fill=False)
    except SurrogateError as exc:
        out["reason"] = str(exc)
        return out
    codes = row_codes(space, ok)
    y = ok["val_ap"].to_numpy(float)
    cell = codes @ np.array(space._weights, dtype=np.int64)
    inv, counts, ss = _noise(cell, y)
    noise_var = _pooled(counts, ss)
    if not (counts >= 2).any():
        out["noise_reason"] = "no cell was run twice: the seed noise is unknown and left out, so every share is an upper bound"
    local, full, how = _grid(sub, seed)
    restricted = [f"{a.name} {len(a.choices)} of {len(a.values)}" for a in sub.axes if len(a.choices) < len(a.values)]
    if restricted:  # values never run are left out: the surrogate cannot place them
        how += f" whose values were run (of the space's {space.size:,}; {', '.join(restricted)} values)"
    x_grid = features(space, full)
    try:
        point = decompose(local, np.clip(sur.model.predict(x_grid), 0, 1), noise_var, sub)
    except ValueError as exc:
        out["reason"] = str(exc)
        return out

    x = features(space, codes)
    rng = np.random.default_rng(seed + 1)
    # the refits only measure the spread: one fixed uniform sample of the cells serves them all (its
    # Monte Carlo error is shared by every refit, so it barely adds to the spread), 20x cheaper
    pick = np.sort(rng.choice(len(local), REFIT_CELLS, replace=False)) if len(local) > REFIT_CELLS else slice(None)
    local_b, x_b = local[pick], x_grid[pick]
    boots = []
    for _ in range(n_boot):
        draws = np.bincount(rng.integers(0, len(counts), len(counts)), minlength=len(counts)).astype(float)
        w = draws[inv]
        keep = w > 0
        model = make_model("hgb", space, int(keep.sum()), seed).fit(x[keep], y[keep], sample_weight=w[keep])
        try:
            boots.append(decompose(local_b, np.clip(model.predict(x_b), 0, 1), _pooled(counts, ss, draws), sub))
        except ValueError:
            continue
    interval = {k: _interval(point[k], [b[k] for b in boots]) for k in point}
    shares = {k: {"share": v, "lo": interval[k][0], "hi": interval[k][1]} for k, v in point.items()
              if k != "total_var" and " x " not in k}
    pairs = [{"term": k, "share": v, "lo": interval[k][0], "hi": interval[k][1]} for k, v in point.items() if " x " in k]
    pairs.sort(key=lambda r: -r["share"])
    out.update(n=int(len(y)), cells_run=int(len(counts)), space_cells=int(sub.size), grid=how, shares=shares,
               interactions=pairs[:top], noise_sd=math.sqrt(noise_var), total_var=point["total_var"],
               surrogate={"kind": sur.kind, "holdout_r2": sur.fidelity["holdout_r2"],
                          "holdout_spearman": sur.fidelity["holdout_spearman"]},
               n_boot=len(boots), restricted=restricted,
               arch_axes=[a.name for a in sub.axes if a.group == "arch"],
               seconds=time.perf_counter() - t0)
    return out


def _interval(estimate: float, boots: list[float]) -> list[float]:
    """95% interval: the estimate +- 1.96 standard deviations of the refits, clipped to [0, 1].

    A refit on resampled cells sees fewer distinct cells and smooths more, so the refits sit a
    little off the estimate: their spread, not their location, is the sampling error; and with a
    few dozen refits their sd is steadier than their 2.5% and 97.5% quantiles. NaN with fewer
    than two refits.
    """
    if len(boots) < 2:
        return [math.nan, math.nan]
    half = 1.959964 * float(np.std(boots, ddof=1))
    return [float(max(0.0, estimate - half)), float(min(1.0, estimate + half))]


def cell_capped_eta2(rows: pd.DataFrame) -> dict:
    """One-way ANOVA of each cell's mean AP by architecture group (``anova.one_way``'s dict; n counts cells)."""
    ok = rows[rows["ok"]] if "ok" in rows.columns else prepare(rows).query("ok")
    cells = ok.groupby("cell_id", sort=False).agg(val_ap=("val_ap", "mean"), arch_group=("arch_group", "first"))
    return {**anova.one_way(cells.assign(ok=True), "arch_group"), "estimator": CAPPED_ESTIMATOR}


def random_arm_eta2(baselines: pd.DataFrame | None) -> dict | None:
    """One-way ANOVA by architecture group on the rows of from-scratch random arms, or None without one.

    Adds ``estimator`` and ``repeats`` (control-arm campaigns of policy random).
    """
    if baselines is None or baselines.empty:
        return None
    campaigns = [c for c in baselines["campaign"].astype(str).unique()
                 if (m := BASELINE_RE.match(c)) and m["policy"] == "random"]
    if not campaigns:
        return None
    rows = baselines[baselines["campaign"].astype(str).isin(campaigns)]
    return {**anova.one_way(rows if "ok" in rows.columns else prepare(rows), "arch_group"),
            "estimator": RANDOM_ESTIMATOR, "repeats": len(campaigns)}


def compare(naive: dict, shares: dict) -> dict:
    """Whether the naive eta^2 lies beyond the interval of the share over the space of the same grouping.

    Returns {verdict: "inflated" | "deflated" | "within" | "undecided" (no interval) | None (nothing to
    compare), grouping, text}. The naive figure
    groups by backbone x encoder, so it is compared with that group's share over the space (the
    architecture axes' share when the space has no such pair); "inflated" means the naive
    interval lies wholly above the share's interval.
    """
    out = {"verdict": None, "grouping": None, "text": ""}
    s = shares.get("shares") or {}
    key = "arch_group" if "arch_group" in s else "architecture"
    if key not in s or naive.get("eta2") is None or not math.isfinite(_f(naive.get("eta2"))):
        return out
    share, lo, hi = s[key]["share"], s[key]["lo"], s[key]["hi"]
    n_lo, n_hi = (_f(v) for v in (naive.get("eta2_ci") or [math.nan, math.nan]))
    out["grouping"] = key
    both = (f"(grouped by {'backbone × encoder' if key == 'arch_group' else 'the arch axes'}: {_r(naive['eta2'])} on "
            f"the rows run, {_r(share)} over the space)")
    if not (math.isfinite(lo) and math.isfinite(n_lo)):
        out["verdict"] = "undecided"
        out["text"] = f"one of the two has no interval, so whether the sampling moved the naive figure is undecided {both}"
    elif n_lo > hi:
        out["verdict"] = "inflated"
        out["text"] = f"adaptive sampling inflated the naive figure beyond both intervals {both}"
    elif n_hi < lo:
        out["verdict"] = "deflated"
        out["text"] = f"the sampling deflated the naive figure beyond both intervals {both}"
    else:
        out["verdict"] = "within"
        out["text"] = ("the two intervals overlap, so the sampling did not move the naive figure beyond them "
                       f"(undecided) {both}")
    return out


def _f(v) -> float:
    return math.nan if v is None else float(v)


# ---- the report's block, sentences and tables ---------------------------------------------------

NAIVE_KEYS = ("n", "k", "F", "p", "eta2", "eta2_ci", "eta2_ci_method", "reason")


def space_block(rows: pd.DataFrame, space: Space, scope: str, naive: dict, baselines: pd.DataFrame | None = None,
                n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict:
    """Every estimate of the architecture's share on one scope (numbers.json "space_shares").

    ``rows``: the prepared history of ``scope`` ("post-bugfix" or "full history"); ``naive``: its
    ``anova.one_way`` by arch group; ``baselines``: control-arm rows (the random arm's check).
    Returns {scope, space, fanova (``space_shares``), naive, cell_capped, random_arm (None without a
    random arm), comparison (``compare``)}, each estimate with its ``estimator``.
    """
    fan = space_shares(rows, space, n_boot=n_boot, seed=seed)
    capped = cell_capped_eta2(rows)
    rnd = random_arm_eta2(baselines)
    keep = lambda r: {k: r.get(k) for k in NAIVE_KEYS + ("estimator", "repeats") if k in r}  # noqa: E731
    return {"scope": scope, "space": space.name, "fanova": fan,
            "naive": {**keep(naive), "estimator": NAIVE_ESTIMATOR}, "cell_capped": keep(capped),
            "random_arm": keep(rnd) if rnd else None, "comparison": compare(naive, fan)}


def headline_numbers(block: dict | None, why: str | None = None) -> dict:
    """The headline keys of the share over the space (numbers.json headline.share_*), from ``space_block``."""
    fan = (block or {}).get("fanova") or {}
    shares = fan.get("shares") or {}
    arch, group = shares.get("architecture") or {}, shares.get("arch_group") or {}
    return {
        "share_arch": arch.get("share"), "share_arch_ci": [arch.get("lo"), arch.get("hi")],
        "share_arch_group": group.get("share"), "share_arch_group_ci": [group.get("lo"), group.get("hi")],
        "naive_vs_space": ((block or {}).get("comparison") or {}).get("verdict"),
        "space_share": {"n": fan.get("n"), "cells_run": fan.get("cells_run"), "space_cells": fan.get("space_cells"),
                        "grid": fan.get("grid"), "n_boot": fan.get("n_boot"), "noise_sd": fan.get("noise_sd"),
                        "noise_reason": fan.get("noise_reason"), "arch_axes": fan.get("arch_axes"),
                        "holdout_r2": (fan.get("surrogate") or {}).get("holdout_r2"), "note": fan.get("note"),
                        "comparison": ((block or {}).get("comparison") or {}).get("text"),
                        "reason": why or fan.get("reason")},
    }


def _r(v, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(float(v)) else f"{float(v):.{digits}f}"


def _ci(pair) -> str:
    lo, hi = (pair or [None, None])[:2]
    return "no interval" if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) \
        else f"[{_r(lo)}, {_r(hi)}]"


def headline_sentence(h: dict) -> str:
    """The headline's first sentence: the architecture's share over the space, the naive eta² beside it."""
    s = h.get("space_share") or {}
    scope = (h.get("scope") or {}).get("share_arch", "full history")
    n_arch = h.get("n_arch")
    naive = (f"the naive eta² on the rows run (the paper's figure, {scope}"
             + (f", {n_arch:,} runs" if n_arch is not None else "")
             + f"): {_r(h.get('eta2_arch'))} {_ci(h.get('eta2_arch_ci'))}")
    if h.get("share_arch") is None or s.get("reason"):
        return (f"Architecture's share of the AP variance over the space: not computed: {s.get('reason') or 'unknown'}. "
                f"Beside it, {naive}, describes the rows the search chose to run, not the space.")
    names = list(s.get("arch_axes") or [])
    axes = (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else (names[0] if names else "the arch axes")
    group = (f", {_r(h['share_arch_group'])} {_ci(h.get('share_arch_group_ci'))} for backbone × encoder"
             if h.get("share_arch_group") is not None else "")
    noise = (f"seed noise (sd {_r(s.get('noise_sd'), 4)}, from the replicates) included" if not s.get("noise_reason")
             else s["noise_reason"])
    verdict = s.get("comparison") or "no comparison"
    return (f"**Architecture's share of the AP variance over the space: {_r(h['share_arch'])} "
            f"(95% interval {_ci(h.get('share_arch_ci'))}) for {axes} together{group}.** "
            f"Functional ANOVA of the boosted-tree surrogate (held-out R² {_r(s.get('holdout_r2'), 2)}) fitted to "
            f"{s.get('n', 0):,} runs over {s.get('cells_run', 0):,} cells ({scope}"
            + (f"; {s['note']}" if s.get("note") else "") + f"), averaged over {s.get('grid')}, "
            f"each equally likely; {noise}; interval ±1.96 sd of {s.get('n_boot')} refits on resampled cells. "
            f"Beside it, {naive}; {verdict}.")


def estimates_table(block: dict) -> pd.DataFrame:
    """One row per estimate of the architecture's share: figure, value, lo, hi, N, scope, estimator."""
    scope = block["scope"]
    fan = block["fanova"]
    rows = []
    for key, label in (("architecture", "share over the space: architecture axes"),
                       ("arch_group", "share over the space: backbone × encoder")):
        sh = (fan.get("shares") or {}).get(key)
        if sh or fan.get("reason"):
            rows.append({"figure": label, "value": (sh or {}).get("share"), "lo": (sh or {}).get("lo"),
                         "hi": (sh or {}).get("hi"), "n": f"{fan.get('n', 0):,} runs, {fan.get('cells_run', 0):,} cells",
                         "scope": scope, "estimator": fan["estimator"],
                         "note": fan.get("reason") and f"not computed: {fan['reason']}"})
            if fan.get("reason"):
                break
    for key, label, sc, unit in (("naive", "naive eta² on the rows run (the paper's figure)", scope, "runs"),
                                 ("cell_capped", "cell-capped eta²", scope, "cells"),
                                 ("random_arm", "eta² on the from-scratch random arm", "from-scratch random arm", "runs")):
        r = block.get(key)
        if r is None:
            continue
        lo, hi = (r.get("eta2_ci") or [None, None])[:2]
        rows.append({"figure": label, "value": r.get("eta2"), "lo": lo, "hi": hi,
                     "n": f"{r.get('n', 0):,} {unit}" + (f" ({r['repeats']} repeat{'s' * (r['repeats'] != 1)})"
                                                         if r.get("repeats") else ""),
                     "scope": sc,
                     "estimator": r["estimator"] + (f"; interval: {r['eta2_ci_method']}" if r.get("eta2_ci_method") else ""),
                     "note": r.get("reason")})
    return pd.DataFrame(rows, columns=["figure", "value", "lo", "hi", "n", "scope", "estimator", "note"])


def shares_table(block: dict) -> pd.DataFrame:
    """Every main effect's share over the space, the groups, seed noise and the largest interactions."""
    fan = block["fanova"]
    kinds = {"architecture": "group: " + ", ".join(fan.get("arch_axes") or ["arch axes"]) + " with their interactions",
             "arch_group": "group: backbone, encoder with their interaction (the naive figure's grouping)",
             "seed noise": "seed noise (replicates)"}
    names = {"architecture": "architecture", "arch_group": "backbone × encoder (group)"}
    rows = [{"term": names.get(k, k), "kind": kinds.get(k, "main effect"), "share": v["share"], "lo": v["lo"],
             "hi": v["hi"]} for k, v in (fan.get("shares") or {}).items()]
    rows += [{"term": r["term"], "kind": "interaction", "share": r["share"], "lo": r["lo"], "hi": r["hi"]}
             for r in fan.get("interactions") or []]
    return pd.DataFrame(rows, columns=["term", "kind", "share", "lo", "hi"])
