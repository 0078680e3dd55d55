"""The training engine: train temporal heads on cached features, many models at once.

Cells whose heads have the same parameter shapes (backbone, encoder, size) train together as ONE
vectorised model: their heads are stacked along a leading model axis and run through
``torch.func.vmap(functional_call)``; each keeps its own learning rate, focal gamma,
augmentation, window, batch size and seed (its own initialisation, batch order and noise). All
parameters of a group live in one ``(M, P)`` tensor, so the AdamW step and the per-model NaN
check are a handful of tensor ops whatever the architecture. A model whose loss or gradient turns
non-finite stops updating and is reported as a NaNLossError; the other models train on unharmed.

Different windows and batch sizes share a group so that a diverse queue (agents rarely propose
two cells of one exact shape) still trains in few, large groups:
- windows: every model reads the group's longest window; a shorter one's older steps are masked
  off (the time mask of ``models.mask``, left padding), which gives its own window's logits.
- batch sizes: a step reads ``gcd`` of the group's batch sizes examples per model (a "chunk");
  a model's gradient is accumulated over the chunks of its own batch, averaged over the batch,
  and its optimiser steps when its batch ends. Each model thus sees exactly its own batches
  (its examples, its order, its batch means) with its own step count.
So a cell trains the same in any group as alone (tests/test_train.py checks it within float
rounding): what changes is only how many models share each kernel launch.

The feature tensor stays on the device; every step gathers its ``(M, B, T, D)`` windows from it
by index (no DataLoader). Training examples are, for each train video, the windows ending at the
horizons (0.5, 1.0, 1.5 s before the event); ``augment=jitter`` instead draws each example's end
offset uniformly between the first and last horizon, each epoch, and adds small Gaussian noise.
Short clips: a (video, horizon) example whose prediction time lies before the video start is
left out, jittered ends stop at the video's real history, and windows reaching before the
start carry the time mask (lab.features, models.mask).

``train_cell`` runs the same code with a group of one. Failures come back typed (tasks.errors).
"""
from __future__ import annotations

import copy
import functools
import math
import resource
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from crashsearch.lab.lock import interrupt_behind
from crashsearch.lab.features import FeatureSet
from crashsearch.lab.space import Cell, Space
from crashsearch.models.losses import binary_focal_loss, loss_for
from crashsearch.models.mask import own_windows
from crashsearch.models.registry import create_head
from crashsearch.tasks.errors import (STOP, MissingFeaturesError, NaNLossError, OOMError, ShapeError, TrainingCancelled,
                                      TrainingError)
from crashsearch.tasks.evaluate import evaluate_heads

DEFAULT_MAX_MODELS = 64  # models per vectorised group; the campaign may pass more on a big GPU
JITTER_NOISE = 0.05  # std of the jitter feature noise, relative to each feature dimension's std (train split)


@dataclass
class TrainResult:
    """A trained and evaluated cell.

    ``train_seconds`` / ``eval_seconds`` are this cell's share of its group's wall time (group
    time / group_size). ``peak_mem_mb`` is the group's peak: on CUDA the peak allocated device
    memory (``torch.cuda.max_memory_allocated``) during the group; on CPU the process's peak
    resident set size (``ru_maxrss``), which also counts everything else the process holds.
    """

    cell: Cell
    seed: int
    metrics: dict[str, float]  # tasks.evaluate.METRIC_KEYS
    train_seconds: float
    eval_seconds: float
    params: int  # trainable parameters of one head
    peak_mem_mb: float
    device: str
    group_size: int = 1  # how many models trained together with this one (itself included)
    epochs: int = 0
    # this model's own head weights (its slice of the group's stack, on the CPU): what tasks.keep saves
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Recipe:
    """The space's ``fixed`` settings that training reads."""

    epochs: int = 20
    weight_decay: float = 0.01
    class_balance: bool = True
    horizons_s: tuple[float, ...] = (0.5, 1.0, 1.5)

    @classmethod
    def from_fixed(cls, fixed: Mapping[str, Any] | None) -> "Recipe":
        """The recipe from a space's ``fixed`` mapping; keys it lacks come from the default space."""
        merged = {**_default_fixed(), **(fixed or {})}
        return cls(epochs=int(merged["epochs"]), weight_decay=float(merged["weight_decay"]),
                   class_balance=bool(merged["class_balance"]),
                   horizons_s=tuple(float(h) for h in merged["horizons_s"]))


