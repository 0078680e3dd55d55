"""The campaign report: every statistic of analysis/ in one folder.

``build_report(history_df, out_dir, ...)`` writes

    out_dir/report.md      readable in a terminal
    out_dir/report.html    the same content, one self-contained file (figures as data URIs)
    out_dir/figures/*.png  convergence, best_at_n, dynamics, eta2, coverage, space_shares
    out_dir/numbers.json   every number below, for scripts and dashboards

and returns the numbers as a dict. It is a pure function of DataFrames: the store, Prefect and
the CLI live in ``flows/analyze.py``.

numbers.json keys (stable; NaN is written as null; "post_bugfix" blocks are null without events):

| key | meaning |
|---|---|
| title, generated_at, weights | report title, UTC time, backbone-weights note as given |
| headline.best_val_ap / best_arch_group | best single validation AP and its backbone/encoder |
| headline.eta2_arch, headline.F_arch, headline.p_arch, headline.n_arch | one-way ANOVA of AP by arch group on the scope in headline.scope (post-bugfix when a bug-fix event concerns the campaign and runs follow it, else full history); n_arch: runs |
| headline.eta2_arch_ci, headline.omega2_arch, headline.eta2_null_arch, headline.k_arch | 95% noncentral-F interval of eta2_arch, omega^2 (bias-corrected eta^2), (k-1)/(n-1) (what eta^2 averages with no effect at all), number of arch groups; same scope |
| headline.eta2_arch_ci_method | how eta2_arch_ci was computed: noncentral-F inversion, or its stated normal approximation past noncentrality 2e6 (anova.eta2_interval) |
| headline.share_arch, headline.share_arch_ci | the architecture's share of AP variance over the space (every arch axis together; analysis.variance: functional ANOVA of the surrogate under uniform cells, seed noise included) and its 95% interval (+-1.96 sd of surrogate refits on resampled cells); same scope as eta2_arch; null when not computed |
| headline.share_arch_group, headline.share_arch_group_ci | the same for backbone x encoder, the naive eta²'s grouping |
| headline.naive_vs_space | "inflated" / "deflated" (the naive eta² interval lies wholly above / below the share over the space of the same grouping), "within" (they overlap), "undecided" (no interval), null |
| headline.space_share {n, cells_run, space_cells, grid, n_boot, noise_sd, noise_reason, arch_axes, holdout_r2, note, comparison, reason} | what the headline sentence of the share over the space says: runs and cells fitted, cells averaged, refits, seed-noise sd, surrogate held-out R², subsample note, the comparison sentence, why not computed |
| headline.estimator.<figure> | the estimator of share_arch, share_arch_group and eta2_arch, in words |
| headline.arch_undecided | true when p_arch >= 0.05 or eta2_arch_ci reaches 0: too few runs per group to separate architecture from noise |
| headline.validation {videos, positives, negatives} | the validation split every AP is measured on (null when unknown) |
| headline.leader {cell_id, arch_group, val_ap, runs, ci_lo, ci_hi, tied, tied_cells} | the leading cell (lab.leaderboard) and the cells not separated from it (intervals overlap; one-run cells: the same value); tied counts the leader too |
| headline.full_history {eta2_arch, F_arch, p_arch, n} | the same ANOVA on the full history, always (beside the post-bugfix figures) |
| headline.within_share | 1 - eta2_arch: the most hyperparameters and seeds can explain (same scope) |
| headline.c, headline.r2 | power-law exponent and fit R^2 (post-bugfix when events exist, else full) |
| headline.verdict, verdict_n, verdict_arms, verdict_leader | the like-for-like sentence over from-scratch arms: the N used, the arms compared, the leader (null: undecided) |
| headline.agents_beat_controls | true/false when an LLM arm was compared from scratch and the verdict is decided, else null |
| headline.bugfix_events | ids of the bug-fix events that concern this campaign |
| headline.paper {comparable, why} | whether the paper's figures are printed beside these (not with random-init weights or synthetic data) and what differs |
| headline.scope.<figure> | "post-bugfix", "full history" or "from-scratch control arms": the scope of each headline figure |
| history.{experiments, ok, failed, healed, invalid, cells, arch_groups} | counts |
| history.{datasets, campaigns, arms, gpu_hours, devices, tokens, cost_usd, bugfix_events} | scope and spend; gpu_hours: training hours summed whatever the device, named by devices (the kinds recorded, e.g. ["cpu"]) |
| best.{val_ap, test_ap, cell_id, arch_group, arm} | the best single run |
| temporal[] {backbone, meanpool, encoders, best, best_stats, verdict, text, paired} | analysis.temporal: mean pooling vs the best temporal head per backbone (mean val AP, n, 95% t-interval; verdict "undecided" when the intervals overlap); paired: a temporal cell vs its mean-pooling twin (every other axis equal) or null |
| top5[] {rank, cell_id, backbone, encoder, loss, gamma, val_ap, val_ap_sd, runs, ci_lo, ci_hi, test_ap, source} | lab.leaderboard (same ranking and t-interval as `crashsearch leaderboard`; ci null for one run) |
| anova.{full, post_bugfix}.{arch_group, backbone, encoder} | one-way ANOVA: n, k, F, p, eta2, eta2_ci, eta2_ci_method, omega2, eta2_null, within_share, reason |
| anova.{full, post_bugfix}.factorial {n, r2, note, reason, terms[] {term, df, sum_sq, F, p, eta2, partial_eta2}} | Type II factorial ANOVA |
| anova.{full, post_bugfix}.noise {var, sd, df, cells, share, reason} | seed-replicate noise floor |
| space_shares {scope, space, fanova, naive, cell_capped, random_arm, comparison} | every estimate of the architecture's share on the headline's scope (null when not computed: see not_computed) |
| space_shares.fanova {estimator, n, cells_run, space_cells, grid, shares.<name> {share, lo, hi}, interactions[] {term, share, lo, hi}, noise_sd, noise_reason, surrogate {kind, holdout_r2, holdout_spearman}, n_boot, level, seconds, total_var, restricted, arch_axes, note, reason} | functional ANOVA over the space: shares of "architecture", "arch_group" (backbone x encoder), every axis and "seed noise"; the largest pairwise interactions |
| space_shares.{naive, cell_capped, random_arm} {n, k, F, p, eta2, eta2_ci, eta2_ci_method, reason, estimator[, repeats]} | naive eta² on the rows run; eta² of each cell's mean (each cell once); eta² on the from-scratch random arm's rows (null without one) |
| space_shares.comparison {verdict, grouping, text} | see headline.naive_vs_space |
| not_computed.<section> | "ErrorType: message" of a section that raised; the rest of the report was built |
| convergence.{full, post_bugfix} {a, b, c, r2, rmse, a_ci, b_ci, c_ci, n, points, improvements, n_boot, at_bound, reason} | power law a - b N^-c; at_bound: parameters at a bound of the fit (e.g. "a = 1") |
| convergence.{full, post_bugfix}.arms.<arm> {a, b, c, r2, reason} | the same fit per arm (no bootstrap) |
| convergence.forecast {n_now, more, now, expected, gain, expected_ci, gain_ci} | best AP expected after `more` experiments |
| convergence.{best_ap, gpu_hours, post_start} | best AP, total GPU-hours, experiments before the last bug fix |
| baselines.from_scratch.best_at_n[] {arm, n, picked, picked_lo, picked_hi, best, lo, hi, repeats, judge} | from-scratch arms (analysis.arms): picked = held-out AP of the cell the arm would pick at N (its best by validation), best = best validation AP seen (selection-biased); means over repeats, 95% bootstrap intervals over repeats (null with one repeat); judge: what scored the pick |
| baselines.from_scratch.power_laws[] {arm, a, b, c, c_lo, c_hi, r2, at_bound, n, repeats, interval, reason} | per-arm power law on the mean running best over repeats; c's 95% interval from a bootstrap over repeats; at_bound: parameters at a bound of the fit |
| baselines.from_scratch.verdict {text, n, arms, leader, undecided, judge, per_arm[], differences[] {arm, other, diff, lo, hi, paired}} | the like-for-like verdict on the picks' held-out AP, by paired bootstrap differences |
| baselines.shared_best_at_n[] {arm, n, best, lo, hi, runs, method} | the campaign's own arms, in a shared campaign, not from scratch |
| baselines.distributions[] {arm, n, mean, min, q25, median, q75, q90, max} | AP distribution per arm of the campaign |
| dynamics.{window, step} | sliding window and step in experiments |
| dynamics.cycles.<agent> {period, period_windows, strength, n_peaks, n_troughs, reason} | entropy cycles |
| dynamics.js {baseline, max, spikes[] {window, start, js, decay_windows, decay_experiments}} | specialization |
| dynamics.innovation[] {agent, proposals, new_groups, group_rate, new_hp, hp_rate} | share of own proposals opening a new arch group / a new hyperparameter combination in a tried group |
| dynamics.credit[] (replicate/rerun/heal rows credited to the original proposer) {arm, experiments, improvements, share, gain, tokens, cost_usd, tokens_per_improvement, usd_per_improvement} | credit |
| transfer.datasets[] {dataset, experiments, ok, best_ap, best_arch_group, best_cell_id, top_backbone, top_encoder, top_arch_group, eta2_arch, F_arch, c} | per dataset |
| transfer.winner {backbone_differs, arch_group_differs, text} | whether the winning backbone / arch group differs between datasets |
| transfer.rank_correlation[] {by, dataset_a, dataset_b, common, spearman, spearman_p, kendall, kendall_p, reason} | across datasets |
| figures.<name>, figures_absent.<name> | figure paths relative to out_dir (null when not drawn); why a figure was not drawn (nothing to show) |
| timings.<section> | seconds spent per section |
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from crashsearch.analysis import anova, baselines, convergence, dynamics, plots, transfer, variance
from crashsearch.analysis.temporal import temporal_vs_meanpool
from crashsearch.analysis.arms import arm_best_at_n, arm_power_laws, arm_table, arm_verdict
from crashsearch.analysis.history import is_llm, prepare
from crashsearch.lab.leaderboard import format_interval, leaderboard
from crashsearch.lab.space import Space


# ---- subsets --------------------------------------------------------------------------------

def _utc(value) -> pd.Timestamp | None:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def event_positions(df: pd.DataFrame, events: Iterable[dict]) -> list[int]:
    """For each bug-fix event, the number of experiments before its fix (lab.versions.post_fix_mask)."""
    if not len(df):
        return []
    from crashsearch.lab.versions import post_fix_mask

    return sorted(int((~post_fix_mask(df, e)).sum()) for e in events)


def post_bugfix(df: pd.DataFrame, events: list[dict]) -> pd.DataFrame | None:
    """Rows post-fix for every event (lab.versions, the one segmentation rule), or None without events."""
    if not events:
        return None
    from crashsearch.lab.versions import post_bugfix as lab_post_bugfix

    return lab_post_bugfix(df, events)


# ---- tables ---------------------------------------------------------------------------------

def top_cells(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Top k cells of lab.leaderboard (the ranking and interval of ``crashsearch leaderboard``): rank,
    cell_id, backbone, encoder, loss, gamma, val_ap (mean), val_ap_sd, runs, ci_lo, ci_hi (NaN for
    one run), test_ap, source (the arm that first proposed the cell)."""
    cols = ["rank", "cell_id", "backbone", "encoder", "loss", "gamma", "val_ap", "val_ap_sd", "runs", "ci_lo", "ci_hi",
            "test_ap", "source"]
    board = leaderboard(df, k, axes=[c for c in ("backbone", "encoder", "loss") if c in df.columns])
    if board.empty:
        return pd.DataFrame(columns=cols)
    board = board.rename(columns={"mean_ap": "val_ap", "std_ap": "val_ap_sd", "n": "runs"}).set_index("cell_id")
    ok = df[df["ok"]]
    board["test_ap"] = ok.groupby("cell_id")["test_ap"].mean().reindex(board.index) if "test_ap" in ok.columns else np.nan
    first = df[df["cell_id"].isin(board.index)].drop_duplicates("cell_id").set_index("cell_id")
    for col in ("backbone", "encoder", "loss"):
        if col not in board.columns:
            board[col] = None
    board["source"] = first["arm"].reindex(board.index)
    board["gamma"] = [_gamma(v) for v in board["loss"]]
    return board.reset_index()[cols]


