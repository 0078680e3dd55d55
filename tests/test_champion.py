"""Kept weights, the champion package and predict: from a campaign to a detector run on new videos."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from crashsearch.flows.campaign import run_campaign
from crashsearch.lab.cache import load_features
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.store import Store
from crashsearch.models.registry import create_head
from crashsearch.tasks.evaluate import evaluate_heads
from crashsearch.tasks.keep import collect, disk_use, kept_heads, parse_keep, save_head, top_cells

TINY_SPACE = """
name: tiny-champion
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.003, 0.01]
    batch_size: [16, 32]
  data:
    window_s: [1.0, 2.0]
    augment: [none]
fixed:
  epochs: 3
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


@pytest.fixture(scope="module")
def lab_home(synth_dataset, tmp_path_factory):
    """A home with the session's tiny dataset's pixels features cached and a 64-cell space."""
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path_factory.mktemp("home"))
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space_path = home.root / "tiny.yaml"
    space_path.write_text(TINY_SPACE)
    return home, synth_dataset, str(space_path)


def _head_from(kept, in_dim: int) -> torch.nn.Module:
    cell = kept.meta["cell"]
    head = create_head(cell["encoder"], cell["size"], in_dim)
    head.load_state_dict(kept.state())
    return head.eval()


def test_keep_models_parses_numbers_all_and_zero():
    assert parse_keep("all") is None and parse_keep(None) is None
    assert parse_keep("0") == 0 and parse_keep(10) == 10
    for bad in ("-1", "ten", "1.5"):
        with pytest.raises(ValueError, match="whole number"):
            parse_keep(bad)


def test_a_campaign_keeps_one_model_slice_per_leader_and_reproduces_its_metrics(lab_home):
    home, ds, space = lab_home
    summary = run_campaign(home, ds.root, "c-keep", budget=10, round_size=5, space_path=space, seeds=2,
                           keep_models=2, max_group=64)
    df = Store(home).experiments("c-keep")
    kept = kept_heads(home, "c-keep")
    top = top_cells(df, 2)
    assert len(top) == 2
    ok = df[df["status"].isin(["ok", "healed"])]
    # only runs of the top 2 cells are kept (the GC removed the rest); a run is kept when its cell is in
    # the top 2 as its batch is recorded, so a run of a cell that rose later has no file (champion retrains it)
    kept_ids = {k.experiment_id for k in kept}
    assert kept and kept_ids <= set(ok.loc[ok["cell_id"].isin(top), "experiment_id"])
    assert summary.kept[0] == len(kept) and summary.kept[1] > 0 and "kept weights:" in summary.format()
    features = load_features(home, ds.name, "pixels")
    by_id = df.set_index("experiment_id")
    for k in kept:
        row = by_id.loc[k.experiment_id]
        assert k.cell_id == row["cell_id"] and k.seed == row["seed"] and k.meta["code_version"] == row["code_version"]
        head = _head_from(k, features.dim)  # load_state_dict is strict: one model's shapes, not the stack
        metrics = evaluate_heads(lambda x, m=None: head(x, m) if m is not None else head(x), features,
                                 float(k.meta["cell"]["window_s"]))[0]
        assert metrics["val_ap"] == pytest.approx(row["val_ap"], abs=1e-5)
        assert metrics["test_ap"] == pytest.approx(row["test_ap"], abs=1e-5)


def test_collect_removes_the_cells_that_left_the_top_k_and_leaves_unknown_runs(tmp_path):
    home = resolve_home(tmp_path / "home")
    backend = Store(home).backend
    state = {"w": torch.zeros(2)}
    for eid, cell in (("e1", 1), ("e2", 2), ("e3", 3), ("e9", 9)):
        save_head(backend, "c", eid, state, {"experiment_id": eid, "cell_id": cell, "seed": 0, "cell": {}})
    # a local home keeps them where it always did
    assert sorted(p.name for p in (home.campaigns / "c" / "models").iterdir()) == [
        f"e{i}.safetensors" for i in (1, 2, 3, 9)]
    history = pd.DataFrame({"experiment_id": ["e1", "e2", "e3", "e4"], "cell_id": [1, 2, 3, 4],
                            "status": ["ok"] * 4, "val_ap": [0.9, 0.5, 0.7, 0.8]})
    removed = collect(backend, "c", history, keep=2)  # top 2: cells 1 (0.9) and 4 (0.8)
    assert removed == ["campaigns/c/models/e2.safetensors", "campaigns/c/models/e3.safetensors"]
    # e9's experiment is not in the history read (another worker's batch, not landed yet): kept
    assert sorted(k.experiment_id for k in kept_heads(home, "c")) == ["e1", "e9"]
    assert collect(backend, "c", history, keep=None) == []  # all: nothing goes
    assert disk_use(home, "c") == (2, sum(p.stat().st_size for p in (home.campaigns / "c" / "models").iterdir()))


