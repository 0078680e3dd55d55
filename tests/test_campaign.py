"""The campaign engine end to end on a tiny synthetic dataset: budget, dedup, replicates, healing, resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crashsearch.agents import register_policy
from crashsearch.agents.base import Policy
from crashsearch.agents.random_search import RandomPolicy
from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.errors import NaNLossError, OOMError
from crashsearch.tasks.train import train_batch

TINY_SPACE = """
name: tiny
groups:
  arch:
    backbone: [pixels, vjepa2_vitl]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.001, 0.003, 0.01]
    batch_size: [16, 32, 64]
  data:
    window_s: [1.0, 2.0]
    augment: [none, jitter]
fixed:
  epochs: 2
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


@pytest.fixture(scope="module")
def lab_home(synth_dataset, tmp_path_factory):
    """A home with the tiny dataset's pixels features cached and a 288-cell space file."""
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path_factory.mktemp("home"))
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space_path = home.root / "tiny.yaml"
    space_path.write_text(TINY_SPACE)
    return home, synth_dataset, str(space_path)


def _history(home, campaign):
    return Store(home).experiments(campaign)


def test_campaign_spends_its_budget_on_distinct_cells_and_confirms_leaders(lab_home):
    home, ds, space = lab_home
    logs = []
    summary = run_campaign(home, ds.root, "c-basic", budget=14, round_size=6, space_path=space, seeds=2,
                           log=logs.append)
    df = _history(home, "c-basic")
    assert len(df) == summary.recorded == 14 and df["experiment_id"].is_unique
    assert set(df["backbone"]) == {"pixels"}  # only cached backbones are proposed
    firsts = df[df["replicate"] == 0]
    assert firsts["cell_id"].is_unique  # dedup: no cell proposed twice
    assert set(firsts["proposer"]) <= {"evolution", "tpe", "random"}
    replicates = df[df["proposer"] == "replicate"]
    assert len(replicates) >= 1 and set(replicates["cell_id"]) <= set(firsts["cell_id"])
    assert df.loc[df["status"] == "ok", "val_ap"].between(0, 1).all()
    assert df["code_version"].str.len().gt(8).all()
    assert summary.leaderboard["n"].max() == 2  # the reported leader has its replicates
    text = summary.format()
    assert "c-basic" in text and "leaderboard" in text
    assert (home.campaign("c-basic") / "summary.txt").read_text().strip() == text.strip()


def test_rerunning_a_campaign_extends_it_without_repeating_a_cell(lab_home):
    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-resume", budget=6, round_size=6, space_path=space, seeds=1)
    first = _history(home, "c-resume")
    run_campaign(home, ds.root, "c-resume", budget=12, round_size=6, space_path=space, seeds=1)
    df = _history(home, "c-resume")
    assert len(df) == 12 and df["cell_id"].is_unique and df["experiment_id"].is_unique
    assert set(first["experiment_id"]) <= set(df["experiment_id"])  # finished rows never change
    assert json.loads((home.campaign("c-resume") / "state.json").read_text())["policies"].keys() == {"evolution", "tpe", "random"}
    info = json.loads((home.campaign("c-resume") / "campaign.json").read_text())
    assert info["status"] == "finished" and info["recorded"] == 12 and isinstance(info["dedup_dropped"], dict)
    # a narrowed space extends the same history (same cell ids)
    again = run_campaign(home, ds.root, "c-resume", budget=14, round_size=2, space_path=space, seeds=1,
                         policies=["random"], backbones=["pixels"])
    assert again.recorded == 14 and _history(home, "c-resume")["cell_id"].is_unique


def _faulty_train(cells, features, seeds, fixed, device):
    """Real training, except batch size 64 'runs out of memory' and lr 0.01 'diverges'."""
    out = train_batch(cells, features, seeds, fixed, device)
    for i, cell in enumerate(cells):
        if cell["batch_size"] == 64:
            out[i] = OOMError(cell, "CUDA out of memory (injected)")
        elif cell["lr"] == 0.01:
            out[i] = NaNLossError(cell, "loss is NaN at epoch 1 (injected)")
    return out


class BadCellFirst(Policy):
    """Proposes ``BAD`` (set by the test) first, then random cells."""

    name = "bad-first"
    BAD = None

    def __init__(self, space, seed=0, **kw):
        super().__init__(space, seed)
        self.fallback = RandomPolicy(space, seed=seed)

    def propose(self, view, n):
        if self.BAD.id not in view.tried_ids():
            return [self._proposal(self.BAD, "known to fail")]
        return self.fallback.propose(view, n)


