"""The optional time mask every encoder takes: ``forward(x (B, T, D), mask (B, T) bool | None) -> (B,)``.

``mask[b, t]`` is True where step t of sample b is real data and False where it is padding. Two
kinds of padding use it: a short clip's missing history (the window reaches before the video
start) and, inside one vectorised training group, windows shorter than the group's longest. In
both the padding sits on the LEFT (every window ends at its prediction time), and the contract
the encoders are tested on is exactly that: a left-padded sequence with its mask gives the
logits of the unpadded sequence (tests/test_encoders.py, within 1e-5). Each row needs at least
one real step; an all-padding row still gives a finite logit, which means nothing. ``None``
means every step is real. Padded values are never read: they may hold anything finite or not.
"""
from __future__ import annotations

from typing import Sequence

import torch


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` (B, T, ...) with its padded steps set to zero (``x`` itself when mask is None)."""
    if mask is None:
        return x
    m = mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim())))
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real steps: (B, T, C) -> (B, C)."""
    if mask is None:
        return x.mean(dim=1)
    m = mask[..., None].to(x.dtype)
    return (zero_padding(x, mask) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def mask_keys(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention scores (B, H, T, T) with padded keys (last axis) pushed to the dtype's minimum.

    The minimum, not -inf, so a row whose keys are all padding softmaxes to uniform, not NaN.
    """
    if mask is None:
        return scores
    return scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)


def positions(mask: torch.Tensor | None, t: int, device: torch.device, dtype: torch.dtype,
              start: int = 0) -> torch.Tensor:
    """Step positions counted over real steps only: (T,) ``start..start+T-1`` without a mask, else
    (B, T) with the first real step at ``start``; a padded step repeats its predecessor's position
    (left padding: ``start - 1``). Relative positions between real steps ignore the padding."""
    if mask is None:
        return torch.arange(start, start + t, device=device, dtype=dtype)
    return mask.cumsum(dim=1).to(dtype) + (start - 1)


def left_align(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move each row's real steps to the front, in order: returns ``(x', mask')`` with ``mask'``
    True on the first ``mask.sum(1)`` steps. For encoders whose grouping of steps (downsampling)
    must start at the first real step."""
    if mask is None:
        return x, None
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # real steps first, order kept
    x = torch.gather(x, 1, order[..., None].expand(*order.shape, x.shape[-1]))
    length = mask.sum(dim=1, keepdim=True)
    return x, torch.arange(mask.shape[1], device=mask.device)[None, :] < length


def own_windows(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor | None:
    """Models of different window lengths reading one window of the longest: (M, max(lengths))
    bool, True on each model's own last ``lengths[m]`` steps (the older ones are its left
    padding). None when every model's window is the longest (nothing to mask)."""
    t_max = max(lengths)
    pad = torch.tensor([t_max - t for t in lengths], device=device)
    if not bool(pad.any()):
        return None
    return torch.arange(t_max, device=device)[None, :] >= pad[:, None]
