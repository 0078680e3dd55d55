"""Evaluation metrics: average precision (the campaign's metric), ROC AUC, and per-horizon scoring.

A head is scored on windows ending at each prediction horizon (0.5, 1.0, 1.5 s before the
event, or before the clip end for negatives). ``val_ap`` is the mean of the per-horizon APs on the
validation split and is what policies optimise; ``test_ap`` / ``test_auc`` come from the held-out
test split and are kept apart (policies never see them).

The metrics are plain numpy and match scikit-learn (``average_precision_score``,
``roc_auc_score``), ties included; scikit-learn is only used by the tests to check that.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from crashsearch.lab.features import FeatureSet

HORIZONS_S = (0.5, 1.0, 1.5)
METRIC_KEYS = ("val_ap", "val_ap_h05", "val_ap_h10", "val_ap_h15", "val_auc", "test_ap", "test_auc")


def horizon_key(horizon_s: float) -> str:
    """Column suffix of a horizon: 0.5 -> ``h05``, 1.0 -> ``h10``, 1.5 -> ``h15``."""
    return f"h{int(round(horizon_s * 10)):02d}"


def _curve(scores, labels) -> tuple[np.ndarray, np.ndarray, float]:
    """Cumulative true/false positives at each distinct threshold (descending), and the positive count."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # the last index of each run of tied scores: one threshold per distinct score
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[ends]
    fps = (ends + 1) - tps
    return tps, fps, float(labels.sum())


def average_precision(scores, labels) -> float:
    """Average precision, sum over thresholds of (R_n - R_{n-1}) * P_n, as scikit-learn computes it.

    Tied scores form one threshold. Returns NaN when there are no positives (AP is undefined).
    Raises ValueError for non-finite scores or mismatched lengths.
    """
    if np.asarray(scores).size == 0:
        return float("nan")
    tps, fps, n_pos = _curve(scores, labels)
    if n_pos == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoids between distinct thresholds, so ties count half).

    Returns NaN unless both classes are present. Raises ValueError for non-finite scores.
    """
    if np.asarray(scores).size == 0:
        return float("nan")
    tps, fps, n_pos = _curve(scores, labels)
    n_neg = fps[-1]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_heads(score_fn: ScoreFn, features: FeatureSet, window_s: float,
                   horizons_s: Sequence[float] = HORIZONS_S, chunk_rows: int = 512) -> list[dict[str, float]]:
    """Score one or many heads on the validation and test splits; one metrics dict per head.

    ``score_fn`` maps windows ``(B, T, D)`` to logits ``(M, B)`` for M heads (or ``(B,)`` for
    one). Each dict has ``val_ap`` (mean over horizons), ``val_ap_<hXX>`` per horizon, ``val_auc``
    (mean over horizons), and ``test_ap`` / ``test_auc`` (means over horizons on the test split).
    A head whose scores are not all finite gets NaN for every metric. Raises IndexError (from
    ``FeatureSet.window``) if the window does not fit the cached history.
    """
    val_rows, test_rows = features.indices("val"), features.indices("test")
    rows = torch.cat([val_rows, test_rows])
    if rows.numel() == 0:
        raise ValueError(f"{features.dataset!r} has no val or test videos to evaluate on")
    n_val = val_rows.numel()
    labels = features.y[rows].cpu().numpy()
    per_horizon = []  # (M, len(rows)) scores per horizon
    for horizon in horizons_s:
        chunks = []
        for start in range(0, rows.numel(), chunk_rows):
            windows = features.window(rows[start:start + chunk_rows], horizon, window_s)  # (B, T, D)
            logits = score_fn(windows)
            chunks.append(logits.reshape(-1, windows.shape[0]).float())  # (M, B)
        per_horizon.append(torch.cat(chunks, dim=1).cpu().numpy())
    n_models = per_horizon[0].shape[0]
    results = []
    for m in range(n_models):
        scores = [s[m] for s in per_horizon]
        if not all(np.all(np.isfinite(s)) for s in scores):
            results.append({key: float("nan") for key in _keys(horizons_s)})
            continue
        metrics: dict[str, float] = {}
        val_aps, val_aucs, test_aps, test_aucs = [], [], [], []
        for horizon, s in zip(horizons_s, scores):
            ap = average_precision(s[:n_val], labels[:n_val])
            metrics[f"val_ap_{horizon_key(horizon)}"] = ap
            val_aps.append(ap)
            val_aucs.append(roc_auc(s[:n_val], labels[:n_val]))
            test_aps.append(average_precision(s[n_val:], labels[n_val:]))
            test_aucs.append(roc_auc(s[n_val:], labels[n_val:]))
        metrics["val_ap"] = float(np.mean(val_aps))
        metrics["val_auc"] = float(np.mean(val_aucs))
        metrics["test_ap"] = float(np.mean(test_aps))
        metrics["test_auc"] = float(np.mean(test_aucs))
        results.append({key: metrics[key] for key in _keys(horizons_s)})
    return results


def _keys(horizons_s: Sequence[float]) -> list[str]:
    return ["val_ap", *(f"val_ap_{horizon_key(h)}" for h in horizons_s), "val_auc", "test_ap", "test_auc"]
