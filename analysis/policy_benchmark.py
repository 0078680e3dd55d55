"""Statistics and the write-up of a policy benchmark (``crashsearch benchmark``): pure functions of the runs.

The runs (each policy's AP per experiment, per repeat, NaN where an experiment gave no AP) and
their held-out APs (``judged``: each experiment's cell judged by the surrogate's noise-free mean or
a table's test AP) form an *arm table* (``analysis.arms``: arm, repeat, n, val_ap, heldout), so the
benchmark and the report share one implementation: ``arm_best_at_n`` (mean over repeats, 95%
bootstrap interval resampling repeats), ``arm_power_laws`` (a - b N^-c on each arm's mean running
best, c's interval from a bootstrap over repeats) and ``arm_verdict`` (the N=50 sentence of the
report: the arm whose picked cell is best held out, or undecided when an interval of a difference
includes 0).

``summary`` returns the benchmark.json document, exactly::

    {"objective", "budget", "repeats", "surrogate": {"holdout_r2", "holdout_spearman"},
     "policies": {NAME: {"best_at": {"10"|"50"|"100"|...: {"mean", "lo", "hi"}},
                         "picked_at": {"10"|...: {"mean", "lo", "hi"}}, "judge",
                         "power_law": {"a", "b", "c", "r2", "c_lo", "c_hi", "at_bound"},
                         "tokens", "cost_usd"}}}

``best_at``: the best validation AP seen among the first N (selection-biased: a maximum over noisy
runs); ``picked_at``: the held-out AP of the cell the policy would pick at N (its best by
validation), the figure verdicts rest on; ``judge`` names what scored the pick.

``best_at`` keys: 10, 50, 100, every power of ten up to the budget, and the budget itself (those
not above the budget). A key no repeat reached (an agent stopped by its dollar budget) holds nulls.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from crashsearch.analysis.arms import TABLE_COLUMNS, arm_best_at_n, arm_power_laws, arm_verdict

N_BOOT = 2000  # arm_verdict's default, so the verdict and best_at agree
LOW_FIDELITY_R2 = 0.5  # below this held-out R^2 the write-up warns that the surrogate says little


def benchmark_ns(budget: int) -> list[int]:
    """10, 50, 100, every power of ten up to ``budget``, and ``budget``; only those <= budget."""
    ns = {10, 50, 100, int(budget)}
    p = 1000
    while p <= budget:
        ns.add(p)
        p *= 10
    return sorted(n for n in ns if 1 <= n <= budget)


def arm_table(runs: dict[str, list[np.ndarray]], judged: dict[str, list[np.ndarray]] | None = None) -> pd.DataFrame:
    """The ``analysis.arms`` table of the runs: one row per experiment (arm, repeat, n, val_ap, heldout).

    ``judged``: per policy and repeat, each experiment's held-out AP (NaN or absent: unknown, and
    the pick is scored by its replicate mean of validation AP instead)."""
    def held(policy: str, k: int, size: int) -> np.ndarray:
        seqs = (judged or {}).get(policy) or []
        return np.asarray(seqs[k], dtype=float) if k < len(seqs) and seqs[k] is not None else np.full(size, np.nan)

    parts = [pd.DataFrame({"arm": policy, "repeat": k, "n": np.arange(1, len(vals) + 1), "val_ap": np.asarray(vals, dtype=float),
                           "heldout": held(policy, k, len(vals))})
             for policy, seqs in runs.items() for k, vals in enumerate(seqs)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS)


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def summary(runs: dict[str, list[np.ndarray]], budget: int, repeats: int, objective: str,
            fidelity: dict | None = None, spend: dict[str, tuple[int, float]] | None = None, seed: int = 0,
            judged: dict[str, list[np.ndarray]] | None = None) -> dict:
    """The benchmark.json document (shape in the module docstring); NaN becomes None."""
    ns = benchmark_ns(budget)
    table = arm_table(runs, judged)
    with warnings.catch_warnings():  # a repeat with no AP at all (every proposal a miss) is a NaN, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        # one N at a time with the same seed, so N=50 carries exactly the interval the verdict states
        best = pd.concat([arm_best_at_n(table, ns=(n,), n_boot=N_BOOT, seed=seed) for n in ns]).set_index(["arm", "n"])
        laws = arm_power_laws(table).set_index("arm")
    out = {"objective": objective, "budget": int(budget), "repeats": int(repeats),
           "surrogate": {"holdout_r2": _num((fidelity or {}).get("holdout_r2")),
                         "holdout_spearman": _num((fidelity or {}).get("holdout_spearman"))},
           "policies": {}}
    for policy in runs:
        best_at, picked_at, judge = {}, {}, None
        for n in ns:
            r = best.loc[(policy, n)] if (policy, n) in best.index else None
            best_at[str(n)] = {k: _num(r[col]) if r is not None else None
                               for k, col in (("mean", "best"), ("lo", "lo"), ("hi", "hi"))}
            picked_at[str(n)] = {k: _num(r[col]) if r is not None else None
                                 for k, col in (("mean", "picked"), ("lo", "picked_lo"), ("hi", "picked_hi"))}
            judge = r["judge"] if r is not None else judge
        law = laws.loc[policy] if policy in laws.index else {}
        tokens, cost = (spend or {}).get(policy, (0, 0.0))
        out["policies"][policy] = {"best_at": best_at, "picked_at": picked_at, "judge": judge,
                                   "power_law": {**{k: _num(law[k]) if k in law else None
                                                    for k in ("a", "b", "c", "r2", "c_lo", "c_hi")},
                                                 "at_bound": (law["at_bound"] or None) if "at_bound" in law else None},
                                   "tokens": int(tokens), "cost_usd": float(cost)}
    return out


def verdict_line(runs: dict[str, list[np.ndarray]], n: int = 50, seed: int = 0,
                 judged: dict[str, list[np.ndarray]] | None = None) -> str:
    """The report's N=50 sentence (``analysis.arms.arm_verdict``) for these runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return arm_verdict(arm_table(runs, judged), n=n, seed=seed)["text"]


