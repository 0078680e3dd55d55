"""Analysis suite: planted structure is recovered, statistics match direct computations, the report is complete.

Tolerances (stated here so a failure says what was promised):
- eta^2 of a planted architecture effect: within 0.03 of the population value (n = 4000);
- power-law exponent c: median over 5 seeds within 0.015 of the planted c;
- JS divergence of planted agent distributions: within 0.03 of the exact value (1000 draws each);
- entropy-cycle period: within 10% of the planted period; entropy of a uniform agent within 0.1 bit.
"""
from __future__ import annotations

import json
import math
import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crashsearch.analysis import anova, baselines, convergence, dynamics, transfer
from crashsearch.analysis.history import prepare
from crashsearch.analysis.report import build_report
from crashsearch.analysis.synthetic import arch_effects, power_law_history, synthetic_history
from crashsearch.lab.space import Space

GROUPS = [f"b{i}/e{j}" for i in range(5) for j in range(8)]


@pytest.fixture(scope="module")
def space():
    return Space.load()


def _frame(values, groups, proposer="random", campaign="c"):
    n = len(values)
    return pd.DataFrame({"campaign": campaign, "proposer": proposer, "arch_group": groups, "cell_id": np.arange(n),
                         "status": "ok", "val_ap": values})


# ---- ANOVA ----------------------------------------------------------------------------------

def test_one_way_matches_sums_of_squares_by_hand_and_scipy():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c", "d"], [5, 9, 4, 12])
    values = rng.normal(0.7, 0.05, len(groups)) + np.select([groups == "b", groups == "c"], [0.05, -0.03], 0.0)
    result = anova.one_way(_frame(values, groups))
    grand = values.mean()
    ss_between = sum(len(values[groups == g]) * (values[groups == g].mean() - grand) ** 2 for g in "abcd")
    ss_within = sum(((values[groups == g] - values[groups == g].mean()) ** 2).sum() for g in "abcd")
    f_hand = (ss_between / 3) / (ss_within / (len(values) - 4))
    assert result["F"] == pytest.approx(f_hand, rel=1e-9)
    assert result["eta2"] == pytest.approx(ss_between / (ss_between + ss_within), rel=1e-9)
    assert result["within_share"] == pytest.approx(1 - result["eta2"])
    scipy_result = stats.f_oneway(*[values[groups == g] for g in "abcd"])
    assert result["F"] == pytest.approx(scipy_result.statistic, rel=1e-9)
    assert result["p"] == pytest.approx(scipy_result.pvalue, rel=1e-6)
    assert (result["k"], result["n"], result["df_between"], result["df_within"]) == (4, 30, 3, 26)


def test_planted_architecture_effect_is_recovered(space):
    df = synthetic_history(4000, seed=1, policies=("random",), replicate_share=0.15)
    truth = df.attrs["truth"]
    result = anova.one_way(df)
    assert result["eta2"] == pytest.approx(truth["eta2_arch"], abs=0.03)
    assert result["p"] < 1e-100
    fac = anova.factorial(df)
    table = fac["table"]
    # arch terms carry the planted variance; an axis with a small planted effect gets a small share
    arch_share = table.loc[["backbone", "encoder", "backbone x encoder"], "eta2"].sum()
    assert arch_share == pytest.approx(truth["eta2_arch"], abs=0.04)
    assert table.loc["lr", "eta2"] < 0.05
    assert {"size", "loss", "batch_size", "window_s", "augment", "backbone x size", "Residual"} <= set(table.index)
    # noise floor: replicate sd recovers the planted seed noise
    assert fac["noise"]["sd"] == pytest.approx(truth["noise_sd"], rel=0.15)
    assert table.loc["seed noise (pure error)", "sum_sq"] == pytest.approx(fac["noise"]["ss"])