def test_a_file_that_is_not_a_head_is_skipped_not_fatal(tmp_path):
    home = resolve_home(tmp_path / "home")
    backend = Store(home).backend
    save_head(backend, "c", "e1", {"w": torch.ones(3)}, {"experiment_id": "e1", "cell_id": 1, "seed": 4, "cell": {}})
    backend.put("campaigns/c/models/junk.safetensors", b"\xff" * 8 + b"not a header")
    backend.put("campaigns/c/models/short.safetensors", b"abc")
    from safetensors.torch import save

    backend.put("campaigns/c/models/other.safetensors", save({"w": torch.ones(1)}, metadata={"format": "another"}))
    (head,) = kept_heads(home, "c")
    assert (head.experiment_id, head.cell_id, head.seed) == ("e1", 1, 4)
    assert head.location == str(home.campaigns / "c" / "models" / "e1.safetensors")
    assert torch.equal(head.state()["w"], torch.ones(3))


@pytest.fixture(scope="module")
def campaign(lab_home):
    """A tiny campaign that keeps the heads of its top 2 cells."""
    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-champ", budget=8, round_size=4, space_path=space, seeds=2, keep_models=2)
    return home, "c-champ"


def test_champion_packages_the_leader_as_the_recorded_model(campaign, tmp_path, capsys):
    import json

    from crashsearch.flows.cli import main
    from crashsearch.lab.leaderboard import leaderboard

    home, cid = campaign
    out = tmp_path / "pkg"
    assert main(["champion", "--home", str(home.root), "--campaign", cid, "--out", str(out)]) == 0
    assert "champion of c-champ" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    df = Store(home).experiments(cid)
    assert card["cell_id"] == int(leaderboard(df, 1).iloc[0]["cell_id"]) and card["scope"] == "full"
    run = card["package_run"]
    assert run["origin"] == "kept"
    recorded = df.set_index("experiment_id").loc[run["experiment_id"]]
    for key in ("val_ap", "test_ap", "test_auc"):  # the package is the recorded run's model
        assert run["evaluated"][key] == pytest.approx(recorded[key], abs=1e-5)
    replicates = df[df["cell_id"] == card["cell_id"]]
    assert card["replicates"]["test_ap"]["n"] == len(replicates)
    assert card["replicates"]["test_ap"]["mean"] == pytest.approx(replicates["test_ap"].mean())
    assert card["onnx"]["exported"] and card["onnx"]["checked"] and card["onnx"]["max_abs_diff"] <= 1e-5
    assert 0.0 <= card["threshold"]["value"] <= 1.0 and card["threshold"]["chosen_by"]
    text = (out / "card.md").read_text()
    assert "test AP" in text and "95% interval" in text and "N = " in text
    assert {p.name for p in out.iterdir()} >= {"model.json", "head.safetensors", "head.onnx", "card.md", "card.json"}


def test_a_cell_without_kept_weights_is_retrained_and_reproduces_its_val_ap(lab_home, tmp_path):
    from crashsearch.tasks.champion import write_champion

    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-nokeep", budget=4, round_size=4, space_path=space, seeds=1, keep_models=0)
    assert kept_heads(home, "c-nokeep") == []
    lines = []
    card = write_champion(home, "c-nokeep", tmp_path / "pkg", log=lines.append)
    run = card["package_run"]
    assert run["origin"] == "retrained" and len(lines) == 1 and "retrained" in lines[0]
    assert run["evaluated"]["val_ap"] == pytest.approx(run["recorded"]["val_ap"], abs=1e-4)
    assert run["evaluated"]["test_ap"] == pytest.approx(run["recorded"]["test_ap"], abs=1e-4)


