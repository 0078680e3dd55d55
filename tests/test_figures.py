"""Figures and numbers a reader can trust (issue 21, "Numbers that agree").

What is promised, each checked on the drawn matplotlib figure or the written report:
- log axes of experiment counts carry plain integer tick labels that do not overlap (best_at_n
  showed overlapping 9.6x10^0 labels), for short and long ranges;
- the convergence figure draws the power-law fit when one exists, and its caption says so, or
  says why none is drawn;
- legends sit off the data (below their panel);
- a figure with nothing to show is not written (nor a stale one left), and the report says why;
- hours are named by the device that trained (GPU-hours only on a GPU);
- the paper's figures appear only beside comparable numbers, saying what differs;
- the demo's closing figures are the report's own, named.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crashsearch.analysis import convergence, dynamics, plots
from crashsearch.analysis.history import prepare
from crashsearch.analysis.report import build_report, convergence_caption, hours_label, paper_reference
from crashsearch.analysis.synthetic import synthetic_history


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, captured on their way to disk."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _labels(ax):
    """(text, window box) of each visible x tick label of ``ax`` inside the axis limits."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    out = []
    for tick in ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks():
        label = tick.label1
        if label.get_visible() and label.get_text() and lo <= tick.get_loc() <= hi:
            out.append((label.get_text(), label.get_window_extent(renderer)))
    return out


def _assert_plain_integers_apart(ax):
    labels = _labels(ax)
    assert labels, "no tick label"
    for text, _ in labels:
        assert text.replace(",", "").isdigit(), f"tick label {text!r} is not a plain integer"
    boxes = sorted((b for _, b in labels), key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 < b.x0, "tick labels overlap"


@pytest.mark.parametrize("ns", [(10,), (10, 25), (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)])
def test_best_at_n_ticks_are_plain_integers_that_do_not_overlap(tmp_path, drawn, ns):
    table = pd.DataFrame([{"arm": arm, "n": n, "best": 0.8 + 0.01 * i, "lo": 0.78, "hi": 0.85}
                          for i, arm in enumerate(("evolution", "random", "tpe")) for n in ns])
    regret = pd.DataFrame([{"arm": "random", "n": n, "best": 0.8, "regret": 0.1 / n} for n in range(1, ns[-1] + 1)])
    plots.best_at_n(table, regret, tmp_path / "b.png")
    for ax in drawn[-1].axes:
        _assert_plain_integers_apart(ax)


@pytest.mark.parametrize("n", [3, 60, 2000, 100_000])
def test_convergence_ticks_are_plain_integers(tmp_path, drawn, n):
    df = prepare(synthetic_history(min(n, 3000), seed=1)) if n <= 3000 else None
    if df is None:  # a long history: the figure's axis alone matters here
        values = 0.9 - 0.3 * np.arange(1, n + 1) ** -0.3
        df = prepare(pd.DataFrame({"val_ap": values, "arch_group": "a/b", "cell_id": np.arange(n)}))
    fit = convergence.fit_power_law(df["val_ap"].to_numpy(float), n_boot=0)
    plots.convergence(convergence.curves(df), fit, tmp_path / "c.png")
    _assert_plain_integers_apart(drawn[-1].axes[0])


def test_convergence_draws_the_fit_its_caption_promises(tmp_path, drawn):
    df = prepare(synthetic_history(300, seed=2))
    fit = convergence.fit_power_law(df["val_ap"].where(df["ok"]).to_numpy(float), n_boot=0)
    assert fit["reason"] is None
    plots.convergence(convergence.curves(df), fit, tmp_path / "c.png", hours_label=hours_label(["cpu"]))
    ax, ax_h = drawn[-1].axes[:2]
    fits = [line for line in ax.get_lines() if line.get_label().startswith("power-law fit")]
    assert len(fits) == 1 and np.isfinite(fits[0].get_ydata()).all()
    assert "with the power-law fit" in convergence_caption(fit, None, "training hours on cpu")
    assert ax_h.get_xlabel() == "training hours on cpu (cumulative)"
    # a history whose running best rose twice: no fit is drawn, and the caption says why
    flat = prepare(pd.DataFrame({"val_ap": [0.5, 0.6, 0.6, 0.7, 0.7], "arch_group": "a/b", "cell_id": range(5)}))
    none = convergence.fit_power_law(flat["val_ap"].to_numpy(float), n_boot=0)
    plots.convergence(convergence.curves(flat), none, tmp_path / "c2.png")
    assert not [line for line in drawn[-1].axes[0].get_lines() if line.get_label().startswith("power-law fit")]
    assert drawn[-1].axes[1].get_xlabel() == "training seconds (cumulative)"  # no 0.00025-hour ticks
    caption = convergence_caption(none, None, "GPU-hours")
    assert "no power-law fit is drawn: the running best rose 2 times" in caption


def test_legends_sit_off_the_data(tmp_path, drawn):
    df = prepare(synthetic_history(400, seed=3, policies=("claude", "gemini", "random")))
    plots.dynamics(dynamics.dynamics(df)["windows"], tmp_path / "d.png")
    fig = drawn[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 3
    for ax in legends:
        box, area = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y1 <= area.y0, "the legend covers the panel"


def test_a_figure_with_nothing_to_show_is_not_drawn_and_the_report_says_why(tmp_path):
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "dynamics.png").write_bytes(b"stale")  # a figure of an earlier, larger report
    tiny = pd.DataFrame({"campaign": "c", "proposer": "random", "arch_group": ["pixels/gru", "pixels/tcn", "pixels/gru"],
                         "cell_id": [0, 1, 2], "status": ["ok", "failed", "ok"], "val_ap": [0.5, np.nan, 0.55]})
    numbers = build_report(tiny, out)
    assert numbers["figures"]["dynamics"] is None and numbers["figures"]["eta2"] is None
    assert not (out / "figures" / "dynamics.png").exists() and not (out / "figures" / "eta2.png").exists()
    md = (out / "report.md").read_text()
    assert "(Figure not drawn: Entropy, JS divergence and innovation over time: too few proposals" in md
    assert numbers["figures_absent"]["dynamics"].startswith("too few proposals")
    # what is drawn has data in every panel: the regret panel alone, no empty best-at-N box
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "figures" / "best_at_n.png").shape[1] < 900
    assert "no best-at-N panel" in md


