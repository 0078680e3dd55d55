"""Hybrid R-M head: RetNet retention blocks (arXiv 2307.08621) interleaved with Mamba blocks (arXiv 2312.00752).

Each unit of depth is one retention block followed by one Mamba block, so even the small size
mixes both: retention contributes fixed multi-scale decays over content-based scores, Mamba an
input-dependent (selective) decay. Both are causal, so the head reads the last step. The blocks
are the ones in ``models.retention`` and ``models.mamba``; see those files for their
simplifications. Simplified: a fixed R, M, R, M, ... order (hybrid papers also tune the ratio).
"""
from __future__ import annotations

import torch
from torch import nn

from crashsearch.models.mamba import MambaBlock
from crashsearch.models.mask import zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder
from crashsearch.models.retention import RetentionBlock


class HybridRMHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        self.proj = nn.Linear(in_dim, size.width)
        blocks: list[nn.Module] = []
        for _ in range(size.depth):
            blocks += [RetentionBlock(size.width), MambaBlock(size.width)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x = self.proj(zero_padding(x, mask))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.out(self.norm(x[:, -1])).squeeze(-1)


@register_encoder
def hybrid_rm(in_dim: int, size: SizeSpec) -> nn.Module:
    return HybridRMHead(in_dim, size)
