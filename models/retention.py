"""Retention head: RetNet multi-scale retention (Sun et al., 2023, arXiv 2307.08621).

Retention replaces softmax attention by a causal, exponentially decaying sum with a fixed decay
gamma per head (``1 - 2^(-5 - h)``: different heads see different time scales). It has two
equivalent forms, both exposed and tested against each other:

    parallel:   O = (Q K^T * Dmask) V,       Dmask[n, m] = gamma^(n - m) if n >= m else 0
    recurrent:  S_n = gamma S_{n-1} + K_n^T V_n,   O_n = Q_n S_n

Simplified against the paper: rotary positions stand in for xPos (no length-extrapolation
scale), no score normalisation tricks (they rescale rows, which the per-head GroupNorm undoes),
no chunkwise form, no dropout; the head reads the last step. Padded steps (models.mask) get zero
keys, so they add nothing to the state, and take no position; with left padding the decay
distances between real steps are those of the unpadded sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crashsearch.models.mask import positions, zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder
from crashsearch.models.transformer import rotary

HEAD_DIM = 16  # key/query size per head; heads = width // 16
VALUE_FACTOR = 2  # the paper's value heads are twice as wide as the key heads
FFN_RATIO = 2


def decay_mask(gamma: torch.Tensor, t: int) -> torch.Tensor:
    """Dmask (H, T, T): gamma^(n - m) on and below the diagonal, 0 above. gamma: (H,)."""
    idx = torch.arange(t, device=gamma.device)
    dist = (idx[:, None] - idx[None, :]).to(gamma.dtype)  # (T, T), n - m
    decay = torch.exp(dist * torch.log(gamma)[:, None, None])  # (H, T, T)
    # dist < 0 gives gamma^(negative) > 1, but where() discards those entries (and their gradient)
    return torch.where(dist >= 0, decay, torch.zeros_like(decay))


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Parallel retention; q, k (B, H, T, dk), v (B, H, T, dv), gamma (H,) -> (B, H, T, dv)."""
    scores = q @ k.transpose(-1, -2)  # (B, H, T, T)
    return (scores * decay_mask(gamma, q.shape[-2])) @ v


def retention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Recurrent retention, one step at a time; same arguments and result as ``retention_parallel``."""
    b, h, t, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])  # (B, H, dk, dv)
    g = gamma[:, None, None]  # (H, 1, 1)
    outs = []
    for n in range(t):
        state = g * state + k[:, :, n, :, None] * v[:, :, n, None, :]  # + K_n^T V_n
        outs.append((q[:, :, n, None, :] @ state).squeeze(-2))  # (B, H, dv)
    return torch.stack(outs, dim=2)


class MultiScaleRetention(nn.Module):
    """Multi-scale retention with a swish gate and per-head GroupNorm. (B, T, C) -> (B, T, C)."""

    def __init__(self, width: int):
        super().__init__()
        assert width % HEAD_DIM == 0, f"width {width} must be a multiple of {HEAD_DIM}"
        self.heads = width // HEAD_DIM
        self.v_dim = VALUE_FACTOR * HEAD_DIM
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, self.heads * self.v_dim, bias=False)
        self.g = nn.Linear(width, self.heads * self.v_dim, bias=False)
        self.out = nn.Linear(self.heads * self.v_dim, width, bias=False)
        self.group_norm = nn.LayerNorm(self.v_dim)  # applied per head = GroupNorm with one group per head
        self.register_buffer("gamma", 1 - 2.0 ** (-5.0 - torch.arange(self.heads, dtype=torch.float32)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, recurrent: bool = False) -> torch.Tensor:
        b, t, _ = x.shape
        pos = positions(mask, t, x.device, x.dtype)
        pos = pos if pos.dim() == 1 else pos[:, None, :]  # (T,) or (B, 1, T)
        q = rotary(self.q(x).view(b, t, self.heads, HEAD_DIM).transpose(1, 2), pos)  # (B, H, T, dk)
        k = rotary(self.k(x).view(b, t, self.heads, HEAD_DIM).transpose(1, 2), pos) * HEAD_DIM**-0.5
        if mask is not None:
            k = torch.where(mask[:, None, :, None], k, 0.0)  # a padded step adds nothing to the state
        v = self.v(x).view(b, t, self.heads, self.v_dim).transpose(1, 2)  # (B, H, T, dv)
        retain = retention_recurrent if recurrent else retention_parallel
        y = self.group_norm(retain(q, k, v, self.gamma))  # (B, H, T, dv)
        y = y.transpose(1, 2).reshape(b, t, self.heads * self.v_dim)
        return self.out(F.silu(self.g(x)) * y)


class RetentionBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.retention = MultiScaleRetention(width)
        self.ffn = nn.Sequential(nn.Linear(width, FFN_RATIO * width), nn.GELU(), nn.Linear(FFN_RATIO * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                recurrent: bool = False) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.retention(self.norm1(x), mask, recurrent)
        return x + self.ffn(self.norm2(x))


class RetentionHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        self.proj = nn.Linear(in_dim, size.width)
        self.blocks = nn.ModuleList(RetentionBlock(size.width) for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                recurrent: bool = False) -> torch.Tensor:  # (B, T, D) -> (B,)
        """Logits; ``recurrent=True`` runs the recurrent form (same result, one step at a time)."""
        x = self.proj(zero_padding(x, mask))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask, recurrent)
        return self.out(self.norm(x[:, -1])).squeeze(-1)  # causal: the last step has seen the window


@register_encoder
def retention(in_dim: int, size: SizeSpec) -> nn.Module:
    return RetentionHead(in_dim, size)
