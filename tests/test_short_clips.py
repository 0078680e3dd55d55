"""Short clips (DAD/CCD style: 5 s, the event in the last second) are kept, padded, masked and trained.

Before: every video with less than 5.5 s before its reference time was dropped at extraction
("shorter than needed"), so a 5-second dataset lost every video and nothing could train.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crashsearch.lab.cache import load_features
from crashsearch.lab.datasets import load_dataset
from crashsearch.lab.space import Space
from crashsearch.lab.synth import generate
from crashsearch.tasks.evaluate import average_precision, evaluate_heads
from crashsearch.tasks.extract import extract_dataset
from crashsearch.tasks.train import train_cell


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """16 five-second clips (8 positive) in the Nexar layout, and the same videos as a generic manifest."""
    root = tmp_path_factory.mktemp("short")
    nexar = generate(root / "dad-like", videos=16, seed=3, width=64, height=48, fps=8, seconds=5.0)
    generic = root / "generic" / "manifest.csv"
    generic.parent.mkdir()
    generic.write_text("path,label,event_time\n" + "".join(
        f"{v.path},{v.label},{'' if v.event_time is None else v.event_time}\n" for v in nexar.videos))
    return nexar, load_dataset(generic)


def test_synth_seconds_5_puts_the_event_in_the_last_second(short):
    nexar, _ = short
    events = [v.event_time for v in nexar.videos if v.label == 1]
    assert len(events) == 8 and all(4.0 <= t <= 4.7 for t in events)


@pytest.mark.parametrize("layout", ["nexar", "generic"])
def test_every_short_clip_is_kept_with_its_real_seconds_and_zero_padding(short, tmp_path, layout):
    ds = short[0] if layout == "nexar" else short[1]
    logged = []
    summary = extract_dataset(ds, "pixels", home=tmp_path, progress=False, log=logged.append)
    assert summary["videos_ok"] == 16 and summary["videos_failed"] == 0 and summary["class_problem"] is None
    assert any("16 short clip(s) kept" in line for line in logged)
    fs = load_features(tmp_path, ds.name, "pixels")
    assert fs.padded and int(fs.y.sum()) == 8  # every positive kept
    history = float(-fs.t_rel[0])  # 5.5 s
    refs = {v.id: v.event_time if v.label else None for v in ds.videos}
    for i, vid in enumerate(fs.video_ids):
        real = float(fs.real_s[i])
        assert real < history and (refs[vid] is None or real == pytest.approx(refs[vid], abs=1e-3))
        first = int(fs.first_real[i])
        assert first > 0 and torch.all(fs.x[i, :first] == 0) and torch.all(fs.x[i, first:].abs().sum(1) > 0)
        # the first real step's clip ends inside the video, the padded one before it would not
        assert float(fs.t_rel[first]) >= -real - 1e-6 > float(fs.t_rel[first - 1])


def test_short_clips_train_with_the_longest_window_and_score_the_same_videos_at_every_window(short, tmp_path):
    ds = short[0]
    extract_dataset(ds, "pixels", home=tmp_path, progress=False, log=lambda *_: None)
    fs = load_features(tmp_path, ds.name, "pixels")
    space = Space.load()
    cell = space.validate({"backbone": "pixels", "encoder": "gru", "size": "small", "loss": "bce", "lr": 0.003,
                           "batch_size": 16, "window_s": max(space.axis("window_s").values), "augment": "jitter"})
    result = train_cell(cell, fs, seed=0, fixed={**space.fixed, "epochs": 2})
    assert 0.0 <= result.metrics["val_ap"] <= 1.0

    # a horizon's AP is over the videos with history there, whatever the window: score each window by
    # its last step (the same for every window length) and compare with the AP over exactly those videos
    rows = torch.cat([fs.indices("val"), fs.indices("test")])
    n_val = fs.indices("val").numel()
    for window_s in (1.0, 4.0):
        seen_masks = []

        def last_step(windows, mask=None):
            seen_masks.append(mask)
            return windows[:, -1, :8].sum(dim=1)

        (metrics,) = evaluate_heads(last_step, fs, window_s)
        assert all(m is not None and bool(m[:, -1].all()) for m in seen_masks)  # the mask reaches the head
        assert any(not bool(m.all()) for m in seen_masks) == (window_s == 4.0)  # 4 s reaches before the start
        for h, key in ((0.5, "val_ap_h05"), (1.5, "val_ap_h15")):
            keep = fs.has_history(rows, h).numpy() & (np.arange(rows.numel()) < n_val)
            scores = fs.window(rows, h, 0.25)[:, -1, :8].sum(dim=1).numpy()
            expected = average_precision(scores[keep], fs.y[rows].numpy()[keep])
            assert metrics[key] == pytest.approx(expected) or (np.isnan(expected) and np.isnan(metrics[key]))
