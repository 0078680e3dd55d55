"""Mamba head: selective state-space blocks (Gu & Dao, 2023, arXiv 2312.00752).

The selective SSM makes the step size delta and the matrices B and C functions of the input:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t        h: (B, E, N) per step
    y_t = C_t . h_t + D * x_t

``selective_scan`` evaluates the recurrence with a work-efficient parallel prefix scan: pairs of
steps are combined with the associative rule ``(a1, b1), (a2, b2) -> (a2 a1, a2 b1 + b2)``, the
half-length sequence is scanned recursively, and the even steps are filled in from their odd
neighbours (log2(T) levels, O(T) work). It is built from slices and products only, so it is
vmap-friendly and exact to float rounding; ``selective_scan_ref`` is the plain sequential loop it
is tested against. Simplified against the paper: no fused CUDA kernel (the full state sequence
(B, T, E, N) is materialised, fine at T <= 16), no dropout; the head reads the last step. A padded
step (models.mask) enters the causal convolution as zero and is an identity step of the scan
(delta = 0: a = 1, b = 0), so left padding leaves the state at zero until the first real step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crashsearch.models.mask import zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder

D_STATE = 16  # N: state size per channel
D_CONV = 4  # causal depthwise convolution before the SSM
EXPAND = 2  # E = EXPAND * width inner channels


def _discretize(x, delta, A, B):
    """Per-step decay a = exp(delta A) and input b = delta B x, both (Bt, T, E, N)."""
    a = torch.exp(delta.unsqueeze(-1) * A)  # (Bt, T, E, N), in (0, 1]
    b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # (Bt, T, E, N)
    return a, b


def _linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0 for every t, by recursive pairing; a, b, h: (Bt, T, ...)."""
    t = a.shape[1]
    if t == 1:  # recursion depth is log2(T): it depends on the shape, never on tensor values
        return b
    if t % 2:  # pad with the identity step (a = 1, b = 0) to pair every step; cropped below
        a = torch.cat((a, torch.ones_like(a[:, :1])), dim=1)
        b = torch.cat((b, torch.zeros_like(b[:, :1])), dim=1)
    a_even, a_odd, b_even, b_odd = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    # one combined step per pair (2k, 2k+1): the states at the odd steps come from a half-length scan
    h_odd = _linear_scan(a_odd * a_even, a_odd * b_even + b_odd)  # h_1, h_3, ...
    h_before = torch.cat((torch.zeros_like(h_odd[:, :1]), h_odd[:, :-1]), dim=1)  # h_{2k-1}
    h_even = a_even * h_before + b_even  # h_0, h_2, ...
    return torch.stack((h_even, h_odd), dim=2).flatten(1, 2)[:, :t]  # interleave back to (Bt, T, ...)


def selective_scan(x, delta, A, B, C, D, h0=None):
    """Parallel selective scan; returns y (Bt, T, E).

    x, delta: (Bt, T, E); A: (E, N) negative; B, C: (Bt, T, N); D: (E,); h0: initial state
    (Bt, E, N), zeros if None (a non-zero h0 continues a sequence scanned in chunks).
    """
    a, b = _discretize(x, delta, A, B)  # (Bt, T, E, N) each
    h0 = torch.zeros_like(b[:, 0]) if h0 is None else h0
    # fold the initial state into the first step's input, so the scan itself starts from zero
    b = torch.cat(((a[:, 0] * h0 + b[:, 0]).unsqueeze(1), b[:, 1:]), dim=1)
    h = _linear_scan(a, b)  # (Bt, T, E, N)
    y = torch.einsum("btn,bten->bte", C, h)
    return y + D * x


def selective_scan_ref(x, delta, A, B, C, D, h0=None):
    """Sequential reference for ``selective_scan`` (same arguments and result), one step at a time."""
    a, b = _discretize(x, delta, A, B)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0  # (Bt, E, N)
    ys = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + b[:, t]
        ys.append(torch.einsum("bn,ben->be", C[:, t], h))
    return torch.stack(ys, dim=1) + D * x


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaMixer(nn.Module):
    """The Mamba block's mixer: gated branch, causal conv, selective SSM. (B, T, C) -> (B, T, C)."""

    def __init__(self, width: int, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        inner = EXPAND * width
        self.dt_rank = math.ceil(width / 16)
        self.in_proj = nn.Linear(width, 2 * inner)  # x branch and gate z
        self.conv = nn.Conv1d(inner, inner, D_CONV, groups=inner)  # depthwise, padded causally
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * D_STATE, bias=False)  # -> delta_low, B, C
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        # the paper's initialisation: softplus(bias) log-uniform in [dt_min, dt_max], A = -(1..N)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width)
        self.scan = selective_scan

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        xs = zero_padding(xs, mask)
        xs = self.conv(F.pad(xs.transpose(1, 2), (D_CONV - 1, 0))).transpose(1, 2)  # causal conv, (B, T, E)
        xs = F.silu(xs)
        dt_low, B, C = self.x_proj(xs).split([self.dt_rank, D_STATE, D_STATE], dim=-1)
        delta = zero_padding(F.softplus(self.dt_proj(dt_low)), mask)  # (B, T, E), input-dependent step size
        A = -torch.exp(self.A_log)  # (E, N), negative: the state decays
        y = self.scan(xs, delta, A, B, C, self.D)  # (B, T, E)
        return self.out_proj(y * F.silu(z))


class MambaBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.mixer = MambaMixer(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return x + self.mixer(self.norm(x), mask)


class MambaHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        self.proj = nn.Linear(in_dim, size.width)
        self.blocks = nn.ModuleList(MambaBlock(size.width) for _ in range(size.depth))
        self.norm = RMSNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x = self.proj(zero_padding(x, mask))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.out(self.norm(x[:, -1])).squeeze(-1)  # causal: the last step has seen the window


@register_encoder
def mamba(in_dim: int, size: SizeSpec) -> nn.Module:
    return MambaHead(in_dim, size)