def curve_table(runs: dict[str, list[np.ndarray]], budget: int, points: int = 40, seed: int = 0,
                judged: dict[str, list[np.ndarray]] | None = None) -> pd.DataFrame:
    """``arm_best_at_n`` on a log grid of N for the figure (picked and best-seen, with intervals)."""
    ns = np.unique(np.geomspace(1, max(budget, 1), points).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return arm_best_at_n(arm_table(runs, judged), ns=tuple(int(n) for n in ns), n_boot=500, seed=seed)


def plot(runs: dict[str, list[np.ndarray]], budget: int, title: str, verdict: str, path: str | Path, seed: int = 0,
         judged: dict[str, list[np.ndarray]] | None = None) -> Path:
    """Per policy: the held-out AP of the cell picked at N with its 95% band (solid) and the best
    validation AP seen (dotted, selection-biased); the N=50 verdict under the title."""
    from crashsearch.analysis.plots import _empty, _figure, _legend_below, _save, integer_log_ticks

    height = 6.0
    fig, (ax,) = _figure(1, width=8.0, height=height)
    table = curve_table(runs, budget, seed=seed, judged=judged)
    if table.empty:
        _empty(ax, "no run has an AP")
    else:
        for arm, part in table.groupby("arm", sort=False):
            line, = ax.plot(part["n"], part["picked"], label=f"{arm}: {part['judge'].iloc[-1]} of the pick")
            if part["picked_lo"].notna().any():  # one repeat has no interval
                ax.fill_between(part["n"], part["picked_lo"], part["picked_hi"], color=line.get_color(), alpha=0.2,
                                linewidth=0)
            ax.plot(part["n"], part["best"], ls=":", lw=1, color=line.get_color(),
                    label=f"{arm}: best validation AP seen (selection-biased)")
        ax.axvline(50, color="0.6", linestyle=":", linewidth=1)
        integer_log_ticks(ax, int(table["n"].max()))
        ax.set_xlabel("experiments N")
        ax.set_ylabel("AP at N (mean over repeats)")
        _legend_below(ax, ncol=2)
    ax.set_title(title, fontsize=10)
    if verdict:  # under everything, in a band of its own, so it never runs over the axis labels
        text = _wrap(verdict, 130)
        band = (text.count("\n") + 1) * 0.13 / height + 0.02
        fig.text(0.5, 0.01, text, ha="center", va="bottom", fontsize=7)
        fig.get_layout_engine().set(rect=(0, band, 1, 1 - band))  # (left, bottom, width, height)
    return _save(fig, path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def markdown(doc: dict, verdict: str, info: dict, figure: str | None) -> str:
    """benchmark.md: what was benchmarked, the fidelity, the best-at-N table, the verdicts, the time."""
    lines = [f"# Policy benchmark: {info.get('title', '')}", ""]
    obj = doc["objective"]
    lines.append(f"Objective **{obj}**, budget {doc['budget']:,} experiments per run, {doc['repeats']} repeats per policy "
                 f"(independent seeds). Scope: {info.get('scope', '')}.")
    lines.append(f"Space searched: {info.get('space', '')}.")
    if obj == "surrogate":
        s = doc["surrogate"]
        lines.append(f"Surrogate: {info.get('surrogate', '')}; held-out R^2 {_f(s['holdout_r2'])}, Spearman "
                     f"{_f(s['holdout_spearman'])} (each cell's mean AP against a model that never saw it). {info.get('noise', '')}")
        if low_fidelity(doc):
            lines.append(f"**Warning: held-out R^2 below {LOW_FIDELITY_R2}: the surrogate predicts unseen cells poorly, so these "
                         "curves say little about the real space; record more experiments or use --objective table.**")
    else:
        lines.append("Table: a proposed cell that was recorded replays one of its runs; an unrecorded cell is a miss that "
                     "spends one experiment and yields no AP.")
    lines += ["", "## Verdict at N=50", "", verdict, ""]
    ns = list(next(iter(doc["policies"].values()))["best_at"]) if doc["policies"] else []
    for key, head in (("picked_at", "Held-out AP of the cell each policy would pick at N (its best by validation; "
                                    "what the verdict rests on)"),
                      ("best_at", "Best validation AP seen among the first N (selection-biased: a maximum over noisy "
                                  "runs; for comparison with the paper's figure)")):
        lines += [f"## {head}: mean over repeats, 95% bootstrap interval over repeats", ""]
        lines.append("| policy | " + " | ".join(f"N={n}" for n in ns) + (" | judge |" if key == "picked_at" else
                                                                          " | power law a - b N^-c (R^2); c 95% | tokens | cost |"))
        lines.append("|---|" + "---|" * len(ns) + ("---|" if key == "picked_at" else "---|---|---|"))
        for name, p in doc["policies"].items():
            cells = [f"{_f(b['mean'])} [{_f(b['lo'])}, {_f(b['hi'])}]" if b["mean"] is not None else "no AP"
                     for b in p.get(key, {}).values()]
            if key == "picked_at":
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {p.get('judge') or '-'} |")
                continue
            pl = p["power_law"]
            law = (f"{_f(pl['a'])} - {_f(pl['b'])} N^-{_f(pl['c'])} ({_f(pl['r2'], 2)}); "
                   f"[{_f(pl.get('c_lo'))}, {_f(pl.get('c_hi'))}]" if pl["a"] is not None else "no fit")
            if pl.get("at_bound"):
                law += f"; at a bound: {pl['at_bound']} (a cap, not an estimate)"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {law} | {p['tokens']:,} | ${p['cost_usd']:.2f} |")
        lines.append("")
    lines.append("The interval of c is a bootstrap over repeats (repeats resampled, the mean running best refitted).")
    lines.append("")
    if info.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in info["notes"]] + [""]
    if info.get("timing"):
        lines += ["## Where the time went", ""] + [f"- {t}" for t in info["timing"]] + [""]
    if figure:
        lines += [f"![best-at-N]({figure})", ""]
    return "\n".join(lines)


def low_fidelity(doc: dict) -> bool:
    """True when a surrogate benchmark's held-out R^2 is missing or below LOW_FIDELITY_R2."""
    r2 = doc["surrogate"]["holdout_r2"]
    return doc["objective"] == "surrogate" and (r2 is None or r2 < LOW_FIDELITY_R2)


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
