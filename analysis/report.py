"""The campaign report: every statistic of analysis/ in one folder.

``build_report(history_df, out_dir, ...)`` writes

    out_dir/report.md      readable in a terminal
    out_dir/report.html    the same content, one self-contained file (figures as data URIs)
    out_dir/figures/*.png  convergence, best_at_n, dynamics, eta2, coverage, space_shares
    out_dir/numbers.json   every number below, for scripts and dashboards

and returns the numbers as a dict. It is a pure function of DataFrames: the store, Prefect and
the CLI live in ``flows/analyze.py``. The report is a list of sections (``SECTIONS`` below, their
classes in analysis/sections/), each computing its numbers, drawing its figures and rendering its
text; adding a figure is one section class and one list entry (docs/report.md).

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
| not_computed.<section> | "ErrorType: message" of a section that raised (names: ``SECTIONS``); its keys are null, its figures absent; the rest of the report was built |
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
| timings.<section> | seconds spent per section (its computation; "prepare", "figures" and "write" for the shared steps) |
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from crashsearch.analysis import variance
from crashsearch.analysis.sections.architecture import Anova, SpaceShares, noise_sentence
from crashsearch.analysis.sections.base import Context, Section, event_positions, isolated, post_bugfix
from crashsearch.analysis.sections.doc import Doc, jsonable
from crashsearch.analysis.sections.overview import (RANDOM_WEIGHTS, Headline, Summary, Temporal, TopCells,
                                                    bound_clause, devices, headline_lines, hours_label, leader_tie,
                                                    paper_clause, paper_reference, top_cells, validation_sentence,
                                                    weights_note)
from crashsearch.analysis.sections.search import Baselines, Convergence, Dynamics, convergence_caption
from crashsearch.analysis.sections.transfer import Coverage, Transfer
from crashsearch.lab.space import Space

__all__ = ["build_report", "SECTIONS", "RANDOM_WEIGHTS", "bound_clause", "convergence_caption", "devices", "event_positions",
           "headline_lines", "hours_label", "isolated", "leader_tie", "noise_sentence", "paper_clause",
           "paper_reference", "post_bugfix", "top_cells", "validation_sentence", "weights_note"]

# The report's sections in the order a reader sees them (a section may need another computed first:
# Context.need does that). Adding a figure or a part: one Section class and one entry here.
SECTIONS: list[type[Section]] = [Summary, Headline, Temporal, TopCells, SpaceShares, Anova, Convergence, Baselines,
                                 Dynamics, Transfer, Coverage]

# numbers.json's top-level keys in the order of the table above (a section's new key goes after them)
NUMBERS_ORDER = ("title", "generated_at", "weights", "headline", "history", "best", "temporal", "top5", "anova",
                 "space_shares", "not_computed", "convergence", "baselines", "dynamics", "transfer", "figures",
                 "figures_absent", "timings")


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
    start = time.perf_counter()
    ctx = Context(history_df, out_dir, list(events or []), title=title, weights=weights, baselines_df=baselines_df,
                  other_datasets=other_datasets, n_boot=n_boot, seed=seed, forecast_more=forecast_more,
                  validation=validation, space=space, share_boot=share_boot)
    ctx.timings["prepare"] = round(time.perf_counter() - start, 4)
    ctx.numbers.update(title=title, generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       weights=weights)
    sections = ctx.add(SECTIONS)
    for s in sections:  # a section may need another first: ctx.need computes it then
        ctx.compute(s)
    start = time.perf_counter()
    for s in sections:
        ctx.draw(s, fig_dir)
    ctx.timings["figures"] = round(time.perf_counter() - start, 4)

    start = time.perf_counter()
    doc = Doc(out_dir)
    for s in sections:
        ctx.render(s, doc)
    (out_dir / "report.md").write_text(doc.markdown())
    (out_dir / "report.html").write_text(doc.html(title))
    ctx.timings["write"] = round(time.perf_counter() - start, 4)
    ctx.numbers.update(not_computed=ctx.not_computed, timings=ctx.timings,
                       figures={k: v.relative_to(out_dir).as_posix() if isinstance(v, Path) else None
                                for k, v in ctx.figs.items()},
                       figures_absent={k: v.why for k, v in ctx.figs.items() if not isinstance(v, Path)})
    rank = {k: i for i, k in enumerate(NUMBERS_ORDER)}
    numbers = dict(sorted(ctx.numbers.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    clean = jsonable(numbers)
    (out_dir / "numbers.json").write_text(json.dumps(clean, indent=2))
    return clean
