"""Trustworthy answers (issue 14): bug-fix events by version and campaign, the headline's scope,
one leaderboard, like-for-like arms and the transfer line."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from crashsearch.analysis import anova
from crashsearch.analysis.arms import arm_best_at_n, arm_power_laws, arm_table, arm_verdict
from crashsearch.analysis.synthetic import synthetic_history
from crashsearch.analysis.transfer import per_dataset, winner
from crashsearch.flows.cli import main as cli
from crashsearch.lab.leaderboard import format_interval, leaderboard
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, declare_bugfix, post_fix_mask, pre_fix


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home")


def _log(n=300, seed=0, campaign="paper", versions=("v1", "v2", "v3"), shift=0.15):
    """An exported history whose code version changes twice; the v1 rows carry a bug that shrinks the arch effect."""
    df = synthetic_history(n, seed=seed, campaign=campaign, replicate_share=0.0, fail_share=0.0)
    cut = np.array_split(np.arange(n), len(versions))
    df["code_version"] = np.concatenate([[v] * len(c) for v, c in zip(versions, cut)])
    buggy = df["code_version"] == versions[0]
    rng = np.random.default_rng(seed)
    df.loc[buggy, "val_ap"] = 0.6 + rng.normal(0, shift, buggy.sum()).clip(-0.3, 0.3)  # noise: no arch signal
    return df


# ---- segmentation --------------------------------------------------------------------------

def test_version_event_marks_that_version_and_later_ones_post_fix():
    df = _log(30)
    event = {"version": "v2", "declared_at": pd.Timestamp("2030-01-01", tz="UTC")}  # declared long after
    post = post_fix_mask(df, event)
    assert list(df.loc[post, "code_version"].unique()) == ["v2", "v3"] and not post[df["code_version"] == "v1"].any()
    # time order decides "first seen after", not the version's name
    renamed = df.assign(code_version=df["code_version"].map({"v1": "zz", "v2": "aa", "v3": "mm"}))
    assert (post_fix_mask(renamed, {**event, "version": "aa"}) == post).all()


def test_time_event_and_campaign_scope():
    a, b = _log(30, campaign="a"), _log(30, seed=1, campaign="b")
    both = pd.concat([a, b], ignore_index=True)
    at = a["finished_at"].iloc[10]
    event = {"at": at, "campaign": "a", "declared_at": pd.Timestamp("2030-01-01", tz="UTC")}
    mask = post_fix_mask(both, event)
    assert mask[both["campaign"] == "b"].all()  # never changes another campaign's analysis
    assert list(np.flatnonzero(~mask)) == list(range(10))
    assert (pre_fix(both, [event]) == ~mask).all()


def test_a_version_not_yet_seen_splits_at_the_declaration():
    df = _log(30)
    event = {"version": "v9", "declared_at": df["finished_at"].iloc[20]}  # first seen after: v3 only
    assert set(df.loc[post_fix_mask(df, event), "code_version"]) == {"v3"}


# ---- done when: an imported log declared with bugfix --campaign ID --version V ---------------

@pytest.mark.slow
def test_imported_log_with_version_change_gives_the_post_fix_headline(home, tmp_path, capsys):
    space = Space.load()
    log = _log(360, seed=3)
    log.drop(columns=["campaign"]).to_parquet(tmp_path / "paper.parquet")
    other = _log(120, seed=5, campaign="other")
    other.drop(columns=["campaign"]).to_parquet(tmp_path / "other.parquet")
    assert cli(["import", str(tmp_path / "paper.parquet"), "--campaign", "paper", "--home", str(home.root)]) == 0
    assert cli(["import", str(tmp_path / "other.parquet"), "--campaign", "other", "--home", str(home.root)]) == 0
    capsys.readouterr()
    # hostile input: a wrong campaign, a version the campaign never had, both --version and --at
    assert cli(["bugfix", "--note", "x", "--campaign", "nope", "--version", "v2", "--home", str(home.root)]) == 2
    assert cli(["bugfix", "--note", "x", "--campaign", "paper", "--version", "v7", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert "campaign 'nope' has no experiments" in err and "no experiment of campaign paper has code version 'v7'" in err
    assert "Traceback" not in err and bugfix_events(home) == []
    with pytest.raises(SystemExit):
        cli(["bugfix", "--note", "x", "--version", "v2", "--at", "2025-01-01", "--home", str(home.root)])

    assert cli(["bugfix", "--note", "window slicing fixed", "--campaign", "paper", "--version", "v2",
                "--home", str(home.root)]) == 0
    assert cli(["bugfix", "--list", "--home", str(home.root)]) == 0
    listed = capsys.readouterr().out
    assert "campaign paper: code version v2 and any version first seen after it" in listed

    from crashsearch.flows.analyze import analyze

    stored = Store(home).experiments("paper")
    expected = anova.one_way(stored[stored["code_version"].isin(["v2", "v3"])])  # computed independently
    full = anova.one_way(stored)
    h = analyze("paper", home)["headline"]
    assert h["scope"]["eta2_arch"] == "post-bugfix"
    assert abs(h["eta2_arch"] - expected["eta2"]) < 0.01 and h["F_arch"] == pytest.approx(expected["F"], rel=1e-6)
    assert h["full_history"]["eta2_arch"] == pytest.approx(full["eta2"]) and h["eta2_arch"] > full["eta2"] + 0.1
    # the event is scoped to 'paper': the other campaign's headline stays on its full history
    o = analyze("other", home)["headline"]
    assert o["scope"]["eta2_arch"] == "full history" and o["bugfix_events"] == []
    assert o["eta2_arch"] == pytest.approx(anova.one_way(Store(home).experiments("other"))["eta2"])
    numbers = json.loads((home.campaign("paper") / "report" / "numbers.json").read_text())
    assert numbers["headline"]["scope"]["best_val_ap"] == "full history"


# ---- one leaderboard ---------------------------------------------------------------------------

def test_one_leaderboard_everywhere(home):
    from crashsearch.agents.base import VIEW_COLUMNS, HistoryView
    from crashsearch.agents.prompt import propose_prompt
    from crashsearch.analysis.history import prepare
    from crashsearch.analysis.report import top_cells

    space = Space.load()
    df = synthetic_history(200, seed=4, replicate_share=0.3, fail_share=0.0)
    Store(home).append("c", df.drop(columns=["campaign"]).to_dict("records"), space)
    stored = Store(home).experiments("c")
    board_cli = Store(home).leaderboard("c", k=5)
    view = HistoryView(space, stored[[c for c in VIEW_COLUMNS + space.axis_names if c in stored.columns]])
    board_view = view.leaderboard(5)
    board_report = top_cells(prepare(stored), 5)
    assert list(board_cli["cell_id"]) == list(board_view["cell_id"]) == list(board_report["cell_id"])
    np.testing.assert_allclose(board_cli["ci_low"], board_view["ci_lo"], equal_nan=True)
    np.testing.assert_allclose(board_report["ci_hi"], board_view["ci_hi"], equal_nan=True)
    one = board_view[board_view["n"] == 1]
    assert one["ci_lo"].isna().all()  # one run: no interval, not a zero-width one
    text = propose_prompt(view, 3, agent="claude")
    for r in board_view.itertuples():
        assert format_interval(r.ci_lo, r.ci_hi, r.n) in text


def test_single_run_has_no_interval_and_pre_fix_rows_are_marked_in_the_prompt():
    from crashsearch.agents.base import HistoryView
    from crashsearch.agents.prompt import propose_prompt

    space = Space.load()
    df = synthetic_history(40, seed=1, replicate_share=0.0, fail_share=0.0)
    board = leaderboard(df, 3, space.axis_names)
    assert (board["n"] == 1).all() and board["ci_lo"].isna().all() and format_interval(0.5, 0.5, 1) == "-"
    event = {"declared_at": df["finished_at"].iloc[20]}
    view = HistoryView(space, df.assign(pre_fix=pre_fix(df, [event]))[["cell_id", "status", "val_ap", "proposer",
                                                                       "pre_fix", *space.axis_names]])
    text = propose_prompt(view, 2, agent="claude")
    top = view.leaderboard(15)
    assert "before fix" in text and "trained = 'before fix'" in text
    assert (top["pre_fix_runs"] > 0).sum() == sum(line.endswith("| before fix") for line in text.splitlines())


# ---- like-for-like arms ------------------------------------------------------------------------

def _arms(means: dict[str, float], repeats=3, n=60, sd=0.01, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for arm, m in means.items():
        for rep in range(repeats):
            vals = m - 0.2 * rng.random(n) ** 0.3 * np.linspace(1, 0.2, n) + rng.normal(0, sd, n)
            rows += [{"arm": arm, "repeat": rep, "n": i + 1, "val_ap": v} for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_arm_verdict_names_n_and_arms_and_says_undecided_on_overlap():
    clear = arm_verdict(_arms({"random": 0.80, "tpe": 0.95}), n=50)
    assert clear["n"] == 50 and clear["arms"] == ["random", "tpe"] and clear["leader"] == "tpe"
    assert clear["text"].startswith("At N=50, from-scratch arms random, tpe") and "tpe leads" in clear["text"]
    # no real difference: undecided (8 repeats: with 3, a null difference is decided by chance more often)
    close = arm_verdict(_arms({"random": 0.90, "tpe": 0.9005}, sd=0.03, repeats=8), n=50)
    assert close["undecided"] and close["leader"] is None and "undecided: the intervals overlap" in close["text"]
    short = arm_verdict(_arms({"random": 0.8, "tpe": 0.9}, n=30), n=50)
    assert short["n"] == 30 and "N=50 was not reached" in short["text"]
    single = arm_verdict(_arms({"random": 0.8, "tpe": 0.95}, repeats=1), n=50)
    assert single["undecided"] and "single repeat" in single["text"]
    bat = arm_best_at_n(_arms({"random": 0.8}, repeats=1), (10,))
    assert math.isnan(bat["lo"].iloc[0])  # one repeat: no interval


def test_arm_power_laws_recover_c_per_arm():
    from crashsearch.analysis.synthetic import power_law_history

    rows = []
    for arm, c in (("random", 0.2), ("tpe", 0.5)):
        for rep in range(3):
            h = power_law_history(400, a=0.95, b=0.3, c=c, seed=rep, noise_sd=0.0005, near_share=0.9)
            rows += [{"arm": arm, "repeat": rep, "n": i + 1, "val_ap": v} for i, v in enumerate(h["val_ap"])]
    fits = arm_power_laws(pd.DataFrame(rows)).set_index("arm")
    assert fits.loc["random", "c"] == pytest.approx(0.2, abs=0.05) and fits.loc["tpe", "c"] == pytest.approx(0.5, abs=0.1)
    assert (fits["r2"] > 0.9).all()


def test_arm_table_reads_control_campaign_ids():
    a = synthetic_history(20, seed=1, campaign="x-baseline-tpe", policies=("tpe",))
    b = synthetic_history(20, seed=2, campaign="x-baseline-tpe-s2", policies=("tpe",))
    c = synthetic_history(20, seed=3, campaign="x", policies=("claude",))
    table = arm_table(pd.concat([a, b, c], ignore_index=True))
    assert sorted(table.groupby(["arm", "repeat"]).size().items()) == [(("tpe", 0), 20), (("tpe", 2), 20)]


# ---- transfer ----------------------------------------------------------------------------------

def test_transfer_winner_line():
    day = synthetic_history(300, seed=1, dataset="day")
    night = synthetic_history(300, seed=2, dataset="night", campaign="n")
    table = per_dataset(pd.concat([day, night], ignore_index=True))
    w = winner(table)
    assert w["arch_group_differs"] == (table["top_arch_group"].nunique() > 1)
    assert w["text"].startswith("The winner differs" if w["arch_group_differs"] else "The winner is the same")
    same = winner(table.assign(top_arch_group="a/b", top_backbone="a"))
    assert same == {"backbone_differs": False, "arch_group_differs": False,
                    "text": "The winner is the same on every dataset: arch group a/b."}


@pytest.mark.slow
def test_analyze_control_arms_with_repeats_shows_per_arm_c_and_a_verdict(synth_dataset, tmp_path, capsys):
    """Done when: `analyze --control-arms random,tpe --repeats 3` shows per-arm c and a verdict naming N and arms."""
    from crashsearch.flows.campaign import run_campaign
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path / "home")
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space_path = tmp_path / "small.yaml"
    space_path.write_text("name: small\ngroups:\n  arch:\n    backbone: [pixels]\n    encoder: [meanpool_mlp, gru]\n"
                          "    size: [small]\n  loss:\n    loss: [bce]\n  train:\n    lr: [0.00001, 0.00003, 0.0001, 0.0003]\n"
                          "    batch_size: [16, 32]\n  data:\n    window_s: [1.0, 2.0]\n    augment: [none]\nfixed:\n"
                          "  epochs: 1\n  weight_decay: 0.01\n  class_balance: true\n  horizons_s: [0.5, 1.0, 1.5]\n")
    run_campaign(home, synth_dataset.root, "mini", policies=["evolution", "random"], budget=12, round_size=6,
                 space_path=str(space_path), seeds=1, log=lambda m: None)
    assert cli(["analyze", "--campaign", "mini", "--control-arms", "random,tpe", "--repeats", "0", "--home", str(home.root)]) == 2
    assert cli(["analyze", "--campaign", "mini", "--control-arms", "random,bogus", "--home", str(home.root)]) == 2
    assert "unknown policy bogus" in capsys.readouterr().err
    assert cli(["analyze", "--campaign", "mini", "--control-arms", "random,tpe", "--repeats", "3",
                "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "At N=12 (the largest N every arm reached; N=50 was not reached), from-scratch arms random, tpe" in out
    assert "Verdict:" in out
    numbers = json.loads((home.campaign("mini") / "report" / "numbers.json").read_text())
    fits = {f["arm"]: f for f in numbers["baselines"]["from_scratch"]["power_laws"]}
    assert set(fits) == {"random", "tpe"} and all(f["repeats"] == 3 for f in fits.values())
    # each arm's c is printed, or why it has none (a curve that rose fewer than 3 times cannot be fitted)
    assert all((f["c"] is not None) != bool(f["reason"]) for f in fits.values())
    assert any(f["c"] is not None for f in fits.values())
    for arm, fit in fits.items():
        assert f"arm {arm:<12} c = " + ("n/a" if fit["c"] is None else f"{fit['c']:.3f}") in out
    report = (home.campaign("mini") / "report" / "report.md").read_text()
    assert "| arm | a | b | c | c 95% | R² |" in report and "Arms in a shared campaign, not from scratch" in report
    for arm in ("random", "tpe"):  # same budget and space as the campaign
        for rep in ("", "-s1", "-s2"):
            rows = Store(home).experiments(f"mini-baseline-{arm}{rep}")
            assert len(rows) == 12 and set(rows["encoder"]) <= {"meanpool_mlp", "gru"}


def test_bugfix_default_version_warns_when_rows_already_have_it(home, capsys):
    from crashsearch.lab.versions import code_version

    space = Space.load()
    cell = space.sample(__import__("random").Random(0), 1)[0]
    Store(home).append("c1", [{"experiment_id": "a", "cell_id": cell.id, "status": "ok", "val_ap": 0.5,
                               "code_version": code_version()}], space)
    assert cli(["bugfix", "--note", "fixed", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "1 experiment(s) already ran with this code version and count as post-fix" in out
    assert cli(["bugfix", "--note", "fixed", "--at", "not a time", "--home", str(home.root)]) == 2
    assert "is not a time" in capsys.readouterr().err and len(bugfix_events(home)) == 1


def test_control_arms_are_reused_until_the_dataset_or_space_changes(home, monkeypatch):
    """Nightly: arms run once and are reused; after a space change fresh arms run and stale ones leave the report."""
    import crashsearch.flows.campaign as campaign_module
    from crashsearch.flows.analyze import load_inputs, run_control_arms

    space = Space.load()
    store = Store(home)
    setup = {"dataset": "day", "space": "collision", "backbones": ["pixels"], "budget": 4, "dataset_path": "x"}

    def put(cid, **info):
        cells = space.sample(__import__("random").Random(len(cid)), 2)
        store.append(cid, [{"experiment_id": f"{cid}-{i}", "cell_id": c.id, "status": "ok", "val_ap": 0.5,
                            "dataset": "day"} for i, c in enumerate(cells)], space)
        store.write_campaign(cid, {**setup, **info})

    calls = []
    monkeypatch.setattr(campaign_module, "run_campaign", lambda home, dataset, campaign_id, **kw: calls.append(campaign_id))
    put("n", space_path="/spaces/a.yaml")
    put("n-baseline-random", space_path="/spaces/a.yaml")
    assert run_control_arms(home, "x", "n", 4, policies=("random",)) == ["n-baseline-random"]  # resumed: reused
    store.write_campaign("n", {**setup, "space_path": "/spaces/b.yaml"})  # the space changed
    assert run_control_arms(home, "x", "n", 4, policies=("random",)) == ["n-baseline-random-s1"]
    assert calls == ["n-baseline-random", "n-baseline-random-s1"]
    put("n-baseline-random-s1", space_path="/spaces/b.yaml")
    baselines = load_inputs(home, "n")["baselines"]
    assert set(baselines["campaign"]) == {"n-baseline-random-s1"}  # the stale arm is kept on disk, not compared


def test_leaderboard_command_prints_no_interval_for_a_single_run(home, capsys):
    space = Space.load()
    a, b = space.sample(__import__("random").Random(1), 2)
    Store(home).append("c", [{"experiment_id": "1", "cell_id": a.id, "status": "ok", "val_ap": 0.9},
                             {"experiment_id": "2", "cell_id": b.id, "status": "ok", "val_ap": 0.7},
                             {"experiment_id": "3", "cell_id": b.id, "status": "ok", "val_ap": 0.8}], space)
    assert cli(["leaderboard", "--campaign", "c", "--home", str(home.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    first, second = lines[1].split(), lines[2].split()
    assert first[:4] == ["1", "0.9000", "-", "-"]  # one run: no interval, not [0.9, 0.9]
    lo, hi = interval_of(0.75, np.std([0.7, 0.8], ddof=1), 2)
    assert second[:4] == ["2", "0.7500", f"{lo:.4f}", f"{hi:.4f}"]


def interval_of(mean, sd, n):
    from crashsearch.lab.leaderboard import interval

    lo, hi = interval([mean], [sd], [n])
    return lo[0], hi[0]
