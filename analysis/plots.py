"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes what the statistics modules computed, writes one PNG and returns its path,
or, when there is nothing to draw, writes nothing (and removes a stale file of an earlier report)
and returns ``Absent(why)``, so the report says in a sentence why the figure is missing instead
of showing an empty box. A panel with nothing to show is left out of its figure for the same
reason. Log axes of experiment counts carry plain integer ticks (10, 20, 50, ...). Legends sit
below their panel, off the data. Long series are thinned before drawing (a million points do
not make a better line, only a slower report).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crashsearch.analysis.convergence import power_law
from crashsearch.lab._io import atomic_write

DPI = 110
MAX_LINE_POINTS = 2000
MAX_SCATTER_POINTS = 20000


@dataclass(frozen=True)
class Absent:
    """A figure not drawn, and why (one clause a reader understands)."""

    why: str


def _absent(path: str | Path, why: str) -> Absent:
    Path(path).unlink(missing_ok=True)  # a figure of an earlier report must not stand in for this one
    return Absent(why)


def integer_log_ticks(ax, n_max: float, n_min: float = 1, ticks=None) -> None:
    """Plain integer ticks on a log x axis: ``ticks`` or 1, 2, 5, 10, 20, 50, ... within [n_min, n_max];
    no minor labels, and limits that keep every tick visible even when the data span one N."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    if ticks is None:
        decades = np.log10(max(n_max, n_min) / max(n_min, 1))
        steps = (1, 2, 5) if decades <= 2.5 else (1, 3) if decades <= 4 else (1,)  # labels must not touch
        ticks = [m * 10**e for e in range(0, 10) for m in steps if n_min <= m * 10**e <= max(n_max, n_min)]
    ticks = sorted({int(t) for t in ticks if t >= 1}) or [1]
    if ticks[-1] * 1.4 < n_max:  # label the end of a short axis too (1, 2, 3)
        ticks.append(int(n_max))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(round(v)):,}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(ticks[0], n_min), max(ticks[-1], n_max)
    ax.set_xlim(lo / 1.25, hi * 1.25)


def _legend_below(ax, ncol: int = 2, fontsize: int = 7) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=ncol, frameon=False)


def _figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temp file renamed over the target: a reader never sees half a figure, a hard link keeps its file
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format=path.suffix.lstrip(".") or "png"))
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _thin(frame: pd.DataFrame, limit: int = MAX_LINE_POINTS) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    idx = np.unique(np.geomspace(1, len(frame), limit).astype(int) - 1)
    return frame.iloc[idx]


def convergence(curves_full: pd.DataFrame, fit_full: dict, path: str | Path, events: list[int] = (),
                curves_post: pd.DataFrame | None = None, fit_post: dict | None = None, post_start: int = 0,
                title: str = "Convergence", hours_label: str = "training hours") -> Path | Absent:
    """Running best vs experiments (log x, with the power-law fits that exist) and vs training hours.

    ``events``: experiment positions (1-based N) of bug-fix events, drawn as dashed lines.
    ``curves_post``/``fit_post``: the post-bugfix subset, whose N restarts at ``post_start`` + 1.
    ``hours_label``: the right panel's x label, naming the device (GPU-hours only on a GPU).
    """
    if curves_full is None or curves_full.empty:
        return _absent(path, "no experiments")
    fig, (ax, ax_h) = _figure(2, height=4.6)
    fig.suptitle(title)
    overall = curves_full[curves_full["scope"] == "overall"]
    pts = overall[np.isfinite(overall["val_ap"])]
    if len(pts) > MAX_SCATTER_POINTS:
        pts = pts.sample(MAX_SCATTER_POINTS, random_state=0)
    ax.scatter(pts["n"], pts["val_ap"], s=3, color="0.75", label="each experiment", rasterized=True)
    # a short campaign trains for minutes or seconds: 0.00025-hour ticks read badly
    total_h = float(np.nanmax(curves_full["gpu_hours"])) if curves_full["gpu_hours"].notna().any() else 0.0
    unit, per_hour = ("seconds", 3600.0) if total_h < 0.05 else ("minutes", 60.0) if total_h < 2 else ("hours", 1.0)
    for scope, part in curves_full.groupby("scope", sort=True):
        part = _thin(part)
        style = dict(color="black", lw=2) if scope == "overall" else dict(lw=1)
        ax.step(part["n"], part["best_ap"], where="post", label=f"best: {scope}", **style)
        ax_h.step(part["gpu_hours"] * per_hour, part["best_ap"], where="post", label=str(scope), **style)
    n_max = int(overall["n"].max())
    if fit_drawn(fit_full):
        n = np.geomspace(1, n_max, 200)
        ax.plot(n, power_law(n, fit_full["a"], fit_full["b"], fit_full["c"]), "--", color="tab:red", lw=1.5,
                label=f"power-law fit (all): c={fit_full['c']:.3f}, R²={fit_full['r2']:.2f}")
    if curves_post is not None and fit_drawn(fit_post) and post_start < n_max:
        n = np.geomspace(1, max(n_max - post_start, 1), 200)
        ax.plot(n + post_start, power_law(n, fit_post["a"], fit_post["b"], fit_post["c"]), "--", color="tab:purple",
                lw=1.5, label=f"power-law fit (post-bugfix): c={fit_post['c']:.3f}, R²={fit_post['r2']:.2f}")
    for i, e in enumerate(events):
        ax.axvline(e, ls="--", color="tab:orange", lw=1, label="bug-fix event" if i == 0 else None)
    integer_log_ticks(ax, n_max)
    ax.set_xlabel("experiments N")
    ax.set_ylabel("validation AP")
    finite = overall["best_ap"].dropna()
    if len(finite):
        lo = float(np.nanpercentile(overall["val_ap"], 5)) if np.isfinite(overall["val_ap"]).any() else finite.min()
        ax.set_ylim(min(lo, finite.min()) - 0.01, min(1.0, finite.max() + 0.02))
    _legend_below(ax)
    ax_h.set_xlabel(f"{hours_label.replace('hours', unit) if unit != 'hours' else hours_label} (cumulative)")
    ax_h.set_ylabel("best validation AP")
    _legend_below(ax_h, ncol=3)
    return _save(fig, path)


def fit_drawn(fit: dict | None) -> bool:
    """True when ``convergence`` draws this power-law fit (it has finite parameters)."""
    return bool(fit) and all(np.isfinite(fit.get(k, np.nan)) for k in ("a", "b", "c"))


def best_at_n(table: pd.DataFrame, regret: pd.DataFrame | None, path: str | Path) -> Path | Absent:
    """Best validation AP seen by N per arm with 95% intervals, and regret curves; the panels with data."""
    panels = [p for p, frame in (("best", table), ("regret", regret)) if frame is not None and not frame.empty]
    if not panels:
        return _absent(path, "no arm reached N = 10 and there is no regret curve")
    fig, axes = _figure(len(panels), height=4.4)
    axes = dict(zip(panels, axes))
    if "best" in axes:
        ax = axes["best"]
        arms = list(dict.fromkeys(table["arm"]))
        for i, (arm, part) in enumerate(table.groupby("arm", sort=False)):
            x = part["n"] * (1 + 0.04 * (i - (len(arms) - 1) / 2))  # dodge overlapping bars
            err = np.vstack([(part["best"] - part["lo"]).clip(lower=0), (part["hi"] - part["best"]).clip(lower=0)])
            ax.errorbar(x, part["best"], yerr=np.nan_to_num(err), marker="o", ms=4, capsize=3, label=str(arm))
        ns = sorted(int(n) for n in table["n"].unique())
        integer_log_ticks(ax, max(ns), min(ns), ticks=_spaced(ns))
        ax.set_xlabel("experiments N")
        ax.set_ylabel("best validation AP seen among the first N")
        ax.set_title("Best-at-N, selection-biased (95% bootstrap interval)", fontsize=10)
        _legend_below(ax, ncol=3)
    if "regret" in axes:
        ax_r = axes["regret"]
        for arm, part in regret.groupby("arm", sort=False):
            ax_r.plot(part["n"], part["regret"].clip(lower=1e-4), label=str(arm))
        integer_log_ticks(ax_r, int(regret["n"].max()))
        ax_r.set_yscale("log")
        ax_r.set_xlabel("experiments N")
        ax_r.set_ylabel("regret: best AP found anywhere - arm's best")
        ax_r.set_title("Regret", fontsize=10)
        _legend_below(ax_r, ncol=3)
    return _save(fig, path)


def _spaced(ns: list[int], min_ratio: float = 1.8) -> list[int]:
    """The Ns to label on a log axis, dropping one too close to the last kept (10, 25, 50: all kept)."""
    kept: list[int] = []
    for n in ns:
        if not kept or n / kept[-1] >= min_ratio:
            kept.append(n)
    return kept


def dynamics(win: dict, path: str | Path) -> Path | Absent:
    """Entropy per agent, pairwise JS divergence (with two agents or more) and innovation rate against
    experiment position; legends below each panel, off the lines."""
    agents = win.get("agents")
    if agents is None or agents.empty:
        return _absent(path, "too few proposals for one sliding window")
    js = win.get("js")
    with_js = js is not None and not js.empty
    fig, axes = _figure(1, 3 if with_js else 2, width=9.0, height=3.4)
    ax_e, ax_i = axes[0], axes[-1]
    centre = lambda d: (d["start"] + d["end"]) / 2  # noqa: E731
    for agent, part in agents.groupby("agent", sort=True):
        ax_e.plot(centre(part), part["entropy"], label=str(agent))
        line, = ax_i.plot(centre(part), part["innovation_group"], label=f"{agent}: new arch group")
        ax_i.plot(centre(part), part["innovation_hp"], ls=":", color=line.get_color(),
                  label=f"{agent}: new hyperparameters in a tried group")
    ax_e.set_ylabel("entropy (bits)")
    ax_e.set_title(f"Proposal entropy over architecture groups (window {win['window']}, step {win['step']})", fontsize=10)
    _legend_below(ax_e, ncol=4)
    if with_js:
        ax_j = axes[1]
        for pair, part in js.groupby("pair", sort=True):
            ax_j.plot(centre(part), part["js"], lw=1, label=str(pair))
        jm = win["js_mean"]
        ax_j.plot(centre(jm), jm["js"], color="black", lw=2, label="mean")
        ax_j.set_ylim(0, 1)
        ax_j.set_ylabel("JS divergence")
        ax_j.set_title("Specialization: Jensen-Shannon divergence between agents", fontsize=10)
        _legend_below(ax_j, ncol=4)
    ax_i.set_ylabel("innovation rate")
    ax_i.set_xlabel("experiment position")
    _legend_below(ax_i, ncol=2)
    return _save(fig, path)


def eta2_bars(tables: dict[str, pd.DataFrame | None], path: str | Path) -> Path | Absent:
    """eta^2 per factorial-ANOVA term, one bar group per subset (e.g. full, post-bugfix)."""
    tables = {k: t for k, t in tables.items() if t is not None and len(t)}
    if not tables:
        return _absent(path, "the factorial ANOVA is not available for this history (its reason is in the table above)")
    fig, (ax,) = _figure(1, 1, width=9.0, height=4.0)
    terms = list(dict.fromkeys(t for table in tables.values() for t in table.index))
    width = 0.8 / len(tables)
    x = np.arange(len(terms))
    for i, (name, table) in enumerate(tables.items()):
        ax.bar(x + i * width - 0.4 + width / 2, table["eta2"].reindex(terms).fillna(0.0), width, label=name)
    ax.set_xticks(x, terms, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("eta² (share of AP variance)")
    ax.set_title("Factorial ANOVA: variance explained per term")
    ax.legend(fontsize=8)
    return _save(fig, path)


def coverage(df: pd.DataFrame, path: str | Path, backbones: list | None = None,
             encoders: list | None = None) -> Path | Absent:
    """Heatmap backbone x encoder: best validation AP per cell of the grid, runs counted."""
    ok = df[df["ok"]] if "ok" in df.columns else df
    if ok.empty or "backbone" not in ok.columns or "encoder" not in ok.columns:
        return _absent(path, "no experiment with an AP and a backbone and encoder")
    fig, (ax,) = _figure(1, 1, width=8.0, height=4.2)
    best = ok.pivot_table(index="backbone", columns="encoder", values="val_ap", aggfunc="max")
    runs = df.pivot_table(index="backbone", columns="encoder", values="cell_id", aggfunc="size")
    best = best.reindex(index=backbones or best.index, columns=encoders or best.columns)
    runs = runs.reindex(index=best.index, columns=best.columns)
    data = np.ma.masked_invalid(best.to_numpy(float))
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(best.shape[1]), [str(c) for c in best.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(best.shape[0]), [str(r) for r in best.index], fontsize=8)
    for i in range(best.shape[0]):
        for j in range(best.shape[1]):
            v, r = best.iat[i, j], runs.iat[i, j]
            text = "untried" if pd.isna(v) else f"{v:.3f}\n({int(r) if pd.notna(r) else 0})"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if pd.notna(v) else "0.4")
    fig.colorbar(im, ax=ax, label="best validation AP")
    ax.set_title("Coverage: best AP per backbone x encoder (runs)")
    return _save(fig, path)


def space_shares(block: dict | None, path: str | Path, why: str | None = None) -> "Path | Absent":
    """Shares of AP variance over the space per axis and interaction, and every estimate of the
    architecture's share with its 95% interval; ``block``: ``analysis.variance.space_block``. A panel
    with nothing to show is left out; with neither, nothing is drawn."""
    from crashsearch.analysis.variance import estimates_table, shares_table

    fan = (block or {}).get("fanova") or {}
    has_shares = block is not None and not fan.get("reason")
    est = estimates_table(block) if block is not None else pd.DataFrame()
    est = est[np.isfinite(pd.to_numeric(est["value"], errors="coerce"))] if len(est) else est
    if not has_shares and est.empty:
        return _absent(path, f"not computed: {why or fan.get('reason') or 'no estimate of the architecture share'}")
    fig, axes = _figure(int(has_shares) + int(not est.empty), 1, width=6.4, height=4.4)
    axes = list(axes)
    if has_shares:
        ax = axes.pop(0)
        table = shares_table(block).iloc[::-1]
        colors = {"main effect": "tab:blue", "interaction": "tab:orange", "seed noise (replicates)": "0.5"}
        y = np.arange(len(table))
        err = np.vstack([(table["share"] - table["lo"]).clip(lower=0), (table["hi"] - table["share"]).clip(lower=0)])
        ax.barh(y, table["share"], xerr=np.nan_to_num(err),
                color=[colors.get(k, "tab:green" if k.startswith("group") else "tab:blue") for k in table["kind"]],
                capsize=2)
        ax.set_yticks(y, [str(t) for t in table["term"]], fontsize=7)
        ax.set_xlabel("share of one run's AP variance over the space")
        ax.set_title(f"Functional ANOVA over the space ({fan['n']:,} runs; green: groups, orange: interactions)",
                     fontsize=9)
    if not est.empty:
        ax_e = axes.pop(0)
        y = np.arange(len(est))[::-1]
        lo = pd.to_numeric(est["lo"], errors="coerce").to_numpy(float)
        hi = pd.to_numeric(est["hi"], errors="coerce").to_numpy(float)
        v = est["value"].to_numpy(float)
        err = np.nan_to_num(np.vstack([(v - lo).clip(min=0), (hi - v).clip(min=0)]))
        ax_e.errorbar(v, y, xerr=err, fmt="o", capsize=3, color="black")
        ax_e.set_yticks(y, [f"{f}\n({s}, N {n})" for f, s, n in zip(est["figure"], est["scope"], est["n"])], fontsize=7)
        ax_e.set_xlim(0, 1)
        ax_e.set_xlabel("architecture's share of AP variance (95% interval)")
        ax_e.set_title("Estimates of the architecture's share", fontsize=9)
    return _save(fig, path)
