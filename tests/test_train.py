"""The training engine on small synthetic FeatureSets: repeatability, batching, failures, grouping."""
from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import crashsearch.tasks.train as train_module
from crashsearch.lab.features import FeatureSet
from crashsearch.lab.space import Cell, Space
from crashsearch.models.registry import list_encoders
from crashsearch.tasks.errors import MissingFeaturesError, NaNLossError, OOMError, ShapeError, TrainingError
from crashsearch.tasks.evaluate import METRIC_KEYS
from crashsearch.tasks.train import StackedAdamW, TrainResult, group_cells, shape_key, train_batch, train_cell

SPACE = Space.load()
BASE = dict(backbone="vjepa2_vitl", encoder="meanpool_mlp", size="small", loss="bce", lr=0.003,
            batch_size=16, window_s=2.0, augment="none")
FAST = {"epochs": 4}


def cell(**overrides) -> Cell:
    return SPACE.validate({**BASE, **overrides})


def raw_cell(**overrides) -> Cell:
    """A cell outside the space's values (e.g. an absurd lr), built directly for fault injection."""
    values = {**BASE, **overrides}
    return Cell(-1, values)


def synthetic(n=90, steps=23, dim=16, hz=4.0, signal=1.5, seed=0, backbone="vjepa2_vitl") -> FeatureSet:
    """N videos of S steps: positives carry a ramp in dim 0 that rises towards the event."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n)
    y = ((i // 5) % 5 < 2).float()  # 40% positives, in every split
    x = torch.randn(n, steps, dim, generator=g)
    x[:, :, 0] += signal * y[:, None] * torch.linspace(0, 2, steps)
    split = np.array(["train", "train", "train", "val", "test"])[np.arange(n) % 5]
    return FeatureSet("synth", backbone, x, y, split, torch.arange(-steps + 1, 1) / hz,
                      [f"v{i}" for i in range(n)], hz)


@pytest.fixture(scope="module")
def features() -> FeatureSet:
    fs = synthetic(signal=0.4)  # learnable but not trivially: metrics differ between seeds
    for name in ("train", "val", "test"):
        assert 0 < int(fs.y[fs.indices(name)].sum()) < len(fs.indices(name)), f"{name} needs both classes"
    return fs


def test_same_seed_gives_the_same_metrics(features):
    c = cell(augment="jitter", loss="focal_2.0")
    first, again = train_cell(c, features, seed=7, fixed=FAST), train_cell(c, features, seed=7, fixed=FAST)
    other = train_cell(c, features, seed=8, fixed=FAST)
    assert first.metrics == again.metrics  # exactly, on CPU
    assert first.metrics != other.metrics
    assert list(first.metrics) == list(METRIC_KEYS)
    assert isinstance(first, TrainResult) and first.seed == 7 and first.group_size == 1
    assert first.params > 0 and first.train_seconds > 0 and first.eval_seconds > 0 and first.device == "cpu"


def test_training_leaves_the_global_rng_alone(features):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_cell(cell(), features, seed=1, fixed={"epochs": 1})
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("encoder", ["meanpool_mlp", "gru"])
def test_a_cell_in_a_batch_trains_exactly_as_alone(features, encoder):
    # Tolerance: none. On CPU the vectorised group of 3 reproduces each model's metrics bit for bit
    # (own init, batch order, jitter offsets and noise come from the model's own seed).
    cells = [cell(encoder=encoder), cell(encoder=encoder, lr=0.01, loss="focal_2.0", augment="jitter"),
             cell(encoder=encoder, lr=0.0003, loss="focal_1.0")]
    seeds = [11, 12, 13]
    together = train_batch(cells, features, seeds, fixed=FAST)
    assert all(r.group_size == 3 for r in together)
    for c, s, r in zip(cells, seeds, together):
        alone = train_cell(c, features, s, fixed=FAST)
        assert alone.metrics == r.metrics


def test_a_head_learns_a_separable_sequence_task():
    fs = synthetic(signal=2.0, seed=3)
    result = train_cell(cell(lr=0.003, batch_size=16), fs, seed=0, fixed={"epochs": 20})
    assert result.metrics["val_ap"] > 0.95, result.metrics
    assert result.metrics["test_ap"] > 0.9, result.metrics
    chance = train_cell(cell(), synthetic(signal=0.0, seed=3), seed=0, fixed={"epochs": 20})
    assert chance.metrics["val_ap"] < 0.8, chance.metrics  # no signal, no skill: the metric can fail


def test_nan_in_one_model_does_not_poison_the_others(features):
    good = [cell(lr=0.001), cell(lr=0.003, augment="jitter")]
    poisoned = raw_cell(lr=1e30)  # AdamW moves every weight by ~lr: overflow, then NaN
    mixed = train_batch([good[0], poisoned, good[1]], features, [1, 2, 3], fixed=FAST)
    clean = train_batch(good, features, [1, 3], fixed=FAST)
    assert isinstance(mixed[1], NaNLossError) and mixed[1].cell is poisoned
    assert "non-finite" in str(mixed[1]) and "\n" not in str(mixed[1])
    for together, apart in zip([mixed[0], mixed[2]], clean):
        assert isinstance(together, TrainResult) and together.metrics == apart.metrics


def test_every_model_failing_stops_early(features):
    results = train_batch([raw_cell(lr=1e30), raw_cell(lr=1e32)], features, [1, 2], fixed={"epochs": 50})
    assert all(isinstance(r, NaNLossError) and "epoch 1," in str(r) for r in results)


def test_a_window_longer_than_the_cache_is_a_shape_error():
    short = synthetic(steps=12)  # 3 s at 4 Hz
    results = train_batch([cell(window_s=3.0), cell(window_s=1.0)], short, [0, 0], fixed={"epochs": 1})
    assert isinstance(results[0], ShapeError), results[0]
    message = str(results[0])
    assert "window_s=3.0" in message and "12" in message and "cell" in message and "\n" not in message
    assert isinstance(results[1], TrainResult)  # the rest goes on
    with pytest.raises(ShapeError):
        train_cell(cell(window_s=3.0), short, seed=0)


def test_a_cell_that_cannot_train_fails_alone_not_its_group(features):
    # window and batch size no longer split groups, so a bad value must not fail the cells beside it
    bad = [raw_cell(batch_size=0), raw_cell(batch_size=12.5), raw_cell(window_s=30.0)]
    results = train_batch([cell(), *bad, cell(lr=0.01)], features, [1, 2, 3, 4, 5], fixed={"epochs": 1})
    assert isinstance(results[0], TrainResult) and isinstance(results[4], TrainResult)
    assert results[0].group_size == results[4].group_size == 2
    assert [type(r) for r in results[1:4]] == [ShapeError] * 3
    assert "batch_size=0 " in str(results[1]) and "batch_size=12.5 " in str(results[2])
    assert "window_s=30.0" in str(results[3])


def test_a_cell_with_an_impossible_value_fails_alone_with_one_line(features):
    # a custom space may hold any string or number: window 0, -3 or "abc" trained as a 1-step window
    # recorded ok or failed the whole group; a bad lr, loss or augment failed the group or trained as none
    bad = [raw_cell(window_s=0), raw_cell(window_s=-3.0), raw_cell(window_s="abc"), raw_cell(window_s=float("inf")),
           raw_cell(lr=-1.0), raw_cell(lr=float("nan")), raw_cell(loss="hinge"), raw_cell(augment="flip")]
    results = train_batch([cell(), *bad, cell(lr=0.01)], features, list(range(len(bad) + 2)), fixed={"epochs": 1})
    assert isinstance(results[0], TrainResult) and isinstance(results[-1], TrainResult)
    assert results[0].group_size == 2
    for c, r in zip(bad, results[1:-1]):
        assert isinstance(r, TrainingError) and not isinstance(r, TrainResult) and r.cell is c, r
        assert "\n" not in str(r)
    assert [type(r) for r in results[1:5]] == [ShapeError] * 4 and "window_s=0 " in str(results[1])
    assert "lr=-1.0 " in str(results[5]) and "'hinge'" in str(results[7]) and "'flip'" in str(results[8])


def test_a_bad_batch_size_in_a_split_group_does_not_crash_the_batch(features):
    # more cells of one shape than max_models sorts them by window and batch size: a value that is
    # not a number raised out of train_batch, failing every cell of the call
    results = train_batch([cell(), raw_cell(batch_size="x"), raw_cell(batch_size=None)], features, [1, 2, 3],
                          fixed={"epochs": 1}, max_models=1)
    assert isinstance(results[0], TrainResult)
    assert [type(r) for r in results[1:]] == [ShapeError, ShapeError]


def test_a_batch_larger_than_the_training_set_is_the_whole_set(features):
    # 1e30 overflowed int64 and failed its whole group; 10**30 was "not a whole number"
    huge = [raw_cell(batch_size=1e30), raw_cell(batch_size=10**30), raw_cell(batch_size=1000)]
    results = train_batch([cell(), *huge], features, [1, 2, 2, 2], fixed={"epochs": 1})
    assert all(isinstance(r, TrainResult) and r.group_size == 4 for r in results), results
    assert results[1].metrics == results[2].metrics == results[3].metrics  # one full batch each, same seed


def test_missing_features_are_named(features):
    other = synthetic(backbone="pixels")
    (wrong,) = train_batch([cell()], other, [0], fixed={"epochs": 1})
    assert isinstance(wrong, MissingFeaturesError) and "'pixels'" in str(wrong) and "'vjepa2_vitl'" in str(wrong)
    no_pos = synthetic()
    no_pos.y[torch.as_tensor(no_pos.split == "val")] = 0.0
    (one_class,) = train_batch([cell()], no_pos, [0], fixed={"epochs": 1})
    assert isinstance(one_class, MissingFeaturesError) and "val split" in str(one_class)


class _WrongShape(nn.Module):
    def __init__(self, in_dim):
        super().__init__()
        self.lin = nn.Linear(in_dim, 1)

    def forward(self, x):  # (B, T, D) -> (B, 1): the bug
        return self.lin(x.mean(1))


class _Broken(_WrongShape):
    def forward(self, x):
        raise RuntimeError("boom in forward")


def test_clips_too_short_for_every_horizon_are_missing_features_not_nan(features):
    # no video has 0.5 s of history: nothing trained, evaluation undefined, and the error said
    # NaNLossError, which the campaign healed by lowering lr again and again
    short = dataclasses.replace(features, real_s=torch.full((features.x.shape[0],), 0.2))
    results = train_batch([cell(), cell(augment="jitter")], short, [1, 2], fixed={"epochs": 1})
    assert all(type(r) is MissingFeaturesError and "too short" in str(r) for r in results), results


def test_a_head_with_the_wrong_output_shape_or_a_crash_is_reported(features, monkeypatch):
    monkeypatch.setattr(train_module, "create_head", lambda enc, size, in_dim: _WrongShape(in_dim))
    (shape,) = train_batch([cell()], features, [0], fixed={"epochs": 1})
    assert isinstance(shape, ShapeError) and "shape (2, 1)" in str(shape)
    monkeypatch.setattr(train_module, "create_head", lambda enc, size, in_dim: _Broken(in_dim))
    results = train_batch([cell(), cell(lr=0.01)], features, [0, 1], fixed={"epochs": 1})
    for r in results:
        assert type(r) is TrainingError and r.error_class == "RuntimeError"
        assert "boom in forward" in str(r) and "boom in forward" in r.traceback


def test_out_of_memory_splits_the_group_then_reports_the_cell(features, monkeypatch):
    real = train_module._train_group
    calls = []

    def oom_unless_alone(cells, *args):
        calls.append(len(cells))
        if len(cells) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cells, *args)

    monkeypatch.setattr(train_module, "_train_group", oom_unless_alone)
    cells = [cell(), cell(lr=0.01), cell(lr=0.001)]
    results = train_batch(cells, features, [1, 2, 3], fixed={"epochs": 1})
    assert calls == [3, 1, 2, 1, 1]
    assert all(isinstance(r, TrainResult) and r.group_size == 1 for r in results)

    def always_oom(cells, *args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_module, "_train_group", always_oom)
    results = train_batch(cells[:2], features, [1, 2], fixed={"epochs": 1})
    assert [type(r) for r in results] == [OOMError, OOMError]
    assert [r.cell for r in results] == cells[:2] and "batch_size=16" in str(results[0])


def test_errors_are_one_line_and_pickle():
    c = cell()
    err = NaNLossError(c, "loss became\nNaN")
    assert str(err).startswith("NaNLossError: loss became NaN [cell") and "\n" not in str(err)
    assert err.cell is c and err.error_class == "NaNLossError"
    back = pickle.loads(pickle.dumps(TrainingError(c, "x", error_class="KeyError", traceback="tb")))
    assert back.error_class == "KeyError" and back.traceback == "tb" and back.cell == c
    assert issubclass(OOMError, TrainingError) and issubclass(MissingFeaturesError, TrainingError)


def test_group_cells_groups_by_head_shape_and_chunks():
    # window and batch size no longer split a group (padded windows, chunked batches); a key
    # larger than max_models is cut in (window, batch size) order, so the cuts pad the least
    cells = [cell(), cell(lr=0.01), cell(window_s=1.0), cell(loss="focal_3.0", augment="jitter"),
             cell(encoder="gru"), cell(batch_size=32), cell(size="medium"), cell(backbone="pixels")]
    assert group_cells(cells) == [[0, 1, 2, 3, 5], [4], [6], [7]]
    assert group_cells(cells, max_models=2) == [[2, 0], [1, 3], [5], [4], [6], [7]]
    assert shape_key(cells[0]) == shape_key(cells[2]) == shape_key(cells[5]) != shape_key(cells[4])
    assert group_cells([]) == []


# Tolerance for a cell trained in a group of other windows / batch sizes vs alone: the masked
# padding and the chunked gradient sums change float rounding only (summation order), nothing else.
GROUP_TOL = dict(rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("encoder", ["meanpool_mlp", "gru", "transformer", "zipformer"])
def test_cells_of_different_windows_and_batch_sizes_train_together_as_alone(features, encoder):
    cells = [cell(encoder=encoder, window_s=1.0, batch_size=16),
             cell(encoder=encoder, window_s=3.0, batch_size=64, lr=0.01, loss="focal_2.0", augment="jitter"),
             cell(encoder=encoder, window_s=2.0, batch_size=32, augment="jitter"),
             cell(encoder=encoder, window_s=3.0, batch_size=16, lr=0.0003)]
    seeds = [21, 22, 23, 24]
    together = train_batch(cells, features, seeds, fixed=FAST)
    assert [r.group_size for r in together] == [4] * 4  # one group, not four
    for c, s, r in zip(cells, seeds, together):
        alone = train_cell(c, features, s, fixed=FAST)
        assert alone.group_size == 1
        assert r.metrics == pytest.approx(alone.metrics, **GROUP_TOL), (c.values, r.metrics, alone.metrics)


def test_mixed_windows_and_batches_train_as_alone_on_short_clips():
    # short clips (left-padded history) and shorter windows padded to the group's longest: both masks
    fs = synthetic(signal=0.6, seed=5)
    first_real = torch.zeros(fs.x.shape[0], dtype=torch.long)
    first_real[::3] = 10  # a third of the videos have 13 of 23 steps of real history
    fs = dataclasses.replace(fs, real_s=(fs.x.shape[1] - 1 - first_real) / fs.step_hz)
    assert fs.padded
    cells = [cell(encoder="gru", window_s=4.0, batch_size=32), cell(encoder="gru", window_s=1.5, batch_size=16,
                                                                     augment="jitter")]
    together = train_batch(cells, fs, [3, 4], fixed=FAST)
    assert [r.group_size for r in together] == [2, 2]
    for c, s, r in zip(cells, [3, 4], together):
        assert r.metrics == pytest.approx(train_cell(c, fs, s, fixed=FAST).metrics, **GROUP_TOL)


def test_a_nan_in_a_group_of_batch_sizes_names_the_models_own_step(features):
    # batch 64 in a group chunked by 16: its first step is chunks 1-4, so it fails at its step 1
    results = train_batch([raw_cell(lr=1e30, batch_size=64), cell(batch_size=16)], features, [1, 2],
                          fixed={"epochs": 3})
    assert isinstance(results[0], NaNLossError) and isinstance(results[1], TrainResult)
    assert results[1].group_size == 2
    assert "epoch 1, step 1 " in str(results[0]) or "epoch 1, step 2 " in str(results[0]), str(results[0])


@pytest.mark.parametrize("case", ["one stops", "different times"])
def test_stacked_adamw_matches_torch_adamw(case):
    # "one stops": model 1 stops after 3 steps and must not move, even on a NaN gradient.
    # "different times": model 1 steps every other call (a batch twice as long, chunked): it
    # follows its own torch AdamW, bias correction by its own step count, state untouched between.
    torch.manual_seed(0)
    lrs = [0.01, 0.1]
    flat = torch.randn(2, 5)
    reference = [flat[m].clone().requires_grad_(True) for m in range(2)]
    optims = [torch.optim.AdamW([p], lr=lr, weight_decay=0.01) for p, lr in zip(reference, lrs)]
    stacked = StackedAdamW(flat, torch.tensor(lrs), weight_decay=0.01)
    for step in range(8):
        grad = torch.randn(2, 5)
        active = torch.tensor([True, step < 3 if case == "one stops" else step % 2 == 1])
        if case == "one stops" and not active[1]:
            grad[1] = float("nan")
        frozen = flat[1].clone()
        stacked.step(grad, active)
        for m in range(2):
            if active[m]:
                reference[m].grad = grad[m].clone()
                optims[m].step()
        assert torch.allclose(flat[0], reference[0].detach(), atol=1e-6)
        if active[1]:
            assert torch.allclose(flat[1], reference[1].detach(), atol=1e-6), step
        else:
            assert torch.equal(flat[1], frozen)
    assert stacked.steps.flatten().tolist() == [8, 3 if case == "one stops" else 4]


@pytest.mark.parametrize("encoder", list_encoders())
def test_every_registered_encoder_trains_batched(encoder, features):
    cells = [cell(encoder=encoder, window_s=1.0, batch_size=32),
             cell(encoder=encoder, window_s=1.0, batch_size=32, lr=0.01, loss="focal_2.5", augment="jitter")]
    results = train_batch(cells, features, [0, 1], fixed={"epochs": 1})
    for r in results:
        assert isinstance(r, TrainResult), str(r)
        assert r.group_size == 2 and r.params > 0
        assert list(r.metrics) == list(METRIC_KEYS) and all(math.isfinite(v) for v in r.metrics.values())
