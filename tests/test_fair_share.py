"""Small campaigns do what was asked: every named policy gets its even share of the budget from the first
call on, --seeds N gives the leaders their replicates, an --extend run says it stopped on its allowance,
the summary says when it lists only replicated cells, and a tiny validation split is named."""
from __future__ import annotations

import collections
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from crashsearch.agents import register_policy
from crashsearch.agents.random_search import RandomPolicy
from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.datasets import validation_warning
from crashsearch.lab.leaderboard import leaderboard
from crashsearch.lab.store import Store
from crashsearch.tasks.campaign.allot import allot, replicate_cap, replicates_owed
from crashsearch.tasks.campaign.summary import CampaignSummary

from tests.test_campaign import lab_home  # noqa: F401 (fixture)

POLICIES = ["evolution", "tpe", "random"]


def _proposed(home, campaign) -> collections.Counter:
    return collections.Counter(Store(home).experiments(campaign)["proposer"])


def test_allot_splits_evenly_over_the_run_remainder_by_order():
    assert allot(8, [0, 0, 0]) == [3, 3, 2]
    assert allot(12, [0, 0, 0]) == [4, 4, 4]
    assert allot(4, [8, 0, 0]) == [0, 2, 2]  # the least offered first
    assert allot(5, [2, 1, 1]) == [1, 2, 2]
    assert allot(0, [0, 0]) == [0, 0] and allot(3, []) == []
    assert allot(10 ** 6, [0, 5, 9]) == [333338, 333333, 333329]  # a large budget is arithmetic, not a loop
    assert replicate_cap(1, 100) == 0 and replicate_cap(2, 8) == 3 and replicate_cap(3, 8) == 4
    assert replicates_owed([], 2) == 3 and replicates_owed([2, 1], 3) == 1 + 2 + 2 and replicates_owed([5, 5, 5], 3) == 0


@pytest.mark.parametrize("budget, shares", [(8, [3, 3, 2]), (12, [4, 4, 4])])
def test_the_default_pipeline_gives_every_named_policy_its_share_of_a_small_budget(lab_home, budget, shares):
    # before: evolution took the whole room of the first calls: 8 of 8 (tpe and random 0), 8 and 4 of 12 (random 0)
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, f"fair-p{budget}", budget=budget, seeds=1, space_path=space,
                           policies=POLICIES, propose_mode="pipeline", log=lambda m: None)
    got = _proposed(home, f"fair-p{budget}")
    assert summary.recorded == budget and sum(got.values()) == budget
    dropped = {p: sum(summary.dedup.get(p, {}).values()) for p in POLICIES}
    for policy, share in zip(POLICIES, shares):  # a duplicate it proposed may leave its part to another
        assert got[policy] >= share - dropped[policy] and got[policy] >= 1, (got, dropped)


def test_turns_mode_splits_the_run_evenly_across_rounds(lab_home):
    # before: each round of 4 gave its remainder to the first policy: evolution 4, tpe 2, random 2
    home, ds, space = lab_home
    run_campaign(home, ds.root, "fair-t8", budget=8, round_size=4, seeds=1, space_path=space, policies=POLICIES,
                 log=lambda m: None)
    got = _proposed(home, "fair-t8")
    assert [got[p] for p in POLICIES] == [3, 3, 2]


class SittingOut(RandomPolicy):
    """A policy that never proposes (an LLM agent whose calls all fail)."""

    name = "sitting-out"

    def propose(self, view, n):
        self.last_error = "the API answered 529 overloaded"
        return []


@pytest.fixture
def sitting_out(monkeypatch):
    from crashsearch import agents

    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("sitting-out", f"{__name__}:SittingOut")


@pytest.mark.parametrize("mode", ["pipeline", "turns"])
def test_a_policy_short_of_its_share_leaves_it_to_the_others_and_the_summary_says_why(lab_home, sitting_out, mode):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, f"fair-sit-{mode}", budget=9, round_size=6, seeds=1, space_path=space,
                           policies=["random", "sitting-out"], propose_mode=mode, log=lambda m: None)
    assert summary.recorded == 9 and _proposed(home, f"fair-sit-{mode}")["random"] == 9  # the budget is spent
    text = summary.format()
    assert "note: sitting-out proposed 0 of its even share 4 of this run's new cells: it sat out: " \
           "the API answered 529 overloaded" in text, text


