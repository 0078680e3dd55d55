"""A registry of temporal encoders, after timm's ``@register_model``.

Every encoder module maps an embedding sequence ``(B, T, D)`` to ``(B,)`` logits, with an optional
time mask: ``forward(x, mask=None)``, ``mask`` (B, T) bool, True on real steps and False on
padding (a short clip's missing history, or a window shorter than its group's longest); the
contract is in ``models.mask`` and tested for every registered encoder. The ``size``
axis of the space (small, medium, large) picks width and depth through ``SIZES``; an encoder
file may read more from its own table. Encoders are built from plain tensor ops so that many
copies can be stacked and trained together with ``torch.func`` (vmap over parameters).
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}
# modules that register encoders when imported; one encoder per file
_ENCODER_MODULES = ["meanpool_mlp", "gru", "tcn", "transformer", "mamba", "retention", "hybrid_rm", "zipformer"]


@dataclass(frozen=True)
class SizeSpec:
    width: int  # model dimension inside the head
    depth: int  # number of blocks


SIZES = {"small": SizeSpec(32, 1), "medium": SizeSpec(64, 2), "large": SizeSpec(128, 3)}


def register_encoder(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(in_dim, size: SizeSpec) -> nn.Module`` under its name."""
    name = fn.__name__
    assert name not in _ENCODERS, f"encoder {name!r} registered twice"
    _ENCODERS[name] = fn
    return fn


def _load_all() -> None:
    for module in _ENCODER_MODULES:
        try:
            importlib.import_module(f"crashsearch.models.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"crashsearch.models.{module}":
                raise


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob pattern, sorted."""
    _load_all()
    return sorted(n for n in _ENCODERS if fnmatch.fnmatch(n, pattern))


def create_head(encoder: str, size: str, in_dim: int) -> nn.Module:
    """Build a head: ``(B, T, in_dim) -> (B,)`` logits. Raises KeyError listing valid names."""
    _load_all()
    if encoder not in _ENCODERS:
        raise KeyError(f"unknown encoder {encoder!r}; registered: {', '.join(sorted(_ENCODERS))}")
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; sizes: {', '.join(SIZES)}")
    return _ENCODERS[encoder](in_dim, SIZES[size])