def _gamma(loss) -> float:
    from crashsearch.lab.space import loss_gamma

    try:
        return loss_gamma(str(loss))
    except ValueError:
        return math.nan


RANDOM_WEIGHTS = ("random", "none", "random-init")  # weights ids that mean no pretrained features


def weights_note(weights) -> str:
    """One plain sentence about the backbone weights behind the features."""
    if weights is None or weights == {}:
        return "Backbone weights were not recorded for this history."
    if isinstance(weights, dict):
        random_init = sorted(b for b, w in weights.items() if str(w).lower() in RANDOM_WEIGHTS)
        named = ", ".join(f"{b}: {w}" for b, w in sorted(weights.items()))
        if random_init:
            return (f"Backbones {', '.join(random_init)} were random-init (no pretrained weights), so their APs "
                    f"measure the search machinery, not the pretrained features. Weights: {named}.")
        return f"Backbone weights: {named}."
    if str(weights).lower() in ("random", "random-init"):
        return ("Backbones were random-init (no pretrained weights were available), so these APs measure the "
                "search machinery, not the pretrained features.")
    return f"Backbone weights: {weights}."


# ---- rendering ------------------------------------------------------------------------------

_P_COLUMNS = {"p", "spearman_p", "kendall_p"}


def noise_sentence(nz: dict) -> str:
    """The report's line on the seed-replicate noise floor (``anova.noise_floor``'s dict).

    The share is a ratio of two variance estimates, so it can exceed 1: then the line says that
    the differences between cells are within seed noise instead of printing "1.44 of the variance".
    """
    if nz["reason"] is not None:
        return f"Noise floor: {nz['reason']}."
    head = f"Seed-replicate noise floor: sd {_fmt(nz['sd'])} over {nz['cells']} replicated cells (df = {nz['df']})"
    share = nz["share"]
    if share is not None and np.isfinite(share) and share >= 1:
        return (f"{head}: as large as the whole AP variance (ratio {_fmt(share)}), so differences between "
                f"cells are within seed noise (undecided).")
    return f"{head} ({_fmt(share)} of the AP variance)."


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if column in _P_COLUMNS:
            return "<1e-300" if v == 0 else f"{v:.2g}"
        if math.isinf(v):
            return "inf"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


