"""Parts 2 to 4 of the report, how the search went: convergence, the arms (best at N, the
like-for-like verdict), and the multi-agent dynamics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crashsearch.analysis import baselines, convergence, dynamics, plots
from crashsearch.analysis.arms import arm_best_at_n, arm_power_laws, arm_table, arm_verdict
from crashsearch.analysis.sections.base import Section, stack
from crashsearch.analysis.sections.doc import Doc, fmt
from crashsearch.analysis.sections.overview import devices, hours_label


def _fit_summary(fit: dict) -> dict:
    keys = ("a", "b", "c", "r2", "rmse", "a_ci", "b_ci", "c_ci", "n", "points", "improvements", "n_boot", "at_bound",
            "reason")
    return {k: fit.get(k) for k in keys}


def convergence_caption(fit_full: dict, fit_post: dict | None, hours: str) -> str:
    """The convergence figure's caption: what it draws, the fits included or why they are not."""
    drawn = [name for name, f in (("full history", fit_full), ("post-bugfix", fit_post)) if plots.fit_drawn(f)]
    head = f"Running best validation AP vs experiments (log scale) and vs {hours}"
    if drawn:
        return f"{head}, with the power-law fit AP*(N) = a - b N^-c ({', '.join(drawn)}; dashed)"
    return f"{head}; no power-law fit is drawn: {fit_full.get('reason') or 'the fit failed'}"


class Convergence(Section):
    """The power law AP*(N) = a - b N^-c on the running best, full history and post-bugfix, per arm,
    and the forecast of the next run's gain."""

    name, keys, figures, heading = "convergence", ("convergence",), ("convergence",), (2, "2. Convergence")

    def compute(self) -> dict:
        ctx, kw = self.ctx, {"n_boot": self.ctx.inputs["n_boot"], "seed": self.ctx.seed,
                             # the campaign's per-run allowance (extend): the forecast is the next run's gain
                             "forecast_more": self.ctx.inputs["forecast_more"]}
        self.full = convergence.convergence(ctx.df, **kw)
        self.post = convergence.convergence(ctx.post, **kw) if ctx.post is not None else None
        self.main = self.post or self.full

        def block(conv: dict) -> dict:
            return {**_fit_summary(conv["overall"]), "arms": {a: _fit_summary(f) for a, f in conv["arms"].items()}}

        return {"convergence": {
            "full": block(self.full), "post_bugfix": block(self.post) if self.post else None,
            "forecast": self.main["forecast"], "best_ap": self.full["best_ap"], "gpu_hours": self.full["gpu_hours"],
            "post_start": ctx.post_start}}

    def _hours(self) -> str:
        return hours_label(devices(self.ctx.df))

    def draw(self, fig_dir: Path) -> dict:
        ctx = self.ctx
        curves_post = convergence.curves(ctx.post, by_arm=False) if ctx.post is not None else None
        return {"convergence": plots.convergence(
            convergence.curves(ctx.df), self.full["overall"], fig_dir / "convergence.png", ctx.positions,
            curves_post, self.post["overall"] if self.post else None, ctx.post_start,
            title=f"Convergence: {ctx.title}", hours_label=self._hours())}

    def render(self, d: Doc) -> None:
        d.h(2, "2. Convergence")
        rows = []
        for label, conv in (("full", self.full), ("post-bugfix", self.post)):
            if conv is None:
                continue
            rows.append({"scope": f"overall ({label})", **conv["overall"]})
            rows += [{"scope": f"{arm} ({label}; in a shared campaign, not from scratch)", **f}
                     for arm, f in conv["arms"].items()]
        frame = pd.DataFrame(rows)
        if len(frame):
            frame["reason"] = [r if isinstance(r, str) else
                               (f"at a bound: {', '.join(b)} (a cap, not an estimate)" if b else None)
                               for r, b in zip(frame["reason"], frame.get("at_bound", [[]] * len(frame)))]
        d.table(frame, {"scope": "scope", "n": "experiments", "improvements": "rises", "a": "a", "b": "b",
                        "c": "c", "c_ci": "c 95%", "r2": "R²", "reason": "note"})
        d.p("Fit: AP*(N) = a - b N^-c on the running best (log-spaced points); intervals from a Poisson bootstrap "
            "that keeps the order of the search. Dashed orange lines mark bug-fix events.")
        d.img(self.ctx.figs["convergence"], convergence_caption(
            self.full["overall"], self.post["overall"] if self.post else None, self._hours()))


_SCRATCH_TEXT = (
    "Each arm is one policy searching alone from scratch with the campaign's budget and space "
    "(`crashsearch analyze --control-arms ... --repeats R`). An arm is judged at N by the cell it would pick "
    "at N (its best by mean validation AP among its first N experiments), scored by that cell's held-out test "
    "AP (its replicate mean of validation AP where no test AP was recorded): the best validation AP seen is a "
    "maximum over noisy runs and rewards luck, so it is shown beside it only for comparison. Each figure is the "
    "mean over repeats with a 95% bootstrap interval over repeats (none with one repeat); arms are compared by "
    "95% intervals of their differences, paired by repeat (a bootstrap over repeats; Student t below 10 "
    "repeats, where a bootstrap understates the spread).")


