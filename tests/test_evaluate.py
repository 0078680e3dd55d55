"""Metrics: AP and AUC match scikit-learn (ties included); per-horizon scoring reads the right windows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from crashsearch.lab.features import FeatureSet
from crashsearch.tasks.evaluate import METRIC_KEYS, average_precision, evaluate_heads, horizon_key, roc_auc


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 7, 50, 300])
def test_ap_and_auc_match_sklearn_on_random_scores(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[0], labels[-1] = True, False  # both classes present
    scores = rng.normal(size=n) + labels
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ap_and_auc_match_sklearn_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.normal(size=200) + labels, 0)  # a handful of distinct values, many ties
    assert len(np.unique(scores)) < 10
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    constant = np.zeros(200)  # one threshold: AP is the positive rate, AUC one half
    assert average_precision(constant, labels) == pytest.approx(average_precision_score(labels, constant))
    assert roc_auc(constant, labels) == pytest.approx(0.5)


def test_metrics_accept_torch_tensors_and_handle_edge_cases():
    scores, labels = torch.tensor([0.9, 0.1, 0.8, 0.3]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert average_precision(scores, labels) == 1.0 and roc_auc(scores, labels) == 1.0
    assert average_precision(-scores, labels) == pytest.approx(average_precision_score(labels.numpy(), -scores.numpy()))
    assert math.isnan(average_precision([0.2, 0.4], [0, 0]))  # no positives: undefined
    assert math.isnan(roc_auc([0.2, 0.4], [1, 1]))  # one class: undefined
    assert math.isnan(average_precision([], []))
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="differ"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


def test_horizon_keys():
    assert [horizon_key(h) for h in (0.5, 1.0, 1.5, 2.0)] == ["h05", "h10", "h15", "h20"]


def _marked_features(n=60, steps=16, hz=4.0, marked_step_before_end=4, seed=0) -> FeatureSet:
    """Dim 0 carries the label only at the step ``marked_step_before_end`` steps before the event.

    Dim 1 carries the label on val videos and its opposite on test videos.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
    x = torch.randn(n, steps, 3, generator=g) * 0.1
    x[:, steps - 1 - marked_step_before_end, 0] += 5 * y
    split = np.array(["train"] * (n // 3) + ["val"] * (n // 3) + ["test"] * (n - 2 * (n // 3)))
    x[split == "val", :, 1] += y[split == "val", None]
    x[split == "test", :, 1] += 1 - y[split == "test", None]
    return FeatureSet("marked", "pixels", x, y, split, torch.arange(-steps + 1, 1) / hz, [str(i) for i in range(n)], hz)


def test_evaluate_heads_scores_each_horizon_on_its_own_windows():
    fs = _marked_features(marked_step_before_end=4)  # 4 steps at 4 Hz = 1.0 s before the event

    def last_step_of_dim0(windows):  # (B, T, D) -> (1, B): a "head" that reads the window's last step
        return windows[None, :, -1, 0]

    (metrics,) = evaluate_heads(last_step_of_dim0, fs, window_s=0.25)
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["val_ap_h10"] == 1.0  # only the window ending 1.0 s before sees the mark
    assert metrics["val_ap_h05"] < 0.9 and metrics["val_ap_h15"] < 0.9
    assert metrics["val_ap"] == pytest.approx(np.mean([metrics[f"val_ap_h{k}"] for k in ("05", "10", "15")]))


def test_evaluate_heads_keeps_test_apart_and_handles_many_heads():
    fs = _marked_features()

    def two_heads(windows):  # head 0 reads dim 1 (right on val, wrong on test); head 1 its negation
        s = windows[:, :, 1].mean(dim=1)
        return torch.stack([s, -s])  # (2, B)

    first, second = evaluate_heads(two_heads, fs, window_s=1.0)
    assert first["val_ap"] == 1.0 and first["val_auc"] == 1.0
    assert first["test_auc"] == 0.0 and first["test_ap"] < 0.6
    assert second["val_auc"] == 0.0 and second["test_auc"] == 1.0


def test_evaluate_heads_gives_nan_for_non_finite_scores():
    fs = _marked_features()
    bad, good = evaluate_heads(lambda w: torch.stack([w[:, -1, 0] * float("nan"), w[:, -1, 0]]), fs, window_s=0.5)
    assert all(math.isnan(v) for v in bad.values())
    assert all(math.isfinite(v) for v in good.values())


def test_evaluate_heads_raises_when_window_does_not_fit():
    fs = _marked_features(steps=8)
    with pytest.raises(IndexError):
        evaluate_heads(lambda w: w[:, -1, 0], fs, window_s=2.0)  # 8 steps + 1.5 s offset > 8 cached
