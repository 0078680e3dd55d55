"""The report as a list of sections (issue 23 item 5).

Promised: any section that raises (its numbers, its figure or its text) is shown as "not computed:
why", its numbers.json keys are null and its figures absent, and the rest of the report is built
(the headline stands without the convergence fit or the verdict); a new section is one class and one
list entry, with its numbers, figure and text."""
from __future__ import annotations

import json

import pytest

from crashsearch.analysis import baselines, convergence, dynamics, plots, report
from crashsearch.analysis.report import build_report
from crashsearch.analysis.sections.base import Section
from crashsearch.analysis.synthetic import synthetic_history


def _boom(*a, **k):
    raise RuntimeError("planted failure\nsecond line")


def test_any_failing_section_is_not_computed_and_the_rest_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(dynamics, "dynamics", _boom)  # a section's numbers
    monkeypatch.setattr(convergence, "convergence", _boom)  # a section the headline reads
    monkeypatch.setattr(baselines, "distributions", _boom)  # the verdict's section
    monkeypatch.setattr(plots, "coverage", _boom)  # a figure only
    df = synthetic_history(150, seed=1)
    numbers = build_report(df, tmp_path, n_boot=5, share_boot=2)
    why = "RuntimeError: planted failure"
    assert numbers["not_computed"] == {"dynamics": why, "convergence": why, "baselines": why, "coverage": why}
    assert numbers["dynamics"] is None and numbers["convergence"] is None and numbers["baselines"] is None
    for fig in ("dynamics", "convergence", "best_at_n", "coverage"):
        assert numbers["figures"][fig] is None and numbers["figures_absent"][fig] == f"not computed: {why}"
        assert not (tmp_path / "figures" / f"{fig}.png").exists()
    h = numbers["headline"]  # the headline stands, saying what it lacks
    assert h["eta2_arch"] is not None and h["c"] is None and h["agents_beat_controls"] is None
    assert h["verdict"] == f"No like-for-like verdict: not computed ({why})."
    md = (tmp_path / "report.md").read_text()
    assert f"## 4. Multi-agent dynamics\n\nNot computed: {why}.\n\n## 5. Transfer" in md
    assert f"## 2. Convergence\n\nNot computed: {why}." in md and f"## 3. Baselines\n\nNot computed: {why}." in md
    assert f"Convergence fit not available (full history): not computed: {why}." in md
    # a figure that failed alone leaves its section's text, saying why the figure is missing
    assert f"## Coverage\n\n(Figure not drawn: Best AP per backbone x encoder: not computed: {why}.)" in md
    assert "## Top 5 cells" in md and "### One-way ANOVA (full history)" in md
    assert json.loads((tmp_path / "numbers.json").read_text()) == numbers
    assert set(numbers["timings"]) >= {s.name for s in report.SECTIONS} | {"prepare", "figures", "write"}


class _Spread(Section):
    """A section as a newcomer would add one: a number, a figure, a paragraph."""

    name, keys, figures, heading = "spread", ("spread",), ("spread",), (2, "Spread")

    def compute(self) -> dict:
        ok = self.ctx.df[self.ctx.df["ok"]]
        self.sd = float(ok["val_ap"].std())
        return {"spread": {"sd": self.sd, "n": len(ok)}}

    def draw(self, fig_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.hist(self.ctx.df["val_ap"].dropna())
        path = fig_dir / "spread.png"
        fig.savefig(path)
        plt.close(fig)
        return {"spread": path}

    def render(self, d) -> None:
        d.h(2, "Spread")
        d.p(f"AP sd {self.sd:.4f} over {self.ctx.numbers['spread']['n']} runs.")
        d.img(self.ctx.figs["spread"], "AP histogram")


def test_a_new_section_is_one_class_and_one_list_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS, _Spread])
    numbers = build_report(synthetic_history(120, seed=4), tmp_path, n_boot=5, share_boot=2)
    assert numbers["spread"]["n"] == 120 - numbers["history"]["failed"] - numbers["history"]["invalid"]
    assert numbers["figures"]["spread"] == "figures/spread.png" and (tmp_path / "figures" / "spread.png").exists()
    assert list(numbers)[-1] == "spread"  # after the documented keys
    md = (tmp_path / "report.md").read_text()
    assert md.rstrip().endswith("![AP histogram](figures/spread.png)")
    assert numbers["not_computed"] == {}


def test_a_section_that_needs_itself_is_not_computed_not_a_hang(tmp_path, monkeypatch):
    class Loop(Section):
        name, keys = "loop", ("loop",)

        def compute(self) -> dict:
            return {"loop": self.ctx.need("loop")}

    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS, Loop])
    numbers = build_report(synthetic_history(60, seed=5), tmp_path, n_boot=5, share_boot=2)
    assert numbers["loop"] is None and "needs itself" in numbers["not_computed"]["loop"]


if __name__ == "__main__":
    pytest.main([__file__])