class Baselines(Section):
    """The arms: from-scratch control arms judged like for like (the verdict), and the campaign's own
    arms, which share one history, reported apart."""

    name, keys, figures, heading = "baselines", ("baselines",), ("best_at_n",), (2, "3. Baselines")

    def compute(self) -> dict:
        ctx, seed = self.ctx, self.ctx.seed
        # like for like: the verdict compares from-scratch arms only (control-arm campaigns, each policy
        # alone with the campaign's budget and space, repeated); the campaign's own arms share one
        # history, so they are reported apart, "in a shared campaign, not from scratch"
        arms_tab = arm_table(ctx.inputs["baselines_df"])
        self.scratch = {"best_at_n": arm_best_at_n(arms_tab, seed=seed), "power_laws": arm_power_laws(arms_tab),
                        "verdict": arm_verdict(arms_tab, n=50, seed=seed)}
        self.bat = baselines.best_at_n(ctx.df, seed=seed)
        self.dists = baselines.distributions(ctx.df)
        return {"baselines": {"from_scratch": self.scratch, "shared_best_at_n": self.bat, "distributions": self.dists}}

    def draw(self, fig_dir: Path) -> dict:
        ctx = self.ctx
        regret = baselines.regret_curves(stack(ctx.df, ctx.inputs["baselines_df"],
                                               ["campaign", "arm", "val_ap", "ok", "order"]))
        return {"best_at_n": plots.best_at_n(self.bat, regret, fig_dir / "best_at_n.png")}

    def render(self, d: Doc) -> None:
        scratch = self.scratch
        d.h(2, "3. Baselines")
        d.h(3, "From-scratch arms (like for like)")
        d.p(_SCRATCH_TEXT)
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
            d.p("Power law a - b N^-c per arm, fitted to the mean running best validation AP over repeats (the "
                "paper's curve); the interval of c is a bootstrap over repeats (repeats resampled with replacement, "
                "refitted).")
        d.h(3, "Arms in a shared campaign, not from scratch")
        d.p("The campaign's own policies share one history (each sees the others' results), so these are not "
            "independent searches and enter no verdict.")
        d.table(self.bat, {"arm": "arm", "n": "N", "best": "best AP", "lo": "95% lo", "hi": "95% hi", "runs": "runs",
                           "method": "bootstrap"}, empty="No arm reached N = 10.")
        d.p("Bootstrap 'runs': mean over independent runs (seeds or campaigns), runs resampled. "
            "'resample-first-N': one run; its first N experiments resampled with replacement.")
        d.table(self.dists, empty="No AP distribution.")
        d.img(self.ctx.figs["best_at_n"], "Best validation AP seen among the first N per arm of this campaign (shared, "
                                          "selection-biased), with 95% intervals, and regret curves" if len(self.bat)
              else "Regret curves per arm of this campaign (no arm reached N = 10: no best-at-N panel)")


class Dynamics(Section):
    """How several agents divide the work: entropy cycles, JS specialization, innovation, credit."""

    name, keys, figures, heading = "dynamics", ("dynamics",), ("dynamics",), (2, "4. Multi-agent dynamics")

    def compute(self) -> dict:
        self.dyn = dyn = dynamics.dynamics(self.ctx.df)
        cycle_keys = ("period", "period_windows", "strength", "n_peaks", "n_troughs", "reason")
        return {"dynamics": {"window": dyn["windows"]["window"], "step": dyn["windows"]["step"],
                             "cycles": {a: {k: c[k] for k in cycle_keys} for a, c in dyn["cycles"].items()},
                             "js": dyn["js"], "innovation": dyn["innovation"], "credit": dyn["credit"]}}

    def draw(self, fig_dir: Path) -> dict:
        return {"dynamics": plots.dynamics(self.dyn["windows"], fig_dir / "dynamics.png")}

    def render(self, d: Doc) -> None:
        dyn = self.dyn
        d.h(2, "4. Multi-agent dynamics")
        win = dyn["windows"]
        d.p(f"Sliding windows of {win['window']} experiments, step {win['step']}, over {win['groups']} architecture "
            f"groups.")
        cyc = pd.DataFrame([{"agent": a, **c} for a, c in dyn["cycles"].items()])
        d.table(cyc if len(cyc) else None, {"agent": "agent", "period": "entropy period (experiments)",
                                            "strength": "power share", "n_peaks": "peaks", "n_troughs": "troughs",
                                            "reason": "note"}, empty="No agent made enough proposals for windows.")
        js = dyn["js"]
        decays = [s["decay_windows"] for s in js["spikes"] if s["decay_windows"] is not None]
        d.p(f"JS divergence between agents: median {fmt(js['baseline'])}, max {fmt(js['max'])}, "
            f"{len(js['spikes'])} specialization spikes"
            + (f"; a spike decays halfway in a median {np.median(decays):.0f} windows." if decays else "."))
        d.table(dyn["innovation"], {"agent": "agent", "proposals": "proposals", "new_groups": "new arch groups",
                                    "group_rate": "share", "new_hp": "new hyperparameters in a tried group",
                                    "hp_rate": "share"})
        d.p("Entropy, JS divergence and innovation count the agents' own proposals (replicate, rerun and heal rows "
            "are left out); credit and cost of those rows go to the proposer of the original cell.")
        d.table(dyn["credit"], {"arm": "arm", "experiments": "experiments", "improvements": "leaderboard improvements",
                                "share": "share", "gain": "AP gained", "tokens": "tokens", "cost_usd": "USD",
                                "usd_per_improvement": "USD per improvement"})
        d.img(self.ctx.figs["dynamics"], "Entropy, JS divergence and innovation over time")
