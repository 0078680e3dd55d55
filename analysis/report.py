"""The campaign report: every statistic of analysis/ in one folder.

``build_report(history_df, out_dir, ...)`` writes

    out_dir/report.md      readable in a terminal
    out_dir/report.html    the same content, one self-contained file (figures as data URIs)
    out_dir/figures/*.png  convergence, best_at_n, dynamics, eta2, coverage
    out_dir/numbers.json   every number below, for scripts and dashboards

and returns the numbers as a dict. It is a pure function of DataFrames: the store, Prefect and
the CLI live in ``flows/analyze.py``.

numbers.json keys (stable; NaN is written as null; "post_bugfix" blocks are null without events):

| key | meaning |
|---|---|
| title, generated_at, weights | report title, UTC time, backbone-weights note as given |
| headline.best_val_ap / best_arch_group | best single validation AP and its backbone/encoder |
| headline.eta2_arch, headline.F_arch, headline.p_arch | one-way ANOVA of AP by arch group (full history) |
| headline.within_share | 1 - eta2_arch: the most hyperparameters and seeds can explain |
| headline.c, headline.r2 | power-law exponent and fit R^2 (post-bugfix when events exist, else full) |
| headline.verdict, headline.agents_beat_controls | baseline sentence at N=50; true/false/null (undecided or no arms) |
| history.{experiments, ok, failed, healed, invalid, cells, arch_groups} | counts |
| history.{datasets, campaigns, arms, gpu_hours, tokens, cost_usd, bugfix_events} | scope and spend |
| best.{val_ap, test_ap, cell_id, arch_group, arm} | the best single run |
| top5[] {rank, cell_id, backbone, encoder, loss, gamma, val_ap, val_ap_sd, runs, test_ap, source} | leaderboard by mean val AP over replicates |
| anova.{full, post_bugfix}.{arch_group, backbone, encoder} | one-way ANOVA: n, k, F, p, eta2, within_share, reason |
| anova.{full, post_bugfix}.factorial {n, r2, note, reason, terms[] {term, df, sum_sq, F, p, eta2, partial_eta2}} | Type II factorial ANOVA |
| anova.{full, post_bugfix}.noise {var, sd, df, cells, share, reason} | seed-replicate noise floor |
| convergence.{full, post_bugfix} {a, b, c, r2, rmse, a_ci, b_ci, c_ci, n, points, improvements, n_boot, reason} | power law a - b N^-c |
| convergence.{full, post_bugfix}.arms.<arm> {a, b, c, r2, reason} | the same fit per arm (no bootstrap) |
| convergence.forecast {n_now, more, now, expected, gain, expected_ci, gain_ci} | best AP expected after `more` experiments |
| convergence.{best_ap, gpu_hours, post_start} | best AP, total GPU-hours, experiments before the last bug fix |
| baselines.best_at_n[] {arm, n, best, lo, hi, runs, method} | best-at-N with 95% bootstrap intervals |
| baselines.verdicts[] {text, agent, control, n, agent_best, control_best, diff, diff_lo, diff_hi, method, beats} | agents vs control arms |
| baselines.distributions[] {arm, n, mean, min, q25, median, q75, q90, max} | AP distribution per arm |
| dynamics.{window, step} | sliding window and step in experiments |
| dynamics.cycles.<agent> {period, period_windows, strength, n_peaks, n_troughs, reason} | entropy cycles |
| dynamics.js {baseline, max, spikes[] {window, start, js, decay_windows, decay_experiments}} | specialization |
| dynamics.innovation[] {agent, proposals, new_groups, new_cells, group_rate, cell_rate} | innovation |
| dynamics.credit[] {arm, experiments, improvements, share, gain, tokens, cost_usd, tokens_per_improvement, usd_per_improvement} | credit |
| transfer.datasets[] {dataset, experiments, ok, best_ap, best_arch_group, best_cell_id, top_backbone, top_encoder, top_arch_group, eta2_arch, F_arch, c} | per dataset |
| transfer.rank_correlation[] {by, dataset_a, dataset_b, common, spearman, spearman_p, kendall, kendall_p, reason} | across datasets |
| figures.<name> | figure paths relative to out_dir |
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

from crashsearch.analysis import anova, baselines, convergence, dynamics, plots, transfer
from crashsearch.analysis.history import prepare


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
    """For each bug-fix event, the number of experiments finished before it was declared."""
    if "finished_at" not in df.columns or not len(df):
        return []
    finished = pd.to_datetime(df["finished_at"], utc=True, errors="coerce")
    out = []
    for e in events:
        ts = _utc(e.get("declared_at"))
        if ts is not None:
            out.append(int((finished < ts).sum()))
    return sorted(out)


def post_bugfix(df: pd.DataFrame, events: list[dict]) -> pd.DataFrame | None:
    """Rows after the last bug-fix event (lab.versions.post_bugfix when available), or None."""
    if not events:
        return None
    try:
        from crashsearch.lab.versions import post_bugfix as lab_post_bugfix

        sub = lab_post_bugfix(df, events)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        # our own rule when lab.versions is missing or cannot read these events: finished after the last one
        stamps = [t for t in (_utc(e.get("declared_at")) for e in events) if t is not None]
        if not stamps or "finished_at" not in df.columns:
            return None
        sub = df[pd.to_datetime(df["finished_at"], utc=True, errors="coerce") >= max(stamps)]
    return sub


# ---- tables ---------------------------------------------------------------------------------

def top_cells(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Top k cells by mean validation AP over replicates: rank, cell_id, backbone, encoder, loss,
    gamma, val_ap, val_ap_sd, runs, test_ap, source (the arm that first proposed the cell)."""
    ok = df[df["ok"]]
    cols = ["rank", "cell_id", "backbone", "encoder", "loss", "gamma", "val_ap", "val_ap_sd", "runs", "test_ap", "source"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    g = ok.groupby("cell_id")
    board = pd.DataFrame({"val_ap": g["val_ap"].mean(), "val_ap_sd": g["val_ap"].std(), "runs": g.size()})
    board["test_ap"] = g["test_ap"].mean() if "test_ap" in ok.columns else np.nan
    board = board.sort_values(["val_ap", "runs"], ascending=[False, False]).head(k)
    first = df[df["cell_id"].isin(board.index)].drop_duplicates("cell_id").set_index("cell_id")
    for col in ("backbone", "encoder", "loss"):
        board[col] = first[col].reindex(board.index) if col in first.columns else None
    board["source"] = first["arm"].reindex(board.index)
    board["gamma"] = [_gamma(v) for v in board["loss"]]
    board = board.reset_index()
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board[cols]


def _gamma(loss) -> float:
    from crashsearch.lab.space import loss_gamma

    try:
        return loss_gamma(str(loss))
    except ValueError:
        return math.nan


def weights_note(weights) -> str:
    """One plain sentence about the backbone weights behind the features."""
    if weights is None or weights == {}:
        return "Backbone weights were not recorded for this history."
    if isinstance(weights, dict):
        random_init = sorted(b for b, w in weights.items() if str(w).lower() in ("random", "none", "random-init"))
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

    def img(self, path: Path, caption: str):
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
    keys = ("a", "b", "c", "r2", "rmse", "a_ci", "b_ci", "c_ci", "n", "points", "improvements", "n_boot", "reason")
    return {k: fit.get(k) for k in keys}


def _anova_block(df: pd.DataFrame) -> dict:
    one = anova.arch_anova(df)
    fac = anova.factorial(df)
    keep = ("n", "k", "F", "p", "eta2", "within_share", "reason")
    block = {by: {k: r[k] for k in keep} for by, r in one.items()}
    block["factorial"] = {"n": fac["n"], "r2": fac["r2"], "note": fac["note"], "reason": fac["reason"],
                          "terms": anova.eta2_table(fac)}
    block["noise"] = {k: fac["noise"][k] for k in ("var", "sd", "df", "cells", "share", "reason")}
    return {"numbers": block, "table": fac["table"]}


# ---- the report -----------------------------------------------------------------------------

def build_report(history_df: pd.DataFrame, out_dir: str | Path, events: list[dict] = (), title: str = "crashsearch report",
                 baselines_df: pd.DataFrame | None = None, other_datasets: pd.DataFrame | dict | None = None,
                 weights: Any = None, n_boot: int = 200, seed: int = 0) -> dict:
    """Compute every statistic for one campaign's history and write the report folder.

    ``events``: bug-fix events (dicts with ``declared_at``); ``baselines_df``: rows of control-arm
    campaigns (``<id>-baseline-<policy>``); ``other_datasets``: rows (or {name: rows}) of other
    datasets' campaigns for the transfer section; ``weights``: backbone weights note ("random",
    a weights id, or {backbone: weights}). Returns the numbers (the content of numbers.json; keys
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
    lap("anova")
    conv_full = convergence.convergence(df, n_boot=n_boot, seed=seed)
    conv_post = convergence.convergence(post, n_boot=n_boot, seed=seed) if post is not None else None
    curves_full = convergence.curves(df)
    curves_post = convergence.curves(post, by_arm=False) if post is not None else None
    main_conv = conv_post or conv_full
    lap("convergence")
    # the extra campaigns are prepared on their own (arms and order are per campaign) and only the
    # columns a section reads are stacked, so a 1M-row history is not copied whole again
    base_df = _stack(df, baselines_df, ["campaign", "arm", "val_ap", "ok", "order"])
    bat = baselines.best_at_n(base_df, seed=seed)
    regret = baselines.regret_curves(base_df)
    verdicts = baselines.verdicts(base_df, n=50, seed=seed)
    dists = baselines.distributions(base_df)
    compared = [v["beats"] for v in verdicts if not math.isnan(v["control_best"])]
    # True only if the agents beat every control arm; False if any control arm beats them
    beat_all = False if False in compared else (True if compared and all(compared) else None)
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
                                         title=f"Convergence: {title}"),
        "best_at_n": plots.best_at_n(bat, regret, fig_dir / "best_at_n.png"),
        "dynamics": plots.dynamics(dyn["windows"], fig_dir / "dynamics.png"),
        "eta2": plots.eta2_bars({"full history": anova_full["table"],
                                 **({"post-bugfix": anova_post["table"]} if anova_post else {})}, fig_dir / "eta2.png"),
        "coverage": plots.coverage(df, fig_dir / "coverage.png"),
    }
    lap("figures")

    arch = anova_full["numbers"]["arch_group"]
    verdict_text = " ".join(v["text"] for v in verdicts)
    numbers = {
        "title": title,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights,
        "headline": {"best_val_ap": best["val_ap"], "best_arch_group": best["arch_group"], "eta2_arch": arch["eta2"],
                     "F_arch": arch["F"], "p_arch": arch["p"], "within_share": arch["within_share"],
                     "c": main_conv["overall"]["c"], "r2": main_conv["overall"]["r2"],
                     "verdict": verdict_text, "agents_beat_controls": beat_all},
        "history": history,
        "best": best,
        "top5": top5,
        "anova": {"full": anova_full["numbers"], "post_bugfix": anova_post["numbers"] if anova_post else None},
        "convergence": {
            "full": {**_fit_summary(conv_full["overall"]), "arms": {a: _fit_summary(f) for a, f in conv_full["arms"].items()}},
            "post_bugfix": ({**_fit_summary(conv_post["overall"]),
                             "arms": {a: _fit_summary(f) for a, f in conv_post["arms"].items()}} if conv_post else None),
            "forecast": main_conv["forecast"], "best_ap": conv_full["best_ap"], "gpu_hours": conv_full["gpu_hours"],
            "post_start": post_start,
        },
        "baselines": {"best_at_n": bat, "verdicts": verdicts, "distributions": dists},
        "dynamics": {"window": dyn["windows"]["window"], "step": dyn["windows"]["step"],
                     "cycles": {a: {k: c[k] for k in ("period", "period_windows", "strength", "n_peaks", "n_troughs", "reason")}
                                for a, c in dyn["cycles"].items()},
                     "js": dyn["js"], "innovation": dyn["innovation"], "credit": dyn["credit"]},
        "transfer": None if tr is None else {
            "datasets": tr["datasets"],
            "rank_correlation": pd.concat([t.assign(by=by) for by, t in tr.items() if by != "datasets"], ignore_index=True),
        },
        "figures": {k: v.relative_to(out_dir).as_posix() for k, v in figs.items()},
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
        f"distinct cells and {hist['arch_groups']} architecture groups; {hist['gpu_hours']:.2f} GPU-hours of training; "
        f"{hist['tokens']:,} LLM tokens (${hist['cost_usd']:.2f}). Datasets: {', '.join(hist['datasets']) or '-'}; "
        f"campaigns: {', '.join(hist['campaigns'])}.")
    d.p("**" + weights_note(weights) + "**")

    d.h(2, "Headline")
    items = []
    if best["cell_id"] is not None:
        items.append(f"Best single run: validation AP {_fmt(best['val_ap'])} (test AP {_fmt(best['test_ap'])}), "
                     f"{best['arch_group']}, cell {best['cell_id']}, found by {best['arm']}.")
    if len(nb["top5"]):
        lead = pd.DataFrame(nb["top5"]).iloc[0]
        spread = f" ± {_fmt(lead['val_ap_sd'])}" if not math.isnan(_nan(lead["val_ap_sd"])) else ""
        items.append(f"Leading cell by mean over its replicates: {lead['backbone']}/{lead['encoder']}, {lead['loss']}, "
                     f"cell {lead['cell_id']}: validation AP {_fmt(lead['val_ap'])}{spread} over {lead['runs']} run(s) "
                     f"(the top-5 table below).")
    if not math.isnan(_nan(h["eta2_arch"])):
        items.append(f"Architecture group explains eta² = {_fmt(h['eta2_arch'])} of the AP variance "
                     f"(F = {_fmt(h['F_arch'])}, p = {_fmt(h['p_arch'], 'p')}); hyperparameters and seeds at most "
                     f"{_fmt(h['within_share'])}. (Paper: 0.94, F = 1324.)")
    else:
        items.append(f"Architecture ANOVA not available: {anova_full['numbers']['arch_group']['reason']}.")
    main = conv_post or conv_full
    fit = main["overall"]
    which = "post-bugfix" if conv_post else "full history"
    if fit["reason"] is None:
        items.append(f"Convergence ({which}): AP*(N) = {fit['a']:.4f} - {fit['b']:.4f} N^-{fit['c']:.3f}, "
                     f"R² = {fit['r2']:.2f}, c 95% interval {_fmt(fit['c_ci'])}. (Paper: c = 0.11, R² = 0.93.)")
        fc = main["forecast"]
        items.append(f"Forecast: {fc['more']:,} more experiments are expected to lift the best AP from "
                     f"{fc['now']:.4f} to {fc['expected']:.4f} (gain {fc['gain']:+.4f}, 95% {_fmt(fc['gain_ci'])}).")
    else:
        items.append(f"Convergence fit not available ({which}): {fit['reason']}.")
    items += [v["text"] for v in nb["baselines"]["verdicts"]]
    beat = h["agents_beat_controls"]
    items.append({True: "**The agents beat every control arm at N = 50.**",
                  False: "**The agents did not beat the control arms at N = 50.**",
                  None: "**Whether the agents beat the control arms at N = 50 is undecided** (no control arm, "
                        "no agents, or an interval that includes zero)."}[beat])
    d.ul(items)

    d.h(2, "Top 5 cells")
    d.table(nb["top5"], {"rank": "rank", "backbone": "backbone", "encoder": "encoder", "loss": "loss", "gamma": "gamma",
                         "val_ap": "validation AP (mean)", "runs": "runs", "test_ap": "test AP", "source": "source agent"},
            empty="No experiment produced an AP.")

    d.h(2, "1. Architecture vs hyperparameters")
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
                "always does); partial eta² compares each term with the residual alone.")
            d.table(block["table"].reset_index(names="term"),
                    {"term": "term", "df": "df", "sum_sq": "sum of squares", "F": "F", "p": "p", "eta2": "eta²",
                     "partial_eta2": "partial eta²"})
        nz = block["numbers"]["noise"]
        d.p(f"Seed-replicate noise floor: sd {_fmt(nz['sd'])} over {nz['cells']} replicated cells "
            f"({_fmt(nz['share'])} of the AP variance)." if nz["reason"] is None else f"Noise floor: {nz['reason']}.")
    d.img(figs["eta2"], "eta² per factorial-ANOVA term")

    d.h(2, "2. Convergence")
    rows = []
    for label, conv in (("full", conv_full), ("post-bugfix", conv_post)):
        if conv is None:
            continue
        rows.append({"scope": f"overall ({label})", **conv["overall"]})
        rows += [{"scope": f"{arm} ({label})", **f} for arm, f in conv["arms"].items()]
    d.table(pd.DataFrame(rows), {"scope": "scope", "n": "experiments", "improvements": "rises", "a": "a", "b": "b",
                                 "c": "c", "c_ci": "c 95%", "r2": "R²", "reason": "note"})
    d.p("Fit: AP*(N) = a - b N^-c on the running best (log-spaced points); intervals from a Poisson bootstrap "
        "that keeps the order of the search. Dashed orange lines mark bug-fix events.")
    d.img(figs["convergence"], "Running best validation AP vs experiments and GPU-hours, with power-law fits")

    d.h(2, "3. Baselines")
    d.ul([v["text"] for v in nb["baselines"]["verdicts"]])
    d.table(bat, {"arm": "arm", "n": "N", "best": "best AP", "lo": "95% lo", "hi": "95% hi", "runs": "runs",
                  "method": "bootstrap"}, empty="No arm reached N = 10.")
    d.p("Bootstrap 'runs': mean over independent runs (seeds or campaigns), runs resampled. "
        "'resample-first-N': one run; its first N experiments resampled with replacement.")
    d.table(dists, empty="No AP distribution.")
    d.img(figs["best_at_n"], "Best-at-N per arm with 95% intervals, and regret curves")

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
                                "group_rate": "rate", "new_cells": "new cells", "cell_rate": "rate"})
    d.table(dyn["credit"], {"arm": "arm", "experiments": "experiments", "improvements": "leaderboard improvements",
                            "share": "share", "gain": "AP gained", "tokens": "tokens", "cost_usd": "USD",
                            "usd_per_improvement": "USD per improvement"})
    d.img(figs["dynamics"], "Entropy, JS divergence and innovation over time")

    d.h(2, "5. Transfer")
    if tr is None:
        d.p("One dataset only: no transfer analysis (run a campaign on a second dataset to fill this section).")
    else:
        d.table(tr["datasets"], {"dataset": "dataset", "experiments": "experiments", "best_ap": "best AP",
                                 "best_arch_group": "best cell's group", "top_backbone": "top backbone",
                                 "top_encoder": "top encoder", "eta2_arch": "eta²", "c": "c"})
        rc = nb["transfer"]["rank_correlation"]
        d.table(rc, {"by": "by", "dataset_a": "dataset", "dataset_b": "dataset", "common": "common",
                     "spearman": "Spearman", "spearman_p": "p", "kendall": "Kendall", "kendall_p": "p", "reason": "note"})

    d.h(2, "Coverage")
    d.img(figs["coverage"], "Best AP per backbone x encoder (runs in brackets)")
    return d


def _nan(v) -> float:
    return math.nan if v is None else float(v)