def test_eta2_has_an_interval_omega2_and_the_no_effect_expectation():
    # 8 groups, 13 runs, no effect at all: eta2 is large by chance alone
    rng = np.random.default_rng(3)
    groups = np.repeat([f"g{i}" for i in range(8)], [2, 2, 2, 2, 2, 1, 1, 1])
    r = anova.one_way(_frame(rng.normal(0.7, 0.05, 13), groups))
    assert (r["n"], r["k"]) == (13, 8) and r["eta2_null"] == pytest.approx(7 / 12)
    lo, hi = r["eta2_ci"]
    assert r["p"] > 0.05 and lo == 0.0 <= hi <= 1.0  # not significant: the interval reaches no effect
    k, n = 8, 13
    ms_w = r["ss_within"] / (n - k)
    assert r["omega2"] == pytest.approx((r["ss_between"] - (k - 1) * ms_w) / (r["ss_total"] + ms_w))
    assert r["omega2"] < r["eta2"]
    # a planted effect: the interval excludes 0 and holds the population eta2 = lambda / (lambda + N)
    big = synthetic_history(800, seed=1, policies=("random",))
    r = anova.one_way(big)
    assert 0 < r["eta2_ci"][0] <= big.attrs["truth"]["eta2_arch"] <= r["eta2_ci"][1]
    # at the interval's ends F sits at the 97.5% / 2.5% quantile of the noncentral F
    lam = r["eta2_ci"][0] / (1 - r["eta2_ci"][0]) * (r["df_between"] + r["df_within"] + 1)
    assert stats.ncf.cdf(r["F"], r["df_between"], r["df_within"], lam) == pytest.approx(0.975, abs=1e-3)


def _small_campaign(tmp_path):
    """A small campaign as the reviewer saw it: 13 one-run cells in 8 arch groups, five of them at AP 1.0."""
    groups = [f"b{i % 4}/e{i // 4 % 2}" for i in range(13)]
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 0.97, 0.9, 0.95, 0.93, 0.99, 0.85, 0.92, 0.88]
    df = _frame(values, groups)
    return build_report(df, tmp_path, validation={"videos": 4, "positives": 2, "negatives": 2}), df