@functools.lru_cache(maxsize=1)
def _default_fixed() -> dict[str, Any]:
    return dict(Space.load().fixed)


# ---- grouping --------------------------------------------------------------------------------

def shape_key(cell: Cell) -> tuple:
    """What must be equal for cells to train as one vectorised model: the head's parameter shapes
    (and the features they read). Window and batch size may differ inside a group."""
    return (cell["backbone"], cell["encoder"], cell["size"])


def group_cells(cells: Sequence[Cell], max_models: int = DEFAULT_MAX_MODELS) -> list[list[int]]:
    """Indices of ``cells`` grouped by shape key (first appearance order), chunks of <= max_models.

    Inside a key the cells are ordered by (window, batch size) before chunking, so a key split into
    several groups splits where the padding and the chunking cost the least.
    """
    assert max_models >= 1, "max_models must be at least 1"
    by_key: dict[tuple, list[int]] = {}
    for i, cell in enumerate(cells):
        by_key.setdefault(shape_key(cell), []).append(i)
    out = []
    for idx in by_key.values():
        if len(idx) > max_models:
            idx = sorted(idx, key=lambda i: (*map(_sort_number, (cells[i]["window_s"], cells[i]["batch_size"])), i))
        out += [idx[i:i + max_models] for i in range(0, len(idx), max_models)]
    return out


def _sort_number(value: Any) -> float:
    """``value`` as a float to order cells by; a value that is not a number sorts last (its cell
    then fails alone in ``_cell_error``, it must not crash the grouping)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.inf
    return number if not math.isnan(number) else math.inf


# ---- public entry points ---------------------------------------------------------------------

def resolve_device(device: str | torch.device | None, features: FeatureSet) -> torch.device:
    """None -> the features' device; "auto" -> cuda if available, else cpu; else as given."""
    if device is None:
        return features.device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_cell(cell: Cell, features: FeatureSet, seed: int, fixed: Mapping[str, Any] | None = None,
               device: str | torch.device | None = None) -> TrainResult:
    """Train and evaluate one cell (a group of one through ``train_batch``).

    Returns a TrainResult; raises the TrainingError subclass that ``train_batch`` would return.
    """
    result = train_batch([cell], features, [seed], fixed=fixed, device=device)[0]
    if isinstance(result, TrainingError):
        raise result
    return result


def train_batch(cells: Sequence[Cell], features: FeatureSet, seeds: Sequence[int],
                fixed: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
                max_models: int = DEFAULT_MAX_MODELS) -> list[TrainResult | TrainingError]:
    """Train and evaluate many cells; cells of the same shape train together as one vectorised model.

    Returns one entry per cell, in order: a TrainResult, or the TrainingError that stopped it
    (OOMError, NaNLossError, ShapeError, MissingFeaturesError, or a TrainingError wrapping an
    unexpected exception with its traceback). Never raises for a cell's failure. A group that
    runs out of memory is split in halves and retried; only a cell that runs out alone is an
    OOMError.
    """
    if len(cells) != len(seeds):
        raise ValueError(f"{len(cells)} cells but {len(seeds)} seeds")
    recipe = Recipe.from_fixed(fixed)
    features = features.to(resolve_device(device, features))
    results: list[TrainResult | TrainingError | None] = [None] * len(cells)
    for group in group_cells(cells, max_models):
        outcomes = _run_group([cells[i] for i in group], [int(seeds[i]) for i in group], features, recipe)
        for i, outcome in zip(group, outcomes):
            results[i] = outcome
    return results  # type: ignore[return-value]


# ---- one group -------------------------------------------------------------------------------

