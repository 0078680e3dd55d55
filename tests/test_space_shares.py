"""Answers about the space, not the sample (issue 19, items 1, 2 and 5).

Promises checked here (tolerances stated so a failure says what was promised):
- the eta² interval is defined for every F in [0, 1e5], df1 in [1, 500], df2 up to 1e6: both ends
  in [0, 1], lo <= hi, and where scipy's noncentral F is finite the ends sit at its 97.5% / 2.5%
  quantiles within 1e-6;
- the noncentral F cdf never returns NaN, falls as the noncentrality grows, and matches scipy's
  within 1e-8 where scipy's is finite;
- the functional-ANOVA decomposition of a planted grid equals the planted model's closed-form
  shares within 1e-9 (the surrogate left out);
- on a planted history sampled the way agents sample (6,000 rows, softmax over architectures, 90%
  of runs at the best learning rate), the architecture's share over the space is within 0.04 of
  the exact share, while the naive eta² (which matches its definition to 1e-9) is inflated by more
  than 0.1, and the report's headline leads with the share over the space;
- a section that raises leaves the rest of the report built, with "not computed: why".
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crashsearch.analysis import anova, variance
from crashsearch.analysis.history import prepare
from crashsearch.analysis.synthetic import PlantedSpaceModel, adaptive_history, synthetic_history
from crashsearch.lab.space import Space

F_GRID = (0.0, 0.5, 3.0, 50.0, 1324.0, 1e5)
DF1_GRID = (1, 4, 35, 500)
DF2_GRID = (1, 30, 10_000, 1_000_000)


def _scipy_ncf_cdf(F, df1, df2, lam):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.ncf.cdf(F, df1, df2, lam))


# ---- item 1: the eta² interval on the whole grid ----------------------------------------------

@pytest.mark.parametrize("df2", DF2_GRID)
@pytest.mark.parametrize("df1", DF1_GRID)
@pytest.mark.parametrize("F", F_GRID)
def test_eta2_interval_is_defined_on_the_whole_grid(F, df1, df2):
    (lo, hi), method = anova.eta2_interval(F, df1, df2, detail=True)
    assert 0.0 <= lo <= hi <= 1.0, (lo, hi)
    assert method.startswith(("noncentral-F inversion", "normal approximation"))
    n = df1 + df2 + 1
    for end, q in ((lo, 0.975), (hi, 0.025)):
        if 0.0 < end < 1.0:
            lam = end / (1.0 - end) * n
            ref = _scipy_ncf_cdf(F, df1, df2, lam)
            if math.isfinite(ref) and lam <= anova.NCF_EXACT_MAX_LAMBDA:
                assert ref == pytest.approx(q, abs=1e-6)
            # our own cdf is the definition the interval inverts, on either method
            assert anova.ncf_cdf(F, df1, df2, lam) == pytest.approx(q, abs=1e-4)


@pytest.mark.parametrize("F, df1, df2", [(1324.0, 4, 10_464), (1000.0, 1, 1_000_000), (10.0, 100, 100_000),
                                         (1e5, 500, 1_000_000), (3.0, 500, 1)])
def test_ncf_cdf_is_finite_monotone_and_matches_scipy_where_scipy_is_finite(F, df1, df2):
    centre = F * df1
    lams = np.concatenate([[0.0], np.geomspace(1e-3, 10 * centre + 100, 60)])
    values = np.array([anova.ncf_cdf(F, df1, df2, lam) for lam in lams])
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert (np.diff(values) <= 1e-9).all()  # falls with the noncentrality
    for lam, v in zip(lams, values):
        ref = _scipy_ncf_cdf(F, df1, df2, lam)
        if math.isfinite(ref) and lam <= anova.NCF_EXACT_MAX_LAMBDA:
            assert v == pytest.approx(ref, abs=1e-8)


def test_one_way_on_five_backbones_with_a_large_F_has_an_interval():
    # the crash of issue 19: 10,469 runs over 5 backbones, F about 250; scipy's ncf.cdf gave NaN and brentq stopped
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 5, 10_469)
    values = 0.6 + 0.011 * groups + rng.normal(0, 0.05, len(groups))
    frame = {"campaign": "c", "proposer": "random", "arch_group": [f"b{g}/e" for g in groups],
             "backbone": [f"b{g}" for g in groups], "cell_id": np.arange(len(groups)), "status": "ok", "val_ap": values}
    r = anova.one_way(pd.DataFrame(frame), "backbone")
    assert 200 < r["F"] < 300 and r["reason"] is None
    lo, hi = r["eta2_ci"]
    assert 0.05 < lo < r["eta2"] < hi < 0.15
    assert r["eta2_ci_method"] == anova.ETA2_CI_EXACT
    # at the interval's ends F sits at the 97.5% / 2.5% quantiles of the noncentral F
    n = r["df_between"] + r["df_within"] + 1
    for end, q in ((lo, 0.975), (hi, 0.025)):
        assert anova.ncf_cdf(r["F"], 4, r["df_within"], end / (1 - end) * n) == pytest.approx(q, abs=1e-6)


# ---- item 2: the architecture's share over the space -------------------------------------------

@pytest.fixture(scope="module")
def model():
    return PlantedSpaceModel(Space.load(), seed=0)


@pytest.fixture(scope="module")
def adaptive(model):
    return prepare(adaptive_history(6000, model, seed=1))


def test_decompose_of_a_planted_grid_equals_the_closed_form_shares(model):
    local, _full, how = variance._grid(model.space, 0)
    idx = {a.name: local[:, j] for j, a in enumerate(model.space.axes)}
    shares = variance.decompose(local, model.mean(idx), model.noise_sd ** 2, model.space)
    truth = model.truth
    assert how == "every one of the 108,000 cells"
    for key in ("architecture", "arch_group", "backbone", "encoder", "size", "lr", "loss", "batch_size", "window_s",
                "augment", "encoder x lr", "seed noise"):
        assert shares[key] == pytest.approx(truth[key], abs=1e-9), key
    assert shares["total_var"] == pytest.approx(truth["total_var"], rel=1e-9)
    assert shares["lr x window_s"] == pytest.approx(0.0, abs=1e-12)  # nothing planted there


@pytest.mark.slow
def test_share_over_the_space_of_an_adaptive_history_is_within_004_of_the_truth(model, adaptive):
    truth = model.truth
    naive = anova.one_way(adaptive)
    # the naive figure is the paper's definition on the rows run: SS between arch groups over SS total
    y = adaptive["val_ap"].to_numpy()
    means = adaptive.groupby("arch_group")["val_ap"].transform("mean").to_numpy()
    assert naive["eta2"] == pytest.approx(((means - y.mean()) ** 2).sum() / ((y - y.mean()) ** 2).sum(), abs=1e-9)
    assert naive["eta2"] > truth["arch_group"] + 0.1  # adaptive sampling inflates it
    r = variance.space_shares(adaptive, model.space, n_boot=3, seed=0)
    assert r["reason"] is None and r["grid"] == "every one of the 108,000 cells" and r["n"] == 6000
    for key in ("architecture", "arch_group", "lr", "seed noise"):
        assert r["shares"][key]["share"] == pytest.approx(truth[key], abs=0.04), key
        assert r["shares"][key]["lo"] <= r["shares"][key]["share"] <= r["shares"][key]["hi"]
    assert r["interactions"][0]["share"] >= r["interactions"][-1]["share"]
    assert r["noise_sd"] == pytest.approx(model.noise_sd, rel=0.1)
    verdict = variance.compare(naive, r)
    assert verdict["verdict"] == "inflated" and "inflated the naive figure beyond both intervals" in verdict["text"]


def test_cell_capped_and_random_arm_eta2_follow_their_definitions(model, adaptive):
    capped = variance.cell_capped_eta2(adaptive)
    cells = adaptive.groupby("cell_id").agg(y=("val_ap", "mean"), g=("arch_group", "first"))
    gm = cells.groupby("g")["y"].transform("mean")
    assert capped["n"] == adaptive["cell_id"].nunique() < len(adaptive)
    assert capped["eta2"] == pytest.approx(((gm - cells["y"].mean()) ** 2).sum() / ((cells["y"] - cells["y"].mean()) ** 2).sum())
    # a random arm samples the space uniformly: its eta² estimates the arch group's share over the space
    arms = pd.concat([adaptive_history(3000, model, seed=2, uniform=True, campaign="adaptive-baseline-random"),
                      adaptive_history(500, model, seed=3, campaign="adaptive-baseline-tpe")], ignore_index=True)
    rnd = variance.random_arm_eta2(arms)
    assert rnd["n"] == 3000 and rnd["repeats"] == 1  # the tpe arm is not a uniform sample: left out
    assert rnd["eta2"] == pytest.approx(model.truth["arch_group"], abs=0.04)
    assert variance.random_arm_eta2(arms[arms["campaign"].str.endswith("tpe")]) is None
    assert variance.random_arm_eta2(None) is None


def test_compare_says_inflated_deflated_or_overlapping():
    shares = {"shares": {"arch_group": {"share": 0.5, "lo": 0.45, "hi": 0.55}}}
    say = lambda eta2, ci: variance.compare({"eta2": eta2, "eta2_ci": ci}, shares)["verdict"]  # noqa: E731
    assert say(0.8, [0.7, 0.9]) == "inflated"
    assert say(0.2, [0.1, 0.3]) == "deflated"
    assert say(0.52, [0.5, 0.6]) == "within"
    assert say(0.8, [math.nan, math.nan]) == "undecided"
    assert variance.compare({"eta2": math.nan}, shares)["verdict"] is None


def test_space_shares_say_why_when_they_cannot_be_computed(model):
    few = prepare(adaptive_history(20, model, seed=4))
    assert variance.space_shares(few, model.space, n_boot=0)["reason"].endswith(
        "the surrogate needs at least 30 runs over 10 cells")
    other = prepare(adaptive_history(300, model, seed=4).assign(space="paper"))
    assert "recorded in space paper" in variance.space_shares(other, model.space, n_boot=0)["reason"]
    once = prepare(adaptive_history(300, model, seed=4, replicate_share=0.0).drop_duplicates("cell_id"))
    r = variance.space_shares(once, model.space, n_boot=0)
    assert r["reason"] is None and "seed noise is unknown" in r["noise_reason"]
    assert math.isnan(r["shares"]["architecture"]["lo"])  # no refits: no interval, never a made-up one
    # values never run are left out of the cells averaged, and the sentence says so
    narrow = prepare(adaptive_history(400, model, seed=4).query("backbone != 'pixels'"))
    r = variance.space_shares(narrow, model.space, n_boot=0)
    assert r["space_cells"] == 108_000 * 4 // 5 and r["restricted"] == ["backbone 4 of 5"]
    assert r["grid"] == ("every one of the 86,400 cells whose values were run (of the space's 108,000; "
                         "backbone 4 of 5 values)")


def _report(tmp_path, df, **kw):
    from crashsearch.analysis.report import build_report

    numbers = build_report(df, tmp_path, **kw)
    return numbers, (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_report_headline_leads_with_the_share_over_the_space(tmp_path, model):
    from crashsearch.analysis.report import headline_lines

    df = adaptive_history(6000, model, seed=1)
    arm = adaptive_history(2000, model, seed=2, uniform=True, campaign="adaptive-baseline-random")
    numbers, md = _report(tmp_path, df, baselines_df=arm, share_boot=4)
    h = numbers["headline"]
    truth = model.truth
    assert h["share_arch"] == pytest.approx(truth["architecture"], abs=0.04)
    assert h["share_arch_group"] == pytest.approx(truth["arch_group"], abs=0.04)
    assert h["share_arch_ci"][0] <= h["share_arch"] <= h["share_arch_ci"][1]
    assert h["naive_vs_space"] == "inflated" and h["eta2_arch"] == pytest.approx(anova.one_way(df)["eta2"])
    assert h["scope"]["share_arch"] == "full history" and "functional ANOVA" in h["estimator"]["share_arch"]
    assert h["estimator"]["eta2_arch"].startswith("naive eta² on the rows run")
    first = headline_lines(h)[0]
    assert first.startswith("**Architecture's share of the AP variance over the space: ")
    assert "adaptive sampling inflated the naive figure beyond both intervals" in first
    assert md.split("## Headline\n\n- ", 1)[1].startswith("**Architecture's share of the AP variance over the space")
    block = numbers["space_shares"]
    assert block["random_arm"]["n"] == 2000 and block["cell_capped"]["n"] == df["cell_id"].nunique()
    assert {"lr", "backbone", "seed noise", "architecture"} <= set(block["fanova"]["shares"])
    assert "eta² on the from-scratch random arm" in md and "cell-capped eta²" in md
    assert (tmp_path / numbers["figures"]["space_shares"]).stat().st_size > 0
    assert numbers["not_computed"] == {}


def test_a_failing_section_is_shown_as_not_computed_and_the_rest_is_built(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("planted failure\nsecond line")

    monkeypatch.setattr(variance, "space_shares", boom)
    monkeypatch.setattr(anova, "factorial", boom)
    df = synthetic_history(300, seed=2)
    numbers, md = _report(tmp_path, df, n_boot=10)
    assert numbers["not_computed"] == {"shares over the space": "RuntimeError: planted failure"}
    assert "not computed: RuntimeError: planted failure." in md
    assert numbers["anova"]["full"]["factorial"]["reason"] == "not computed: RuntimeError: planted failure"
    assert numbers["headline"]["eta2_arch"] == pytest.approx(anova.one_way(df)["eta2"])  # the rest stands
    assert "## 2. Convergence" in md and (tmp_path / "report.html").stat().st_size > 0
    assert numbers["headline"]["share_arch"] is None


def test_a_large_history_is_fit_on_the_runs_of_random_cells_and_says_so(model, adaptive, monkeypatch):
    monkeypatch.setattr(variance, "MAX_ROWS", 2000)
    r = variance.space_shares(adaptive, model.space, n_boot=0)
    assert r["reason"] is None and 1900 < r["n"] <= 2000
    assert r["note"].startswith(f"fit on the {r['n']:,} runs of {r['cells_run']:,} randomly chosen cells (of 6,000 runs")
    h = variance.headline_numbers({"fanova": r, "comparison": {}})
    assert "randomly chosen cells" in variance.headline_sentence({**h, "eta2_arch": 0.5, "n_arch": 6000})


# ---- paper scale ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_analyze_end_to_end_on_a_paper_scale_history(tmp_path):
    """10,469 runs shaped like the paper's (5 backbones x 8 encoders, agents and random, replicates, a
    bug fix at a third): the history on which `crashsearch analyze` crashed in eta2_interval."""
    from crashsearch.flows.analyze import analyze
    from crashsearch.lab.exchange import import_log
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store
    from crashsearch.lab.versions import declare_bugfix

    home = resolve_home(tmp_path)
    space = Space.load()
    df = synthetic_history(10_469, seed=0)
    assert import_log(Store(home), _parquet(tmp_path, df), "paper", space).new == 10_469
    declare_bugfix(home, note="window slicing fixed", campaign="paper", at=str(df["finished_at"].iloc[3489]))
    result = analyze("paper", home)
    n, md = result["numbers"], Path(result["report"]).read_text()
    h = n["headline"]
    assert n["not_computed"] == {} and h["scope"]["share_arch"] == "post-bugfix"
    assert all(math.isfinite(v) for v in h["eta2_arch_ci"] + h["share_arch_ci"] + h["share_arch_group_ci"])
    for block in (n["anova"]["full"], n["anova"]["post_bugfix"]):
        for by in ("arch_group", "backbone", "encoder"):
            assert block[by]["reason"] is None and all(math.isfinite(v) for v in block[by]["eta2_ci"])
    # uniform-ish sampling of an additive planted effect: the share over the space of backbone x encoder
    # and the planted eta² (the arch groups' share under uniform sampling) agree
    assert h["share_arch_group"] == pytest.approx(df.attrs["truth"]["eta2_arch"], abs=0.05)
    assert md.split("## Headline\n\n- ", 1)[1].startswith("**Architecture's share of the AP variance over the space")


def _parquet(tmp_path, df):
    path = tmp_path / "log.parquet"
    df.drop(columns=["campaign"]).to_parquet(path, index=False)
    return path
