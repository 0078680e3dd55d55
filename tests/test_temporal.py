"""analysis.temporal: mean pooling vs the best temporal head, with N and intervals, in the report."""
from __future__ import annotations

import numpy as np
import pandas as pd

from crashsearch.analysis.report import build_report
from crashsearch.analysis.temporal import temporal_vs_meanpool


def _runs(aps: dict[str, list[float]], backbone: str = "pixels") -> pd.DataFrame:
    rows = [{"backbone": backbone, "encoder": enc, "arch_group": f"{backbone}/{enc}", "status": "ok", "val_ap": ap,
             "campaign": "c", "proposer": "random"} for enc, values in aps.items() for ap in values]
    df = pd.DataFrame(rows)
    df["cell_id"] = np.arange(len(df))
    return df


def test_separated_intervals_name_the_temporal_head_with_n_and_interval():
    df = _runs({"meanpool_mlp": [0.70, 0.72, 0.71, 0.69], "gru": [0.85, 0.86, 0.84, 0.85],
                "tcn": [0.80, 0.60, 0.90], "retention": [0.99]})  # one run: not a candidate however high
    (r,) = temporal_vs_meanpool(df)
    assert r["verdict"] == "temporal ahead" and r["best"] == "gru"
    assert r["meanpool"]["n"] == 4 and r["best_stats"]["n"] == 4
    assert r["best_stats"]["ci_lo"] > r["meanpool"]["ci_hi"]
    assert "a temporal head beats mean pooling (gru; intervals apart)" in r["text"]
    assert "over 4 run(s)" in r["text"] and "[0.8" in r["text"] and "95% t-intervals" in r["text"]


def test_overlapping_intervals_say_undecided_and_the_reverse_is_named():
    tie = _runs({"meanpool_mlp": [0.80, 0.70, 0.75], "gru": [0.78, 0.72, 0.82]})
    assert temporal_vs_meanpool(tie)[0]["verdict"] == "undecided"
    assert "undecided (intervals overlap)" in temporal_vs_meanpool(tie)[0]["text"]
    worse = _runs({"meanpool_mlp": [0.90, 0.91, 0.89], "gru": [0.60, 0.61, 0.59]})
    assert temporal_vs_meanpool(worse)[0]["verdict"] == "mean pooling ahead"
    few = _runs({"meanpool_mlp": [0.50, 0.52], "gru": [0.9, 0.91]})  # 2 runs < MIN_RUNS
    r = temporal_vs_meanpool(few)[0]
    assert r["best"] is None and r["verdict"] == "undecided" and "no temporal encoder has 3 runs" in r["text"]


def test_failed_runs_and_other_backbones_are_kept_apart():
    df = pd.concat([_runs({"meanpool_mlp": [0.7, 0.7, 0.71], "gru": [0.9, 0.91, 0.9]}),
                    _runs({"gru": [0.5, 0.5, 0.5]}, backbone="vjepa2_vitl")], ignore_index=True)
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "status": "failed", "val_ap": np.nan}
    out = temporal_vs_meanpool(df)
    assert [r["backbone"] for r in out] == ["pixels"]  # no mean-pooling run on vjepa2_vitl: nothing to compare
    assert out[0]["meanpool"]["n"] == 3


def test_the_report_states_the_comparison_in_its_headline(tmp_path):
    df = _runs({"meanpool_mlp": [0.70, 0.72, 0.71, 0.69], "gru": [0.85, 0.86, 0.84, 0.85]})
    numbers = build_report(df, tmp_path, n_boot=20)
    assert numbers["temporal"][0]["verdict"] == "temporal ahead"
    md = (tmp_path / "report.md").read_text()
    assert "Temporal heads vs mean pooling, pixels: a temporal head beats mean pooling (gru; intervals apart)" in md


def test_the_like_for_like_pair_is_judged_on_the_held_out_test_split():
    """The temporal cell of the pair is a leader, picked on validation AP; its validation mean is
    biased up. Before: the pair was judged on validation AP and called 'temporal ahead' here."""
    axes = dict(backbone="pixels", size="small", loss="bce", lr=0.001, batch_size=32, window_s=2.0, augment="none")
    rows = [{**axes, "encoder": enc, "cell_id": cid, "status": "ok", "val_ap": val, "test_ap": test,
             "campaign": "c", "proposer": "ablation", "arch_group": f"pixels/{enc}"}
            for enc, cid, vals in (("gru", 1, [(0.90, 0.70), (0.91, 0.72), (0.89, 0.69)]),
                                   ("meanpool_mlp", 2, [(0.70, 0.71), (0.71, 0.70), (0.69, 0.72)]))
            for val, test in vals]
    (r,) = temporal_vs_meanpool(pd.DataFrame(rows))
    p = r["paired"]
    assert p["metric"] == "test_ap" and p["verdict"] == "undecided", p["text"]
    assert "held-out test AP" in p["text"] and "validation AP 0.9000 vs 0.7000" in p["text"]
    no_test = pd.DataFrame(rows).drop(columns="test_ap")
    p = temporal_vs_meanpool(no_test)[0]["paired"]
    assert p["metric"] == "val_ap" and p["verdict"] == "temporal ahead" and "biased up by its pick" in p["text"]


def test_identical_runs_are_no_certainty_and_intervals_stay_inside_0_1():
    """On a 4-video split replicates often score the same AP: a zero-width interval then showed
    'intervals apart'; and a wide interval of few runs reached past 1."""
    same = _runs({"meanpool_mlp": [0.75, 0.75, 0.75], "gru": [1.0, 1.0, 1.0]})
    assert temporal_vs_meanpool(same)[0]["verdict"] == "undecided"
    wide = _runs({"meanpool_mlp": [0.2, 0.3, 0.25], "gru": [0.99, 0.6, 0.98]})
    s = temporal_vs_meanpool(wide)[0]["best_stats"]
    assert 0.0 <= s["ci_lo"] and s["ci_hi"] == 1.0