@pytest.mark.parametrize("mode", ["pipeline", "turns"])
def test_seeds_two_replicates_the_leaders_even_when_the_budget_is_smaller_than_a_round(lab_home, mode):
    # before: the first calls (pipeline) or the first round (turns) took the whole budget: no replicate at all
    home, ds, space = lab_home
    cid = f"fair-seeds-{mode}"
    summary = run_campaign(home, ds.root, cid, budget=8, seeds=2, space_path=space, policies=POLICIES,
                           propose_mode=mode, log=lambda m: None)
    df = Store(home).experiments(cid)
    reps = df[df["proposer"] == "replicate"]
    assert len(df) == summary.recorded == 8
    # the rule: new cells leave min(3 leaders x (seeds - 1), half the run) = 3 experiments to the leaders,
    # spent once every new cell is recorded
    firsts = df[df["proposer"] != "replicate"]
    assert set(reps["cell_id"]) <= set(firsts["cell_id"]) and set(reps["replicate"]) == {1}
    if mode == "turns":  # strict rounds: 5 new cells, then the replicates of exactly their top 3
        assert len(firsts) == 5 and len(reps) == 3
        assert set(reps["cell_id"]) == set(leaderboard(firsts, k=3)["cell_id"].astype(int))
    else:  # a first batch recorded early may get replicates on the way; the last 3 still go to the leaders
        ap = firsts.set_index("cell_id")["val_ap"]
        assert len(reps) >= 3 and (ap.loc[reps["cell_id"]] >= ap.sort_values(ascending=False).iloc[2]).sum() >= 3
    ranks = list(summary.leaderboard["rank"])
    if ranks != list(range(1, len(ranks) + 1)):  # replicates moved other cells ahead: the header says so
        assert "only cells with at least 2 runs are listed" in summary.format()


def test_an_extend_run_says_it_stopped_on_its_allowance_not_the_budget(lab_home):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "fair-ext", budget=100, extend=3, seeds=1, space_path=space,
                           policies=["random"], log=lambda m: None)
    assert summary.stopped == "allowance" and "stopped on the --extend 3 allowance" in summary.format()
    last = run_campaign(home, ds.root, "fair-ext", budget=5, extend=3, seeds=1, space_path=space,
                        policies=["random"], log=lambda m: None)
    assert last.stopped == "budget" and last.recorded == 5  # the budget, not the allowance, ended this one
    runs = json.loads((home.campaign("fair-ext") / "campaign.json").read_text())["runs"]
    assert [r["stopped"] for r in runs] == ["allowance", "budget"]


def test_the_summary_says_when_it_lists_only_replicated_cells():
    rows = pd.DataFrame({"cell_id": [1, 2, 3, 4, 4, 5, 5], "val_ap": [0.9, 0.9, 0.9, 0.8, 0.8, 0.7, 0.7],
                         "status": "ok"})
    board = leaderboard(rows, k=5)
    summary = CampaignSummary("c", "d", home=None, recorded=7, new=7, budget=7, stopped="budget", wall_seconds=1,
                              train_seconds=1, leaderboard=board[board["n"] >= 2].assign(
                                  backbone="b", encoder="e", size="s", loss="bce", lr=0.1, batch_size=16,
                                  window_s=1.0, augment="none"),
                              per_policy={}, dedup={}, failures=0, min_runs=2)
    text = summary.format()
    # before: "  4. AP 0.8000 ..." and "  5. AP 0.7000 ..." under a header that did not say why 1-3 were missing
    assert "only cells with at least 2 runs are listed, ranked among all cells" in text
    assert "  4. AP 0.8000" in text and "  1. AP" not in text


def test_a_tiny_validation_split_is_named_once_in_the_log_and_in_the_summary(lab_home):
    home, ds, space = lab_home
    logs: list[str] = []
    summary = run_campaign(home, ds.root, "fair-val", budget=3, seeds=1, space_path=space, policies=["random"],
                           log=logs.append)
    warned = [line for line in logs if "too few for AP to separate cells" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: the validation split of 'synth-day' has ")
    assert "note: the validation split of 'synth-day'" in summary.format()

    def split(videos, positives):
        items = [SimpleNamespace(label=int(i < positives)) for i in range(videos)]
        return SimpleNamespace(name="d", by_split=lambda s: items)

    # the rule: at least 20 validation videos and 5 of each class
    assert validation_warning(split(20, 5)) is None and validation_warning(split(40, 20)) is None
    assert "4 videos (2 positives / 2 negatives)" in validation_warning(split(4, 2))
    assert validation_warning(split(60, 4)) and validation_warning(split(19, 9)) and validation_warning(split(30, 26))


def _slow_train(*args):
    """Training slower than proposing, as on a loaded machine: before, the proposals claimed the whole
    budget before the first result, so no leader was known to replicate."""
    import time

    from crashsearch.tasks.train import train_batch

    time.sleep(0.3)
    return train_batch(*args)


def test_pipeline_replicates_do_not_depend_on_training_keeping_up(lab_home):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "fair-slow", budget=17, seeds=2, space_path=space, propose_mode="pipeline",
                           lookahead=6, group_wait_s=0.05, train_fn=_slow_train, log=lambda m: None)
    df = Store(home).experiments("fair-slow")
    reps = df[df["proposer"] == "replicate"]
    assert summary.recorded == 17 and len(reps) >= 3 and not reps.duplicated(["cell_id", "replicate"]).any()
    firsts = df[df["proposer"] != "replicate"].set_index("cell_id")["val_ap"]
    # the room kept went to leaders of the finished first runs (ties at the top included: a tiny split)
    third = firsts.sort_values(ascending=False).iloc[2]
    assert (firsts.loc[reps["cell_id"]] >= third).sum() >= 3, (firsts.sort_values().tail(5), reps["cell_id"])