def test_oom_and_nan_failures_are_healed_and_linked(lab_home, monkeypatch):
    home, ds, space_path = lab_home
    space = Space.load(space_path)
    bad = space.validate({"backbone": "pixels", "encoder": "gru", "size": "small", "loss": "bce", "lr": 0.01,
                          "batch_size": 64, "window_s": 1.0, "augment": "none"})
    BadCellFirst.BAD = bad
    from crashsearch import agents
    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))  # the registration ends with the test
    register_policy("bad-first", f"{__name__}:BadCellFirst")
    run_campaign(home, ds.root, "c-heal", policies=["bad-first"], budget=4, round_size=1, space_path=space_path,
                 seeds=1, train_fn=_faulty_train)
    df = _history(home, "c-heal").set_index("experiment_id")
    first = df[df["cell_id"] == bad.id].iloc[0]
    assert first["status"] == "failed" and first["error_class"] == "OOMError"
    assert first["heal_action"] == "retry with batch_size 64->32"
    oom_fix = df[df["healed_from"] == first.name].iloc[0]  # batch 32 but still lr 0.01 -> NaN
    assert oom_fix["batch_size"] == 32 and oom_fix["status"] == "failed" and oom_fix["error_class"] == "NaNLossError"
    nan_fix = df[df["healed_from"] == oom_fix.name].iloc[0]
    assert nan_fix["lr"] == 0.003 and nan_fix["status"] == "healed" and nan_fix["proposer"] == "heal"
    assert len(df) == 4  # heal retries count against the budget


CHILD = textwrap.dedent("""
    import sys
    from crashsearch.flows.campaign import run_campaign
    home, dataset, space = sys.argv[1:4]
    run_campaign(home, dataset, "c-kill", budget=int(sys.argv[4]), round_size=2, space_path=space, seeds=1,
                 policies=["random", "evolution"])
""")


@pytest.mark.slow
def test_a_killed_campaign_resumes_without_loss_or_duplicates(lab_home):
    home, ds, space = lab_home
    args = [sys.executable, "-c", CHILD, str(home.root), str(ds.root), space]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args + ["40"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_history(home, "c-kill")) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the campaign ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _history(home, "c-kill")
    assert 4 <= len(before) < 40
    subprocess.run(args + ["16"], env=env, check=True, capture_output=True, timeout=300)
    after = _history(home, "c-kill")
    assert set(before["experiment_id"]) <= set(after["experiment_id"])  # nothing finished is lost
    assert after["experiment_id"].is_unique and after["cell_id"].is_unique
    assert len(after) == max(16, len(before))  # the budget holds (a kill past 16 leaves nothing to do)


def test_missing_features_and_unavailable_policies_fail_clearly(lab_home, tmp_path):
    home, ds, space = lab_home
    with pytest.raises(ValueError, match=r"no cached features for dataset 'synth-day' and backbone\(s\) r2plus1d_18; "):
        run_campaign(home, ds.root, "c-x", backbones=["r2plus1d_18"], space_path=None)
    logs = []
    summary = run_campaign(home, ds.root, "c-nokey", policies=["claude", "random"], budget=2, round_size=2,
                           space_path=space, seeds=1, log=logs.append)
    assert summary.recorded == 2 and any("ANTHROPIC_API_KEY" in line for line in summary.unavailable)


