"""Zipformer head: after Zipformer (Yao et al., 2023, arXiv 2310.11230), a U-Net-like multi-rate encoder.

What is kept from the paper:
- encoder stacks at several temporal rates: each stack downsamples the full-rate sequence by its
  factor (learned softmax-weighted average of neighbouring frames), runs its blocks, upsamples by
  repetition and crops, and mixes the result back through a bypass with a learned per-channel scale;
  the factors go 1, 2, ..., 2^depth and back down (depth 3: 1, 2, 4, 8, 4, 2 as in the paper);
- the Zipformer block: feed-forward, attention weights computed once and shared by the non-linear
  attention module (first head) and both self-attention modules, convolution module, a mid-block
  bypass, a second attention + convolution + feed-forward half, BiasNorm, and a block bypass;
- BiasNorm instead of LayerNorm, SwooshL in the feed-forward modules, SwooshR in the convolution module.
Simplified: constant width across stacks (the paper widens the middle stacks), one block per stack
(the paper uses 2-4), a learned clamped relative-position bias per head in place of the paper's
relative positional encoding, explicit 1/sqrt(d) attention scaling (the paper folds it into
ScaledAdam's initialisation), a linear input projection instead of the convolutional front end,
mean pooling over time instead of output downsampling, a fixed bypass floor of 0.2 instead of a
schedule, and no Balancer/Whiten/ScaledAdam/dropout training aids. Odd lengths are padded by
repeating the last frame before downsampling and cropped after upsampling.

Padding (models.mask): the head first moves each sequence's real steps to the front, so the
groups of frames that downsampling averages start at the first real step, as without padding;
padded steps are then treated like the missing frames of an odd length (they repeat the last real
frame before downsampling), are masked out as attention keys, enter the convolutions as zeros
and are left out of the final mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crashsearch.models.mask import left_align, mask_keys, masked_mean, zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder

QUERY_HEAD_DIM = 16
VALUE_HEAD_DIM = 12  # as in the paper
FF_RATIO = 3
CONV_KERNEL = 7  # the paper uses 31/15 at 25-50 Hz; our sequences are 4-16 steps at 4 Hz
MAX_REL_POS = 16  # relative distances beyond this share one bias
BYPASS_MIN = 0.2


def swoosh_r(x: torch.Tensor) -> torch.Tensor:
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687 (zero at x = 0)."""
    return F.softplus(x - 1.0) - 0.08 * x - 0.313261687


def swoosh_l(x: torch.Tensor) -> torch.Tensor:
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035 ("normally off": small for x < 4)."""
    return F.softplus(x - 4.0) - 0.08 * x - 0.035


class BiasNorm(nn.Module):
    """BiasNorm(x) = x / RMS(x - b) * exp(gamma): keeps the length information LayerNorm removes."""

    def __init__(self, width: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(width))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C)
        rms = torch.sqrt((x - self.bias).pow(2).mean(-1, keepdim=True) + self.eps)
        return x / rms * self.log_scale.exp()


class Bypass(nn.Module):
    """out = x_orig + c * (x - x_orig), c per channel in [BYPASS_MIN, 1] (learned skip strength)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x_orig: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x_orig + self.scale.clamp(BYPASS_MIN, 1.0) * (x - x_orig)


class AttentionWeights(nn.Module):
    """Multi-head attention weights (B, H, T, T): content scores plus a relative-position bias."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 2 * heads * QUERY_HEAD_DIM)
        self.pos_bias = nn.Parameter(torch.zeros(heads, 2 * MAX_REL_POS + 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k = self.in_proj(x).view(b, t, 2, self.heads, QUERY_HEAD_DIM).permute(2, 0, 3, 1, 4)  # (B, H, T, dq)
        scores = q @ k.transpose(-1, -2) / math.sqrt(QUERY_HEAD_DIM)  # (B, H, T, T)
        idx = torch.arange(t, device=x.device)
        rel = (idx[None, :] - idx[:, None]).clamp(-MAX_REL_POS, MAX_REL_POS) + MAX_REL_POS  # (T, T)
        return mask_keys(scores + self.pos_bias[:, rel], mask).softmax(dim=-1)  # pos_bias[:, rel]: (H, T, T)


class SelfAttention(nn.Module):
    """Applies precomputed weights to per-head values. (B, T, C), (B, H, T, T) -> (B, T, C)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, heads * VALUE_HEAD_DIM)
        self.out_proj = nn.Linear(heads * VALUE_HEAD_DIM, width)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        v = self.in_proj(x).view(b, t, self.heads, VALUE_HEAD_DIM).transpose(1, 2)  # (B, H, T, dv)
        y = (weights @ v).transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(y)


class NonLinearAttention(nn.Module):
    """The paper's NLA: tanh-gated values mixed by one head's weights, then multiplied by a third branch."""

    def __init__(self, width: int):
        super().__init__()
        self.hidden = 3 * width // 4
        self.in_proj = nn.Linear(width, 3 * self.hidden)
        self.out_proj = nn.Linear(self.hidden, width)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # weights (B, T, T)
        s, v, y = self.in_proj(x).chunk(3, dim=-1)  # (B, T, hidden) each
        v = weights @ (v * torch.tanh(s))
        return self.out_proj(v * y)


