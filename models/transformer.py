"""Transformer head: a pre-norm encoder (Vaswani et al., 2017, arXiv 1706.03762) with rotary positions.

A learned CLS token is prepended to the projected sequence; positions enter through rotary
embeddings on queries and keys (RoFormer, Su et al., 2021, arXiv 2104.09864); the head reads the
CLS token after the last block. Attention is an explicit softmax over a (T+1, T+1) score matrix:
at these lengths it costs nothing, and unlike ``F.scaled_dot_product_attention`` on CPU it has a
vmap batching rule. Padded steps (models.mask) are masked out as keys and take no position, so
the CLS token sees the first real step at position 1 however much padding precedes it.
Simplified: no dropout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crashsearch.models.mask import mask_keys, positions, zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder

HEAD_DIM = 16  # heads = width // 16: 2, 4, 8 for small, medium, large
MLP_RATIO = 4


def rotary(x: torch.Tensor, pos: torch.Tensor | None = None, base: float = 10000.0) -> torch.Tensor:
    """Rotate feature pairs of ``x`` (..., T, d) by angles proportional to the position; d even.

    Returns a tensor of the same shape. ``pos`` holds the positions along the second-to-last
    axis, any shape broadcastable to ``x.shape[:-1]``; None means 0..T-1.
    """
    t, d = x.shape[-2], x.shape[-1]
    assert d % 2 == 0, f"rotary embeddings need an even feature size, got {d}"
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=x.dtype) / d)  # (d/2,)
    pos = torch.arange(t, device=x.device, dtype=x.dtype) if pos is None else pos.to(x.dtype)
    angles = pos[..., None] * inv_freq  # (..., T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., T, d/2, 2)
    return rotated.flatten(-2)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Full (non-causal) attention over the real keys; q, k, v (B, H, T, d), mask (B, T) -> (B, H, T, d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    return mask_keys(scores, mask).softmax(dim=-1) @ v


class SelfAttention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        assert width % HEAD_DIM == 0, f"width {width} must be a multiple of {HEAD_DIM}"
        self.heads = width // HEAD_DIM
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); ``pos`` (T,) or (B, T) positions for the rotary embedding."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        pos = pos if pos.dim() == 1 else pos[:, None, :]  # (B, 1, T): the same for every head
        y = softmax_attention(rotary(q, pos), rotary(k, pos), v, mask)  # (B, H, T, d)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width)
        self.mlp = nn.Sequential(nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, pos)  # (B, T, C) -> (B, T, C)
        return x + self.mlp(self.norm2(x))


class TransformerHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        self.proj = nn.Linear(in_dim, size.width)
        self.cls = nn.Parameter(torch.randn(size.width) * 0.02)
        self.blocks = nn.ModuleList(Block(size.width) for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x = self.proj(zero_padding(x, mask))  # (B, T, C)
        cls = self.cls.expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat((cls, x), dim=1)  # (B, T+1, C); the CLS token sits at position 0
        if mask is not None:
            mask = torch.cat((torch.ones_like(mask[:, :1]), mask), dim=1)  # the CLS token is always real
        pos = positions(mask, x.shape[1], x.device, x.dtype)  # CLS 0, real steps 1, 2, ...
        for block in self.blocks:
            x = block(x, mask, pos)
        return self.out(self.norm(x[:, 0])).squeeze(-1)


@register_encoder
def transformer(in_dim: int, size: SizeSpec) -> nn.Module:
    return TransformerHead(in_dim, size)
