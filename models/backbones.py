"""Video backbones: turn short uint8 clips into one pooled embedding each.

``create_backbone(name, weights, device)`` builds one of the registered backbones; every one has
the same surface, so extraction and the tests treat them alike:

    .name .dim .clip_frames .frame_size (H, W) .weights_id .device
    .embed(clips: uint8 (B, F, H, W, 3)) -> float32 (B, dim) on the CPU

Weights (the ``weights`` argument):
    "auto"         the real pretrained weights if they are on disk or can be fetched quickly,
                   else the offline fallback below, announced by one printed line.
    "random"       the offline fallback: a SMALL random-init config (V-JEPA 2: 2 layers, 64x64
                   crops, 8 frames; torchvision nets at 8x64x64) so the demo runs on 2 CPU cores.
    "random-full"  the real architecture and input size with random weights (for throughput
                   benchmarks on machines without the weights).
    <dir or id>    V-JEPA 2: a local folder or hub id for ``VJEPA2Model.from_pretrained``;
                   torchvision nets: a local ``.pth`` state dict of the full-size model.

``weights_id`` is "random" for the random modes, "none" for the pixels baseline (it has no
weights) and otherwise the hub id, enum name or path that was loaded. Extraction records it in
the cache metadata, so random and pretrained features never mix.

Clips are decoded straight to ``frame_size`` (the aspect ratio is squashed, not cropped: a dashcam's
sides matter); ``embed`` resizes if it is handed another size.
"""
from __future__ import annotations

import fnmatch
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's R(2+1)D preset
KINETICS_STD = (0.22803, 0.22145, 0.216989)
MVIT_MEAN = (0.45, 0.45, 0.45)
MVIT_STD = (0.225, 0.225, 0.225)

RANDOM_MODES = ("random", "random-full")


class WeightsUnavailable(RuntimeError):
    """Explicitly requested weights could not be loaded; the message names the path or id."""


# ---- the common surface -------------------------------------------------------------------


class Backbone:
    """A frozen video model behind one interface; subclasses implement ``_forward``.

    ``_forward`` receives the clips already on the device as float (B, F, 3, H, W), resized to
    ``frame_size`` and normalized per channel as ``(x / 255 - mean) / std``, and returns (B, dim).
    """

    mean: tuple = (0.0, 0.0, 0.0)  # the defaults leave pixels in [0, 1]
    std: tuple = (1.0, 1.0, 1.0)

    def __init__(self, name: str, dim: int, clip_frames: int, frame_size: tuple[int, int], weights_id: str,
                 device: torch.device, module: nn.Module | None = None):
        self.name = name
        self.dim = int(dim)
        self.clip_frames = int(clip_frames)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.weights_id = weights_id
        self.device = device
        self.module = module.to(device).eval() if module is not None else None

    def __repr__(self) -> str:
        h, w = self.frame_size
        return (f"{type(self).__name__}({self.name}, dim={self.dim}, clip={self.clip_frames}x{h}x{w}, "
                f"weights={self.weights_id}, device={self.device})")

    @property
    def is_random(self) -> bool:
        return self.weights_id == "random"

    def embed(self, clips: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Embed a batch of uint8 clips (B, F, H, W, 3); returns float32 (B, dim) on the CPU.

        Runs under bf16 autocast on CUDA and in float32 on the CPU. Raises ValueError if the
        clips do not have the backbone's frame count or are not RGB.
        """
        x = torch.as_tensor(clips)
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"{self.name}: clips must be (B, F, H, W, 3) uint8, got {tuple(x.shape)}")
        if x.shape[1] != self.clip_frames:
            raise ValueError(f"{self.name}: clips have {x.shape[1]} frames, the backbone takes {self.clip_frames}")
        cuda = self.device.type == "cuda"
        if cuda and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()  # lets the copy below run asynchronously
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            # reorder while still bytes, then scale in place: 7x faster on a CPU than the other way round
            x = x.permute(0, 1, 4, 2, 3).contiguous().float()  # (B, F, 3, H, W)
            if tuple(x.shape[-2:]) != self.frame_size:
                b, f = x.shape[:2]
                x = F.interpolate(x.flatten(0, 1), size=self.frame_size, mode="bilinear", align_corners=False)
                x = x.view(b, f, 3, *self.frame_size)
            scale, shift = self._affine()
            x = x.mul_(scale).sub_(shift)  # (x / 255 - mean) / std
            out = self._forward(x)  # (B, dim)
        assert out.shape == (x.shape[0], self.dim), f"{self.name}: output {tuple(out.shape)} != (B, {self.dim})"
        return out.float().cpu()

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of the normalization, (1, 1, 3, 1, 1) each, made once on the device."""
        if getattr(self, "_affine_cache", None) is None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 1, 3, 1, 1)
            self._affine_cache = ((1.0 / (255.0 * std)).to(self.device), (mean / std).to(self.device))
        return self._affine_cache

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ---- V-JEPA 2 (transformers) ---------------------------------------------------------------


