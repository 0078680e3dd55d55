"""Part 5 of the report and its close: transfer to other datasets, and the coverage of the space."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from crashsearch.analysis import plots, transfer
from crashsearch.analysis.sections.base import Section, stack
from crashsearch.analysis.sections.doc import Doc
from crashsearch.analysis.sections.overview import paper_clause


class Transfer(Section):
    """Whether the winning architecture transfers to a second dataset (winners, rank correlations)."""

    name, keys, heading = "transfer", ("transfer",), (2, "5. Transfer")

    def compute(self) -> dict:
        ctx, other = self.ctx, self.ctx.inputs["other_datasets"]
        if isinstance(other, dict):
            other = pd.concat(list(other.values()), ignore_index=True) if other else None
        both = stack(ctx.df, other, ["dataset", "campaign", "arch_group", "backbone", "encoder", "cell_id", "val_ap",
                                     "ok", "order"])
        self.tr = tr = transfer.transfer(both) if both is not ctx.df and both["dataset"].nunique() >= 2 else None
        if tr is None:
            return {"transfer": None}
        return {"transfer": {
            "datasets": tr["datasets"], "winner": tr["winner"],
            "rank_correlation": pd.concat([t.assign(by=by) for by, t in tr.items() if by not in ("datasets", "winner")],
                                          ignore_index=True)}}

    def render(self, d: Doc) -> None:
        d.h(2, "5. Transfer")
        tr, nb = self.tr, self.ctx.numbers
        if tr is None:
            d.p("One dataset only: no transfer analysis (run a campaign on a second dataset to fill this section).")
            return
        d.table(tr["datasets"], {"dataset": "dataset", "experiments": "experiments", "eta2_arch": "eta² of architecture",
                                 "top_backbone": "winning backbone", "top_arch_group": "winning arch group",
                                 "best_ap": "best single run (validation AP)", "best_arch_group": "best run's group",
                                 "c": "c"})
        d.p("**" + tr["winner"]["text"] + "** (winner: highest mean AP over its runs)."
            + paper_clause((nb.get("headline") or {}).get("paper"), "eta² 0.94 and 0.75 on its two datasets"))
        d.table(nb["transfer"]["rank_correlation"],
                {"by": "by", "dataset_a": "dataset", "dataset_b": "dataset", "common": "common",
                 "spearman": "Spearman", "spearman_p": "p", "kendall": "Kendall", "kendall_p": "p", "reason": "note"})


class Coverage(Section):
    """The best AP per backbone x encoder: which of the space the search reached."""

    name, figures, heading = "coverage", ("coverage",), (2, "Coverage")

    def draw(self, fig_dir: Path) -> dict:
        return {"coverage": plots.coverage(self.ctx.df, fig_dir / "coverage.png")}

    def render(self, d: Doc) -> None:
        d.h(2, "Coverage")
        d.img(self.ctx.figs["coverage"], "Best AP per backbone x encoder (runs in brackets)")
