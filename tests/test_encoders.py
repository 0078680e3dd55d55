"""Contract tests for every registered temporal encoder (generated from the registry, like timm's),
plus the equivalence checks of the encoders that have two forms (Mamba scan, RetNet retention, GRU).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.testing import assert_close

from crashsearch.models.registry import SIZES, create_head, list_encoders

D = 24  # small feature size keeps the whole file fast on a 2-core CPU
ENCODERS = list_encoders()
SIZE_NAMES = list(SIZES)
ORDER_BLIND = {"meanpool_mlp"}  # baselines that are meant to ignore the order of the steps


def _head(name: str, size: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_head(name, size, D)


def test_registry_has_every_space_encoder():
    from crashsearch.lab.space import Space

    assert set(Space.load().axis("encoder").values) <= set(ENCODERS)


@pytest.mark.parametrize("size", SIZE_NAMES)
@pytest.mark.parametrize("name", ENCODERS)
def test_forward_backward_any_length(name, size):
    head = _head(name, size)
    for batch, steps in [(1, 1), (3, 5), (2, 7), (2, 16)]:
        head.zero_grad(set_to_none=True)
        x = torch.randn(batch, steps, D)
        x_before = x.clone()
        y = head(x)
        assert y.shape == (batch,) and y.dtype == torch.float32, f"{name}: output {tuple(y.shape)} {y.dtype}"
        assert torch.isfinite(y).all(), f"{name}: non-finite logits at T={steps}"
        assert torch.equal(x, x_before), f"{name} modified its input in place"
        torch.nn.functional.binary_cross_entropy_with_logits(y, torch.ones_like(y)).backward()
        for pname, p in head.named_parameters():
            assert p.grad is not None, f"{name}/{size} T={steps}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}/{size} T={steps}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ENCODERS)
def test_samples_are_independent_and_order_matters(name):
    head = _head(name, "small")
    x = torch.randn(4, 6, D)
    with torch.no_grad():
        y = head(x)
        # each sample's logit depends only on that sample (no mixing across the batch)
        assert_close(head(x[1:2]), y[1:2], atol=1e-5, rtol=1e-5)
        if name not in ORDER_BLIND:
            assert not torch.allclose(head(x.flip(1)), y, atol=1e-4), f"{name} ignores the order of the steps"


@pytest.mark.parametrize("name", ENCODERS)
def test_parameter_count_grows_with_size(name):
    counts = [sum(p.numel() for p in _head(name, size).parameters()) for size in SIZE_NAMES]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"{name}: {dict(zip(SIZE_NAMES, counts))}"


@pytest.mark.parametrize("name", ENCODERS)
def test_built_from_vmap_safe_parts(name):
    """No fused recurrent/attention kernels, no running statistics, no dropout, no buffer updates."""
    unsafe = (torch.nn.RNNBase, torch.nn.MultiheadAttention, torch.nn.modules.batchnorm._NormBase, torch.nn.Dropout)
    head = _head(name, "medium").train()
    found = [type(m).__name__ for m in head.modules() if isinstance(m, unsafe)]
    assert not found, f"{name} uses {found}"
    before = {k: v.clone() for k, v in head.named_buffers()}
    head(torch.randn(2, 5, D))
    for key, value in head.named_buffers():
        assert torch.equal(value, before[key]), f"{name} changes buffer {key} in forward"


@pytest.mark.parametrize("size", SIZE_NAMES)
@pytest.mark.parametrize("name", ENCODERS)
def test_vmap_over_stacked_models_matches_loop(name, size):
    """The trainer stacks M copies with torch.func; results and gradients must equal a plain loop."""
    models = [_head(name, size, seed) for seed in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    x = torch.randn(len(models), 2, 6, D)  # (M, B, T, D); T=6 is odd after Zipformer's first halving
    with warnings.catch_warnings():
        # a missing batching rule falls back to a slow per-model loop and says so in this warning
        warnings.filterwarnings("error", message=".*performance drop.*")
        stacked = vmap(call)(params, buffers, x)  # (M, B)
        with torch.no_grad():  # evaluation feeds every model the same windows: x is not batched
            shared = vmap(call, in_dims=(0, 0, None))(params, buffers, x[0, :, :5])  # and an odd T
    looped = torch.stack([m(x[i]) for i, m in enumerate(models)])
    assert_close(stacked, looped, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert_close(shared, torch.stack([m(x[0, :, :5]) for m in models]), atol=1e-5, rtol=1e-5)

    stacked.pow(2).sum().backward()
    looped.pow(2).sum().backward()
    for pname, p in params.items():
        expected = torch.stack([dict(m.named_parameters())[pname].grad for m in models])
        assert_close(p.grad, expected, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}/{size} grad of {pname}: {m}")


# ---- the time mask (models.mask): padding is invisible -----------------------------------------

MASK_TOL = dict(atol=1e-5, rtol=1e-5)  # float32 rounding: padding changes the order of a few sums


def _left_padded(lengths: list[int], steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (B, steps, D) whose row b is real on its last lengths[b] steps; the padding is garbage."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), steps, D, generator=gen)
    mask = torch.arange(steps)[None, :] >= (steps - torch.tensor(lengths))[:, None]
    x = torch.where(mask[..., None], x, 50 * torch.randn(x.shape, generator=gen))
    padded_row = min(b for b, n in enumerate(lengths) if n < steps)
    x[padded_row, 0] = float("nan")  # padding is never read, whatever it holds
    return x, mask


@pytest.mark.parametrize("size", SIZE_NAMES)
@pytest.mark.parametrize("name", ENCODERS)
def test_left_padding_with_its_mask_gives_the_unpadded_logits(name, size):
    """Short clips and shorter windows in one group: rows of different real lengths in one batch."""
    head = _head(name, size)
    steps, lengths = 12, [7, 3, 12, 1, 5, 8]
    x, mask = _left_padded(lengths, steps)
    with torch.no_grad():
        padded = head(x, mask)
        assert torch.isfinite(padded).all(), f"{name}: padding leaked into the logits"
        for b, n in enumerate(lengths):
            alone = head(x[b:b + 1, steps - n:])
            assert_close(padded[b:b + 1], alone, **MASK_TOL, msg=lambda m: f"{name}/{size} real length {n}: {m}")
        full = x[2:3]  # the row without padding: an all-True mask is no mask
        assert_close(head(full, torch.ones(1, steps, dtype=torch.bool)), head(full), **MASK_TOL)


@pytest.mark.parametrize("name", ENCODERS)
def test_mask_trains_and_vmaps_like_the_loop(name):
    """The trainer's path: M stacked models, each with its own masked batch; gradients ignore padding."""
    models = [_head(name, "small", seed) for seed in range(2)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x0, m0 = _left_padded([6, 2, 4], 6, seed=2)
    x1, m1 = _left_padded([1, 6, 3], 6, seed=3)
    x, mask = torch.stack([x0, x1]), torch.stack([m0, m1])  # (M, B, T, D), (M, B, T)

    def call(p, b, x, mask):
        return functional_call(base, (p, b), (x, mask))

    stacked = vmap(call)(params, buffers, x, mask)
    looped = torch.stack([m(x[i], mask[i]) for i, m in enumerate(models)])
    assert_close(stacked, looped, **MASK_TOL)
    stacked.pow(2).sum().backward()
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: gradient of {pname} not finite"
    with torch.no_grad():  # an all-padding row is meaningless but must not be NaN
        assert torch.isfinite(models[0](x0[:1], torch.zeros(1, 6, dtype=torch.bool))).all()


def test_retention_recurrent_form_reads_the_mask_too():
    head = _head("retention", "medium")
    x, mask = _left_padded([7, 2], 7)
    with torch.no_grad():
        assert_close(head(x, mask), head(x, mask, recurrent=True), **MASK_TOL)


# ---- the encoders with two equivalent forms ---------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 5, 7, 16])
def test_mamba_parallel_scan_matches_sequential_loop(steps):
    from crashsearch.models.mamba import selective_scan, selective_scan_ref

    torch.manual_seed(steps)
    b, e, n = 2, 6, 4
    x = torch.randn(b, steps, e, requires_grad=True)
    delta = torch.nn.functional.softplus(torch.randn(b, steps, e))
    A = -torch.rand(e, n) * 3
    B, C = torch.randn(b, steps, n), torch.randn(b, steps, n)
    Dskip = torch.randn(e)
    for h0 in (None, torch.randn(b, e, n)):
        fast = selective_scan(x, delta, A, B, C, Dskip, h0)
        ref = selective_scan_ref(x, delta, A, B, C, Dskip, h0)
        assert fast.shape == (b, steps, e)
        assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        (g_fast,) = torch.autograd.grad(fast.sum(), x)
        (g_ref,) = torch.autograd.grad(ref.sum(), x)
        assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_mamba_scan_is_causal():
    from crashsearch.models.mamba import selective_scan

    torch.manual_seed(0)
    x, delta = torch.randn(1, 8, 3), torch.rand(1, 8, 3)
    A, B, C, Dskip = -torch.rand(3, 4), torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.ones(3)
    y = selective_scan(x, delta, A, B, C, Dskip)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # change only the future of step 4
    y2 = selective_scan(x2, delta, A, B, C, Dskip)
    assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


@pytest.mark.parametrize("steps", [1, 5, 16])
def test_retention_parallel_matches_recurrent(steps):
    from crashsearch.models.retention import retention_parallel, retention_recurrent

    torch.manual_seed(steps)
    gamma = torch.tensor([0.5, 0.9, 0.99])
    q, k, v = torch.randn(2, 3, steps, 4), torch.randn(2, 3, steps, 4), torch.randn(2, 3, steps, 6)
    assert_close(retention_parallel(q, k, v, gamma), retention_recurrent(q, k, v, gamma), atol=1e-5, rtol=1e-5)


def test_retention_head_parallel_matches_recurrent():
    head = _head("retention", "medium")
    x = torch.randn(2, 7, D)
    assert_close(head(x), head(x, recurrent=True), atol=1e-5, rtol=1e-5)


def test_gru_matches_torch_gru():
    from crashsearch.models.gru import GRUHead

    head = _head("gru", "medium")
    assert isinstance(head, GRUHead)
    width, depth = SIZES["medium"].width, SIZES["medium"].depth
    ref = torch.nn.GRU(D, width, num_layers=depth, batch_first=True)
    with torch.no_grad():
        for i, layer in enumerate(head.layers):
            getattr(ref, f"weight_ih_l{i}").copy_(layer.input_gates.weight)
            getattr(ref, f"bias_ih_l{i}").copy_(layer.input_gates.bias)
            getattr(ref, f"weight_hh_l{i}").copy_(layer.hidden_gates.weight)
            getattr(ref, f"bias_hh_l{i}").copy_(layer.hidden_gates.bias)
        x = torch.randn(3, 7, D)
        seq = x
        for layer in head.layers:
            seq = layer(seq)
        expected, _ = ref(x)
    assert_close(seq, expected, atol=1e-5, rtol=1e-5)


def test_zipformer_pieces():
    from crashsearch.models.zipformer import BiasNorm, stack_factors, swoosh_r

    assert stack_factors(1) == [1, 2]
    assert stack_factors(3) == [1, 2, 4, 8, 4, 2]
    assert abs(swoosh_r(torch.zeros(())).item()) < 1e-6  # the constant makes SwooshR(0) = 0
    norm = BiasNorm(5)
    x = torch.randn(3, 5)
    with torch.no_grad():
        norm.bias.fill_(0.5)
        norm.log_scale.fill_(0.3)
    expected = x / torch.sqrt(((x - 0.5) ** 2).mean(-1, keepdim=True)) * torch.exp(torch.tensor(0.3))
    assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_stacked_heads_pass_the_mask_through():
    """tasks.train.StackedHeads (the trainer's vectorised models) hands the mask to every head."""
    from crashsearch.tasks.train import StackedHeads

    models = [_head("transformer", "small", seed) for seed in range(3)]
    stacked = StackedHeads(models, torch.device("cpu"))
    x, mask = _left_padded([5, 2], 5, seed=4)
    expected = torch.stack([m.eval()(x, mask) for m in models]).detach()
    assert_close(stacked.score(x, mask), expected, **MASK_TOL)
    trained = stacked.forward(x.expand(3, -1, -1, -1), mask.expand(3, -1, -1))
    assert_close(trained.detach(), expected, **MASK_TOL)
