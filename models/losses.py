"""Training losses for the binary collision heads: focal loss, with BCE as its gamma = 0 case.

Focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection") scales each example's
cross-entropy by ``(1 - p_t) ** gamma`` so that easy, confidently right examples count less.
With ``gamma = 0`` it is binary cross-entropy with logits, ``pos_weight`` included, so the
space's ``bce`` and ``focal_<gamma>`` losses share one code path. ``gamma`` and ``pos_weight``
may be tensors, which lets a vmapped batch of models train with one gamma per model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crashsearch.lab.space import loss_gamma

_REDUCTIONS = ("mean", "sum", "none")


def binary_focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float | Tensor,
    pos_weight: float | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary focal loss on logits; returns a scalar (``mean``/``sum``) or per-element (``none``).

    ``loss = -[w * y * (1 - p)^gamma * log p + (1 - y) * p^gamma * log(1 - p)]`` with
    ``p = sigmoid(logits)`` and ``w = pos_weight`` (1 if None). Computed in log-sigmoid form so
    large logits neither overflow nor give ``log(0)``. ``targets`` may be soft (in [0, 1]).
    Raises ValueError for an unknown reduction or mismatched shapes.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {_REDUCTIONS}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    targets = targets.to(logits.dtype)
    log_p = F.logsigmoid(logits)  # log p
    log_not_p = F.logsigmoid(-logits)  # log (1 - p)
    # (1 - p)^gamma = exp(gamma * log(1 - p)): exact 1 at gamma = 0, no 0 ** 0 edge case
    pos_term = torch.exp(gamma * log_not_p) * log_p
    neg_term = torch.exp(gamma * log_p) * log_not_p
    if pos_weight is not None:
        pos_term = pos_weight * pos_term
    loss = -(targets * pos_term + (1 - targets) * neg_term)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def loss_for(cell_loss_value: str) -> float:
    """The focal gamma of a ``loss`` axis value: ``bce`` -> 0.0, ``focal_2.5`` -> 2.5.

    Raises ValueError naming the value if it is not a known loss.
    """
    try:
        gamma = loss_gamma(cell_loss_value)
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"unknown loss {cell_loss_value!r}; expected 'bce' or 'focal_<gamma>'") from None
    if gamma < 0:
        raise ValueError(f"loss {cell_loss_value!r} has a negative gamma")
    return gamma
