"""Mean-pool MLP: the order-blind baseline head (average the sequence, then an MLP)."""
from __future__ import annotations

import torch
from torch import nn

from crashsearch.models.mask import masked_mean
from crashsearch.models.registry import SizeSpec, register_encoder


class MeanPoolMLP(nn.Module):
    def __init__(self, in_dim: int, size: SizeSpec):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim), nn.Linear(in_dim, size.width), nn.GELU()]
        for _ in range(size.depth - 1):
            layers += [nn.Linear(size.width, size.width), nn.GELU()]
        layers.append(nn.Linear(size.width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D) -> (B,)
        return self.net(masked_mean(x, mask)).squeeze(-1)  # the mean over real steps only


@register_encoder
def meanpool_mlp(in_dim: int, size: SizeSpec) -> nn.Module:
    return MeanPoolMLP(in_dim, size)