class VJEPA2Backbone(Backbone):
    """V-JEPA 2 encoder (Assran et al. 2025, arXiv 2506.09985); embedding = mean of the patch tokens."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # what VJEPA2VideoProcessor normalizes with

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.module(pixel_values_videos=x, skip_predictor=True).last_hidden_state  # (B, N, D)
        return tokens.mean(dim=1)


# The SMALL offline configs: a few layers on 64x64 crops so 1,000 clips embed in seconds on a CPU.
_VJEPA2_TINY = {
    "vjepa2_vitl": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    "vjepa2_vitg": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4),
}
_VJEPA2_TINY_COMMON = dict(crop_size=64, patch_size=16, tubelet_size=2, frames_per_clip=8, mlp_ratio=2.0,
                           num_pooler_layers=1, pred_hidden_size=32, pred_num_attention_heads=2,
                           pred_num_hidden_layers=1, pred_num_mask_tokens=2)
# The full architectures, for "random-full" (the hub configs themselves need the network).
_VJEPA2_FULL = {
    "vjepa2_vitl": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "vjepa2_vitg": dict(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11),
}
_VJEPA2_HUB = {"vjepa2_vitl": "facebook/vjepa2-vitl-fpc64-256", "vjepa2_vitg": "facebook/vjepa2-vitg-fpc64-256"}
VJEPA2_CLIP_FRAMES = 16  # frames per clip with real weights (the models take any even count)


def _vjepa2(name: str, weights: str, device: torch.device) -> Backbone:
    from transformers import VJEPA2Config, VJEPA2Model

    hub_id = _VJEPA2_HUB[name]
    model, weights_id = None, "random"
    if weights == "auto":
        model = _hf_pretrained(VJEPA2Model, hub_id)
        if model is None:
            _announce_random(name, hub_id, "tiny config: 2 layers, 8 frames of 64x64")
        else:
            weights_id = hub_id
    elif weights not in RANDOM_MODES:
        model = _hf_load(VJEPA2Model, weights)
        weights_id = weights
    if model is None:
        shape = {**_VJEPA2_TINY_COMMON, **_VJEPA2_TINY[name]} if weights != "random-full" else _VJEPA2_FULL[name]
        torch.manual_seed(0)  # random features are still reproducible across runs
        model = VJEPA2Model(VJEPA2Config(**shape))
    cfg = model.config
    frames = min(VJEPA2_CLIP_FRAMES, cfg.frames_per_clip)
    frames -= frames % cfg.tubelet_size
    return VJEPA2Backbone(name, cfg.hidden_size, frames, (cfg.crop_size, cfg.crop_size), weights_id, device, model)


def _hf_pretrained(cls, hub_id: str):
    """The pretrained model from the local HF cache or, if the hub answers quickly, a download; else None."""
    try:
        return cls.from_pretrained(hub_id, local_files_only=True)
    except (OSError, ValueError):
        pass
    if _hf_offline() or not _reachable("huggingface.co"):
        return None
    try:
        return cls.from_pretrained(hub_id)
    except Exception as exc:  # a network error, a gated repo: fall back, with the reason printed
        print(f"could not download {hub_id}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return None


def _hf_load(cls, path_or_id: str):
    """An explicitly requested model; raises WeightsUnavailable naming it if it cannot be loaded."""
    local = Path(path_or_id).expanduser()
    try:
        if local.exists():
            return cls.from_pretrained(str(local))
        return cls.from_pretrained(path_or_id, local_files_only=_hf_offline() or not _reachable("huggingface.co"))
    except Exception as exc:
        raise WeightsUnavailable(f"cannot load weights {path_or_id!r}: {str(exc).splitlines()[0]}") from exc


# ---- torchvision video nets ---------------------------------------------------------------


class TorchvisionBackbone(Backbone):
    """A torchvision video classifier with its head removed; embedding = the pooled features."""

    def __init__(self, *args, mean: tuple, std: tuple, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean, self.std = mean, std  # the weights enum's preset

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 2, 1, 3, 4))  # (B, 3, F, H, W)


@dataclass(frozen=True)
class _TVSpec:
    builder: str  # torchvision.models.video function
    enum: str  # weights enum class, its KINETICS400_V1 member is the pretrained one
    dim: int
    full: tuple[int, int]  # (frames, side) of the pretrained model
    mean: tuple
    std: tuple


_TV = {
    "r2plus1d_18": _TVSpec("r2plus1d_18", "R2Plus1D_18_Weights", 512, (16, 112), KINETICS_MEAN, KINETICS_STD),
    "mvit_v2_s": _TVSpec("mvit_v2_s", "MViT_V2_S_Weights", 768, (16, 224), MVIT_MEAN, MVIT_STD),
}
_TV_SMALL = (8, 64)  # frames, side of the random-init configs


def _torchvision(name: str, weights: str, device: torch.device) -> Backbone:
    import torchvision.models.video as tvv

    spec = _TV[name]
    enum = getattr(tvv, spec.enum).KINETICS400_V1
    state, weights_id = None, "random"
    if weights == "auto":
        state = _tv_pretrained(enum)
        if state is None:
            _announce_random(name, f"{spec.enum}.KINETICS400_V1", f"{_TV_SMALL[0]} frames of {_TV_SMALL[1]}x{_TV_SMALL[1]}")
        else:
            weights_id = f"{spec.enum}.KINETICS400_V1"
    elif weights not in RANDOM_MODES:
        path = Path(weights).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsUnavailable(f"cannot load weights {weights!r} for {name}: {str(exc).splitlines()[0]}") from exc
        weights_id = str(path)
    frames, side = spec.full if (state is not None or weights == "random-full") else _TV_SMALL
    torch.manual_seed(0)
    model = getattr(tvv, spec.builder)(weights=None)
    if hasattr(model, "pos_encoding"):
        # MViT v2 fixes its token grid at build time (16x224x224); its relative position tables
        # are interpolated to any grid, so pointing the grid at the smaller clip is all it takes.
        stride = model.conv_proj.stride  # (t, h, w)
        model.pos_encoding.temporal_size = frames // stride[0]
        model.pos_encoding.spatial_size = (side // stride[1], side // stride[2])
    if state is not None:
        model.load_state_dict(state)
    if hasattr(model, "fc"):
        model.fc = nn.Identity()  # R(2+1)D: (B, 512) after global pooling
    else:
        model.head = nn.Identity()  # MViT: (B, 768) normalized class token
    return TorchvisionBackbone(name, spec.dim, frames, (side, side), weights_id, device, model,
                               mean=spec.mean, std=spec.std)


def _tv_pretrained(enum) -> dict | None:
    """The weights enum's state dict from the torch hub cache, or downloaded if reachable; else None."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    if not cached.exists() and (_env_offline() or not _reachable("download.pytorch.org")):
        return None
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        print(f"could not fetch {enum.url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return None


# ---- pixels baseline ----------------------------------------------------------------------


class PixelsBackbone(Backbone):
    """No learned weights: a thumbnail of the last frame plus a map of recent motion.

    Embedding = the last frame average-pooled to 6x10 RGB (180 values) and the mean absolute
    frame difference over the clip, grayscale, pooled to 6x10 (60 values): 240 in all.
    """

    GRID = (6, 10)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        last = F.adaptive_avg_pool2d(x[:, -1], self.GRID).reshape(b, -1)  # (B, 3*6*10)
        motion = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 2))  # (B, H, W)
        motion = F.adaptive_avg_pool2d(motion[:, None], self.GRID).reshape(b, -1) * 10.0  # (B, 6*10), ~unit scale
        return torch.cat([last, motion], dim=1)