def test_champion_of_an_unknown_cell_or_campaign_is_one_line(campaign, tmp_path, capsys):
    from crashsearch.flows.cli import main

    home, cid = campaign
    assert main(["champion", "--home", str(home.root), "--campaign", cid, "--cell", "999999",
                 "--out", str(tmp_path / "p")]) == 2
    assert "cell 999999 has no successful run" in capsys.readouterr().err
    assert main(["champion", "--home", str(home.root), "--campaign", "nope", "--out", str(tmp_path / "p")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.fixture(scope="module")
def package(campaign, tmp_path_factory):
    from crashsearch.tasks.champion import write_champion

    home, cid = campaign
    out = tmp_path_factory.mktemp("pkg") / "detector"
    write_champion(home, cid, out, log=lambda *_: None)
    return out


def test_predict_gives_each_video_its_max_risk_and_alert_and_skips_an_unreadable_one(package, synth_dataset,
                                                                                      tmp_path, capsys):
    import json

    from crashsearch.flows.cli import main

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    one = synth_dataset.videos[0].path
    out, plots = tmp_path / "pred.json", tmp_path / "plots"
    code = main(["predict", "--model", str(package), str(broken), str(one), str(synth_dataset.root),
                 "--out", str(out), "--plots", str(plots)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sum("broken.mp4" in line for line in err.splitlines()) == 1 and "cannot open video" in err
    rows = json.loads(out.read_text())
    assert len(rows) == 1 + len(synth_dataset.videos)
    threshold = json.loads((package / "model.json").read_text())["threshold"]
    for row in rows:
        assert 0.0 <= row["max_risk"] <= 1.0
        assert (row["alert_s"] is not None) == (row["max_risk"] >= threshold)
    labelled = [r for r in rows if "label" in r]
    assert len(labelled) == len(synth_dataset.videos)
    for r in labelled:
        if r["event_s"] is not None and r["alert_s"] is not None:
            assert r["margin_s"] == pytest.approx(r["event_s"] - r["alert_s"], abs=1e-3)
    assert "AP of max_risk" in err
    assert len(list(plots.glob("*.png"))) == len(rows)


def test_predict_with_nothing_readable_exits_non_zero_in_one_line(package, tmp_path, capsys):
    from crashsearch.flows.cli import main

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    assert main(["predict", "--model", str(package), str(broken)]) == 1
    assert "no video could be predicted" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), str(broken)]) == 2
    assert "not a model package" in capsys.readouterr().err



DONE_WHEN_SPACE = """
name: done-when
groups:
  arch:
    backbone: [pixels]
    encoder: [gru, tcn, meanpool_mlp]
    size: [small]
  loss:
    loss: [bce]
  train:
    lr: [0.003, 0.01]
    batch_size: [16]
  data:
    window_s: [1.0, 2.0]
    augment: [none]
fixed:
  epochs: 15
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


@pytest.mark.slow
def test_a_campaign_ends_in_a_detector_that_warns_before_collisions_on_unseen_videos(tmp_path, capsys):
    """The issue's done-when: campaign, champion, then predict on a fresh synthetic dataset of the same style."""
    import json

    import numpy as np

    from crashsearch.flows.cli import main
    from crashsearch.tasks.detector import Detector
    from crashsearch.tasks.evaluate import average_precision

    home, space = tmp_path / "home", tmp_path / "space.yaml"
    space.write_text(DONE_WHEN_SPACE)
    small = ["--width", "64", "--height", "48", "--seconds", "9"]
    cli = ["--home", str(home)]
    # the README's four commands (plus synth for the data)
    assert main(["synth", *cli, "--out", str(tmp_path / "seen"), "--videos", "160", "--seed", "1", *small]) == 0
    assert main(["extract", *cli, "--dataset", str(tmp_path / "seen"), "--backbone", "pixels"]) == 0
    assert main(["campaign", *cli, "--dataset", str(tmp_path / "seen"), "--space", str(space), "--budget", "10",
                 "--seeds", "2", "--policies", "random", "--propose-mode", "turns"]) == 0
    assert main(["champion", *cli, "--campaign", "seen", "--out", str(tmp_path / "pkg")]) == 0
    assert main(["synth", *cli, "--out", str(tmp_path / "unseen"), "--videos", "64", "--seed", "2", *small]) == 0
    capsys.readouterr()
    assert main(["predict", *cli, "--model", str(tmp_path / "pkg"), str(tmp_path / "unseen"),
                 "--out", str(tmp_path / "pred.json")]) == 0
    print(capsys.readouterr().err.splitlines()[-1])  # the figures, for the record

    # the package is the recorded model: the project's evaluation on the campaign's test split
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    run = card["package_run"]
    assert abs(run["evaluated"]["test_ap"] - run["recorded"]["test_ap"]) <= 0.005
    detector = Detector.load(tmp_path / "pkg")
    features = load_features(resolve_home(home), "seen", "pixels")
    again = evaluate_heads(lambda x, m=None: detector.head(x) if m is None else detector.head(x, m), features,
                           card["cell"]["window_s"])[0]
    assert abs(again["test_ap"] - run["recorded"]["test_ap"]) <= 0.005

    rows = json.loads((tmp_path / "pred.json").read_text())
    assert len(rows) == 64
    labels = np.array([r["label"] for r in rows])
    ap = average_precision([r["max_risk"] for r in rows], labels)
    positives = [r for r in rows if r["label"] == 1]
    early = [r["margin_s"] for r in positives if r["margin_s"] is not None and r["margin_s"] > 0]
    print(f"unseen AP {ap:.3f} (chance {labels.mean():.3f}); {len(early)}/{len(positives)} positives alerted "
          f"before the event, median margin {np.median(early) if early else float('nan'):.2f} s")
    assert ap >= labels.mean() + 0.25  # well above chance (measured: 1.000 against 0.500)
    assert len(early) >= len(positives) // 2 and np.median(early) > 0  # measured: 32/32, median 0.47 s


def _random_features(n: int = 24, steps: int = 12, dim: int = 16):
    import numpy as np

    from crashsearch.lab.features import FeatureSet

    g = torch.Generator().manual_seed(0)
    split = np.array(["train", "val", "test"] * (n // 3))
    real = torch.full((n,), 2.75)
    real[::4] = 1.0  # short clips: their windows carry a mask
    return FeatureSet("rand", "pixels", torch.randn(n, steps, dim, generator=g), (torch.arange(n) % 2).float(), split,
                      torch.arange(-steps + 1, 1) / 4.0, [f"v{i}" for i in range(n)], 4.0, "none", {}, real)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", __import__("crashsearch.models.registry", fromlist=["x"]).list_encoders())
def test_every_encoder_exports_to_onnx_within_1e5_or_says_why(encoder, tmp_path):
    from crashsearch.tasks.champion import card_markdown, export_onnx

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    head = create_head(encoder, "small", 16).eval()
    result = export_onnx(head, _random_features(), 2.0, tmp_path / "head.onnx")
    if result["exported"]:
        assert result["checked"] and result["max_abs_diff"] <= 1e-5 and result["within_tolerance"]
        assert (tmp_path / "head.onnx").is_file()
    else:  # the card says so and the package keeps the state dict
        assert result["reason"] and not (tmp_path / "head.onnx").exists()
        line = [ln for ln in card_markdown(_card_with(result, encoder)).splitlines() if "ONNX" in ln][0]
        assert f"the {encoder} head does not export" in line and "head.safetensors" in line


def _card_with(onnx: dict, encoder: str) -> dict:
    stats = {"mean": 0.5, "n": 1, "ci_lo": None, "ci_hi": None}
    cell = {"backbone": "pixels", "encoder": encoder, "size": "small", "loss": "bce", "lr": 0.01, "batch_size": 16,
            "window_s": 1.0, "augment": "none"}
    return {"campaign": "c", "cell_id": 1, "cell": cell, "rank": 1, "scope": "full",
            "replicates": {"val_ap": stats, "test_ap": stats, "test_auc": stats},
            "package_run": {"experiment_id": "e", "seed": 0, "origin": "kept", "code_version": "v",
                            "recorded": {"test_ap": 0.5}, "evaluated": {"test_ap": 0.5, "test_auc": 0.5, "val_ap": 0.5}},
            "threshold": {"value": 0.5, "rule": "r", "chosen_by": "r", "val_precision": 1.0, "val_recall": 1.0,
                          "val_f1": 1.0},
            "data": {"dataset": "d", "path": "p", "splits": {"test": {"videos": 1, "positives": 1}}},
            "backbone": {"name": "pixels", "weights": "random", "random": True},
            "features": {"step_hz": 4.0, "clip_frames": 4, "decode_fps": 8.0, "horizons_s": [0.5]},
            "onnx": onnx, "code_version": {"run": "v", "package": "v"}}


def test_the_card_says_in_bold_when_the_backbone_weights_are_random():
    from crashsearch.tasks.champion import card_markdown

    card = _card_with({"exported": True, "checked": False, "reason": "onnxruntime is not installed: not checked"},
                      "gru")
    assert "**The backbone pixels has RANDOM weights" in card_markdown(card)
    card["backbone"] = {"name": "vjepa2_vitl", "weights": "facebook/vjepa2-vitl-fpc64-256", "random": False}
    assert "RANDOM" not in card_markdown(card)


@pytest.mark.slow
def test_nightly_writes_the_champion_when_the_leader_changes_and_the_report_links_its_card(campaign, capsys):
    import json

    from crashsearch.analysis.report import build_report
    from crashsearch.flows.champion import nightly_champion

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    home, cid = campaign
    card_md = flow(name="champion-test")(nightly_champion)(home, cid)  # as the nightly flow calls it
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["c-champ-champion"])))
    assert artifacts and artifacts[0].type == "markdown" and "# Collision detector" in artifacts[0].data
    folder = home.campaign(cid) / "champion"
    assert card_md == str(folder / "card.md") and (folder / "head.safetensors").is_file()
    written = (folder / "card.json").stat().st_mtime_ns
    assert nightly_champion(home, cid) == card_md and "unchanged" in capsys.readouterr().out
    assert (folder / "card.json").stat().st_mtime_ns == written  # same leader: not rewritten
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "cell_id": -1}))  # as if another cell had led
    nightly_champion(home, cid)
    assert json.loads((folder / "card.json").read_text())["cell_id"] == card["cell_id"]
    assert not any(p.name.startswith(".champion") for p in folder.parent.iterdir())
    build_report(Store(home).experiments(cid), home.campaign(cid) / "report", n_boot=10)
    assert "[model card](../champion/card.md)" in (home.campaign(cid) / "report" / "report.md").read_text()