class ConvolutionModule(nn.Module):
    """Gated (GLU-like) pointwise projection, depthwise convolution over time, SwooshR, projection."""

    def __init__(self, width: int):
        super().__init__()
        self.in_proj = nn.Linear(width, 2 * width)
        self.depthwise = nn.Conv1d(width, width, CONV_KERNEL, padding=CONV_KERNEL // 2, groups=width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = zero_padding(x * torch.sigmoid(gate), mask)  # padding enters the convolution as zeros
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)  # non-causal: the window is all past
        return self.out_proj(swoosh_r(x))


class FeedForward(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_proj = nn.Linear(width, FF_RATIO * width)
        self.out_proj = nn.Linear(FF_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(swoosh_l(self.in_proj(x)))


class ZipformerBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn_weights = AttentionWeights(width, heads)
        self.ff1, self.ff2, self.ff3 = FeedForward(width), FeedForward(width), FeedForward(width)
        self.nla = NonLinearAttention(width)
        self.attn1, self.attn2 = SelfAttention(width, heads), SelfAttention(width, heads)
        self.conv1, self.conv2 = ConvolutionModule(width), ConvolutionModule(width)
        self.bypass_mid, self.bypass = Bypass(width), Bypass(width)
        self.norm = BiasNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x_orig = x
        weights = self.attn_weights(x, mask)  # (B, H, T, T), computed once for the whole block
        x = x + self.ff1(x)
        x = x + self.nla(x, weights[:, 0])
        x = x + self.attn1(x, weights)
        x = x + self.conv1(x, mask)
        x = x + self.ff2(x)
        x = self.bypass_mid(x_orig, x)
        x = x + self.attn2(x, weights)
        x = x + self.conv2(x, mask)
        x = x + self.ff3(x)
        return self.bypass(x_orig, self.norm(x))


class DownsampledStack(nn.Module):
    """Blocks at 1/factor of the input rate: downsample, process, upsample, crop, bypass (factor 1: blocks only)."""

    def __init__(self, width: int, heads: int, factor: int, n_blocks: int = 1):
        super().__init__()
        self.factor = factor
        self.blocks = nn.ModuleList(ZipformerBlock(width, heads) for _ in range(n_blocks))
        if factor > 1:  # as in the paper, the full-rate stack has no resampling and no stack bypass
            self.down_bias = nn.Parameter(torch.zeros(factor))  # softmax weights over each group of frames
            self.bypass = Bypass(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        """``mask`` (B, T), if given, must be True on a prefix of each row (``models.mask.left_align``)."""
        if self.factor == 1:
            for block in self.blocks:
                x = block(x, mask)
            return x
        b, t, c = x.shape
        f = self.factor
        pad = -t % f
        y, last = x, x[:, -1:]
        if mask is not None:  # padded steps repeat the last real frame, like the frames an odd length lacks
            length = mask.sum(dim=1)  # (B,)
            last = torch.gather(x, 1, (length - 1).clamp(min=0)[:, None, None].expand(b, 1, c))  # (B, 1, C)
            y = torch.where(mask[..., None], x, last)
        # repeat the last frame so every group of f frames is full (odd T included)
        y = torch.cat((y, last.expand(b, pad, c)), dim=1) if pad else y  # (B, T', C)
        y = y.reshape(b, -1, f, c)  # (B, T'/f, f, C)
        y = (y * self.down_bias.softmax(0)[:, None]).sum(dim=2)  # (B, T'/f, C)
        down_mask = None
        if mask is not None:  # a group is real if its first frame is
            down_mask = torch.arange(y.shape[1], device=x.device)[None, :] * f < length[:, None]
        for block in self.blocks:
            y = block(y, down_mask)
        y = y.repeat_interleave(f, dim=1)[:, :t]  # (B, T, C)
        return self.bypass(x, y)


def stack_factors(depth: int) -> list[int]:
    """Downsampling factors of the stacks: 1, 2, ..., 2^depth, ..., 2 (depth 3: 1, 2, 4, 8, 4, 2)."""
    up = [2**i for i in range(depth + 1)]
    return up + up[-2:0:-1]


class ZipformerHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        heads = max(2, size.width // 16)
        self.proj = nn.Linear(in_dim, size.width)
        self.stacks = nn.ModuleList(DownsampledStack(size.width, heads, f) for f in stack_factors(size.depth))
        self.norm = BiasNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x, mask = left_align(zero_padding(x, mask), mask)  # real steps first: downsampling groups start there
        x = self.proj(x)  # (B, T, C)
        for stack in self.stacks:
            x = stack(x, mask)
        return self.out(masked_mean(self.norm(x), mask)).squeeze(-1)


@register_encoder
def zipformer(in_dim: int, size: SizeSpec) -> nn.Module:
    return ZipformerHead(in_dim, size)