def test_policy_args_parse_to_typed_options_and_bad_ones_are_named():
    from crashsearch.flows.commands.campaign import parse_policy_args

    parsed = parse_policy_args(["claude.model=claude-x", "claude.temperature=0.7", "claude.role=explorer",
                                "TPE.n_startup_trials=5"], "claude, tpe")
    assert parsed == {"claude": {"model": "claude-x", "temperature": 0.7, "role": "explorer"},
                      "tpe": {"n_startup_trials": 5}}
    for bad, named in [("claude.model", "expected NAME.KEY=VALUE"), ("x=1", "expected NAME.KEY=VALUE"),
                       ("tpe.n_startup=5", "tpe has no option 'n_startup'; its options: n_startup_trials"),
                       ("gemini.model=x", "gemini is not among the policies (claude, tpe)")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            parse_policy_args([bad], "claude,tpe")


def test_cli_campaign_passes_policy_args_and_propose_mode_and_records_them(lab_home, capsys):
    from crashsearch.flows.cli import main as cli

    home, ds, space = lab_home
    base = ["campaign", "--home", str(home.root), "--dataset", str(ds.root), "--space", space, "--budget", "4",
            "--round-size", "2", "--seeds", "1", "--policies", "evolution,tpe"]
    assert cli(base + ["--campaign", "c-bad-arg", "--policy-arg", "tpe.n_startup=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tpe has no option 'n_startup'" in err
    assert not Store(home).log_files("c-bad-arg")

    assert cli(base + ["--campaign", "c-args", "--propose-mode", "concurrent", "--policy-arg", "tpe.n_startup_trials=1",
                       "--policy-arg", "evolution.min_results=2"]) == 0
    info = json.loads((home.campaign("c-args") / "campaign.json").read_text())
    assert info["propose_mode"] == "concurrent"
    assert info["policy_args"] == {"tpe": {"n_startup_trials": 1}, "evolution": {"min_results": 2}}
    assert len(_history(home, "c-args")) == 4


def test_campaign_view_passes_only_claimed_unrecorded_cells_as_in_flight(lab_home):
    """Before the fix every claimed cell, recorded ones included, was in flight, so TPE counted results as poor."""
    from crashsearch.tasks.campaign.config import CampaignConfig
    from crashsearch.tasks.campaign.engine import Campaign

    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-inflight", policies=["random"], budget=3, round_size=3, space_path=space, seeds=1)
    runner = Campaign(home, CampaignConfig(dataset=str(ds.root), campaign="c-inflight", policies="random", budget=6,
                                           space=space, seeds=1, round_size=3, device="cpu"), log=lambda m: None)
    from crashsearch.tasks.campaign.turns import Turns

    ledger = runner.ctx.ledger
    recorded = set(ledger.history["cell_id"].astype(int))
    assert len(recorded) == 3 and ledger.view().in_flight == frozenset()
    claimed = Turns(runner.ctx).propose_round(2)  # claimed this round, not trained yet
    assert ledger.view().in_flight == {j.cell.id for j in claimed} and not recorded & ledger.view().in_flight


def test_extend_is_a_per_run_allowance_and_each_run_is_listed(lab_home):
    home, ds, space = lab_home
    for night in (1, 2):
        summary = run_campaign(home, ds.root, "c-grow", budget=100, extend=4, round_size=4, space_path=space, seeds=1,
                               policies=["random"])
        assert summary.new == 4 and summary.recorded == 4 * night  # budget 100 alone would run on to 100
    runs = Store(home).query("SELECT json_extract(info, '$.runs') AS runs FROM campaigns WHERE id = 'c-grow'")
    runs = json.loads(runs["runs"][0])
    assert [(r["run"], r["new"], r["recorded"], r["extend"]) for r in runs] == [(1, 4, 4, 4), (2, 4, 8, 4)]
    from crashsearch.flows.analyze import analyze

    numbers = analyze("c-grow", home)["numbers"]  # the forecast is the next run's: `extend` more experiments
    assert numbers["convergence"]["forecast"]["more"] == 4


class CountingAdvisor(RandomPolicy):
    """Random proposals; counts the diagnoses it is asked for (an LLM advisor stand-in)."""

    name = "counting-advisor"
    asked: list = []

    def diagnose(self, cell, error_class, traceback):
        CountingAdvisor.asked.append(error_class)
        return None


def _one_class_train(cells, features, seeds, fixed, device):
    from crashsearch.tasks.errors import MissingFeaturesError

    return [MissingFeaturesError(c, "the train split of 'synth-day' has only one class (0 positives of 8)")
            for c in cells]


def test_a_campaign_whose_every_experiment_fails_stops_early_as_failed_and_resumes_after_the_fix(
        lab_home, monkeypatch):
    """Before: 40 identical failures, 'stopped on budget', an LLM diagnosis per failure."""
    home, ds, space = lab_home
    from crashsearch import agents
    monkeypatch.setattr(agents, "_REGISTRY", dict(agents._REGISTRY))
    register_policy("counting-advisor", f"{__name__}:CountingAdvisor")
    CountingAdvisor.asked = []
    logs = []
    summary = run_campaign(home, ds.root, "c-allfail", policies=["counting-advisor"], budget=40, round_size=6,
                           space_path=space, seeds=1, train_fn=_one_class_train, log=logs.append)
    assert summary.stopped == "failed" and 8 <= summary.recorded <= 12  # stopped early: the budget is kept
    info = json.loads((home.campaign("c-allfail") / "campaign.json").read_text())
    assert info["status"] == "failed" and info["recorded"] == summary.recorded
    stops = [line for line in logs if line.startswith("stopped:")]
    assert len(stops) == 1 and "MissingFeaturesError" in stops[0] and "cell " in stops[0]
    assert re.search(rf"the last {summary.recorded} experiments all failed", stops[0]), stops[0]
    assert info["stop_reason"] == stops[0] and stops[0] in summary.format()
    assert CountingAdvisor.asked == ["MissingFeaturesError"]  # asked once, not once per failure
    # the fix is in: re-running the same command resumes and spends what is left of the budget
    again = run_campaign(home, ds.root, "c-allfail", policies=["random"], budget=summary.recorded + 3,
                         round_size=3, space_path=space, seeds=1)
    assert again.stopped == "budget" and again.recorded == summary.recorded + 3
    df = _history(home, "c-allfail")
    assert (df["status"] == "ok").sum() == 3
    assert json.loads((home.campaign("c-allfail") / "campaign.json").read_text())["status"] == "finished"


def test_a_split_without_a_class_is_refused_by_extract_and_campaign_in_one_line(synth_dataset, tmp_path, capsys):
    """Two positives only: both land in train, so val and test have none. No round may start."""
    from crashsearch.flows.cli import main as cli

    positives = [v for v in synth_dataset.videos if v.label == 1][:2]
    negatives = [v for v in synth_dataset.videos if v.label == 0]
    manifest = tmp_path / "onepos" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,event_time\n" + "".join(
        f"{v.path},{v.label},{'' if v.event_time is None else v.event_time}\n" for v in positives + negatives))
    home = tmp_path / "home"
    assert cli(["extract", "--home", str(home), "--dataset", str(manifest), "--backbone", "pixels"]) == 1
    out = capsys.readouterr()
    assert "classes: train 2 pos / " in out.out + out.err
    err = [line for line in out.err.splitlines() if line.startswith("extract:")]
    assert len(err) == 1 and "the val split has no positives" in err[0]

    assert cli(["campaign", "--home", str(home), "--dataset", str(manifest), "--budget", "4", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("campaign: manifest/pixels features") and "val split has no positives" in err[0]
    assert not Store(resolve_home(home)).campaigns()
    with pytest.raises(ValueError, match="the val split has no positives"):  # the API refuses too
        run_campaign(home, manifest, "c-oneclass", budget=4, seeds=1)


def test_agents_see_pre_fix_rows_and_reruns_use_the_same_segmentation(lab_home):
    from crashsearch.lab.versions import declare_bugfix
    from crashsearch.tasks.campaign.config import CampaignConfig
    from crashsearch.tasks.campaign.engine import Campaign

    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-prefix", policies=["random"], budget=3, round_size=3, space_path=space, seeds=1)

    def runner():
        return Campaign(home, CampaignConfig(dataset=str(ds.root), campaign="c-prefix", policies="random", budget=6,
                                             space=space, seeds=1, round_size=3, device="cpu"), log=lambda m: None)

    declare_bugfix(home, "another campaign's fix", campaign="c-other", at="2000-01-01")
    assert "pre_fix" not in runner().ctx.ledger.view().experiments.columns  # an event scoped elsewhere changes nothing here
    assert runner().ctx.ledger.leader_reruns(2) == []
    declare_bugfix(home, "mask fixed", campaign="c-prefix", at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 1)))
    view = runner().ctx.ledger.view()
    assert view.experiments["pre_fix"].all() and (view.leaderboard(3)["pre_fix_runs"] == 1).all()
    reruns = runner().ctx.ledger.leader_reruns(2)
    assert len(reruns) == 2 and {j.proposer for j in reruns} == {"rerun"}
    assert [j.cell.id for j in reruns] == list(view.leaderboard(2)["cell_id"])


def test_a_campaign_without_cached_features_is_refused_in_one_line_before_any_flow(synth_dataset, lab_home, tmp_path,
                                                                                     capsys):
    """Before: the check ran inside the flow, so Prefect printed a traceback before the line, and the
    line read "backbone(s) []" when nothing at all was cached."""
    from crashsearch.flows.cli import main as cli

    home = tmp_path / "empty-home"
    assert cli(["campaign", "--home", str(home), "--dataset", str(synth_dataset.root), "--budget", "4"]) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert "Traceback" not in out.out + out.err and len(err.splitlines()) == 1, out
    assert err.startswith("campaign: no cached features for dataset 'synth-day'; run `crashsearch extract") and "[]" not in err
    cached_home, ds, space = lab_home  # pixels cached, r2plus1d_18 not
    assert cli(["campaign", "--home", str(cached_home.root), "--dataset", str(ds.root), "--budget", "4", "--space", space,
                "--backbones", "pixels,r2plus1d_18"]) == 2
    err = capsys.readouterr().err
    assert "backbone(s) r2plus1d_18; run `crashsearch extract" in err and "(cached: pixels)" in err