def test_hours_are_named_by_the_device():
    assert hours_label(["cuda"]) == "GPU-hours"
    assert hours_label(["cpu"]) == "training hours on cpu"
    assert hours_label(["cpu", "cuda"]) == "training hours on cpu, cuda"
    assert hours_label([]) == "training hours (device not recorded)"


def test_report_on_cpu_rows_never_says_gpu_hours(tmp_path):
    df = synthetic_history(120, seed=4).assign(device="cpu")
    numbers = build_report(df, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert numbers["history"]["devices"] == ["cpu"] and "GPU-hours" not in md and "training hours on cpu" in md


def test_the_paper_is_quoted_only_beside_comparable_numbers(tmp_path):
    df = synthetic_history(400, seed=5, replicate_share=0.1)
    assert not paper_reference("random", ["day"])["comparable"]
    assert not paper_reference({"vjepa2_vitl": "facebook/vjepa2-vitl-fpc64-256"}, ["synth-day"])["comparable"]
    synthetic = build_report(df, tmp_path / "a", weights={"pixels": "none", "vjepa2_vitl": "random"})
    md = (tmp_path / "a" / "report.md").read_text()
    assert "Paper" not in md and "paper: eta²" not in md
    assert synthetic["headline"]["paper"]["why"].startswith("no comparison with the paper: random-init backbone weights")
    real = df.assign(dataset="nexar")
    build_report(real, tmp_path / "b", weights={"vjepa2_vitl": "facebook/vjepa2-vitl-fpc64-256"})
    md = (tmp_path / "b" / "report.md").read_text()
    assert "(Paper: c = 0.11, R² = 0.93; the paper: 10,469 runs" in md and "this history: nexar" in md


def test_the_factorial_chart_says_why_its_terms_are_smaller_than_the_group(tmp_path):
    build_report(synthetic_history(300, seed=6), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "holds the backbone and encoder main effects and their interaction together" in md


def test_the_demo_prints_the_report_s_own_figures_by_name(tmp_path):
    from crashsearch.flows.demo import report_figures

    day = synthetic_history(200, seed=7, dataset="synth-day", replicate_share=0.3)
    night = synthetic_history(80, seed=8, dataset="synth-night", campaign="night")
    numbers = build_report(day, tmp_path, other_datasets=night)
    lines = report_figures(tmp_path / "numbers.json")
    h = numbers["headline"]
    assert f"best single run: validation AP {h['best_val_ap']:.4f}" in lines[0]
    assert f"leading cell {h['leader']['cell_id']}: mean validation AP {h['leader']['val_ap']:.4f}" in lines[1]
    night_row = next(d for d in numbers["transfer"]["datasets"] if d["dataset"] == "synth-night")
    assert any(f"synth-night: best single run, validation AP {night_row['best_ap']:.4f}" in line for line in lines)
    md = (tmp_path / "report.md").read_text()
    assert "best single run (validation AP)" in md and f"{night_row['best_ap']:.4f}" in md
    assert report_figures(tmp_path / "absent.json") == []
