"""A packaged collision detector: a trained head, the features it reads, and its alert threshold.

A package folder (written by tasks/champion.py, read by tasks/predict.py)::

    model.json        what predict needs: the head (encoder, size, input dim, window), the
                      feature spec (backbone, weights id, step, clip, frame size, decode fps,
                      horizons) and the alert threshold
    head.safetensors  the head's state dict (always)
    head.onnx         the head as ONNX, inputs x (B, T, D) float32 and mask (B, T) bool, output
                      logits (B,); absent when the encoder does not export (card says why)
    card.md, card.json  the model card

Risk over time: the head scores, at every step of a video's embedding sequence, the window of
``window_steps`` steps ending there; steps before the video start are zero and masked, as short
clips are in training (models.mask). ``risk = sigmoid(logit)``; a step before the first real
step has no risk (NaN).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crashsearch.lab.errors import UserError
from crashsearch.models.registry import create_head

PACKAGE_FORMAT = "crashsearch-detector/1"
MODEL_JSON = "model.json"
STATE_FILE = "head.safetensors"
ONNX_FILE = "head.onnx"


def head_windows(emb: torch.Tensor, first_real: int, window_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's window of an (S, D) sequence: (S, T, D) windows and their (S, T) mask of real steps."""
    s, d = emb.shape
    t = window_steps
    padded = torch.cat([emb.new_zeros(t - 1, d), emb])  # (S + T - 1, D)
    windows = padded.unfold(0, t, 1).permute(0, 2, 1)  # (S, T, D)
    index = torch.arange(s)[:, None] + torch.arange(-t + 1, 1)[None, :]  # (S, T) step of each window slot
    return windows, index >= first_real


@torch.no_grad()
def risk_over_time(head: torch.nn.Module, emb: torch.Tensor, first_real: int, window_steps: int,
                   batch: int = 512) -> np.ndarray:
    """(S,) risk in [0, 1] at each step of an (S, D) sequence (NaN before ``first_real``)."""
    windows, mask = head_windows(emb.float(), first_real, window_steps)
    out = np.full(emb.shape[0], np.nan)
    for start in range(first_real, emb.shape[0], batch):
        stop = min(start + batch, emb.shape[0])
        out[start:stop] = torch.sigmoid(head(windows[start:stop], mask[start:stop])).double().numpy()
    return out


def load_head(encoder: str, size: str, in_dim: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The head of a cell with ``state`` loaded (strict), in evaluation mode, on the CPU."""
    head = create_head(encoder, size, in_dim)
    wanted = head.state_dict().keys()
    head.load_state_dict({k: v for k, v in state.items() if k in wanted})
    return head.eval()


@dataclass
class Detector:
    """A loaded package: ``risk(emb, first_real)`` and the threshold and spec that go with it."""

    folder: Path
    model: dict[str, Any]  # model.json
    head: torch.nn.Module

    @classmethod
    def load(cls, folder: str | Path) -> "Detector":
        """Read a package folder. Raises ValueError in one line when it is not one."""
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / MODEL_JSON
        try:
            model = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{folder} is not a model package (no {MODEL_JSON}); "
                             f"write one with `crashsearch champion --campaign ID --out {folder}`") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is unreadable: {exc}") from None
        if model.get("format") != PACKAGE_FORMAT:
            raise UserError(f"{path} is not a crashsearch detector package (format {model.get('format')!r})")
        head = load_head(model["encoder"], model["size"], int(model["in_dim"]), load_file(str(folder / STATE_FILE)))
        return cls(folder, model, head)

    @property
    def threshold(self) -> float:
        return float(self.model["threshold"])

    @property
    def step_hz(self) -> float:
        return float(self.model["features"]["step_hz"])

    def risk(self, emb: torch.Tensor, first_real: int = 0) -> np.ndarray:
        return risk_over_time(self.head, emb, first_real, int(self.model["window_steps"]))
