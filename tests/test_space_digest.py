"""A campaign remembers its space: a digest of its axes in campaign.json, its YAML kept beside its log, a
resume or import in another space refused in one line that says what changed, and benchmark, control arms
and resumes find the space without --space."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from crashsearch.flows.analyze import run_control_arms
from crashsearch.flows.campaign import run_campaign
from crashsearch.flows.cli import main as cli_main
from crashsearch.lab.campaign_space import SpaceMismatch, describe_change, space_axes, space_digest
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store

from tests.test_campaign import TINY_SPACE, lab_home  # noqa: F401 (fixture)

# TINY_SPACE in another layout: flow lists, comments, a help text, other spacing: the same cell ids
TINY_REFORMATTED = """
# the tiny space, written differently
name: tiny
groups:
  arch:
    backbone: {values: [pixels, vjepa2_vitl], help: "which features"}
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss: {loss: [bce, focal_2.0]}
  train:
    lr: [1.0e-3, 0.003, 0.01]
    batch_size:
      - 16
      - 32
      - 64
  data:
    window_s: [1.0, 2.0]
    augment: [none, jitter]
fixed: {epochs: 2, weight_decay: 0.01, class_balance: true, horizons_s: [0.5, 1.0, 1.5]}
"""
ONE_MORE_ENCODER = TINY_SPACE.replace("encoder: [meanpool_mlp, gru]", "encoder: [meanpool_mlp, gru, tcn]")


def _info(home, campaign) -> dict:
    return json.loads((home.campaign(campaign) / "campaign.json").read_text())


def test_the_digest_is_over_axis_names_and_values_not_the_yaml(tmp_path):
    files = {}
    for name, text in (("a", TINY_SPACE), ("b", TINY_REFORMATTED), ("c", ONE_MORE_ENCODER),
                       ("d", TINY_SPACE.replace("lr: [0.001, 0.003, 0.01]", "lr: [0.001, 0.003]")),
                       ("e", TINY_SPACE.replace("augment: [none, jitter]", "augment: [jitter, none]"))):
        (tmp_path / f"{name}.yaml").write_text(text)
        files[name] = Space.load(tmp_path / f"{name}.yaml")
    a = files["a"]
    assert space_digest(a) == space_digest(files["b"]) and len(space_digest(a)) == 16
    assert space_digest(a) == space_digest(a.restrict(backbone=["pixels"]))  # a restriction keeps the ids
    assert len({space_digest(s) for s in files.values()}) == 4
    assert describe_change(space_axes(a), files["c"]) == "encoder gained [tcn]"
    assert describe_change(space_axes(a), files["d"]) == "lr lost [0.01]"
    assert describe_change(space_axes(a), files["e"]) == "augment's values are in another order"
    assert describe_change(space_axes(files["c"]), a) == "encoder lost [tcn]"


def test_a_resume_in_an_edited_space_is_refused_in_one_line_and_without_space_uses_the_kept_copy(lab_home, tmp_path,
                                                                                             capsys):
    home, ds, space = lab_home
    user_file = tmp_path / "my-space.yaml"
    user_file.write_text(TINY_SPACE)
    run_campaign(home, ds.root, "sd-resume", budget=4, seeds=1, space_path=str(user_file), policies=["random"],
                 log=lambda m: None)
    info = _info(home, "sd-resume")
    kept = home.campaign("sd-resume") / "space.yaml"
    assert info["space_digest"] == space_digest(Space.load(user_file)) and info["space_file"] == str(kept)
    assert kept.read_text() == TINY_SPACE and info["space_axes"][1] == ["encoder", ["meanpool_mlp", "gru"]]

    user_file.write_text(ONE_MORE_ENCODER)  # the user adds an encoder: every cell id after it moves
    with pytest.raises(SpaceMismatch, match=r"sd-resume.*encoder gained \[tcn\].*leave out --space"):
        run_campaign(home, ds.root, "sd-resume", budget=8, seeds=1, space_path=str(user_file), policies=["random"])
    assert len(Store(home).experiments("sd-resume")) == 4 and len(_info(home, "sd-resume")["runs"]) == 1
    # the CLI refuses it before a flow starts, in one line, exit 2
    code = cli_main(["campaign", "--home", str(home.root), "--dataset", str(ds.root), "--campaign", "sd-resume",
                     "--space", str(user_file), "--budget", "8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "encoder gained [tcn]" in err, err

    # no --space: the campaign's own copy, not the default collision space (before: the default, other ids)
    summary = run_campaign(home, ds.root, "sd-resume", budget=8, seeds=1, policies=["random"], log=lambda m: None)
    df = Store(home).experiments("sd-resume")
    assert summary.recorded == 8 and set(df["space"]) == {"tiny"} and df["cell_id"].is_unique
    assert df["cell_id"].max() < Space.load(kept).full_size


def test_a_campaign_made_before_digests_is_accepted_once_and_then_checked(lab_home):
    home, ds, space = lab_home
    run_campaign(home, ds.root, "sd-old", budget=3, seeds=1, space_path=space, policies=["random"], log=lambda m: None)
    path = home.campaign("sd-old") / "campaign.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("space_digest", "space_axes", "space_file")}
    path.write_text(json.dumps(old))  # as an older version wrote it, and no kept copy
    (home.campaign("sd-old") / "space.yaml").unlink()
    logs: list[str] = []
    run_campaign(home, ds.root, "sd-old", budget=5, seeds=1, space_path=space, policies=["random"], log=logs.append)
    said = [line for line in logs if "created before spaces were recorded" in line]
    assert len(said) == 1 and _info(home, "sd-old")["space_digest"] == space_digest(Space.load(space))
    logs.clear()
    run_campaign(home, ds.root, "sd-old", budget=6, seeds=1, space_path=space, policies=["random"], log=logs.append)
    assert not [line for line in logs if "created before" in line]  # said once


def test_control_arms_use_the_campaigns_own_space_after_the_user_edits_the_file(lab_home, tmp_path):
    home, ds, space = lab_home
    user_file = tmp_path / "arms-space.yaml"
    user_file.write_text(TINY_SPACE)
    run_campaign(home, ds.root, "sd-arms", budget=3, seeds=1, space_path=str(user_file), policies=["random"],
                 log=lambda m: None)
    user_file.write_text(ONE_MORE_ENCODER)  # before: the arms read this file (the parent's space_path): other ids
    arms = run_control_arms(home, ds.root, "sd-arms", budget=3, policies=("random",), log=lambda m: None)
    assert arms == ["sd-arms-baseline-random"]
    assert _info(home, arms[0])["space_digest"] == _info(home, "sd-arms")["space_digest"]
    # the arm read the parent's kept copy (another path): the same space, so the next night reuses it
    assert run_control_arms(home, ds.root, "sd-arms", budget=3, policies=("random",), log=lambda m: None) == arms


def test_an_import_keeps_its_space_and_refuses_another_one(tmp_path, capsys):
    space_file = tmp_path / "ext.yaml"
    space_file.write_text(TINY_SPACE)
    space = Space.load(space_file)
    rows = [{**space.cell(i * 7).values, "val_ap": 0.5 + i / 100} for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "log.csv", index=False)
    home = resolve_home(tmp_path / "home")
    assert cli_main(["import", str(tmp_path / "log.csv"), "--campaign", "ext", "--space", str(space_file),
                     "--home", str(home.root)]) == 0
    info = _info(home, "ext")
    assert info["space_digest"] == space_digest(space) and (home.campaign("ext") / "space.yaml").read_text() == TINY_SPACE
    # another import without --space uses the kept space: the rows are already there
    capsys.readouterr()
    assert cli_main(["import", str(tmp_path / "log.csv"), "--campaign", "ext", "--home", str(home.root)]) == 0
    assert "12 already recorded" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text(ONE_MORE_ENCODER)
    assert cli_main(["import", str(tmp_path / "log.csv"), "--campaign", "ext", "--space", str(other),
                     "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder gained [tcn]" in err, err
