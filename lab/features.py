"""In-memory feature sets: the cached embedding sequences one training run reads.

A FeatureSet holds, for every usable video of a dataset, the backbone's embedding sequence on a
fixed time grid relative to the event (or to the clip end for negatives): ``x[i, s]`` is the
embedding of the clip ending at ``t_rel[s]`` seconds (``t_rel[-1] == 0``). Training slices windows
out of it on the device; nothing is re-read per step.

Short clips: ``real_s[i]`` says how many seconds of video i's sequence are real. Steps before
that (``t_rel[s] < -real_s[i]``, a clip that would end before the video start) hold a zero
embedding; ``window_mask`` marks them False, the encoders ignore them (models.mask), and
``has_history`` says whether a window's prediction time lies inside the video at all (if not,
the video is left out of that horizon's training examples and AP, whatever the window length).

The Parquet cache that FeatureSets are loaded from is written and read by ``lab.cache``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass
class FeatureSet:
    dataset: str
    backbone: str
    x: torch.Tensor  # (N, S, D) float32 embeddings
    y: torch.Tensor  # (N,) float32 labels, 1 = collision
    split: np.ndarray  # (N,) "train" | "val" | "test"
    t_rel: torch.Tensor  # (S,) seconds relative to the event, ascending, last == 0
    video_ids: list[str]
    step_hz: float  # embedding steps per second
    weights: str = "random"  # "random" or the pretrained weights id
    meta: dict = field(default_factory=dict)
    real_s: torch.Tensor | None = None  # (N,) seconds of real history per video; None: every step is real

    def __post_init__(self) -> None:
        n, s, _ = self.x.shape
        assert self.y.shape == (n,), f"labels {tuple(self.y.shape)} do not match {n} videos"
        assert len(self.split) == n and len(self.video_ids) == n, "split/video_ids must have one entry per video"
        assert self.t_rel.shape == (s,), f"t_rel {tuple(self.t_rel.shape)} does not match {s} steps"
        assert self.real_s is None or self.real_s.shape == (n,), "real_s must have one entry per video"
        # the index of each video's first real step; 0 for every video without padding
        if self.real_s is None:
            self.first_real = torch.zeros(n, dtype=torch.long, device=self.x.device)
        else:
            real_steps = torch.floor(self.real_s.to(self.x.device, torch.float64) * self.step_hz + 1e-6).long() + 1
            self.first_real = (s - real_steps).clamp(min=0)
        self.padded = bool((self.first_real > 0).any())  # False: masks are never needed

    @property
    def dim(self) -> int:
        return int(self.x.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> "FeatureSet":
        """The same set with its tensors on ``device`` (a no-op if already there)."""
        if torch.device(device) == self.x.device:
            return self
        return FeatureSet(self.dataset, self.backbone, self.x.to(device), self.y.to(device), self.split,
                          self.t_rel.to(device), self.video_ids, self.step_hz, self.weights, self.meta,
                          None if self.real_s is None else self.real_s.to(device))

    def indices(self, split: str) -> torch.Tensor:
        """Row indices of one split, as a long tensor on the set's device."""
        assert split in SPLITS, f"unknown split {split!r}"
        return torch.as_tensor(np.flatnonzero(self.split == split), dtype=torch.long, device=self.device)

    def steps(self, seconds: float) -> int:
        """Number of embedding steps covering ``seconds`` of history."""
        return max(1, int(round(seconds * self.step_hz)))

    def window(self, rows: torch.Tensor, end_s: float | torch.Tensor, window_s: float) -> torch.Tensor:
        """Embedding windows (len(rows), T, D) ending ``end_s`` seconds before the event.

        ``end_s`` is a float or a (len(rows),) tensor of per-row offsets (>= 0). Raises
        IndexError if the cache holds too little history for the window.
        """
        steps = self._steps(rows, end_s, window_s)  # (B, T)
        return self.x[rows[:, None], steps]  # (B, T, D)

    def window_mask(self, rows: torch.Tensor, end_s: float | torch.Tensor, window_s: float) -> torch.Tensor | None:
        """(len(rows), T) bool, True on the real steps of ``window``'s windows; None when no video
        of the set has padding (so callers can skip the mask). Raises IndexError like ``window``."""
        if not self.padded:
            return None
        return self._steps(rows, end_s, window_s) >= self.first_real[rows][:, None]

    def has_history(self, rows: torch.Tensor, end_s: float) -> torch.Tensor:
        """(len(rows),) bool: the prediction time ``end_s`` before the event lies inside the video."""
        last = self.x.shape[1] - 1 - round(float(end_s) * self.step_hz)
        return self.first_real[rows] <= last

    def _steps(self, rows: torch.Tensor, end_s: float | torch.Tensor, window_s: float) -> torch.Tensor:
        t = self.steps(window_s)
        end = torch.as_tensor(end_s, dtype=torch.float32, device=self.device)
        last = self.x.shape[1] - 1 - torch.round(end * self.step_hz).long()  # index of the last step
        last = last.expand(rows.shape[0]) if last.dim() == 0 else last
        if int(last.min()) - t + 1 < 0:
            raise IndexError(f"window of {window_s}s ending {float(end.max())}s before the event needs more history "
                             f"than the cache holds ({self.x.shape[1]} steps at {self.step_hz} Hz)")
        offsets = torch.arange(-t + 1, 1, device=self.device)  # (T,)
        return last[:, None] + offsets[None, :]  # (B, T)