def test_a_distributed_worker_keeps_the_leaders_in_the_shared_home_by_the_campaigns_setting(lab_home):
    from crashsearch.flows.train_batch import train_batch_fn
    from crashsearch.lab.space import Space
    from crashsearch.tasks.record import Job

    home, ds, space_path = lab_home
    space = Space.load(space_path)
    cells = [space.cell(i) for i in (0, 5, 9)]
    Store(home).write_campaign("c-dist", {"keep_models": 1})  # what the campaign process writes for --keep-models 1
    summary = train_batch_fn(str(home.root), "c-dist", ds.name, [Job(c, seed=i).to_dict() for i, c in enumerate(cells)],
                             space_path, device="cpu")
    assert len(summary["recorded"]) == 3
    df = Store(home).experiments("c-dist")
    (leader,) = top_cells(df, 1)  # the leaderboard's first cell (ties: lab.leaderboard's order)
    assert [k.experiment_id for k in kept_heads(home, "c-dist")] == list(df.loc[df["cell_id"] == leader, "experiment_id"])


@pytest.mark.slow
def test_after_a_bug_fix_the_champion_is_the_post_fix_leader_and_the_card_says_so(lab_home, tmp_path):
    from datetime import datetime, timezone

    from crashsearch.lab.leaderboard import leaderboard
    from crashsearch.lab.versions import bugfix_events, declare_bugfix, post_bugfix
    from crashsearch.tasks.champion import write_champion

    home, ds, space = lab_home
    run_campaign(home, ds.root, "c-scope", budget=4, round_size=4, space_path=space, seeds=1, keep_models="all")
    declare_bugfix(home, "the loss was wrong", campaign="c-scope", at=datetime.now(timezone.utc).isoformat())
    run_campaign(home, ds.root, "c-scope", budget=8, round_size=4, space_path=space, seeds=1, keep_models="all")
    df = Store(home).experiments("c-scope")
    after = post_bugfix(df, bugfix_events(home, "c-scope"))
    assert 0 < len(after) < len(df)
    card = write_champion(home, "c-scope", tmp_path / "pkg", log=lambda *_: None)
    assert card["scope"] == "post-bugfix" and card["cell_id"] == int(leaderboard(after, 1).iloc[0]["cell_id"])
    assert card["package_run"]["experiment_id"] in set(after["experiment_id"])
    assert "post-bugfix scope" in (tmp_path / "pkg" / "card.md").read_text()