def _run_group(cells: list[Cell], seeds: list[int], features: FeatureSet,
               recipe: Recipe) -> list[TrainResult | TrainingError]:
    """``_train_group`` with its failures turned into per-cell TrainingErrors (OOM: split and retry)."""
    oom = None
    try:
        return _train_group(cells, seeds, features, recipe)
    except TrainingError as exc:  # a problem of the whole group (shape, features): every cell gets it
        return [type(exc)(c, exc.message, error_class=exc.error_class, traceback=exc.traceback) for c in cells]
    except Exception as exc:  # noqa: BLE001 - any failure becomes a row, never a crashed campaign
        signal = interrupt_behind(exc)  # an error raised while a Ctrl-C or a cancellation unwound is no cell's failure
        if signal is not None:
            raise signal
        if not _is_oom(exc):
            tb = traceback.format_exc()
            return [TrainingError(c, f"{type(exc).__name__}: {exc}", error_class=type(exc).__name__, traceback=tb)
                    for c in cells]
        oom = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}"
    # out of memory: handled outside the except block so the failed step's tensors are freed first
    if features.device.type == "cuda":
        torch.cuda.empty_cache()
    if len(cells) > 1:
        half = len(cells) // 2
        return (_run_group(cells[:half], seeds[:half], features, recipe)
                + _run_group(cells[half:], seeds[half:], features, recipe))
    return [OOMError(cells[0], f"out of memory training alone with batch_size={cells[0]['batch_size']} ({oom})")]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _check_features(cell: Cell, features: FeatureSet, horizons_s: Sequence[float]) -> None:
    """Raise MissingFeaturesError / ShapeError if the cell's group cannot train on these features
    (each cell's batch size and window are checked on their own: ``_cell_error``)."""
    backbone = cell.values.get("backbone")
    if backbone is not None and features.backbone != backbone:
        raise MissingFeaturesError(cell, f"features are from backbone {features.backbone!r}, the cell needs {backbone!r}")
    if features.x.dim() != 3 or not features.x.is_floating_point():
        raise ShapeError(cell, f"features must be a float (videos, steps, dim) tensor, got {features.x.dtype} "
                               f"{tuple(features.x.shape)}")
    for split in ("train", "val"):
        labels = features.y[features.indices(split)]
        if labels.numel() == 0:
            raise MissingFeaturesError(cell, f"the {split} split of {features.dataset!r} has no videos")
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.numel():
            raise MissingFeaturesError(cell, f"the {split} split of {features.dataset!r} has only one class "
                                             f"({n_pos} positives of {labels.numel()})")
        rows = features.indices(split)
        if not any(bool(features.has_history(rows, h).any()) for h in horizons_s):  # clips too short
            raise MissingFeaturesError(cell, f"no {split} video of {features.dataset!r} has history {min(horizons_s):g}s "
                                             f"before its event (the earliest horizon): its clips are too short")


def _cell_error(cell: Cell, features: FeatureSet, recipe: Recipe) -> TrainingError | None:
    """The error of a cell that cannot train in any group, else None: a ShapeError for a batch size
    that is not a whole number >= 1 or a window that is not a positive number of seconds the cached
    history holds, a TrainingError for an lr that is not a finite number >= 0, a loss that is not
    known or an augment other than none/jitter. Checked per cell: it must not fail its group."""
    try:
        batch_ok = float(cell["batch_size"]).is_integer() and float(cell["batch_size"]) >= 1
    except (TypeError, ValueError, OverflowError):
        batch_ok = False
    if not batch_ok:
        return ShapeError(cell, f"batch_size={cell['batch_size']!r} is not a whole number of at least 1")
    if not _number_at_least(cell["window_s"], 0.0) or float(cell["window_s"]) == 0:
        return ShapeError(cell, f"window_s={cell['window_s']!r} is not a positive number of seconds")
    if not _number_at_least(cell["lr"], 0.0):
        return TrainingError(cell, f"lr={cell['lr']!r} is not a finite number >= 0", error_class="ValueError")
    try:
        loss_for(cell["loss"])
    except ValueError as exc:
        return TrainingError(cell, str(exc), error_class="ValueError")
    if cell["augment"] not in ("none", "jitter"):
        return TrainingError(cell, f"augment={cell['augment']!r} is not 'none' or 'jitter'", error_class="ValueError")
    try:  # the earliest window training or evaluation reads
        features.window(features.indices("train")[:1], max(recipe.horizons_s), float(cell["window_s"]))
    except IndexError:
        needed = features.steps(float(cell["window_s"])) + round(max(recipe.horizons_s) * features.step_hz)
        return ShapeError(cell, f"window_s={cell['window_s']} ending {max(recipe.horizons_s)}s before the event "
                                f"needs {needed} steps but the cache holds {features.x.shape[1]} "
                                f"({features.x.shape[1] / features.step_hz:g}s at {features.step_hz:g} Hz)")
    return None


