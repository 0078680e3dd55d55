"""GRU head: a hand-written gated recurrent unit (Cho et al., 2014, arXiv 1406.1078) unrolled over time.

The cell follows ``torch.nn.GRU``'s equations and weight layout (gates r, z, n) but is written
from plain tensor ops, so many copies can be vmapped with ``torch.func`` (cuDNN's fused GRU has
no batching rule). Simplified: no dropout between layers, unidirectional only.
"""
from __future__ import annotations

import torch
from torch import nn

from crashsearch.models.mask import zero_padding
from crashsearch.models.registry import SizeSpec, register_encoder


class GRULayer(nn.Module):
    """One GRU layer; ``forward`` returns every hidden state ``(B, T, H)``."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input_gates = nn.Linear(in_dim, 3 * hidden)  # W_i[r|z|n] x + b_i
        self.hidden_gates = nn.Linear(hidden, 3 * hidden)  # W_h[r|z|n] h + b_h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B, T, H)
        """Every hidden state; a padded step (mask False) leaves the state unchanged."""
        gi = self.input_gates(x)  # (B, T, 3H), all time steps at once
        h = x.new_zeros(x.shape[0], self.hidden)  # (B, H)
        states = []
        for t in range(x.shape[1]):  # T is a shape, not a tensor value: fine under vmap
            i_r, i_z, i_n = gi[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = self.hidden_gates(h).chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h_next = (1 - z) * n + z * h
            h = h_next if mask is None else torch.where(mask[:, t, None], h_next, h)
            states.append(h)
        return torch.stack(states, dim=1)


class GRUHead(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        dims = [in_dim] + [size.width] * size.depth
        self.layers = nn.ModuleList(GRULayer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norm = nn.LayerNorm(size.width)
        self.out = nn.Linear(size.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        x = zero_padding(x, mask)
        for layer in self.layers:
            x = layer(x, mask)  # (B, T, H)
        return self.out(self.norm(x[:, -1])).squeeze(-1)  # last hidden state of the top layer


@register_encoder
def gru(in_dim: int, size: SizeSpec) -> nn.Module:
    return GRUHead(in_dim, size)
