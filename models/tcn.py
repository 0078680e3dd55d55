"""TCN head: dilated causal convolutions with residual blocks (Bai et al., 2018, arXiv 1803.01271).

Each residual block is two dilated causal convolutions (kernel 3, left padding only, so step t
sees nothing after t); the dilation doubles from block to block, and the head reads the last
step, whose receptive field covers the window. Simplified: LayerNorm over channels in place of
weight normalisation, no dropout, an input projection instead of a 1x1 residual convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crashsearch.models.mask import zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder

KERNEL = 3
BLOCKS_PER_DEPTH = 2  # depth 1 -> dilations 1, 2 (receptive field 13 steps); depth 2 -> 1..8 (61)


class CausalConv(nn.Module):
    """A 1-D convolution over time that pads only on the left: output step t sees steps <= t."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, channels, KERNEL, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        x = F.pad(x, ((KERNEL - 1) * self.dilation, 0))
        return self.conv(x)


class TemporalBlock(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv1, self.conv2 = CausalConv(width, dilation), CausalConv(width, dilation)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        # padded steps enter each convolution as zeros, like the causal padding before a clip's start
        h = self.conv1(zero_padding(x, mask).transpose(1, 2)).transpose(1, 2)  # convolutions want (B, C, T)
        h = F.relu(self.norm1(h))
        h = self.conv2(zero_padding(h, mask).transpose(1, 2)).transpose(1, 2)
        h = F.relu(self.norm2(h))
        return F.relu(x + h)


class TCNHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        self.proj = nn.Linear(in_dim, size.width)
        n_blocks = BLOCKS_PER_DEPTH * size.depth
        self.blocks = nn.ModuleList(TemporalBlock(size.width, 2**i) for i in range(n_blocks))
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x = self.proj(zero_padding(x, mask))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.out(x[:, -1]).squeeze(-1)  # the last step: causal, sees the whole window


@register_encoder
def tcn(in_dim: int, size: SizeSpec) -> nn.Module:
    return TCNHead(in_dim, size)