def _number_at_least(value: Any, low: float) -> bool:
    """Whether ``value`` reads as a finite number (``float(value)``) >= ``low``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number >= low


def _init_head(cell: Cell, seed: int, in_dim: int) -> torch.nn.Module:
    """The cell's head with its seed's initialisation, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return create_head(cell["encoder"], cell["size"], in_dim)
        except (AssertionError, RuntimeError, ValueError) as exc:
            raise ShapeError(cell, f"a {cell['encoder']}/{cell['size']} head cannot read {in_dim}-dim features: "
                                   f"{exc}", traceback=traceback.format_exc()) from None


class StackedAdamW:
    """AdamW over a stack of models whose parameters are the rows of one ``(M, P)`` tensor.

    Each model has its own learning rate and step count; betas, eps and weight decay are shared.
    Follows ``torch.optim.AdamW`` (decoupled weight decay, bias correction) exactly. A model
    marked inactive in ``step`` does not move and its state does not change (its gradient is
    ignored, even if NaN): models of different batch sizes step at different times.
    """

    def __init__(self, flat: torch.Tensor, lr: torch.Tensor, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        assert flat.dim() == 2 and lr.shape == flat.shape[:1], "flat is (M, P) and lr (M,)"
        self.flat, self.lr = flat, lr[:, None]  # (M, 1)
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)  # (M, 1)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor) -> None:
        """One update with ``grad`` (M, P); ``active`` (M,) bool selects the models that move."""
        beta1, beta2 = self.betas
        on = active[:, None]  # (M, 1)
        self.steps += on
        steps = self.steps.clamp(min=1)  # an inactive model's bias correction is never used
        # per-model bias corrections, in float64 like torch's Python floats, then the params' dtype
        correction1 = (1 - beta1 ** steps).to(self.flat.dtype)
        correction2 = (1 - beta2 ** steps).sqrt().to(self.flat.dtype)
        grad = torch.where(on, grad, 0.0)
        lr = torch.where(on, self.lr, 0.0)  # (M, 1)
        self.flat.mul_(1 - lr * self.weight_decay)
        self.exp_avg.copy_(torch.where(on, self.exp_avg.lerp(grad, 1 - beta1), self.exp_avg))
        moved_sq = torch.addcmul(self.exp_avg_sq * beta2, grad, grad, value=1 - beta2)
        self.exp_avg_sq.copy_(torch.where(on, moved_sq, self.exp_avg_sq))
        denom = (self.exp_avg_sq.sqrt() / correction2).add_(self.eps)
        self.flat.sub_(lr / correction1 * self.exp_avg / denom)


