"""The synthetic dashcam generator: real H.264 that decord decodes, and labels the pixels bear out."""
from __future__ import annotations

import json
from argparse import Namespace

import decord
import numpy as np
import pytest

from crashsearch.lab.datasets import load_dataset
from crashsearch.lab.settings import Home
from crashsearch.flows.commands.synth import run as main
from crashsearch.lab.synth import MIN_EVENT_S, TRUTH_FILE, _x264_options, generate, render_video

FPS = 8


def _frames(item) -> np.ndarray:
    vr = decord.VideoReader(str(item.path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()  # (T, H, W, 3) uint8


def _changed(frame: np.ndarray, ref: np.ndarray, box=None) -> float:
    """Fraction of 2x2 blocks in the bottom centre (or in ``box``) that differ clearly from ``ref``.

    Frame 0 shows empty road there in every video (traffic is far away or in the side lanes at the
    start), so this measures how much of the bottom centre a vehicle covers.
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box if box else (int(0.35 * w), int(0.6 * h), int(0.65 * w), h)
    d = np.abs(frame[y0:y1, x0:x1].astype(np.float32) - ref[y0:y1, x0:x1])
    bh, bw = d.shape[0] // 2 * 2, d.shape[1] // 2 * 2
    blocks = d[:bh, :bw].reshape(bh // 2, 2, bw // 2, 2, 3).mean(axis=(1, 3)).max(axis=-1)
    return float((blocks > 25).mean())


@pytest.fixture(scope="module")
def night_dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "synth-night", videos=6, seed=0, style="night",
                    width=64, height=48, fps=FPS, seconds=8.0)


def test_writes_a_nexar_dataset_that_decord_decodes(synth_dataset):
    ds = synth_dataset
    assert ds.layout == "nexar" and ds.problems == [] and len(ds.videos) == 12
    assert sum(v.label for v in ds.videos) == 6
    assert {v.split for v in ds.videos} == {"train", "val", "test"}
    lines = (ds.root / "train.csv").read_text().splitlines()
    assert lines[0] == "id,time_of_event,time_of_alert,target" and len(lines) == 13
    for v in ds.videos:
        vr = decord.VideoReader(str(v.path))
        assert v.path.name == f"{v.id}.mp4"
        assert (len(vr), vr[0].shape, vr.get_avg_fps()) == (64, (48, 64, 3), FPS)
        if v.label:
            assert MIN_EVENT_S <= v.event_time <= 8.0 - 0.3
            assert 0.5 <= v.event_time - v.alert_time <= 1.5
        else:
            assert v.event_time is None and v.alert_time is None


def _check_labels_in_pixels(ds) -> None:
    truth = json.loads((ds.root / TRUTH_FILE).read_text())["videos"]
    for v in ds.videos:
        frames = _frames(v)
        boxes = truth[v.id]["key_box"]
        if v.label:
            e = int(round(v.event_time * FPS))
            early = e - 3 * FPS
            at_event, before = _changed(frames[e], frames[0]), _changed(frames[early], frames[0])
            assert at_event > 0.25 and before < 0.1, (v.id, truth[v.id]["scenario"], at_event, before)
            # the ground-truth box agrees: large at the event, much smaller 3 s earlier
            area = lambda b: 0 if b is None else (b[2] - b[0]) * (b[3] - b[1])
            h, w = frames.shape[1:3]
            assert area(boxes[e]) > 0.1 * h * w, (v.id, boxes[e])
            assert area(boxes[e]) > 8 * area(boxes[early]), (v.id, boxes[e], boxes[early])
            assert _changed(frames[e], frames[0], boxes[e]) > 0.3  # and pixels inside it did change
        else:
            worst = max(_changed(f, frames[0]) for f in frames)
            assert worst < 0.2, (v.id, truth[v.id]["scenario"], worst)


def test_positives_loom_into_the_bottom_centre_and_negatives_do_not(synth_dataset):
    _check_labels_in_pixels(synth_dataset)


def test_night_style_same_labels_visibly_darker(synth_dataset, night_dataset):
    assert night_dataset.problems == [] and sum(v.label for v in night_dataset.videos) == 3
    _check_labels_in_pixels(night_dataset)
    day = np.mean([_frames(v).mean() for v in synth_dataset.videos])
    night = np.mean([_frames(v).mean() for v in night_dataset.videos])
    assert night < 0.6 * day, (day, night)


def test_same_seed_same_frames_and_bytes(tmp_path):
    a, truth_a = render_video(5, 1, 1, "day", 32, 32, FPS, 7.5)
    b, truth_b = render_video(5, 1, 1, "day", 32, 32, FPS, 7.5)
    assert np.array_equal(a, b) and truth_a == truth_b
    assert not np.array_equal(a, render_video(6, 1, 1, "day", 32, 32, FPS, 7.5)[0])
    one = generate(tmp_path / "one", videos=2, seed=5, width=32, height=32, fps=FPS, seconds=7.5)
    two = generate(tmp_path / "two", videos=2, seed=5, width=32, height=32, fps=FPS, seconds=7.5)
    assert (one.root / "train.csv").read_bytes() == (two.root / "train.csv").read_bytes()
    if "x264-params" not in _x264_options(FPS):
        pytest.skip("x264 picks its own CPU kernels here, so mp4 bytes may differ between runs")
    for v, w in zip(one.videos, two.videos):
        assert v.path.read_bytes() == w.path.read_bytes()


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"seconds 1.5 is too short: clips need >= 2.0 s"):
        generate(tmp_path / "x", videos=2, seconds=1.5)
    with pytest.raises(ValueError, match="must be even"):
        generate(tmp_path / "x", videos=2, width=63)
    with pytest.raises(ValueError, match="unknown style 'dusk'"):
        generate(tmp_path / "x", videos=2, style="dusk")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train.csv").write_text("id,time_of_event,time_of_alert,target\n")
    with pytest.raises(ValueError, match="not synthetic"):
        generate(tmp_path / "real", videos=2, width=32, height=32, seconds=7.5)


def test_regenerating_replaces_the_previous_videos(tmp_path):
    generate(tmp_path / "d", videos=3, width=32, height=32, fps=4, seconds=7.5)
    ds = generate(tmp_path / "d", videos=2, width=32, height=32, fps=4, seconds=7.5)
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == ["00000.mp4", "00001.mp4"]
    assert len(load_dataset(tmp_path / "d").videos) == len(ds.videos) == 2


def test_cli_writes_into_the_home_by_default(tmp_path, capsys):
    from crashsearch.flows.cli import build_parser

    args = build_parser().parse_args(["synth", "--videos", "2", "--style", "night", "--width", "32",
                                      "--height", "32", "--seconds", "7.5"])
    args.home_dir = Home(tmp_path)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 2 synthetic night videos" in out and str(tmp_path / "datasets" / "synth-night") in out
    assert len(load_dataset(tmp_path / "datasets" / "synth-night").videos) == 2

    defaults = build_parser().parse_args(["synth"])
    assert defaults.seconds - 0.3 >= MIN_EVENT_S  # the CLI's defaults are a valid clip length
    args.seconds = 1.0
    assert main(args) == 2
    assert "too short" in capsys.readouterr().err


def test_the_cue_is_closing_speed_not_apparent_size():
    """At the prediction time a positive's key vehicle is no bigger than a negative's, but it is growing.

    Before: negatives stayed far away, so one frame's size separated the classes and the first
    experiment of a demo scored AP 1.0 with any head.
    """
    from crashsearch.tasks.evaluate import roc_auc

    seconds, fps, lead = 7.5, 8, 1.0  # predict 1 s ahead
    size, growth, labels = [], [], []
    for k in range(40):
        label = k % 2
        _, truth = render_video(11, k, label, "day", 64, 48, fps, seconds)
        ref = truth["event_time"] if label else (seconds * fps - 1) / fps  # what extraction uses
        area = lambda t: (lambda b: 0 if b is None else (b[2] - b[0]) * (b[3] - b[1]))(truth["key_box"][int(t * fps)])
        size.append(area(ref - lead))
        growth.append(np.log((1 + area(ref - lead)) / (1 + area(ref - lead - 1.5))))
        labels.append(label)
    by_size, by_growth = roc_auc(size, labels), roc_auc(growth, labels)
    assert by_size < 0.8, f"apparent size alone separates the classes (AUC {by_size:.2f})"
    assert by_growth > 0.9 and by_growth > by_size + 0.15, (by_growth, by_size)


def test_order_free_summaries_of_the_size_do_not_give_the_label_away():
    """Mean pooling sees a window's sizes without their order: their mean must not separate the classes.

    Before: negatives kept a vehicle close for the whole window while a positive's approached from
    far, so a positive's mean apparent size over a 4 s window was the smaller one (ROC AUC 0.19, i.e.
    0.81 the other way round): an order-blind head learned "small on average = collision".
    Measured on the scene plan (the key vehicle's apparent height, height / distance, at 4 Hz).
    """
    from crashsearch.lab.synth import _key_vehicle
    from crashsearch.tasks.evaluate import roc_auc

    seconds, fps = 7.5, 8
    t = np.arange(int(seconds * fps)) / fps
    plans = []
    for k in range(300):
        vehicle, _, ref = _key_vehicle(np.random.default_rng([3, k, 0]), k % 2, t, seconds)
        size = np.where(vehicle.z > 1.0, vehicle.height / np.maximum(vehicle.z, 1e-3), 0.0)  # (T,)
        plans.append((k % 2, size, ref if k % 2 else t[-1]))  # negatives: the clip end, as extraction does
    for window in (1.0, 2.0, 4.0):
        mean, growth, labels = [], [], []
        for label, size, ref in plans:
            for horizon in (0.5, 1.0, 1.5):
                steps = np.round((ref - horizon - np.arange(0, window + 1e-9, 0.25)[::-1]) * fps).astype(int)
                s = size[np.clip(steps, 0, len(size) - 1)]
                mean.append(s.mean())
                growth.append(np.log((s[-1] + 0.01) / (s[-5] + 0.01)))  # over the last second
                labels.append(label)
        by_mean, by_growth = roc_auc(mean, labels), roc_auc(growth, labels)
        assert abs(by_mean - 0.5) < 0.22, f"{window} s window: the mean size separates the classes (AUC {by_mean:.2f})"
        assert by_growth > 0.85, f"{window} s window: growth AUC {by_growth:.2f}"
