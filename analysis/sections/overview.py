"""The report's opening: the history in one paragraph, the headline, the top cells.

Also the sentences the CLI's ``analyze`` summary prints (``headline_lines``) and the clauses other
sections share (hours named by their device, the paper's figures only where comparable)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from crashsearch.analysis import anova, variance
from crashsearch.analysis.history import is_llm
from crashsearch.analysis.sections.base import NotComputed, Section
from crashsearch.analysis.sections.doc import Doc, fmt, nan
from crashsearch.analysis.temporal import temporal_vs_meanpool
from crashsearch.lab.leaderboard import format_interval, leaderboard

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


class Summary(Section):
    """The title, the history in one paragraph (counts, hours, tokens, scope) and the weights note."""

    name, keys = "summary", ("history", "best")

    def compute(self) -> dict:
        df, events = self.ctx.df, self.ctx.events
        ok = df[df["ok"]]
        tokens = int(sum(pd.to_numeric(df[c], errors="coerce").fillna(0).sum()
                         for c in ("tokens_in", "tokens_out") if c in df))
        seconds = pd.to_numeric(df.get("train_seconds", pd.Series(dtype=float)), errors="coerce").fillna(0).sum()
        history = {
            "experiments": len(df), "ok": int(len(ok)),
            **{s: int((df["status"] == s).sum()) for s in ("failed", "healed", "invalid")},
            "cells": int(df["cell_id"].nunique()), "arch_groups": int(ok["arch_group"].nunique()),
            "datasets": sorted(df["dataset"].unique().tolist()), "campaigns": sorted(df["campaign"].unique().tolist()),
            "arms": {str(k): int(v) for k, v in df["arm"].value_counts().items()},
            "gpu_hours": float(seconds / 3600),
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
        return {"history": history, "best": best}

    def render(self, d: Doc) -> None:
        nb, hist = self.ctx.numbers, self.ctx.numbers["history"]
        hours = hours_label(hist["devices"])
        d.h(1, self.ctx.title)
        d.p(f"Generated {nb['generated_at']}. {hist['experiments']:,} experiments ({hist['ok']:,} with an AP, "
            f"{hist['failed']:,} failed, {hist['healed']:,} healed, {hist['invalid']:,} invalid) over {hist['cells']:,} "
            f"distinct cells and {hist['arch_groups']} architecture groups; {hist['gpu_hours']:.2f} "
            f"{hours}{' of training' if hours == 'GPU-hours' else ''}; "
            f"{hist['tokens']:,} LLM tokens (${hist['cost_usd']:.2f}). Datasets: {', '.join(hist['datasets']) or '-'}; "
            f"campaigns: {', '.join(hist['campaigns'])}.")
        d.p("**" + weights_note(self.ctx.weights) + "**")


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
        lo, hi = nan(r.ci_lo), nan(r.ci_hi)
        return (r.mean_ap, r.mean_ap) if r.n < 2 or math.isnan(lo) else (lo, hi)

    rows = list(board.itertuples())
    lead = rows[0]
    lo, hi = span(lead)
    tied = [int(r.cell_id) for r in rows if span(r)[1] >= lo and span(r)[0] <= hi]
    group = df.loc[df["cell_id"] == lead.cell_id, "arch_group"]
    return {"cell_id": int(lead.cell_id), "arch_group": str(group.iloc[0]) if len(group) else None,
            "val_ap": float(lead.mean_ap), "runs": int(lead.n),
            "ci_lo": None if lead.n < 2 else nan(lead.ci_lo), "ci_hi": None if lead.n < 2 else nan(lead.ci_hi),
            "tied": len(tied), "tied_cells": tied}


def validation_sentence(v: dict | None) -> str:
    """"on 4 validation videos (2 positives / 2 negatives)", or that the split size is unknown."""
    if not v or not v.get("videos"):
        return "validation N not recorded"
    pn = (f" ({v['positives']} positives / {v['negatives']} negatives)"
          if v.get("positives") is not None and v.get("negatives") is not None else "")
    return f"on {v['videos']} validation videos{pn}"


def arch_undecided(r: dict) -> bool:
    """True when the arch ANOVA cannot tell architecture from noise: p >= 0.05, or its interval reaches 0."""
    lo = nan(r["eta2_ci"][0]) if r.get("eta2_ci") else math.nan
    return bool(not (nan(r["p"]) < 0.05) or math.isnan(lo) or lo <= 0)


def _leader_line(lead: dict) -> str:
    runs = lead["runs"]
    ci = (f", 95% interval {format_interval(lead['ci_lo'], lead['ci_hi'], runs)}" if runs >= 2
          else ", one run: no interval")
    cell = f"cell {lead['cell_id']} ({lead['arch_group']}): validation AP {fmt(lead['val_ap'])} over {runs} run(s){ci}"
    if lead["tied"] > 1:
        return (f"Leading cell undecided (full history): {lead['tied'] - 1} other cell(s) are not separated "
                f"from the leader: their 95% intervals overlap its interval (a one-run cell has no interval "
                f"and counts by its value), so their APs differ but not beyond noise; first by the "
                f"leaderboard's order {cell}.")
    return f"Leading cell (full history, separated from the next): {cell}."


def _eta2_line(h: dict) -> str:
    full = h["full_history"]
    if h["scope"]["eta2_arch"] == "post-bugfix":
        scope = (f"post-bugfix, {h['n_arch']:,} runs after the fix; full history beside it: eta² = "
                 f"{fmt(full['eta2_arch'])}, F = {fmt(full['F_arch'])}, p = {fmt(full['p_arch'], 'p')}, "
                 f"{full['n']:,} runs")
    else:
        scope = ("full history"
                 + ("" if h.get("bugfix_events") is None else
                    ": " + ("no bug-fix event concerns this campaign" if not h["bugfix_events"]
                            else "no run with an AP follows the bug fix yet")))
    ci = h.get("eta2_arch_ci") or [None, None]
    stats_text = (f"95% interval of the population eta² {fmt(ci)}, omega² = {fmt(h.get('omega2_arch'))}, "
                  f"F = {fmt(h['F_arch'])}, p = {fmt(h['p_arch'], 'p')}; "
                  f"N = {h['n_arch']:,} runs in {h.get('k_arch')} groups, where no "
                  f"effect at all averages eta² = {fmt(h.get('eta2_null_arch'))}; {scope}")
    method = h.get("eta2_arch_ci_method")
    if method and method != anova.ETA2_CI_EXACT:
        stats_text += f"; interval by {method}"
    naive = ("Naive eta² on the rows run (the paper's figure: every run counts, so a group counts as often as "
             "the search ran it): ")
    if h.get("arch_undecided"):
        return (f"{naive}architecture group undecided: too few runs per group to separate architecture from "
                f"noise (eta² = {fmt(h['eta2_arch'])}, {stats_text}).")
    return (f"{naive}architecture group explains eta² = {fmt(h['eta2_arch'])} of the AP variance "
            f"({stats_text}); on these rows, hyperparameters and seeds at most {fmt(h['within_share'])}."
            + paper_clause(h.get("paper"), "eta² 0.94, F = 1324 post-bugfix"))


def headline_lines(h: dict, best: dict | None = None) -> list[str]:
    """The headline sentences of the best run, the leading cell and the arch ANOVA, with scope, N and
    interval; the report and the CLI's `analyze` summary both print them. ``h``: numbers["headline"];
    ``best``: numbers["best"] (adds test AP, cell and arm). The share of the architecture over the space
    comes first, the naive eta² on the rows run beside it."""
    out = [variance.headline_sentence(h)] if "space_share" in h else []
    if h.get("best_val_ap") is not None and not math.isnan(nan(h["best_val_ap"])):
        extra = (f" (test AP {fmt(best['test_ap'])}), cell {best['cell_id']}, found by {best['arm']}"
                 if best and best.get("cell_id") is not None else "")
        out.append(f"Best single run (full history): validation AP {fmt(h['best_val_ap'])} "
                   f"{validation_sentence(h.get('validation'))}, one run, no interval{extra}; "
                   f"{h.get('best_arch_group')}.")
    if h.get("leader"):
        out.append(_leader_line(h["leader"]))
    if h.get("eta2_arch") is not None and not math.isnan(nan(h["eta2_arch"])):
        out.append(_eta2_line(h))
    return out


class Headline(Section):
    """The headline: each main figure with its scope, N and interval, the verdict, the forecast."""

    name, keys, heading = "headline", ("headline",), (2, "Headline")

    def _beside(self, name: str):
        """Section ``name``, or None when it was not computed: the headline stands without it and says why."""
        try:
            return self.ctx.need(name)
        except NotComputed:
            return None

    def compute(self) -> dict:
        ctx = self.ctx
        ctx.need("summary")
        best, history = ctx.numbers["best"], ctx.numbers["history"]
        arch = ctx.need("anova")
        main_arch, arch_full, scope = arch.main, arch.full["numbers"]["arch_group"], arch.scope
        space = self._beside("shares over the space")
        conv, arms = self._beside("convergence"), self._beside("baselines")
        v = (arms.scratch["verdict"] if arms else
             {"text": f"No like-for-like verdict: not computed ({ctx.not_computed['baselines']}).", "n": None,
              "arms": [], "leader": None, "undecided": True})
        llm_arms = [a for a in v["arms"] if is_llm(a)]
        # True/False only when an LLM arm was compared from scratch and the verdict is decided
        beat_all = None if not llm_arms or v["undecided"] else is_llm(v["leader"])
        fit = conv.main["overall"] if conv else {"c": None, "r2": None}
        conv_scope = "post-bugfix" if conv and conv.post else "full history"
        why = ctx.not_computed.get("shares over the space")
        return {"headline": {
            "best_val_ap": best["val_ap"], "best_arch_group": best["arch_group"],
            "eta2_arch": main_arch["eta2"], "F_arch": main_arch["F"], "p_arch": main_arch["p"],
            "within_share": main_arch["within_share"], "n_arch": main_arch["n"],
            "eta2_arch_ci": main_arch["eta2_ci"], "omega2_arch": main_arch["omega2"],
            "eta2_arch_ci_method": main_arch["eta2_ci_method"],
            "eta2_null_arch": main_arch["eta2_null"], "k_arch": main_arch["k"],
            "arch_undecided": arch_undecided(main_arch),
            **variance.headline_numbers(ctx.numbers["space_shares"] if space else None, why),
            "validation": ctx.inputs["validation"], "leader": leader_tie(ctx.df),
            "full_history": {"eta2_arch": arch_full["eta2"], "F_arch": arch_full["F"], "p_arch": arch_full["p"],
                             "n": arch_full["n"]},
            "c": fit["c"], "r2": fit["r2"],
            "verdict": v["text"], "verdict_n": v["n"], "verdict_arms": v["arms"], "verdict_leader": v["leader"],
            "agents_beat_controls": beat_all,
            "bugfix_events": [e.get("id") for e in ctx.events],
            "paper": paper_reference(ctx.weights, history["datasets"]),
            "scope": {"best_val_ap": "full history", "leader": "full history",
                      "eta2_arch": scope, "F_arch": scope, "p_arch": scope, "share_arch": scope,
                      "share_arch_group": scope, "within_share": scope, "c": conv_scope, "r2": conv_scope,
                      "verdict": "from-scratch control arms"},
            "estimator": {"share_arch": variance.ESTIMATOR, "share_arch_group": variance.ESTIMATOR,
                          "eta2_arch": variance.NAIVE_ESTIMATOR}}}

    def render(self, d: Doc) -> None:
        nb, ctx = self.ctx.numbers, self.ctx
        h = nb["headline"]
        d.h(2, "Headline")
        items = headline_lines(h, nb["best"])
        if math.isnan(nan(h["eta2_arch"])):
            items.append(f"Architecture ANOVA not available: {nb['anova']['full']['arch_group']['reason']}.")
        conv = self._beside("convergence")
        fit = conv.main["overall"] if conv else {"reason": f"not computed: {ctx.not_computed['convergence']}"}
        which = "post-bugfix" if conv and conv.post else "full history"
        if fit["reason"] is None:
            items.append(f"Convergence ({which}): AP*(N) = {fit['a']:.4f} - {fit['b']:.4f} N^-{fit['c']:.3f}, "
                         f"R² = {fit['r2']:.2f}, c 95% interval {fmt(fit['c_ci'])}."
                         + bound_clause(fit.get("at_bound")) + paper_clause(h.get("paper"), "c = 0.11, R² = 0.93"))
            fc = conv.main["forecast"]
            items.append(f"Forecast: {fc['more']:,} more experiments are expected to lift the best AP from "
                         f"{fc['now']:.4f} to {fc['expected']:.4f} (gain {fc['gain']:+.4f}, 95% {fmt(fc['gain_ci'])}).")
        else:
            items.append(f"Convergence fit not available ({which}): {fit['reason']}.")
        items.append("**" + h["verdict"] + "**")
        for t in nb.get("temporal") or []:
            items.append(f"Temporal heads vs mean pooling, {t['text']}")
            if t.get("paired"):
                items.append(f"Temporal heads vs mean pooling, {t['backbone']}, {t['paired']['text']}.")
        d.ul(items)


class Temporal(Section):
    """Mean pooling vs the best temporal head per backbone (analysis.temporal); its sentences are in
    the headline."""

    name, keys = "temporal", ("temporal",)

    def compute(self) -> dict:
        return {"temporal": temporal_vs_meanpool(self.ctx.df)}


def _gamma(loss) -> float:
    from crashsearch.lab.space import loss_gamma

    try:
        return loss_gamma(str(loss))
    except ValueError:
        return math.nan


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


class TopCells(Section):
    """The leaderboard's top five cells."""

    name, keys, heading = "top5", ("top5",), (2, "Top 5 cells")

    def compute(self) -> dict:
        return {"top5": top_cells(self.ctx.df)}

    def render(self, d: Doc) -> None:
        d.h(2, "Top 5 cells")
        top5 = pd.DataFrame(self.ctx.numbers["top5"])
        if len(top5):
            top5["ci"] = [format_interval(r.ci_lo, r.ci_hi, r.runs) for r in top5.itertuples()]
        d.table(top5, {"rank": "rank", "cell_id": "cell", "backbone": "backbone", "encoder": "encoder", "loss": "loss",
                       "gamma": "gamma", "val_ap": "validation AP (mean)", "ci": "95% interval", "runs": "runs",
                       "test_ap": "test AP", "source": "source agent"}, empty="No experiment produced an AP.")
        if (self.ctx.out_dir.parent / "champion" / "card.md").is_file():  # the nightly flow's package (flows/champion.py)
            d.p("The champion detector, the leader packaged for `crashsearch predict`: [model card](../champion/card.md).")
        d.p("The ranking and interval of `crashsearch leaderboard` (Student t over replicates; - for a single run).")