class StackedHeads:
    """M heads of one architecture as one vectorised model.

    ``flat`` (M, P) holds every model's parameters (a leaf tensor: autograd gives one (M, P)
    gradient), ``buffers`` the stacked buffers; ``forward`` runs each model on its own batch
    ``(M, B, T, D) -> (M, B)`` and ``score`` every model on shared windows ``(B, T, D) -> (M, B)``.
    Both take an optional time mask (``(M, B, T)``; for ``score`` also a shared ``(B, T)``; bool,
    True = real step, see ``models.mask``): left padding of short clips, or shorter windows padded
    to the group's longest.
    """

    def __init__(self, heads: list[torch.nn.Module], device: torch.device):
        self.base = copy.deepcopy(heads[0]).to(device)  # the module functional_call runs; its own weights unused
        self.names, self.shapes = zip(*[(n, p.shape) for n, p in heads[0].named_parameters()])
        self.sizes = [math.prod(s) for s in self.shapes]
        self.flat = torch.stack([torch.nn.utils.parameters_to_vector(h.parameters()) for h in heads]).to(device)
        self.flat.requires_grad_(True)  # (M, P)
        self.buffers = {n: torch.stack([dict(h.named_buffers())[n] for h in heads]).to(device)
                        for n, _ in heads[0].named_buffers()}
        self._train = vmap(self._one, in_dims=(0, 0, 0), randomness="different")  # each model its own batch
        self._score = vmap(self._one, in_dims=(0, 0, None))  # every model the same windows
        self._train_masked = vmap(self._one, in_dims=(0, 0, 0, 0), randomness="different")
        self._score_masked = vmap(self._one, in_dims=(0, 0, None, None))
        self._score_own_mask = vmap(self._one, in_dims=(0, 0, None, 0))  # each model its own window

    def _one(self, params, buffers, x, mask=None):  # one model: (B, T, D), (B, T) -> (B,)
        args = (x,) if mask is None else (x, mask)
        return functional_call(self.base, (params, buffers), args)

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (M, P) as {name: (M, *shape)}."""
        return {n: chunk.view(flat.shape[0], *s) for n, chunk, s in zip(self.names, flat.split(self.sizes, dim=1),
                                                                         self.shapes)}

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(M, B, T, D), mask (M, B, T) -> (M, B) logits, training mode."""
        if not self.base.training:
            self.base.train()
        if mask is None:
            return self._train(self.params(self.flat), self.buffers, windows)
        return self._train_masked(self.params(self.flat), self.buffers, windows, mask)

    @torch.no_grad()
    def states(self) -> list[dict[str, torch.Tensor]]:
        """Each model's own state dict (parameters and buffers), cloned to the CPU: one model's slice of
        the stack, loadable into ``create_head`` of its cell."""
        flat = self.flat.detach().cpu()  # one device->host copy for the whole group
        params = self.params(flat)
        buffers = {n: b.detach().cpu() for n, b in self.buffers.items()}
        return [{**{n: p[m].clone() for n, p in params.items()}, **{n: b[m].clone() for n, b in buffers.items()}}
                for m in range(flat.shape[0])]

    @torch.no_grad()
    def score(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D), mask (B, T) or (M, B, T) -> (M, B) logits, evaluation mode."""
        if self.base.training:
            self.base.eval()
        params = self.params(self.flat.detach())
        if mask is None:
            return self._score(params, self.buffers, windows)
        if mask.dim() == 3:
            return self._score_own_mask(params, self.buffers, windows, mask)
        return self._score_masked(params, self.buffers, windows, mask)


class ExampleSampler:
    """Each model's training examples for one epoch, in its own order, as device tensors.

    The examples are the (train video, horizon) pairs whose prediction time lies inside the
    video (all of them without short clips): n_train x n_horizons at most. A model's generator
    (seeded with its seed) draws its permutation and, with ``augment=jitter``, its end offsets
    (uniform between the first horizon and the last, or the video's real history if shorter) and
    its noise: one draw per batch of its own batch size and window, so a model's noise does not
    depend on the group it trains in.

    Steps read ``chunk`` examples per model (the gcd of the batch sizes); ``plan`` says, for each
    chunk of an epoch, each model's batch size (the divisor of its loss) and whether its batch
    ends there (it steps).
    """

    def __init__(self, cells: list[Cell], seeds: list[int], features: FeatureSet, horizons_s: tuple[float, ...]):
        self.features, self.horizons_s = features, horizons_s
        dev = features.device
        rows = features.indices("train")
        keep = torch.cat([features.has_history(rows, h) for h in horizons_s]).cpu()  # (n_train x n_horizons,)
        self.rows = rows.repeat(len(horizons_s))[keep.to(dev)]  # (E,)
        self.n_examples = int(self.rows.numel())
        self.y = features.y[self.rows].float()  # (E,)
        self.end = torch.tensor(horizons_s, dtype=torch.float32).repeat_interleave(rows.numel())[keep]  # (E,) cpu
        # the latest end a jittered example may take: its video's real history on the step grid
        real = (features.x.shape[1] - 1 - features.first_real[self.rows]).cpu().float() / features.step_hz
        self.max_end = real.clamp(max=max(horizons_s))  # (E,) cpu
        self.jitter = [c["augment"] == "jitter" for c in cells]
        self.t_steps = [features.steps(float(c["window_s"])) for c in cells]
        self.t_max = max(self.t_steps)
        # each model's own steps of the longest window: (M, T); None when every window is the longest
        self.own_steps = own_windows(self.t_steps, dev)
        # a batch larger than the training set is the whole set (and a huge one must not overflow int64)
        self.batch = [min(int(float(c["batch_size"])), max(self.n_examples, 1)) for c in cells]
        self.chunk = math.gcd(*self.batch)
        self._noise: dict[int, torch.Tensor] = {}  # jitter model -> its current batch's noise
        self.order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
        self.noise_rngs = [torch.Generator(device=dev).manual_seed(s) for s, j in zip(seeds, self.jitter) if j]
        self.jittered = torch.tensor([m for m, j in enumerate(self.jitter) if j], dtype=torch.long, device=dev)
        if self.noise_rngs:
            self.noise_scale = JITTER_NOISE * features.x[rows].float().std(dim=(0, 1))  # (D,)

    def epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, last step index, label), each (M, E): one epoch of every model, shuffled."""
        low, high = min(self.horizons_s), max(self.horizons_s)
        perms, ends = [], []
        for rng, jitter in zip(self.order_rngs, self.jitter):
            perm = torch.randperm(self.n_examples, generator=rng)
            end = low + (self.max_end - low) * torch.rand(self.n_examples, generator=rng) if jitter else self.end
            perms.append(perm)
            ends.append(end[perm])
        fs = self.features
        perm = torch.stack(perms).to(fs.device)  # (M, E)
        # the index of each window's last step, computed as FeatureSet.window does
        last = fs.x.shape[1] - 1 - torch.round(torch.stack(ends).to(fs.device) * fs.step_hz).long()
        return self.rows[perm], last, self.y[perm]

    def plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per chunk of an epoch: each model's batch size, (C, M) float, and whether its batch ends
        with the chunk, (C, M) bool. A model's last batch of an epoch may be short."""
        n, c = self.n_examples, self.chunk
        starts = torch.arange(0, n, c)[:, None]  # (C, 1)
        batch = torch.tensor(self.batch)[None, :]  # (1, M)
        first = starts // batch * batch  # the first example of the batch each chunk belongs to
        end = torch.clamp(first + batch, max=n)
        ends = torch.clamp(starts + c, max=n) >= end
        dev = self.features.device
        return (end - first).float().to(dev), ends.to(dev)

    def windows(self, rows: torch.Tensor, last: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (M, b, T, D) windows ending at ``last`` (M, b) of videos ``rows`` (the epoch's
        examples ``start`` to ``start + b``), noised for jitter models, and their (M, b, T) time
        mask: each model's own window inside the longest, and the real history of short clips
        (None when neither masks anything)."""
        t_max = self.t_max
        offsets = torch.arange(-t_max + 1, 1, device=rows.device)  # (T,)
        steps = last[..., None] + offsets  # (M, b, T)
        windows = self.features.x[rows[..., None], steps]  # (M, b, T, D)
        b = rows.shape[1]
        if self.noise_rngs:
            noise = []
            for m, g in zip(self.jittered.tolist(), self.noise_rngs):
                size, t = self.batch[m], self.t_steps[m]
                if start % size == 0:  # the model's batch starts here: draw its noise
                    shape = (min(size, self.n_examples - start), t, windows.shape[-1])
                    self._noise[m] = torch.randn(shape, generator=g, device=windows.device)
                part = self._noise[m][start % size:start % size + b]  # (b, t, D)
                noise.append(F.pad(part, (0, 0, t_max - t, 0)) if t < t_max else part)
            windows[self.jittered] += torch.stack(noise) * self.noise_scale  # (J, b, T, D)
        mask = steps >= self.features.first_real[rows][..., None] if self.features.padded else None
        if self.own_steps is not None:
            own = self.own_steps[:, None, :].expand(-1, b, -1)
            mask = own if mask is None else mask & own
        return windows, mask


def _train_group(cells: list[Cell], seeds: list[int], features: FeatureSet,
                 recipe: Recipe) -> list[TrainResult | TrainingError]:
    """Train one group of same-shape cells as one vectorised model and evaluate every model."""
    cell0, n_models = cells[0], len(cells)
    assert all(shape_key(c) == shape_key(cell0) for c in cells), "a group must share one shape key"
    _check_features(cell0, features, recipe.horizons_s)
    unfit = [_cell_error(c, features, recipe) for c in cells]
    if any(unfit):  # those cells fail alone; the others train without them
        fit = [i for i, e in enumerate(unfit) if e is None]
        trained = iter(_train_group([cells[i] for i in fit], [seeds[i] for i in fit], features, recipe) if fit else [])
        return [e if e is not None else next(trained) for e in unfit]
    dev = features.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()

    heads = StackedHeads([_init_head(c, s, features.dim) for c, s in zip(cells, seeds)], dev)
    window_s = float(cell0["window_s"])
    probe_rows = features.indices("train")[:2]
    probe = features.window(probe_rows, recipe.horizons_s[0], window_s)  # (2, T, D)
    if (shape := tuple(heads.score(probe, features.window_mask(probe_rows, recipe.horizons_s[0], window_s)).shape)
            ) != (n_models, 2):
        raise ShapeError(cell0, f"the {cell0['encoder']} head returned logits of shape {shape[1:]} for a batch "
                                f"of 2; expected (2,)")
    sampler = ExampleSampler(cells, seeds, features, recipe.horizons_s)
    train_y = features.y[features.indices("train")]
    n_pos = float(train_y.sum())
    pos_weight = (train_y.numel() - n_pos) / n_pos if recipe.class_balance else None
    gamma = torch.tensor([loss_for(c["loss"]) for c in cells], device=dev)[:, None]  # (M, 1)
    optimiser = StackedAdamW(heads.flat, torch.tensor([float(c["lr"]) for c in cells], device=dev),
                             recipe.weight_decay)

    alive = torch.ones(n_models, dtype=torch.bool, device=dev)
    failed_at = torch.full((n_models,), -1, dtype=torch.long, device=dev)  # global chunk of the first NaN
    chunk = sampler.chunk
    batch_size, batch_ends = sampler.plan()  # (C, M) each
    chunks_per_epoch = batch_size.shape[0]
    accumulate = not bool(batch_ends.all())  # some model's batch spans several chunks
    grad_sum = torch.zeros_like(heads.flat) if accumulate else None
    epochs_run = 0
    stop = STOP.get()  # set when the campaign stops: end at the next step, record nothing
    for epoch in range(recipe.epochs):
        rows_epoch, last_epoch, y_epoch = sampler.epoch()  # (M, E) each
        for c in range(chunks_per_epoch):
            if stop is not None and stop.is_set():
                raise TrainingCancelled("the campaign is stopping")
            cols = slice(c * chunk, (c + 1) * chunk)
            logits = heads.forward(*sampler.windows(rows_epoch[:, cols], last_epoch[:, cols], c * chunk))  # (M, b)
            per_example = binary_focal_loss(logits, y_epoch[:, cols], gamma, pos_weight, reduction="none")
            losses = per_example.sum(dim=1) / batch_size[c]  # this chunk's part of each model's batch mean
            # a failed model's loss is left out, so its NaN never reaches the others' gradients
            (grad,) = torch.autograd.grad(torch.where(alive, losses, 0.0).sum(), heads.flat)  # (M, P)
            finite = torch.isfinite(losses) & torch.isfinite(grad).all(dim=1)
            failed_at = torch.where(alive & ~finite, epoch * chunks_per_epoch + c, failed_at)
            alive &= finite
            if grad_sum is None:
                optimiser.step(grad, alive)
                continue
            grad_sum += torch.where(alive[:, None], grad, 0.0)
            optimiser.step(grad_sum, alive & batch_ends[c])
            grad_sum.masked_fill_(batch_ends[c][:, None], 0.0)
        epochs_run = epoch + 1
        if not bool(alive.any()):  # one sync per epoch: stop when every model has failed
            break
    train_seconds = _elapsed(started, dev)

    started = time.perf_counter()
    metrics = evaluate_heads(heads.score, features, [float(c["window_s"]) for c in cells], recipe.horizons_s)
    eval_seconds = _elapsed(started, dev)

    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    device_name = f"cuda:{dev.index or 0} {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else str(dev)
    states = heads.states()
    out: list[TrainResult | TrainingError] = []
    for m, (cell, seed, step) in enumerate(zip(cells, seeds, failed_at.tolist())):
        if step >= 0:  # the chunk, as the model's own epoch and step
            own_step = step % chunks_per_epoch * chunk // sampler.batch[m] + 1
            out.append(NaNLossError(cell, f"loss or gradient became non-finite at epoch {step // chunks_per_epoch + 1}, "
                                          f"step {own_step} (lr={cell['lr']}, loss={cell['loss']})"))
        elif not math.isfinite(metrics[m]["val_ap"]):  # a horizon's AP may be undefined (one class there)
            out.append(NaNLossError(cell, f"evaluation scores are not finite after training (lr={cell['lr']})"))
        else:
            out.append(TrainResult(cell=cell, seed=seed, metrics=metrics[m],
                                   train_seconds=train_seconds / n_models, eval_seconds=eval_seconds / n_models,
                                   params=int(heads.flat.shape[1]), peak_mem_mb=peak, device=device_name,
                                   group_size=n_models, epochs=epochs_run, state=states[m]))
    return out


def _elapsed(started: float, dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - started
