"""Evaluation metrics: average precision (the campaign's metric), ROC AUC, and per-horizon scoring.

A head is scored on windows ending at each prediction horizon (0.5, 1.0, 1.5 s before the
event, or before the clip end for negatives). ``val_ap`` is the mean of the per-horizon APs on the
validation split and is what policies optimise; ``test_ap`` / ``test_auc`` come from the held-out
test split and are kept apart (policies never see them).

Short clips: a horizon's AP is over the videos whose prediction time lies inside the video
(``FeatureSet.has_history``); that set depends on the horizon only, never on the window, so
every cell is scored on the same videos. Windows reaching before a video's start carry a mask
(``FeatureSet.window_mask``) that the heads read. A horizon whose AP is undefined there (one
class left) is left out of the means; it stays NaN in its own column.

The metrics are plain numpy and match scikit-learn (``average_precision_score``,
``roc_auc_score``), ties included; scikit-learn is only used by the tests to check that.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from crashsearch.lab.errors import UserError
from crashsearch.lab.features import FeatureSet
from crashsearch.models.mask import own_windows

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


ScoreFn = Callable[..., torch.Tensor]  # (windows (B, T, D)[, mask (B, T) or per head (M, B, T)]) -> (M, B) or (B,)


@torch.no_grad()
def evaluate_heads(score_fn: ScoreFn, features: FeatureSet, window_s: float | Sequence[float],
                   horizons_s: Sequence[float] = HORIZONS_S, chunk_rows: int = 512) -> list[dict[str, float]]:
    """Score one or many heads on the validation and test splits; one metrics dict per head.

    ``score_fn`` maps windows ``(B, T, D)`` to logits ``(M, B)`` for M heads (or ``(B,)`` for
    one); when the features hold padded short clips it is called with the time mask as well,
    ``score_fn(windows, mask)``. Each dict has ``val_ap`` (mean over horizons), ``val_ap_<hXX>``
    per horizon, ``val_auc`` (mean over horizons), and ``test_ap`` / ``test_auc`` (means over
    horizons on the test split); a horizon's AP covers the videos that have history there.
    A head whose scores are not all finite gets NaN for every metric. Raises IndexError (from
    ``FeatureSet.window``) if the window does not fit the cached history.

    ``window_s`` may also be one window per head (a training group whose heads read different
    windows): every head then scores the longest window, its own older steps masked off (a
    ``(M, B, T)`` mask, ``models.mask``), which gives the logits of its own window.
    """
    window_s, window_mask = _group_windows(features, window_s)
    val_rows, test_rows = features.indices("val"), features.indices("test")
    rows = torch.cat([val_rows, test_rows])
    if rows.numel() == 0:
        raise UserError(f"{features.dataset!r} has no val or test videos to evaluate on")
    n_val = val_rows.numel()
    labels = features.y[rows].cpu().numpy()
    per_horizon = []  # (M, len(rows)) scores per horizon
    scored = []  # (len(rows),) bool per horizon: the video has history at this horizon
    for horizon in horizons_s:
        chunks = []
        for start in range(0, rows.numel(), chunk_rows):
            chunk = rows[start:start + chunk_rows]
            windows = features.window(chunk, horizon, window_s)  # (B, T, D)
            mask = features.window_mask(chunk, horizon, window_s)
            if window_mask is not None:  # (M, T) per head, with the short-clip mask (B, T) if any
                own = window_mask[:, None, :].expand(-1, chunk.numel(), -1)
                mask = own if mask is None else own & mask[None]
            logits = score_fn(windows) if mask is None else score_fn(windows, mask)
            chunks.append(logits.reshape(-1, windows.shape[0]).float())  # (M, B)
        keep = features.has_history(rows, horizon).cpu().numpy()
        per_horizon.append(torch.cat(chunks, dim=1).cpu().numpy()[:, keep])
        scored.append(keep)
    n_models = per_horizon[0].shape[0]
    results = []
    is_val = np.arange(rows.numel()) < n_val
    for m in range(n_models):
        scores = [s[m] for s in per_horizon]
        if not all(np.all(np.isfinite(s)) for s in scores):
            results.append({key: float("nan") for key in _keys(horizons_s)})
            continue
        metrics: dict[str, float] = {}
        val_aps, val_aucs, test_aps, test_aucs = [], [], [], []
        for horizon, s, keep in zip(horizons_s, scores, scored):
            val, y = is_val[keep], labels[keep]
            ap = average_precision(s[val], y[val])
            metrics[f"val_ap_{horizon_key(horizon)}"] = ap
            val_aps.append(ap)
            val_aucs.append(roc_auc(s[val], y[val]))
            test_aps.append(average_precision(s[~val], y[~val]))
            test_aucs.append(roc_auc(s[~val], y[~val]))
        metrics["val_ap"] = _mean_defined(val_aps)
        metrics["val_auc"] = _mean_defined(val_aucs)
        metrics["test_ap"] = _mean_defined(test_aps)
        metrics["test_auc"] = _mean_defined(test_aucs)
        results.append({key: metrics[key] for key in _keys(horizons_s)})
    return results


def _group_windows(features: FeatureSet, window_s: float | Sequence[float]) -> tuple[float, torch.Tensor | None]:
    """The window to read and, for heads of different windows, each head's (M, T) mask of its own
    steps (the last ``steps(window)`` of the longest); None when one window serves every head."""
    if isinstance(window_s, (int, float)):
        return float(window_s), None
    windows = [float(w) for w in window_s]
    return max(windows), own_windows([features.steps(w) for w in windows], features.device)


def _mean_defined(values: list[float]) -> float:
    """The mean of the defined (non-NaN) values; NaN when none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _keys(horizons_s: Sequence[float]) -> list[str]:
    return ["val_ap", *(f"val_ap_{horizon_key(h)}" for h in horizons_s), "val_auc", "test_ap", "test_auc"]