def _pixels(name: str, weights: str, device: torch.device) -> Backbone:
    if weights not in ("auto", *RANDOM_MODES, "none"):
        raise WeightsUnavailable(f"the pixels backbone has no weights; got weights={weights!r}")
    gh, gw = PixelsBackbone.GRID
    return PixelsBackbone(name, 3 * gh * gw + gh * gw, 4, (24, 40), "none", device)


# ---- registry -----------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[str, str, torch.device], Backbone]] = {
    "vjepa2_vitl": _vjepa2,
    "vjepa2_vitg": _vjepa2,
    "r2plus1d_18": _torchvision,
    "mvit_v2_s": _torchvision,
    "pixels": _pixels,
}


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob pattern, in registry order."""
    return [n for n in _BUILDERS if fnmatch.fnmatch(n, pattern)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def create_backbone(name: str, weights: str = "auto", device: str | torch.device = "cpu") -> Backbone:
    """Build a backbone by name. See the module docstring for ``weights``.

    Raises KeyError listing the registered names for an unknown backbone, and WeightsUnavailable
    when explicitly requested weights cannot be loaded ("auto" falls back to random instead).
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(_BUILDERS)}")
    return _BUILDERS[name](name, str(weights), resolve_device(device))


def check_weights(name: str, weights: str) -> None:
    """Refuse, before anything is loaded, weights that cannot work: any weights for pixels, and a
    local path (``/``, ``~`` or ``.``) that does not exist. Raises WeightsUnavailable in one line."""
    weights = str(weights)
    if weights in ("auto", *RANDOM_MODES):
        return
    if _BUILDERS.get(name) is _pixels:
        _pixels(name, weights, torch.device("cpu"))  # its own refusal, one line
    looks_local = weights.startswith(("/", "~", ".")) or _BUILDERS.get(name) is _torchvision  # a hub id is org/name
    if looks_local and not Path(weights).expanduser().exists():
        raise WeightsUnavailable(f"cannot load weights {weights!r} for {name}: no such file or folder")


# ---- offline detection --------------------------------------------------------------------


def _announce_random(name: str, wanted: str, shape: str) -> None:
    print(f"backbone {name}: pretrained weights {wanted} are not available offline; "
          f"using RANDOM weights ({shape}) - features are for plumbing, not for conclusions")


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _env_offline() -> bool:
    return _truthy("CRASHSEARCH_OFFLINE")


def _hf_offline() -> bool:
    return _env_offline() or _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


@lru_cache(maxsize=None)
def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host:443`` accepts a connection within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # a thread, because a hung DNS lookup ignores the socket timeout
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
