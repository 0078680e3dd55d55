"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes what the statistics modules computed, writes one PNG and returns its path.
Empty inputs give a figure that says so instead of an exception, so a tiny history still gets a
complete report. Long series are thinned before drawing (a million points do not make a better
line, only a slower report).
"""
from __future__ import annotations

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
                title: str = "Convergence") -> Path:
    """Running best vs experiments (log x, with the power-law fits) and vs GPU-hours.

    ``events``: experiment positions (1-based N) of bug-fix events, drawn as dashed lines.
    ``curves_post``/``fit_post``: the post-bugfix subset, whose N restarts at ``post_start`` + 1.
    """
    fig, (ax, ax_h) = _figure(2)
    fig.suptitle(title)
    if curves_full is None or curves_full.empty:
        _empty(ax, "no experiments")
        _empty(ax_h, "no experiments")
        return _save(fig, path)
    overall = curves_full[curves_full["scope"] == "overall"]
    pts = overall[np.isfinite(overall["val_ap"])]
    if len(pts) > MAX_SCATTER_POINTS:
        pts = pts.sample(MAX_SCATTER_POINTS, random_state=0)
    ax.scatter(pts["n"], pts["val_ap"], s=3, color="0.75", label="each experiment", rasterized=True)
    for scope, part in curves_full.groupby("scope", sort=True):
        part = _thin(part)
        style = dict(color="black", lw=2) if scope == "overall" else dict(lw=1)
        ax.step(part["n"], part["best_ap"], where="post", label=f"best: {scope}", **style)
        ax_h.step(part["gpu_hours"], part["best_ap"], where="post", label=str(scope), **style)
    n_max = int(overall["n"].max())
    if np.isfinite(fit_full.get("a", np.nan)):
        n = np.geomspace(1, n_max, 200)
        ax.plot(n, power_law(n, fit_full["a"], fit_full["b"], fit_full["c"]), "--", color="tab:red",
                label=f"fit (all): c={fit_full['c']:.3f}, R²={fit_full['r2']:.2f}")
    if curves_post is not None and fit_post and np.isfinite(fit_post.get("a", np.nan)) and post_start < n_max:
        n = np.geomspace(1, max(n_max - post_start, 1), 200)
        ax.plot(n + post_start, power_law(n, fit_post["a"], fit_post["b"], fit_post["c"]), "--", color="tab:purple",
                label=f"fit (post-bugfix): c={fit_post['c']:.3f}, R²={fit_post['r2']:.2f}")
    for i, e in enumerate(events):
        ax.axvline(e, ls="--", color="tab:orange", lw=1, label="bug-fix event" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("experiments N")
    ax.set_ylabel("validation AP")
    finite = overall["best_ap"].dropna()
    if len(finite):
        lo = float(np.nanpercentile(overall["val_ap"], 5)) if np.isfinite(overall["val_ap"]).any() else finite.min()
        ax.set_ylim(min(lo, finite.min()) - 0.01, min(1.0, finite.max() + 0.02))
    ax.legend(fontsize=7, loc="lower right")
    ax_h.set_xlabel("GPU-hours (cumulative training time)")
    ax_h.set_ylabel("best validation AP")
    ax_h.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def best_at_n(table: pd.DataFrame, regret: pd.DataFrame | None, path: str | Path) -> Path:
    """Best-at-N with 95% intervals per arm (left) and regret curves (right)."""
    fig, (ax, ax_r) = _figure(2)
    if table is None or table.empty:
        _empty(ax, "no arm reached N = 10")
    else:
        arms = list(dict.fromkeys(table["arm"]))
        for i, (arm, part) in enumerate(table.groupby("arm", sort=False)):
            x = part["n"] * (1 + 0.04 * (i - (len(arms) - 1) / 2))  # dodge overlapping bars
            err = np.vstack([(part["best"] - part["lo"]).clip(lower=0), (part["hi"] - part["best"]).clip(lower=0)])
            ax.errorbar(x, part["best"], yerr=np.nan_to_num(err), marker="o", ms=4, capsize=3, label=str(arm))
        ax.set_xscale("log")
        ax.set_xlabel("experiments N")
        ax.set_ylabel("best validation AP among the first N")
        ax.set_title("Best-at-N (95% bootstrap interval)")
        ax.legend(fontsize=7)
    if regret is None or regret.empty:
        _empty(ax_r, "no regret curve")
    else:
        for arm, part in regret.groupby("arm", sort=False):
            ax_r.plot(part["n"], part["regret"].clip(lower=1e-4), label=str(arm))
        ax_r.set_xscale("log")
        ax_r.set_yscale("log")
        ax_r.set_xlabel("experiments N")
        ax_r.set_ylabel("regret: best AP found anywhere - arm's best")
        ax_r.set_title("Regret")
        ax_r.legend(fontsize=7)
    return _save(fig, path)


def dynamics(win: dict, path: str | Path) -> Path:
    """Entropy per agent, pairwise JS divergence and innovation rate against experiment position."""
    fig, axes = _figure(1, 3, width=9.0, height=2.6)
    agents = win.get("agents")
    if agents is None or agents.empty:
        for ax in axes:
            _empty(ax, "too few proposals for sliding windows")
        return _save(fig, path)
    centre = lambda d: (d["start"] + d["end"]) / 2  # noqa: E731
    for agent, part in agents.groupby("agent", sort=True):
        axes[0].plot(centre(part), part["entropy"], label=str(agent))
        line, = axes[2].plot(centre(part), part["innovation_group"], label=f"{agent}: new arch group")
        axes[2].plot(centre(part), part["innovation_hp"], ls=":", color=line.get_color(),
                     label=f"{agent}: new hyperparameters in a tried group")
    axes[0].set_ylabel("entropy (bits)")
    axes[0].set_title(f"Proposal entropy over architecture groups (window {win['window']}, step {win['step']})")
    axes[0].legend(fontsize=7)
    js = win.get("js")
    if js is None or js.empty:
        _empty(axes[1], "one agent only: no divergence")
    else:
        for pair, part in js.groupby("pair", sort=True):
            axes[1].plot(centre(part), part["js"], lw=1, label=str(pair))
        jm = win["js_mean"]
        axes[1].plot(centre(jm), jm["js"], color="black", lw=2, label="mean")
        axes[1].set_ylim(0, 1)
        axes[1].legend(fontsize=7)
    axes[1].set_ylabel("JS divergence")
    axes[1].set_title("Specialization: Jensen-Shannon divergence between agents")
    axes[2].set_ylabel("innovation rate")
    axes[2].set_xlabel("experiment position")
    axes[2].legend(fontsize=7)
    return _save(fig, path)


def eta2_bars(tables: dict[str, pd.DataFrame | None], path: str | Path) -> Path:
    """eta^2 per factorial-ANOVA term, one bar group per subset (e.g. full, post-bugfix)."""
    fig, (ax,) = _figure(1, 1, width=9.0, height=4.0)
    tables = {k: t for k, t in tables.items() if t is not None and len(t)}
    if not tables:
        _empty(ax, "factorial ANOVA not available for this history")
        return _save(fig, path)
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


def coverage(df: pd.DataFrame, path: str | Path, backbones: list | None = None, encoders: list | None = None) -> Path:
    """Heatmap backbone x encoder: best validation AP per cell of the grid, runs counted."""
    fig, (ax,) = _figure(1, 1, width=8.0, height=4.2)
    ok = df[df["ok"]] if "ok" in df.columns else df
    if ok.empty or "backbone" not in ok.columns or "encoder" not in ok.columns:
        _empty(ax, "no architecture coverage to show")
        return _save(fig, path)
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