def test_small_campaign_headline_names_the_tie_and_the_validation_n(tmp_path):
    numbers, _ = _small_campaign(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert re.search(r"Best single run \(full history\): validation AP 1\.0000 on 4 validation videos "
                     r"\(2 positives / 2 negatives\), one run, no interval", md)
    assert ("Leading cell undecided (full history): 4 other cell(s) are not separated from the leader: their 95% "
            "intervals overlap its interval") in md
    lead = numbers["headline"]["leader"]
    assert lead["tied"] == 5 and sorted(lead["tied_cells"]) == [0, 1, 2, 3, 4] and lead["runs"] == 1
    assert numbers["headline"]["validation"] == {"videos": 4, "positives": 2, "negatives": 2}


def test_leader_separated_by_intervals_is_not_a_tie():
    from crashsearch.analysis.report import leader_tie

    # cell 0: three runs near 0.9; cell 1: three runs near 0.6: intervals far apart
    df = prepare(_frame([0.90, 0.91, 0.89, 0.60, 0.61, 0.59], ["a/x"] * 3 + ["b/y"] * 3)
                 .assign(cell_id=[0, 0, 0, 1, 1, 1]))
    lead = leader_tie(df)
    assert lead["cell_id"] == 0 and lead["tied"] == 1 and lead["runs"] == 3 and lead["ci_lo"] < 0.9 < lead["ci_hi"]
    # a noisy runner-up whose interval reaches the leader's: undecided
    df = prepare(_frame([0.90, 0.91, 0.89, 0.95, 0.60, 0.87], ["a/x"] * 3 + ["b/y"] * 3)
                 .assign(cell_id=[0, 0, 0, 1, 1, 1]))
    assert leader_tie(df)["tied"] == 2


def test_small_campaign_eta2_is_undecided_not_compared_with_the_paper(tmp_path):
    numbers, df = _small_campaign(tmp_path)
    md = (tmp_path / "report.md").read_text()
    h = numbers["headline"]
    assert h["k_arch"] == 8 and h["n_arch"] == 13 and h["arch_undecided"] is True
    assert h["eta2_arch_ci"][0] == 0.0 and h["omega2_arch"] < h["eta2_arch"]
    assert h["eta2_null_arch"] == pytest.approx(7 / 12)
    assert "undecided: too few runs per group to separate architecture from noise" in md
    assert "N = 13 runs in 8 groups" in md and "Paper, post-bugfix" not in md
    assert numbers["anova"]["full"]["arch_group"]["eta2_ci"] == h["eta2_arch_ci"]


def test_cli_summary_uses_the_report_headline(tmp_path):
    from crashsearch.analysis.report import headline_lines
    from crashsearch.flows.analyze import headline_text

    numbers, _ = _small_campaign(tmp_path)
    result = {"campaign": "small", "headline": numbers["headline"], "report": "r.md", "html": "r.html", "arm_fits": []}
    text = headline_text(result)
    for line in headline_lines(numbers["headline"]):
        assert line in text
    assert "on 4 validation videos" in text and "4 other cell(s) are not separated" in text and "undecided" in text


def test_validation_counts_reads_the_split(tmp_path):
    from crashsearch.flows.analyze import validation_counts

    assert validation_counts(None) is None and validation_counts(tmp_path / "missing") is None
    lines = ["path,label,event_time,split"]
    for i, (label, split) in enumerate([(1, "val"), (1, "val"), (0, "val"), (0, "val"), (0, "val"),
                                        (1, "train"), (0, "train"), (1, "test"), (0, "test")]):
        (tmp_path / f"v{i}.mp4").write_bytes(b"")
        lines.append(f"v{i}.mp4,{label},{'3.0' if label else ''},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert validation_counts(tmp_path / "manifest.csv") == {"videos": 5, "positives": 2, "negatives": 3}


def test_tiny_or_degenerate_histories_give_reasons_not_crashes():
    empty = _frame([], [])
    assert anova.one_way(empty)["reason"] == "no experiment with a validation AP"
    one_group = _frame([0.5, 0.6, 0.7], ["a/x"] * 3)
    r = anova.one_way(one_group)
    assert math.isnan(r["F"]) and "only 1 level" in r["reason"]
    failed = _frame([np.nan, np.nan], ["a/x", "b/y"]).assign(status="failed")
    assert anova.one_way(failed)["reason"] == "no experiment with a validation AP"
    assert anova.factorial(one_group)["table"] is None
    assert anova.noise_floor(one_group)["reason"].startswith("no cell was run more than once")
    fit = convergence.fit_power_law([0.5, 0.4, 0.6])
    assert math.isnan(fit["c"]) and "needs at least 3 rises" in fit["reason"]
    assert baselines.verdict(one_group)["text"] == "No LLM agents in this history."
    assert dynamics.windows(one_group)["agents"].empty


def test_external_log_with_only_groups_and_partial_coverage():
    # an imported log: no ids, no backbone/encoder columns, and only 4 of 9 backbone x encoder pairs tried
    rng = np.random.default_rng(0)
    groups = rng.choice(["a/x", "b/y", "c/z", "a/y"], 400)
    df = pd.DataFrame({"arch_group": groups, "lr": rng.choice([0.1, 0.01], 400),
                       "val_ap": rng.normal(0.7, 0.02, 400) + np.where(groups == "a/x", 0.1, 0.0)})
    prepared = prepare(df)
    assert prepared["cell_id"].nunique() == 8 and set(prepared["backbone"]) == {"a", "b", "c"}
    fac = anova.factorial(df)
    assert "interactions dropped" in fac["note"] and fac["terms"] == ["C(backbone)", "C(encoder)", "C(lr)"]
    assert fac["table"]["sum_sq"].notna().all() and fac["table"].loc["lr", "eta2"] < 0.01


# ---- convergence ----------------------------------------------------------------------------

@pytest.mark.parametrize("c", [0.11, 0.3])
def test_planted_power_law_exponent_is_recovered(c):
    fits = [convergence.fit_power_law(power_law_history(3000, 0.95, 0.3, c, noise_sd=0.001, seed=s, near_share=0.8)["val_ap"],
                                      n_boot=40, seed=s) for s in range(5)]
    assert float(np.median([f["c"] for f in fits])) == pytest.approx(c, abs=0.015)
    assert all(f["r2"] > 0.95 for f in fits)
    assert sum(f["c_ci"][0] <= c <= f["c_ci"][1] for f in fits) >= 4
    fc = convergence.forecast(fits[0], 3000, 3000)
    assert fc["expected"] > fc["now"] and fc["gain"] > 0
    assert fc["expected"] <= fits[0]["a"] + 1e-12
    assert fc["gain_ci"][0] <= fc["gain"] <= fc["gain_ci"][1] + 1e-9


def test_curves_count_failures_and_gpu_hours():
    df = _frame([0.5, np.nan, 0.7, 0.6], ["a/x"] * 4).assign(train_seconds=[3600, 1800, 1800, 3600],
                                                             status=["ok", "failed", "ok", "ok"])
    overall = convergence.curves(df).query("scope == 'overall'")
    assert overall["best_ap"].tolist() == [0.5, 0.5, 0.7, 0.7]
    assert overall["gpu_hours"].tolist() == [1.0, 1.5, 2.0, 3.0]


# ---- baselines ------------------------------------------------------------------------------

def _arms_history(seed=0, llm=True):
    rng = np.random.default_rng(seed)
    parts = []
    if llm:
        parts.append(_frame(rng.normal(0.90, 0.01, 120), "g/x", proposer="claude", campaign="main"))
    for rep in range(3):
        name = "main-baseline-random" + (f"-s{rep}" if rep else "")
        parts.append(_frame(rng.normal(0.80, 0.02, 120), "g/x", proposer="random", campaign=name))
    return pd.concat(parts, ignore_index=True)


def test_best_at_n_intervals_and_verdict():
    df = _arms_history()
    table = baselines.best_at_n(df, ns=(10, 50, 100))
    random_row = table.query("arm == 'random' and n == 50").iloc[0]
    assert random_row["runs"] == 3 and random_row["method"] == "runs"
    assert random_row["lo"] <= random_row["best"] <= random_row["hi"]
    claude = table.query("arm == 'claude' and n == 50").iloc[0]
    assert claude["method"] == "resample-first-N" and claude["hi"] == pytest.approx(claude["best"])
    v = baselines.verdict(df, n=50)
    assert v["beats"] is True and v["diff"] > 0.05 and v["diff_lo"] > 0
    assert re.match(r"At N=50 the LLM agents \(claude\) reach 0\.9\d+ vs random 0\.8\d+ \(difference \+0\.\d+, 95% interval", v["text"])
    assert baselines.verdict(df, n=500)["n"] == 120  # the largest N both arms reached, said in the text
    assert "N=500 was not reached" in baselines.verdict(df, n=500)["text"]
    assert baselines.verdict(_arms_history(llm=False))["text"] == "No LLM agents in this history."
    regret = baselines.regret_curves(df)
    assert (regret["regret"] >= -1e-12).all()
    assert regret.groupby("arm")["regret"].apply(lambda r: r.is_monotonic_decreasing).all()


class _ListPolicy:
    """Proposes cell ids from a fixed list, in order."""

    name = "listed"

    def __init__(self, ids):
        self.ids, self.seen = list(ids), []

    def propose(self, view, n):
        out, self.ids = self.ids[:n], self.ids[n:]
        return out

    def observe(self, rows):
        self.seen += [r["cell_id"] for r in rows]
        assert all("test_ap" not in r for r in rows)


def test_replay_uses_the_history_as_a_lookup_table(space):
    table = synthetic_history(300, seed=3, replicate_share=0.0, fail_share=0.0).drop_duplicates("cell_id")
    present = table["cell_id"].drop_duplicates().tolist()
    absent = [i for i in range(1000) if i not in set(present)][:5]
    ids = present[:10] + absent + present[:3] + present[10:30]
    policy = _ListPolicy(ids)
    result = baselines.replay(policy, space, table, budget=25, round_size=6,
                              view_factory=lambda space, experiments, in_flight, round: experiments)
    assert result.hits == 25 and len(result.history) == 25 and result.stopped == "budget"
    assert (result.misses, result.duplicates) == (5, 3)
    assert result.history["cell_id"].tolist() == present[:25] == policy.seen
    lookup = table.set_index("cell_id")["val_ap"]
    assert np.allclose(result.history["val_ap"], lookup.loc[present[:25]].to_numpy())
    assert set(result.history["proposer"]) == {"listed"}


def test_replay_drives_a_real_policy_through_the_history_view(space):
    from crashsearch.agents import create_policy

    small = space.restrict(backbone=["pixels"], encoder=["gru", "tcn"], size=["small"])
    table = synthetic_history(500, seed=4, space=small, policies=("random",))
    result = baselines.replay(create_policy("random", small, seed=0), small, table, budget=8)
    assert result.hits == 8 and result.misses > 0 and result.stopped == "budget"
    assert result.history["cell_id"].isin(table["cell_id"]).all()


# ---- dynamics -------------------------------------------------------------------------------

def test_js_divergence_of_planted_distributions():
    p = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    q = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    exact = dynamics.js_divergence(p, q)
    assert dynamics.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert dynamics.js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    n = 4000
    agent = np.where(np.arange(n) % 2 == 0, "claude", "gemini")
    groups = np.where(agent == "claude", rng.choice(GROUPS[:5], n, p=p), rng.choice(GROUPS[:5], n, p=q))
    w = dynamics.windows(_frame(rng.random(n), groups).assign(proposer=agent), window=2000, step=1000)
    assert len(w["js"]) == 3
    assert w["js"]["js"].to_numpy() == pytest.approx(exact, abs=0.03)
    # entropy of each agent's window matches the planted distribution's entropy
    ent = w["agents"].set_index(["window", "agent"])["entropy"]
    assert ent.xs("claude", level="agent").to_numpy() == pytest.approx(stats.entropy(p, base=2), abs=0.05)


def test_entropy_cycle_period_is_recovered():
    rng = np.random.default_rng(1)
    n, period = 6000, 600
    t = np.arange(n)
    agent = np.where(t % 2 == 0, "claude", "gemini")
    explore = np.sin(2 * np.pi * t / period) > 0
    # claude alternates between exploring all 40 groups and exploiting 2; gemini stays uniform
    groups = np.where(explore | (agent == "gemini"), rng.choice(GROUPS, n), np.array(GROUPS)[rng.integers(0, 2, n)])
    dyn = dynamics.dynamics(_frame(rng.random(n), groups).assign(proposer=agent), window=100, step=20)
    assert dyn["cycles"]["claude"]["period"] == pytest.approx(period, rel=0.10)
    assert dyn["cycles"]["claude"]["strength"] > 0.5
    assert dyn["cycles"]["claude"]["n_peaks"] == pytest.approx(n / period, abs=2)
    uniform = dyn["windows"]["agents"].query("agent == 'gemini'")["entropy"]
    # 50 draws over 40 groups: the plug-in entropy sits below log2(40) = 5.32; its expectation by simulation
    expected = stats.entropy(rng.multinomial(50, [1 / 40] * 40, size=4000).T, base=2).mean()
    assert uniform.mean() == pytest.approx(expected, abs=0.1)
    assert dyn["cycles"]["gemini"]["strength"] < dyn["cycles"]["claude"]["strength"]


def test_innovation_and_credit():
    """Replicate, rerun and heal rows are bookkeeping: left out of innovation, credited to the original proposer."""
    df = pd.DataFrame({
        "campaign": "c", "experiment_id": [f"e{i}" for i in range(8)],
        "proposer": ["claude", "gemini", "claude", "replicate", "gemini", "random", "rerun", "heal"],
        "healed_from": [None] * 7 + ["e5"],
        "arch_group": ["a/x", "a/x", "b/y", "b/y", "a/x", "a/x", "a/x", "a/x"],
        "size": ["small", "large", "small", "small", "small", "large", "small", "medium"],
        "lr": [0.001, 0.001, 0.001, 0.001, 0.01, 0.01, 0.001, 0.003],
        "cell_id": [1, 2, 3, 3, 4, 5, 1, 6],
        "status": "ok", "val_ap": [0.5, 0.4, 0.6, 0.65, 0.7, 0.1, 0.72, 0.75],
        "tokens_in": [100, 200, 100, 0, 200, 0, 0, 0], "tokens_out": [10, 20, 10, 0, 20, 0, 0, 0],
        "cost_usd": [0.01, 0.02, 0.01, 0.0, 0.02, 0.0, 0.0, 0.0],
    })
    inn = dynamics.innovation(df).set_index("agent")
    assert set(inn.index) == {"claude", "gemini", "random"}  # no replicate, rerun or heal rows
    assert "new_cells" not in inn.columns  # 1 by construction under dedup: not reported
    assert inn.loc["claude", "new_groups"] == 2 and inn.loc["gemini", "new_groups"] == 0
    # gemini's lr 0.01 in the tried group a/x is a new combination; its size-only change is not; random repeats it
    assert inn.loc["gemini", "new_hp"] == 1 and inn.loc["gemini", "hp_rate"] == 0.5 and inn.loc["random", "new_hp"] == 0
    credit = dynamics.credit(df).set_index("arm")
    assert set(credit.index) == {"claude", "gemini", "random"}
    # claude: the first AP, its own 0.6, the replicate (0.65) and the rerun (0.72) of its cells; the heal of
    # random's failed run is random's
    assert credit.loc["claude", "improvements"] == 4 and credit.loc["gemini", "improvements"] == 1
    assert credit.loc["random", "improvements"] == 1 and credit.loc["random", "gain"] == pytest.approx(0.03)
    assert credit.loc["gemini", "gain"] == pytest.approx(0.05)
    assert credit.loc["claude", "tokens_per_improvement"] == pytest.approx(220 / 4)
    windows = dynamics.windows(df, window=4, step=2, min_count=1)["agents"]
    assert set(windows["agent"]) == {"claude", "gemini", "random"} and "innovation_hp" in windows.columns


# ---- transfer -------------------------------------------------------------------------------

def test_transfer_winners_and_rank_correlation(space):
    effects = arch_effects(space, sd=0.03, seed=7)
    effects["vjepa2_vitl/zipformer"] = 0.2  # a clear winner on both datasets
    noise = arch_effects(space, sd=0.03, seed=8)
    night = {k: v + 0.3 * noise[k] for k, v in effects.items()}
    df = pd.concat([synthetic_history(3000, seed=1, policies=("random",), effects=effects),
                    synthetic_history(3000, seed=2, policies=("random",), effects=night, dataset="synth-night",
                                      campaign="night")], ignore_index=True)
    tr = transfer.transfer(df)
    per = tr["datasets"].set_index("dataset")
    assert (per["top_arch_group"] == "vjepa2_vitl/zipformer").all()
    assert (per["top_encoder"] == "zipformer").all() and per["eta2_arch"].gt(0.5).all()
    row = tr["arch_group"].iloc[0]
    assert row["common"] == 40 and row["spearman"] > 0.8 and row["kendall"] > 0.6 and row["spearman_p"] < 1e-6
    expected = stats.spearmanr(*transfer.group_means(df).dropna().to_numpy().T).statistic
    assert row["spearman"] == pytest.approx(expected)


# ---- report and flow ------------------------------------------------------------------------

def _check_report(out: Path, numbers: dict) -> None:
    import matplotlib.image as mpimg

    for name in ("report.md", "report.html", "numbers.json"):
        assert (out / name).stat().st_size > 0, name
    pngs = sorted((out / "figures").glob("*.png"))
    drawn = {k for k, v in numbers["figures"].items() if v is not None}
    assert {p.stem for p in pngs} == drawn  # a figure with nothing to show is not drawn, and says why
    assert set(numbers["figures"]) == {"convergence", "best_at_n", "dynamics", "eta2", "coverage", "space_shares"}
    assert set(numbers["figures_absent"]) == set(numbers["figures"]) - drawn
    for png in pngs:
        assert mpimg.imread(png).ndim == 3
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(drawn) and "figures/" not in html
    assert html.count("Figure not drawn") == len(numbers["figures_absent"])
    assert json.loads((out / "numbers.json").read_text()) == numbers


@pytest.mark.slow
def test_build_report_writes_every_file_and_number(tmp_path, space):
    df = synthetic_history(600, seed=2)
    base = synthetic_history(200, seed=3, campaign="synthetic-baseline-random", policies=("random",))
    other = synthetic_history(300, seed=4, campaign="night", dataset="synth-night")
    events = [{"declared_at": df["finished_at"].iloc[200], "note": "fixed the window slicing"}]
    numbers = build_report(df, tmp_path, events=events, title="test", baselines_df=base, other_datasets=other,
                           weights="random")
    _check_report(tmp_path, numbers)
    md = (tmp_path / "report.md").read_text()
    assert "Backbones were random-init" in md and "## Top 5 cells" in md
    assert "No like-for-like verdict: 1 from-scratch arm(s) (random)" in md  # one control arm: nothing to compare
    assert "Arms in a shared campaign, not from scratch" in md
    h = numbers["headline"]
    # an event applies: the headline is on the post-fix rows, the full history beside it
    assert h["scope"]["eta2_arch"] == "post-bugfix" and h["scope"]["best_val_ap"] == "full history"
    assert h["eta2_arch"] == pytest.approx(anova.one_way(df.iloc[200:])["eta2"])
    assert h["full_history"]["eta2_arch"] == pytest.approx(anova.one_way(df)["eta2"])
    assert re.search(r"eta² = [0-9.]+ of the AP variance \(95% interval of the population eta² \[[0-9.]+, [0-9.]+\], "
                     r"omega² = -?[0-9.]+, "
                     r"F = [0-9.,]+, p = [^;]+; N = [0-9,]+ runs in \d+ groups, where no effect at all averages eta² = "
                     r"[0-9.]+; post-bugfix, \d+ runs after the fix; full history beside it: eta² = ", md)
    assert h["agents_beat_controls"] in (True, False, None)
    assert numbers["convergence"]["post_start"] == 200 and numbers["anova"]["post_bugfix"]["arch_group"]["n"] < 600
    assert len(numbers["top5"]) == 5 and numbers["top5"][0]["rank"] == 1
    assert numbers["transfer"]["datasets"][1]["dataset"] == "synth-night"
    terms = {t["term"] for t in numbers["anova"]["full"]["factorial"]["terms"]}
    assert {"backbone x encoder", "Residual"} <= terms


def test_build_report_on_a_tiny_history(tmp_path):
    df = _frame([0.5, np.nan, 0.55], ["pixels/gru", "pixels/tcn", "pixels/gru"]).assign(status=["ok", "failed", "ok"])
    numbers = build_report(df, tmp_path)
    _check_report(tmp_path, numbers)
    assert numbers["anova"]["full"]["factorial"]["reason"]
    assert numbers["headline"]["verdict"].startswith("No like-for-like verdict: 0 from-scratch arm(s)")
    assert numbers["headline"]["scope"]["eta2_arch"] == "full history"
    assert "not recorded" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_analyze_reads_the_store_with_baselines_and_other_datasets(tmp_path, space):
    import pyarrow as pa

    from crashsearch.flows.analyze import analyze
    from crashsearch.flows.commands.analyze import run as main
    from crashsearch.lab.schema import experiment_schema
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    home = resolve_home(tmp_path)
    store = Store(home)
    names = set(experiment_schema(space).names)

    def put(df, campaign, dataset):
        df = df.assign(campaign=campaign, dataset=dataset)
        store.append_table(campaign, pa.Table.from_pandas(df[[c for c in df.columns if c in names]], preserve_index=False), space)
        store.write_campaign(campaign, {"dataset": dataset, "weights": {"pixels": "none", "vjepa2_vitl": "random"}})

    put(synthetic_history(200, seed=1), "day", "synth-day")
    put(synthetic_history(100, seed=2, policies=("random",)), "day-baseline-random", "synth-day")
    put(synthetic_history(100, seed=3), "night", "synth-night")
    result = analyze("day", home)
    out = Path(result["report_dir"])
    assert out == home.root / "campaigns" / "day" / "report"
    _check_report(out, json.loads((out / "numbers.json").read_text()))
    n = result["numbers"]
    assert n["history"]["campaigns"] == ["day"] and n["history"]["experiments"] == 200
    # the control arm is from scratch; the campaign's own random rows are a shared-campaign arm, never mixed in
    assert [(r["arm"], r["repeats"]) for r in n["baselines"]["from_scratch"]["best_at_n"]][:1] == [("random", 1)]
    assert all(r["runs"] == 1 for r in n["baselines"]["shared_best_at_n"] if r["arm"] == "random")
    assert n["transfer"]["datasets"][1]["dataset"] == "synth-night"
    assert "vjepa2_vitl were random-init" in (out / "report.md").read_text()
    # campaign.json names no dataset_path here: the headline says the validation N is unknown, never a guess
    assert n["headline"]["validation"] is None and "validation N not recorded" in (out / "report.md").read_text()
    # a wrong campaign id: one line, exit code 2, no Prefect server started
    assert main(Namespace(campaign="nope", home_dir=home)) == 2


def test_analysis_imports_only_lab_and_libraries():
    # dependency rule: analysis -> lab (agents only lazily, for the replay view)
    for path in Path(__file__).resolve().parent.parent.joinpath("analysis").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (flows|tasks)\b", text, re.M), path.name
        assert not re.search(r"^(from|import) agents\b", text, re.M), path.name


def test_control_arms_are_tagged_so_the_analysis_finds_them(tmp_path, monkeypatch):
    import crashsearch.flows.campaign
    from crashsearch.analysis.history import parse_baseline
    from crashsearch.flows.analyze import run_control_arms
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    home = resolve_home(tmp_path)
    Store(home).write_campaign("day", {"dataset": "synth-day", "backbones": ["pixels"], "seeds": 2})
    calls = []

    def fake_run_campaign(home_, dataset, campaign_id=None, policies=(), budget=0, seeds=3, seed=0, **kw):
        calls.append((campaign_id, tuple(policies), budget, seeds, seed, kw.get("backbones")))
        if policies == ("tpe",) and seed == 1:
            raise ValueError("no cached features for backbone pixels")

    monkeypatch.setattr(crashsearch.flows.campaign, "run_campaign", fake_run_campaign)
    done = run_control_arms(home, "datasets/synth-day", "day", budget=60, seeds=2)
    assert done == ["day-baseline-random", "day-baseline-random-s1", "day-baseline-tpe"]
    assert calls[1] == ("day-baseline-random-s1", ("random",), 60, 2, 1, ["pixels"])
    assert [parse_baseline(c) for c in done] == [("day", "random"), ("day", "random"), ("day", "tpe")]