class _Doc:
    """A report as a list of blocks, rendered to Markdown and to self-contained HTML."""

    def __init__(self, out_dir: Path):
        self.blocks: list[tuple] = []
        self.out_dir = out_dir

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame | None, columns: dict[str, str] | None = None, empty: str = "(none)"):
        if frame is None or frame.empty:
            self.p(empty)
            return
        frame = frame.reset_index() if frame.index.name else frame
        columns = columns or {c: c for c in frame.columns}
        rows = [[_fmt(v, c) for c, v in zip(columns, row)] for row in frame[list(columns)].itertuples(index=False)]
        self.blocks.append(("table", list(columns.values()), rows))

    def img(self, path: "Path | plots.Absent", caption: str):
        if isinstance(path, plots.Absent):  # nothing to draw: say why instead of an empty box
            self.p(f"(Figure not drawn: {caption.split(' (')[0]}: {path.why}.)")
            return
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                head, rows = b[1], b[2]
                lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1].relative_to(self.out_dir).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
               "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:0.9em}"
               "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
               "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"
               "</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                out.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{e(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then render the only inline Markdown the report uses: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "samples"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return [_jsonable(r) for r in obj.to_dict("records")]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, (pd.Timestamp, datetime)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return obj.as_posix()
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _stack(df: pd.DataFrame, extra: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """``df`` alone when there is nothing extra, else the given columns of both (extra prepared)."""
    if extra is None or extra.empty:
        return df
    extra = prepare(extra)
    cols = [c for c in columns if c in df.columns and c in extra.columns]
    return pd.concat([df[cols], extra[cols]], ignore_index=True)


def _fit_summary(fit: dict) -> dict:
    keys = ("a", "b", "c", "r2", "rmse", "a_ci", "b_ci", "c_ci", "n", "points", "improvements", "n_boot", "at_bound",
            "reason")
    return {k: fit.get(k) for k in keys}


def isolated(section: str, failures: dict, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it raises: ``failures[section]`` then says why in one line.

    A figure that cannot be computed is shown as "not computed: why" and the rest of the report is
    built; the numbers that were computed are never lost to one failing section.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  any failure of one section must not take the report down
        failures[section] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return None


def _space(space: Space | None) -> Space:
    return space if space is not None else Space.load()


def _anova_block(df: pd.DataFrame) -> dict:
    failures: dict[str, str] = {}
    keep = ("n", "k", "F", "p", "eta2", "eta2_ci", "eta2_ci_method", "omega2", "eta2_null", "within_share", "reason")
    one = {by: isolated(by, failures, anova.one_way, df, by) or anova.one_way_blank(by, f"not computed: {failures[by]}")
           for by in ("arch_group", "backbone", "encoder")}
    fac = isolated("factorial", failures, anova.factorial, df) or {
        "table": None, "r2": math.nan, "n": int(df["ok"].sum()), "note": None,
        "reason": f"not computed: {failures['factorial']}",
        "noise": {"var": math.nan, "sd": math.nan, "df": 0, "cells": 0, "share": math.nan,
                  "reason": f"not computed: {failures['factorial']}"}}
    block = {by: {k: r[k] for k in keep} for by, r in one.items()}
    block["factorial"] = {"n": fac["n"], "r2": fac["r2"], "note": fac["note"], "reason": fac["reason"],
                          "terms": anova.eta2_table(fac)}
    block["noise"] = {k: fac["noise"][k] for k in ("var", "sd", "df", "cells", "share", "reason")}
    return {"numbers": block, "table": fac["table"]}


def _arch_undecided(r: dict) -> bool:
    """True when the arch ANOVA cannot tell architecture from noise: p >= 0.05, or its interval reaches 0."""
    lo = _nan(r["eta2_ci"][0]) if r.get("eta2_ci") else math.nan
    return bool(not (_nan(r["p"]) < 0.05) or math.isnan(lo) or lo <= 0)


def leader_tie(df: pd.DataFrame) -> dict | None:
    """The leading cell of lab.leaderboard and the cells not separated from it.

    Returns {cell_id, arch_group, val_ap, runs, ci_lo, ci_hi, tied (cells at the top, leader
    included), tied_cells} or None without an AP. Two cells are not separated when their 95%
    intervals overlap; a one-run cell has no interval, so its value stands for it.
    """
    board = leaderboard(df, None)
    if board.empty:
        return None

    def span(r) -> tuple[float, float]:
        lo, hi = _nan(r.ci_lo), _nan(r.ci_hi)
        return (r.mean_ap, r.mean_ap) if r.n < 2 or math.isnan(lo) else (lo, hi)

    rows = list(board.itertuples())
    lead = rows[0]
    lo, hi = span(lead)
    tied = [int(r.cell_id) for r in rows if span(r)[1] >= lo and span(r)[0] <= hi]
    group = df.loc[df["cell_id"] == lead.cell_id, "arch_group"]
    return {"cell_id": int(lead.cell_id), "arch_group": str(group.iloc[0]) if len(group) else None,
            "val_ap": float(lead.mean_ap), "runs": int(lead.n),
            "ci_lo": None if lead.n < 2 else _nan(lead.ci_lo), "ci_hi": None if lead.n < 2 else _nan(lead.ci_hi),
            "tied": len(tied), "tied_cells": tied}


def validation_sentence(v: dict | None) -> str:
    """"on 4 validation videos (2 positives / 2 negatives)", or that the split size is unknown."""
    if not v or not v.get("videos"):
        return "validation N not recorded"
    pn = (f" ({v['positives']} positives / {v['negatives']} negatives)"
          if v.get("positives") is not None and v.get("negatives") is not None else "")
    return f"on {v['videos']} validation videos{pn}"


def headline_lines(h: dict, best: dict | None = None) -> list[str]:
    """The headline sentences of the best run, the leading cell and the arch ANOVA, with scope, N and
    interval; the report and the CLI's `analyze` summary both print them. ``h``: numbers["headline"];
    ``best``: numbers["best"] (adds test AP, cell and arm). The share of the architecture over the space
    comes first, the naive eta² on the rows run beside it."""
    out = [variance.headline_sentence(h)] if "space_share" in h else []
    if h.get("best_val_ap") is not None and not math.isnan(_nan(h["best_val_ap"])):
        extra = (f" (test AP {_fmt(best['test_ap'])}), cell {best['cell_id']}, found by {best['arm']}"
                 if best and best.get("cell_id") is not None else "")
        out.append(f"Best single run (full history): validation AP {_fmt(h['best_val_ap'])} "
                   f"{validation_sentence(h.get('validation'))}, one run, no interval{extra}; "
                   f"{h.get('best_arch_group')}.")
    lead = h.get("leader")
    if lead:
        runs = lead["runs"]
        ci = (f", 95% interval {format_interval(lead['ci_lo'], lead['ci_hi'], runs)}" if runs >= 2
              else ", one run: no interval")
        cell = (f"cell {lead['cell_id']} ({lead['arch_group']}): validation AP {_fmt(lead['val_ap'])} "
                f"over {runs} run(s){ci}")
        if lead["tied"] > 1:
            out.append(f"Leading cell undecided (full history): {lead['tied'] - 1} other cell(s) are not separated "
                       f"from the leader: their 95% intervals overlap its interval (a one-run cell has no interval "
                       f"and counts by its value), so their APs differ but not beyond noise; first by the "
                       f"leaderboard's order {cell}.")
        else:
            out.append(f"Leading cell (full history, separated from the next): {cell}.")
    if h.get("eta2_arch") is not None and not math.isnan(_nan(h["eta2_arch"])):
        full = h["full_history"]
        scope_name = h["scope"]["eta2_arch"]
        if scope_name == "post-bugfix":
            scope = (f"post-bugfix, {h['n_arch']:,} runs after the fix; full history beside it: eta² = "
                     f"{_fmt(full['eta2_arch'])}, F = {_fmt(full['F_arch'])}, p = {_fmt(full['p_arch'], 'p')}, "
                     f"{full['n']:,} runs")
        else:
            scope = ("full history"
                     + ("" if h.get("bugfix_events") is None else
                        ": " + ("no bug-fix event concerns this campaign" if not h["bugfix_events"]
                                else "no run with an AP follows the bug fix yet")))
        ci = h.get("eta2_arch_ci") or [None, None]
        stats_text = (f"95% interval of the population eta² {_fmt(ci)}, omega² = {_fmt(h.get('omega2_arch'))}, "
                      f"F = {_fmt(h['F_arch'])}, p = {_fmt(h['p_arch'], 'p')}; "
                      f"N = {h['n_arch']:,} runs in {h.get('k_arch')} groups, where no "
                      f"effect at all averages eta² = {_fmt(h.get('eta2_null_arch'))}; {scope}")
        method = h.get("eta2_arch_ci_method")
        if method and method != anova.ETA2_CI_EXACT:
            stats_text += f"; interval by {method}"
        naive = ("Naive eta² on the rows run (the paper's figure: every run counts, so a group counts as often as "
                 "the search ran it): ")
        if h.get("arch_undecided"):
            out.append(f"{naive}architecture group undecided: too few runs per group to separate architecture from "
                       f"noise (eta² = {_fmt(h['eta2_arch'])}, {stats_text}).")
        else:
            out.append(f"{naive}architecture group explains eta² = {_fmt(h['eta2_arch'])} of the AP variance "
                       f"({stats_text}); on these rows, hyperparameters and seeds at most {_fmt(h['within_share'])}."
                       + paper_clause(h.get("paper"), "eta² 0.94, F = 1324 post-bugfix"))
    return out


# ---- the report -----------------------------------------------------------------------------

def build_report(history_df: pd.DataFrame, out_dir: str | Path, events: list[dict] = (), title: str = "crashsearch report",
                 baselines_df: pd.DataFrame | None = None, other_datasets: pd.DataFrame | dict | None = None,
                 weights: Any = None, n_boot: int = 200, seed: int = 0, forecast_more: int | None = None,
                 validation: dict | None = None, space: Space | None = None, share_boot: int = variance.DEFAULT_BOOT) -> dict:
    """Compute every statistic for one campaign's history and write the report folder.

    ``events``: bug-fix events (dicts with ``declared_at``); ``baselines_df``: rows of control-arm
    campaigns (``<id>-baseline-<policy>``); ``other_datasets``: rows (or {name: rows}) of other
    datasets' campaigns for the transfer section; ``weights``: backbone weights note ("random",
    a weights id, or {backbone: weights}); ``validation``: {videos, positives, negatives} of the
    validation split (see ``validation_counts``); ``space``: the campaign's space (default: the collision
    space), ``share_boot``: surrogate refits for the interval of the share over the space. A section
    that raises is shown as "not computed: why" and the rest is built. Returns the numbers (the content of numbers.json; keys
    in the module docstring). Raises ValueError if the history has no ``val_ap`` column.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    events = list(events or [])
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    df = prepare(history_df)
    post_raw = post_bugfix(df, events)
    post = None
    if post_raw is not None and len(post_raw):
        # keep the arms of the full history: a replicate after the fix still credits the original proposer
        post = post_raw.reset_index(drop=True)
        post["order"] = np.arange(len(post))
    positions = event_positions(df, events)
    post_start = len(df) - len(post) if post is not None else 0
    lap("prepare")

    # ---- history summary ----
    ok = df[df["ok"]]
    tokens = int(sum(pd.to_numeric(df[c], errors="coerce").fillna(0).sum() for c in ("tokens_in", "tokens_out") if c in df))
    history = {
        "experiments": len(df), "ok": int(len(ok)),
        **{s: int((df["status"] == s).sum()) for s in ("failed", "healed", "invalid")},
        "cells": int(df["cell_id"].nunique()), "arch_groups": int(ok["arch_group"].nunique()),
        "datasets": sorted(df["dataset"].unique().tolist()), "campaigns": sorted(df["campaign"].unique().tolist()),
        "arms": {str(k): int(v) for k, v in df["arm"].value_counts().items()},
        "gpu_hours": float(pd.to_numeric(df.get("train_seconds", pd.Series(dtype=float)), errors="coerce").fillna(0).sum() / 3600),
        "devices": devices(df),
        "tokens": tokens,
        "cost_usd": float(pd.to_numeric(df["cost_usd"], errors="coerce").fillna(0).sum()) if "cost_usd" in df else 0.0,
        "bugfix_events": len(events),
    }
    best = {"val_ap": math.nan, "test_ap": math.nan, "cell_id": None, "arch_group": None, "arm": None}
    if len(ok):
        row = ok.loc[ok["val_ap"].idxmax()]
        best = {"val_ap": float(row["val_ap"]), "test_ap": float(row["test_ap"]) if "test_ap" in row else math.nan,
                "cell_id": int(row["cell_id"]), "arch_group": str(row["arch_group"]), "arm": str(row["arm"])}
    top5 = top_cells(df)
    lap("summary")

    # ---- statistics ----
    anova_full = _anova_block(df)
    anova_post = _anova_block(post) if post is not None else None
    arch = anova_full["numbers"]["arch_group"]
    post_arch = anova_post["numbers"]["arch_group"] if anova_post else None
    # the paper's scope: post-fix figures when a bug fix concerns this history and rows follow it
    scope = "post-bugfix" if post_arch is not None and not math.isnan(_nan(post_arch["eta2"])) else "full history"
    main_arch = post_arch if scope == "post-bugfix" else arch
    lap("anova")
    # the architecture's share over the space, on the headline's scope, beside the naive eta²
    not_computed: dict[str, str] = {}
    space_block = isolated("shares over the space", not_computed, variance.space_block,
                           post if scope == "post-bugfix" else df, _space(space), scope, main_arch, baselines_df,
                           n_boot=share_boot, seed=seed)
    lap("space_shares")
    # forecast_more: the campaign's per-run allowance (extend), so the forecast is the next run's (night's) gain
    conv_full = convergence.convergence(df, n_boot=n_boot, seed=seed, forecast_more=forecast_more)
    conv_post = (convergence.convergence(post, n_boot=n_boot, seed=seed, forecast_more=forecast_more)
                 if post is not None else None)
    curves_full = convergence.curves(df)
    curves_post = convergence.curves(post, by_arm=False) if post is not None else None
    main_conv = conv_post or conv_full
    lap("convergence")
    # the extra campaigns are prepared on their own (arms and order are per campaign) and only the
    # columns a section reads are stacked, so a 1M-row history is not copied whole again
    # like for like: the verdict compares from-scratch arms only (control-arm campaigns, each policy
    # alone with the campaign's budget and space, repeated); the campaign's own arms share one
    # history, so they are reported apart, "in a shared campaign, not from scratch"
    arms_tab = arm_table(baselines_df)
    scratch = {"best_at_n": arm_best_at_n(arms_tab, seed=seed), "power_laws": arm_power_laws(arms_tab),
               "verdict": arm_verdict(arms_tab, n=50, seed=seed)}
    bat = baselines.best_at_n(df, seed=seed)
    regret = baselines.regret_curves(_stack(df, baselines_df, ["campaign", "arm", "val_ap", "ok", "order"]))
    dists = baselines.distributions(df)
    v = scratch["verdict"]
    llm_arms = [a for a in v["arms"] if is_llm(a)]
    # True/False only when an LLM arm was compared from scratch and the verdict is decided
    beat_all = None if not llm_arms or v["undecided"] else is_llm(v["leader"])
    lap("baselines")
    dyn = dynamics.dynamics(df)
    lap("dynamics")
    tr = None
    if isinstance(other_datasets, dict):
        other_datasets = pd.concat(list(other_datasets.values()), ignore_index=True) if other_datasets else None
    both = _stack(df, other_datasets, ["dataset", "campaign", "arch_group", "backbone", "encoder", "cell_id", "val_ap",
                                       "ok", "order"])
    if both is not df and both["dataset"].nunique() >= 2:
        tr = transfer.transfer(both)
    lap("transfer")

    # ---- figures ----
    figs = {
        "convergence": plots.convergence(curves_full, conv_full["overall"], fig_dir / "convergence.png", positions,
                                         curves_post, conv_post["overall"] if conv_post else None, post_start,
                                         title=f"Convergence: {title}", hours_label=hours_label(history["devices"])),
        "best_at_n": plots.best_at_n(bat, regret, fig_dir / "best_at_n.png"),
        "dynamics": plots.dynamics(dyn["windows"], fig_dir / "dynamics.png"),
        "eta2": plots.eta2_bars({"full history": anova_full["table"],
                                 **({"post-bugfix": anova_post["table"]} if anova_post else {})}, fig_dir / "eta2.png"),
        "coverage": plots.coverage(df, fig_dir / "coverage.png"),
        "space_shares": plots.space_shares(space_block, fig_dir / "space_shares.png",
                                           not_computed.get("shares over the space")),
    }
    lap("figures")

    conv_scope = "post-bugfix" if conv_post else "full history"
    numbers = {
        "title": title,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights,
        "headline": {"best_val_ap": best["val_ap"], "best_arch_group": best["arch_group"],
                     "eta2_arch": main_arch["eta2"], "F_arch": main_arch["F"], "p_arch": main_arch["p"],
                     "within_share": main_arch["within_share"], "n_arch": main_arch["n"],
                     "eta2_arch_ci": main_arch["eta2_ci"], "omega2_arch": main_arch["omega2"],
                     "eta2_arch_ci_method": main_arch["eta2_ci_method"],
                     "eta2_null_arch": main_arch["eta2_null"], "k_arch": main_arch["k"],
                     "arch_undecided": _arch_undecided(main_arch),
                     **variance.headline_numbers(space_block, not_computed.get("shares over the space")),
                     "validation": validation, "leader": leader_tie(df),
                     "full_history": {"eta2_arch": arch["eta2"], "F_arch": arch["F"], "p_arch": arch["p"], "n": arch["n"]},
                     "c": main_conv["overall"]["c"], "r2": main_conv["overall"]["r2"],
                     "verdict": v["text"], "verdict_n": v["n"], "verdict_arms": v["arms"], "verdict_leader": v["leader"],
                     "agents_beat_controls": beat_all,
                     "bugfix_events": [e.get("id") for e in events],
                     "paper": paper_reference(weights, history["datasets"]),
                     "scope": {"best_val_ap": "full history", "leader": "full history",
                               "eta2_arch": scope, "F_arch": scope, "p_arch": scope, "share_arch": scope,
                               "share_arch_group": scope,
                               "within_share": scope, "c": conv_scope, "r2": conv_scope,
                               "verdict": "from-scratch control arms"},
                     "estimator": {"share_arch": variance.ESTIMATOR, "share_arch_group": variance.ESTIMATOR,
                                   "eta2_arch": variance.NAIVE_ESTIMATOR}},
        "history": history,
        "best": best,
        "temporal": temporal_vs_meanpool(df),
        "top5": top5,
        "anova": {"full": anova_full["numbers"], "post_bugfix": anova_post["numbers"] if anova_post else None},
        "space_shares": space_block,
        "not_computed": not_computed,
        "convergence": {
            "full": {**_fit_summary(conv_full["overall"]), "arms": {a: _fit_summary(f) for a, f in conv_full["arms"].items()}},
            "post_bugfix": ({**_fit_summary(conv_post["overall"]),
                             "arms": {a: _fit_summary(f) for a, f in conv_post["arms"].items()}} if conv_post else None),
            "forecast": main_conv["forecast"], "best_ap": conv_full["best_ap"], "gpu_hours": conv_full["gpu_hours"],
            "post_start": post_start,
        },
        "baselines": {"from_scratch": scratch, "shared_best_at_n": bat, "distributions": dists},
        "dynamics": {"window": dyn["windows"]["window"], "step": dyn["windows"]["step"],
                     "cycles": {a: {k: c[k] for k in ("period", "period_windows", "strength", "n_peaks", "n_troughs", "reason")}
                                for a, c in dyn["cycles"].items()},
                     "js": dyn["js"], "innovation": dyn["innovation"], "credit": dyn["credit"]},
        "transfer": None if tr is None else {
            "datasets": tr["datasets"],
            "winner": tr["winner"],
            "rank_correlation": pd.concat([t.assign(by=by) for by, t in tr.items() if by not in ("datasets", "winner")],
                                          ignore_index=True),
        },
        "figures": {k: None if isinstance(v, plots.Absent) else v.relative_to(out_dir).as_posix() for k, v in figs.items()},
        "figures_absent": {k: v.why for k, v in figs.items() if isinstance(v, plots.Absent)},
    }

    doc = _render(numbers, figs, anova_full, anova_post, conv_full, conv_post, bat, dists, dyn, tr, weights, title, out_dir)
    (out_dir / "report.md").write_text(doc.markdown())
    (out_dir / "report.html").write_text(doc.html(title))
    lap("write")
    numbers["timings"] = timings
    clean = _jsonable(numbers)
    (out_dir / "numbers.json").write_text(json.dumps(clean, indent=2))
    return clean


def _render(nb, figs, anova_full, anova_post, conv_full, conv_post, bat, dists, dyn, tr, weights, title, out_dir) -> _Doc:
    d = _Doc(out_dir)
    h, hist, best = nb["headline"], nb["history"], nb["best"]
    d.h(1, title)
    d.p(f"Generated {nb['generated_at']}. {hist['experiments']:,} experiments ({hist['ok']:,} with an AP, "
        f"{hist['failed']:,} failed, {hist['healed']:,} healed, {hist['invalid']:,} invalid) over {hist['cells']:,} "
        f"distinct cells and {hist['arch_groups']} architecture groups; {hist['gpu_hours']:.2f} "
        f"{hours_label(hist['devices'])}{' of training' if hours_label(hist['devices']) == 'GPU-hours' else ''}; "
        f"{hist['tokens']:,} LLM tokens (${hist['cost_usd']:.2f}). Datasets: {', '.join(hist['datasets']) or '-'}; "
        f"campaigns: {', '.join(hist['campaigns'])}.")
    d.p("**" + weights_note(weights) + "**")

    d.h(2, "Headline")
    items = []
    items += headline_lines(h, best)
    if math.isnan(_nan(h["eta2_arch"])):
        items.append(f"Architecture ANOVA not available: {anova_full['numbers']['arch_group']['reason']}.")
    main = conv_post or conv_full
    fit = main["overall"]
    which = "post-bugfix" if conv_post else "full history"
    if fit["reason"] is None:
        items.append(f"Convergence ({which}): AP*(N) = {fit['a']:.4f} - {fit['b']:.4f} N^-{fit['c']:.3f}, "
                     f"R² = {fit['r2']:.2f}, c 95% interval {_fmt(fit['c_ci'])}."
                     + bound_clause(fit.get("at_bound")) + paper_clause(h.get("paper"), "c = 0.11, R² = 0.93"))
        fc = main["forecast"]
        items.append(f"Forecast: {fc['more']:,} more experiments are expected to lift the best AP from "
                     f"{fc['now']:.4f} to {fc['expected']:.4f} (gain {fc['gain']:+.4f}, 95% {_fmt(fc['gain_ci'])}).")
    else:
        items.append(f"Convergence fit not available ({which}): {fit['reason']}.")
    items.append("**" + h["verdict"] + "**")
    for t in nb.get("temporal") or []:
        items.append(f"Temporal heads vs mean pooling, {t['text']}")
        if t.get("paired"):
            items.append(f"Temporal heads vs mean pooling, {t['backbone']}, {t['paired']['text']}.")
    d.ul(items)

    d.h(2, "Top 5 cells")
    top5 = pd.DataFrame(nb["top5"])
    if len(top5):
        top5["ci"] = [format_interval(r.ci_lo, r.ci_hi, r.runs) for r in top5.itertuples()]
    d.table(top5, {"rank": "rank", "cell_id": "cell", "backbone": "backbone", "encoder": "encoder", "loss": "loss",
                   "gamma": "gamma", "val_ap": "validation AP (mean)", "ci": "95% interval", "runs": "runs",
                   "test_ap": "test AP", "source": "source agent"}, empty="No experiment produced an AP.")
    if (Path(out_dir).parent / "champion" / "card.md").is_file():  # the nightly flow's package (flows/champion.py)
        d.p("The champion detector, the leader packaged for `crashsearch predict`: [model card](../champion/card.md).")
    d.p("The ranking and interval of `crashsearch leaderboard` (Student t over replicates; - for a single run).")

    d.h(2, "1. Architecture vs hyperparameters")
    _render_space_shares(d, nb, figs)
    for label, block in (("full history", anova_full), ("post-bugfix", anova_post)):
        if block is None:
            continue
        d.h(3, f"One-way ANOVA ({label})")
        one = pd.DataFrame([{"grouping": by, **{k: v for k, v in r.items()}} for by, r in block["numbers"].items()
                            if by in ("arch_group", "backbone", "encoder")])
        d.table(one, {"grouping": "grouped by", "k": "groups", "n": "runs", "F": "F", "p": "p", "eta2": "eta²",
                      "within_share": "1 - eta²", "reason": "note"})
        fac = block["numbers"]["factorial"]
        d.h(3, f"Factorial ANOVA, Type II ({label})")
        if block["table"] is None:
            d.p(f"Not available: {fac['reason']}.")
        else:
            d.p(f"OLS over every varying axis with two-way interactions among the arch axes; R² = {_fmt(fac['r2'])}."
                + (f" {fac['note']}." if fac["note"] else "")
                + " Type II sums of squares do not add up to the total when the search sampled unevenly (it "
                "always does); partial eta² compares each term with the residual alone. Why the terms are smaller "
                "than the architecture group's eta² above: the group (one level per backbone x encoder) holds the "
                "backbone and encoder main effects and their interaction together, while here each term gets only "
                "the variance no other term explains, so a share the axes hold jointly (unbalanced sampling ties "
                "them) is credited to none of them.")
            d.table(block["table"].reset_index(names="term"),
                    {"term": "term", "df": "df", "sum_sq": "sum of squares", "F": "F", "p": "p", "eta2": "eta²",
                     "partial_eta2": "partial eta²"})
        nz = block["numbers"]["noise"]
        d.p(noise_sentence(nz))
    d.img(figs["eta2"], "eta² per factorial-ANOVA term (Type II: each term's own share; the arch group's one-way "
                        "eta² holds backbone, encoder and their interaction together, so it is larger)")

    d.h(2, "2. Convergence")
    rows = []
    for label, conv in (("full", conv_full), ("post-bugfix", conv_post)):
        if conv is None:
            continue
        rows.append({"scope": f"overall ({label})", **conv["overall"]})
        rows += [{"scope": f"{arm} ({label}; in a shared campaign, not from scratch)", **f} for arm, f in conv["arms"].items()]
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["reason"] = [r if isinstance(r, str) else (f"at a bound: {', '.join(b)} (a cap, not an estimate)" if b else None)
                           for r, b in zip(frame["reason"], frame.get("at_bound", [[]] * len(frame)))]
    d.table(frame, {"scope": "scope", "n": "experiments", "improvements": "rises", "a": "a", "b": "b",
                    "c": "c", "c_ci": "c 95%", "r2": "R²", "reason": "note"})
    d.p("Fit: AP*(N) = a - b N^-c on the running best (log-spaced points); intervals from a Poisson bootstrap "
        "that keeps the order of the search. Dashed orange lines mark bug-fix events.")
    d.img(figs["convergence"], convergence_caption(conv_full["overall"], conv_post["overall"] if conv_post else None,
                                                   hours_label(hist["devices"])))

    d.h(2, "3. Baselines")
    scratch = nb["baselines"]["from_scratch"]
    d.h(3, "From-scratch arms (like for like)")
    d.p("Each arm is one policy searching alone from scratch with the campaign's budget and space "
        "(`crashsearch analyze --control-arms ... --repeats R`). An arm is judged at N by the cell it would pick "
        "at N (its best by mean validation AP among its first N experiments), scored by that cell's held-out test "
        "AP (its replicate mean of validation AP where no test AP was recorded): the best validation AP seen is a "
        "maximum over noisy runs and rewards luck, so it is shown beside it only for comparison. Each figure is the "
        "mean over repeats with a 95% bootstrap interval over repeats (none with one repeat); arms are compared by "
        "95% intervals of their differences, paired by repeat (a bootstrap over repeats; Student t below 10 "
        "repeats, where a bootstrap understates the spread).")
    d.p("**" + scratch["verdict"]["text"] + "**")
    d.table(pd.DataFrame(scratch["best_at_n"]), {"arm": "arm", "n": "N", "picked": "held-out AP of the pick",
                                                  "picked_lo": "95% lo", "picked_hi": "95% hi",
                                                  "best": "best validation AP seen (selection-biased)",
                                                  "repeats": "repeats", "judge": "judged by"},
            empty="No from-scratch arm: run `crashsearch analyze --campaign ID --control-arms random,tpe`.")
    laws = pd.DataFrame(scratch["power_laws"])
    if len(laws):  # no arm: the table above already says how to run them
        laws["c_ci"] = [[lo, hi] for lo, hi in zip(laws["c_lo"], laws["c_hi"])]
        laws["note"] = [r if isinstance(r, str) else (f"at a bound: {b} (a cap, not an estimate)" if b else i)
                        for r, b, i in zip(laws["reason"], laws["at_bound"], laws["interval"])]
        d.table(laws, {"arm": "arm", "a": "a", "b": "b", "c": "c", "c_ci": "c 95%", "r2": "R²",
                       "n": "N", "repeats": "repeats", "note": "note"})
        d.p("Power law a - b N^-c per arm, fitted to the mean running best validation AP over repeats (the paper's "
            "curve); the interval of c is a bootstrap over repeats (repeats resampled with replacement, refitted).")
    d.h(3, "Arms in a shared campaign, not from scratch")
    d.p("The campaign's own policies share one history (each sees the others' results), so these are not "
        "independent searches and enter no verdict.")
    d.table(bat, {"arm": "arm", "n": "N", "best": "best AP", "lo": "95% lo", "hi": "95% hi", "runs": "runs",
                  "method": "bootstrap"}, empty="No arm reached N = 10.")
    d.p("Bootstrap 'runs': mean over independent runs (seeds or campaigns), runs resampled. "
        "'resample-first-N': one run; its first N experiments resampled with replacement.")
    d.table(dists, empty="No AP distribution.")
    d.img(figs["best_at_n"], "Best validation AP seen among the first N per arm of this campaign (shared, "
                             "selection-biased), with 95% intervals, and regret curves" if len(bat) else
          "Regret curves per arm of this campaign (no arm reached N = 10: no best-at-N panel)")

    d.h(2, "4. Multi-agent dynamics")
    win = dyn["windows"]
    d.p(f"Sliding windows of {win['window']} experiments, step {win['step']}, over {win['groups']} architecture groups.")
    cyc = pd.DataFrame([{"agent": a, **c} for a, c in dyn["cycles"].items()])
    d.table(cyc if len(cyc) else None, {"agent": "agent", "period": "entropy period (experiments)",
                                        "strength": "power share", "n_peaks": "peaks", "n_troughs": "troughs",
                                        "reason": "note"}, empty="No agent made enough proposals for windows.")
    js = dyn["js"]
    d.p(f"JS divergence between agents: median {_fmt(js['baseline'])}, max {_fmt(js['max'])}, "
        f"{len(js['spikes'])} specialization spikes"
        + (f"; a spike decays halfway in a median {np.median([s['decay_windows'] for s in js['spikes'] if s['decay_windows'] is not None]):.0f} windows."
           if any(s["decay_windows"] is not None for s in js["spikes"]) else "."))
    d.table(dyn["innovation"], {"agent": "agent", "proposals": "proposals", "new_groups": "new arch groups",
                                "group_rate": "share", "new_hp": "new hyperparameters in a tried group",
                                "hp_rate": "share"})
    d.p("Entropy, JS divergence and innovation count the agents' own proposals (replicate, rerun and heal rows "
        "are left out); credit and cost of those rows go to the proposer of the original cell.")
    d.table(dyn["credit"], {"arm": "arm", "experiments": "experiments", "improvements": "leaderboard improvements",
                            "share": "share", "gain": "AP gained", "tokens": "tokens", "cost_usd": "USD",
                            "usd_per_improvement": "USD per improvement"})
    d.img(figs["dynamics"], "Entropy, JS divergence and innovation over time")

    d.h(2, "5. Transfer")
    if tr is None:
        d.p("One dataset only: no transfer analysis (run a campaign on a second dataset to fill this section).")
    else:
        d.table(tr["datasets"], {"dataset": "dataset", "experiments": "experiments", "eta2_arch": "eta² of architecture",
                                 "top_backbone": "winning backbone", "top_arch_group": "winning arch group",
                                 "best_ap": "best single run (validation AP)", "best_arch_group": "best run's group",
                                 "c": "c"})
        d.p("**" + tr["winner"]["text"] + "** (winner: highest mean AP over its runs)."
            + paper_clause(nb["headline"].get("paper"), "eta² 0.94 and 0.75 on its two datasets"))
        rc = nb["transfer"]["rank_correlation"]
        d.table(rc, {"by": "by", "dataset_a": "dataset", "dataset_b": "dataset", "common": "common",
                     "spearman": "Spearman", "spearman_p": "p", "kendall": "Kendall", "kendall_p": "p", "reason": "note"})

    d.h(2, "Coverage")
    d.img(figs["coverage"], "Best AP per backbone x encoder (runs in brackets)")
    return d


def paper_reference(weights, datasets: list[str]) -> dict:
    """Whether this history's figures can be set beside the paper's: {comparable, why}.

    Not when a backbone was random-init (no pretrained features) or a dataset is synthetic: the
    numbers then measure the search machinery on another task, and the paper's would only invite a
    false comparison. Otherwise ``why`` says what still differs."""
    values = list(weights.values()) if isinstance(weights, dict) else [weights] if weights else []
    random_init = any(str(w).lower() in RANDOM_WEIGHTS for w in values)
    synthetic = [d for d in datasets if "synth" in str(d).lower()]
    if random_init or synthetic:
        parts = (["random-init backbone weights"] if random_init else []) + (
            [f"synthetic data ({', '.join(synthetic)})"] if synthetic else [])
        return {"comparable": False, "why": "no comparison with the paper: " + " and ".join(parts)}
    return {"comparable": True,
            "why": (f"the paper: 10,469 runs of two LLM agents on Nexar dashcam videos with pretrained V-JEPA 2 "
                    f"features, a 108,000-cell space; this history: {', '.join(datasets) or 'dataset not recorded'}, "
                    f"weights {', '.join(map(str, values)) or 'not recorded'}")}


def paper_clause(paper: dict | None, figure: str) -> str:
    """" (Paper: <figure>; what differs.)" where the comparison means something, else ""."""
    if not paper or not paper.get("comparable"):
        return ""
    return f" (Paper: {figure}; {paper['why']}.)"


def bound_clause(at_bound) -> str:
    """" The fit sits at a bound (a = 1): ..." when it does, else ""."""
    if not at_bound:
        return ""
    return (f" The fit sits at a bound ({', '.join(at_bound)}): that parameter is the cap of the search, not an "
            "estimate, and the curve says little beyond the range observed.")


def convergence_caption(fit_full: dict, fit_post: dict | None, hours: str) -> str:
    """The convergence figure's caption: what it draws, the fits included or why they are not."""
    drawn = [name for name, f in (("full history", fit_full), ("post-bugfix", fit_post)) if plots.fit_drawn(f)]
    head = f"Running best validation AP vs experiments (log scale) and vs {hours}"
    if drawn:
        return f"{head}, with the power-law fit AP*(N) = a - b N^-c ({', '.join(drawn)}; dashed)"
    return f"{head}; no power-law fit is drawn: {fit_full.get('reason') or 'the fit failed'}"


def devices(df: pd.DataFrame) -> list[str]:
    """The kinds of device that trained the rows ("cpu", "cuda", ...), sorted; [] when not recorded."""
    if "device" not in df.columns:
        return []
    kinds = df["device"].dropna().astype(str).str.split(":").str[0].str.strip().str.lower()
    return sorted(k for k in kinds.unique() if k)


def hours_label(kinds: list[str]) -> str:
    """"GPU-hours" only when every run trained on a GPU; else the hours named by their device."""
    if kinds and all(k in ("cuda", "gpu", "mps", "rocm") for k in kinds):
        return "GPU-hours"
    return f"training hours on {', '.join(kinds)}" if kinds else "training hours (device not recorded)"


def _render_space_shares(d: _Doc, nb: dict, figs: dict) -> None:
    """The shares over the space: every estimate of the architecture's share, then every axis's."""
    block, why = nb["space_shares"], nb["not_computed"].get("shares over the space")
    d.h(3, "Shares of the AP variance over the space")
    d.p(variance.headline_sentence(nb["headline"]))
    if block is None:
        d.p(f"Not computed: {why}.")
        return
    d.p("Each estimate of the architecture's share, with its estimator, scope, N and 95% interval. Only the share "
        "over the space answers for the space: the naive eta² weights each group by how often the search ran it, "
        "the cell-capped eta² counts each run cell once but still only the cells the search chose, and the random "
        "arm is a uniform sample of the space (a check of the surrogate, when control arms ran).")
    d.table(variance.estimates_table(block), {"figure": "figure", "value": "value", "lo": "95% lo", "hi": "95% hi",
                                              "n": "N", "scope": "scope", "estimator": "estimator", "note": "note"})
    fan = block["fanova"]
    if fan["reason"] is None:
        d.p(f"Every axis's main-effect share over the space and the {len(fan['interactions'])} largest pairwise "
            f"interactions (functional ANOVA of the surrogate, {block['scope']}, {fan['n']:,} runs; 95% intervals "
            f"of ±1.96 sd of {fan['n_boot']} refits on resampled cells). The main effects, all pairwise "
            "interactions (the largest are listed) and the seed noise add up to at most 1, the rest being "
            "higher-order interactions; a group is its axes' main effects with their interactions, not an extra term.")
        d.table(variance.shares_table(block), {"term": "term", "kind": "kind", "share": "share", "lo": "95% lo",
                                               "hi": "95% hi"})
    d.img(figs["space_shares"], "Share of AP variance over the space per axis and interaction, and every estimate "
                                "of the architecture's share")


def _nan(v) -> float:
    return math.nan if v is None else float(v)
