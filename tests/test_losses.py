"""Tests for the focal / BCE loss: the gamma = 0 identity with BCE, down-weighting, pos_weight, vmap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.testing import assert_close

from crashsearch.models.losses import binary_focal_loss, loss_for


def _batch(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=gen) * 4
    targets = (torch.rand(n, generator=gen) < 0.3).float()
    return logits, targets


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_gamma_zero_is_bce_with_logits(reduction, pos_weight):
    logits, targets = _batch()
    logits.requires_grad_(True)
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    ours = binary_focal_loss(logits, targets, gamma=0.0, pos_weight=pos_weight, reduction=reduction)
    ref = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction=reduction)
    assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert_close(g_ours, g_ref)


def test_focal_downweights_easy_examples_more_than_hard_ones():
    logits = torch.tensor([4.0, -4.0, 0.5, -0.5])  # easy positive, easy negative, then two hard ones
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = binary_focal_loss(logits, targets, gamma=0.0, reduction="none")
    focal = binary_focal_loss(logits, targets, gamma=2.0, reduction="none")
    ratio = focal / bce
    assert (focal < bce).all()
    assert ratio[:2].max() < 0.01 < ratio[2:].min()  # (1 - p_t)^2: ~3e-4 for easy, ~0.39 for hard
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    assert_close(ratio, (1 - p_t) ** 2)


def test_pos_weight_scales_only_positive_terms():
    logits, targets = _batch()
    base = binary_focal_loss(logits, targets, gamma=2.0, reduction="none")
    weighted = binary_focal_loss(logits, targets, gamma=2.0, pos_weight=5.0, reduction="none")
    pos = targets == 1
    assert_close(weighted[pos], 5.0 * base[pos])
    assert_close(weighted[~pos], base[~pos])


def test_stable_for_extreme_logits():
    logits = torch.tensor([-200.0, 200.0, -200.0, 200.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for gamma in (0.0, 1.5, 3.0):
        loss = binary_focal_loss(logits, targets, gamma=gamma, reduction="none")
        assert torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(grad).all()
    assert_close(binary_focal_loss(logits, targets, 0.0, reduction="none")[:2], torch.tensor([200.0, 200.0]))


def test_tensor_gamma_per_model_under_vmap():
    logits, targets = torch.randn(3, 16), (torch.rand(3, 16) < 0.5).float()
    gammas = torch.tensor([0.0, 1.5, 3.0])
    pos_weight = torch.tensor([1.0, 2.0, 4.0])
    stacked = vmap(binary_focal_loss)(logits, targets, gammas, pos_weight)  # (3,)
    looped = torch.stack([binary_focal_loss(logits[i], targets[i], float(gammas[i]), float(pos_weight[i]))
                          for i in range(3)])
    assert_close(stacked, looped)


def test_bad_arguments_name_the_problem():
    logits, targets = _batch()
    with pytest.raises(ValueError, match="reduction='avg'"):
        binary_focal_loss(logits, targets, 2.0, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        binary_focal_loss(logits, targets[:5], 2.0)


def test_loss_for_space_values():
    assert loss_for("bce") == 0.0
    assert loss_for("focal_2.5") == 2.5
    for bad in ("focal_x", "hinge", None):
        with pytest.raises(ValueError, match="unknown loss"):
            loss_for(bad)
