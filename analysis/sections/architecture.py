"""Part 1 of the report, architecture vs hyperparameters: the architecture's share of AP variance
over the space (the headline's estimate) and the ANOVA tables on the rows run."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from crashsearch.analysis import anova, plots, variance
from crashsearch.analysis.sections.base import Section, isolated
from crashsearch.analysis.sections.doc import Doc, fmt, nan
from crashsearch.lab.space import Space


def noise_sentence(nz: dict) -> str:
    """The report's line on the seed-replicate noise floor (``anova.noise_floor``'s dict).

    The share is a ratio of two variance estimates, so it can exceed 1: then the line says that
    the differences between cells are within seed noise instead of printing "1.44 of the variance".
    """
    if nz["reason"] is not None:
        return f"Noise floor: {nz['reason']}."
    head = f"Seed-replicate noise floor: sd {fmt(nz['sd'])} over {nz['cells']} replicated cells (df = {nz['df']})"
    share = nz["share"]
    if share is not None and math.isfinite(share) and share >= 1:
        return (f"{head}: as large as the whole AP variance (ratio {fmt(share)}), so differences between "
                f"cells are within seed noise (undecided).")
    return f"{head} ({fmt(share)} of the AP variance)."


def anova_block(df: pd.DataFrame) -> dict:
    """One-way ANOVAs by arch group, backbone and encoder, the factorial ANOVA and the noise floor of
    ``df``: {"numbers": numbers.json's block, "table": the factorial table or None}. A grouping that
    raises gets its reason ("not computed: why") and the others stand."""
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


_FACTORIAL_NOTE = (
    " Type II sums of squares do not add up to the total when the search sampled unevenly (it "
    "always does); partial eta² compares each term with the residual alone. Why the terms are smaller "
    "than the architecture group's eta² above: the group (one level per backbone x encoder) holds the "
    "backbone and encoder main effects and their interaction together, while here each term gets only "
    "the variance no other term explains, so a share the axes hold jointly (unbalanced sampling ties "
    "them) is credited to none of them.")


class Anova(Section):
    """One-way and factorial ANOVA of AP on the full history and post-bugfix; decides the headline's
    scope (post-bugfix when a bug fix concerns this history and rows with an AP follow it)."""

    name, keys, figures = "anova", ("anova",), ("eta2",)

    def compute(self) -> dict:
        ctx = self.ctx
        self.full = anova_block(ctx.df)
        self.post = anova_block(ctx.post) if ctx.post is not None else None
        arch = self.full["numbers"]["arch_group"]
        post_arch = self.post["numbers"]["arch_group"] if self.post else None
        # the paper's scope: post-fix figures when a bug fix concerns this history and rows follow it
        self.scope = "post-bugfix" if post_arch is not None and not math.isnan(nan(post_arch["eta2"])) else "full history"
        self.main = post_arch if self.scope == "post-bugfix" else arch
        self.rows = ctx.post if self.scope == "post-bugfix" else ctx.df
        return {"anova": {"full": self.full["numbers"], "post_bugfix": self.post["numbers"] if self.post else None}}

    def draw(self, fig_dir: Path) -> dict:
        tables = {"full history": self.full["table"], **({"post-bugfix": self.post["table"]} if self.post else {})}
        return {"eta2": plots.eta2_bars(tables, fig_dir / "eta2.png")}

    def render(self, d: Doc) -> None:
        for label, block in (("full history", self.full), ("post-bugfix", self.post)):
            if block is None:
                continue
            d.h(3, f"One-way ANOVA ({label})")
            one = pd.DataFrame([{"grouping": by, **dict(r)} for by, r in block["numbers"].items()
                                if by in ("arch_group", "backbone", "encoder")])
            d.table(one, {"grouping": "grouped by", "k": "groups", "n": "runs", "F": "F", "p": "p", "eta2": "eta²",
                          "within_share": "1 - eta²", "reason": "note"})
            fac = block["numbers"]["factorial"]
            d.h(3, f"Factorial ANOVA, Type II ({label})")
            if block["table"] is None:
                d.p(f"Not available: {fac['reason']}.")
            else:
                d.p(f"OLS over every varying axis with two-way interactions among the arch axes; R² = {fmt(fac['r2'])}."
                    + (f" {fac['note']}." if fac["note"] else "") + _FACTORIAL_NOTE)
                d.table(block["table"].reset_index(names="term"),
                        {"term": "term", "df": "df", "sum_sq": "sum of squares", "F": "F", "p": "p", "eta2": "eta²",
                         "partial_eta2": "partial eta²"})
            d.p(noise_sentence(block["numbers"]["noise"]))
        d.img(self.ctx.figs["eta2"], "eta² per factorial-ANOVA term (Type II: each term's own share; the arch "
                                     "group's one-way eta² holds backbone, encoder and their interaction together, "
                                     "so it is larger)")


class SpaceShares(Section):
    """The architecture's share of AP variance over the space (functional ANOVA of a surrogate), on
    the headline's scope, beside the naive eta², the cell-capped eta² and the random arm's."""

    name, keys, figures = "shares over the space", ("space_shares",), ("space_shares",)

    def compute(self) -> dict:
        ctx = self.ctx
        arch = ctx.need("anova")
        space = ctx.inputs["space"] if ctx.inputs["space"] is not None else Space.load()
        return {"space_shares": variance.space_block(arch.rows, space, arch.scope, arch.main, ctx.inputs["baselines_df"],
                                                     n_boot=ctx.inputs["share_boot"], seed=ctx.seed)}

    def draw(self, fig_dir: Path) -> dict:
        return {"space_shares": plots.space_shares(self.ctx.numbers["space_shares"], fig_dir / "space_shares.png")}

    def _head(self, d: Doc) -> None:
        d.h(2, "1. Architecture vs hyperparameters")
        d.h(3, "Shares of the AP variance over the space")
        d.p(variance.headline_sentence(self.ctx.numbers["headline"]))

    def render_failed(self, d: Doc, why: str) -> None:
        self._head(d)
        d.p(f"Not computed: {why}.")

    def render(self, d: Doc) -> None:
        self._head(d)
        block = self.ctx.numbers["space_shares"]
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
                "higher-order interactions; a group is its axes' main effects with their interactions, not an extra "
                "term.")
            d.table(variance.shares_table(block), {"term": "term", "kind": "kind", "share": "share", "lo": "95% lo",
                                                   "hi": "95% hi"})
        d.img(self.ctx.figs["space_shares"], "Share of AP variance over the space per axis and interaction, and every "
                                             "estimate of the architecture's share")
