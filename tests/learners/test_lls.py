"""LLS's own properties (docs/lls.md; the spec's "Testable properties"). The contract suite runs too."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners._lls_basis import periodic_basis
from learners.base import DataInfo
from learners.lls import LocalHead, pool_activity
from networks import NetworkSpec, build, get_preset

TINY_CONV = NetworkSpec(kind="convnet", channels=(4, 6), pool=(2, 1), adaptive_pool=2, widths=(12,),
                        batch_norm=True, activation="leaky_relu")


def _state(variant="lls", spec=None, input_shape=(8,), n_classes=3, seed=0, **params):
    learner = make_learner("lls", variant=variant, **params)
    spec = (spec or get_preset("mlp_small")).resolve(input_shape, n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=n_classes, n_train=64, batch_size=16,
                    steps_per_epoch=4, n_epochs=2)
    return learner, learner.init(build(spec, seed), info, seed)


def _batch(input_shape=(8,), n_classes=3, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *input_shape), generator=gen), torch.randint(0, n_classes, (n,), generator=gen)


def _extra_parameters(state) -> int:
    return sum(p.numel() for p in state.heads.parameters() if p.requires_grad)


# ------------------------------------------------------------------ parameters added by each variant

@pytest.mark.parametrize("spec,shape", [(None, (8,)), (TINY_CONV, (1, 12, 12))])
def test_extra_parameter_counts(spec, shape):
    C, R = 3, 5
    n_blocks = (spec or get_preset("mlp_small")).n_blocks
    counts = {v: _extra_parameters(_state(v, spec, shape, C, reduced_rows=R)[1])
              for v in ("lls", "lls_m", "lls_mxm", "lls_mxm_reduced", "random_basis")}
    assert counts == {"lls": 0, "lls_m": C * n_blocks, "lls_mxm": C * C * n_blocks,
                      "lls_mxm_reduced": R * C * n_blocks, "random_basis": 0}
    _, state = _state("local_classifier", spec, shape, C)
    dims = [h.learnable.shape[1] for h in state.heads]
    assert _extra_parameters(state) == C * sum(dims)


def test_fit_reports_the_network_plus_modulation_parameters():
    data = load_dataset("blobs", seed=0, n_train=64, n_test=32)
    loop = LoopConfig(n_epochs=1, progress=False, count_flops=False)
    n = {v: fit(make_learner("lls", variant=v), "mlp_small", data, loop=loop).results.attrs["n_parameters"]
         for v in ("lls", "lls_mxm")}
    C = data.n_classes
    assert n["lls_mxm"] - n["lls"] == 2 * C * C


# ------------------------------------------------------------------------------ the fixed basis

@pytest.mark.parametrize("waveform", ["sin", "square", "dct"])
def test_basis_is_deterministic_and_never_a_parameter(waveform):
    a = periodic_basis(10, 300, waveform)
    b = periodic_basis(10, 300, waveform)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()   # bit-identical copies of the cache
    learner, state = _state("lls", waveform=waveform)
    head = state.heads[0]
    assert head.basis.requires_grad is False
    assert not any(p is head.basis for p in state.network.parameters())
    assert not any(p is head.basis for p in head.parameters())
    before = head.basis.clone()
    for _ in range(3):
        learner.update(state, _batch())
    assert head.basis.grad is None and torch.equal(head.basis, before)


def test_sin_basis_matches_the_reference_formula_by_hand():
    B = periodic_basis(4, 50, "sin", min_freq=50, max_freq=512)
    freqs = [50 + c * (512 - 50) / 3 for c in range(4)]
    for c in range(4):
        for t in (0, 1, 2, 7, 49):
            # float32 phase f*t, as the reference computes it
            phase = float(np.float32(freqs[c]) * np.float32(t))
            assert B[c, t].item() == pytest.approx(math.sin(phase), abs=1e-5)


def test_dct_basis_by_hand():
    B = periodic_basis(3, 20, "dct", min_freq=1, max_freq=3)
    for c, f in enumerate((1.0, 2.0, 3.0)):
        for t in (0, 5, 19):
            assert B[c, t].item() == pytest.approx(math.cos(math.pi * f * (t + 0.5) / 20), abs=1e-6)


def test_square_basis_values_and_the_zero_first_column():
    sq, sn = periodic_basis(10, 2048, "square"), periodic_basis(10, 2048, "sin")
    assert set(sq.unique().tolist()) == {-1.0, 0.0, 1.0}
    for B in (sq, sn):
        assert torch.all(B[:, 0] == 0)            # sin(f * 0) = 0: the reference's quirk
        assert torch.all(B[:, 1:] != 0)           # ... and the only zeros
    assert torch.equal(sq, torch.sign(sn))


def test_unknown_waveform_is_a_clear_error():
    with pytest.raises(ConfigError, match="waveform='cosine'.*sin, square, dct"):
        periodic_basis(3, 4, "cosine")


# --------------------------------------------------------------------- local logits and pooling

def test_normalised_activity_bounds_the_logits():
    C, D, tau = 10, 64, 0.5
    head = LocalHead("lls", periodic_basis(C, D, "sin"), None, tau)
    u = torch.randn(200, D) * 50
    logits = head(u)
    bound = periodic_basis(C, D, "sin").norm(dim=1) / tau
    assert torch.all(logits.abs() <= bound + 1e-5)
    # the bound is reached when the activity points along a basis row
    row = periodic_basis(C, D, "sin")[3]
    assert head(row[None] * 7.0)[0, 3].item() == pytest.approx(bound[3].item(), rel=1e-5)
    assert torch.allclose(F.normalize(u, dim=1).norm(dim=1), torch.ones(200))


def test_random_and_local_classifier_do_not_normalise():
    u = torch.randn(5, 8)
    W = torch.randn(3, 8)
    assert torch.allclose(LocalHead("random_basis", W, None, 0.5)(u), u @ W.T / 0.5)
    assert torch.allclose(LocalHead("local_classifier", None, W.clone(), 1.0)(u), u @ W.T)
    assert torch.allclose(LocalHead("lls", W, None, 1.0)(u), F.normalize(u, dim=1) @ W.T)


def test_modulated_logits_by_hand():
    B, u = torch.randn(3, 8), torch.randn(4, 8)
    m, M = torch.randn(3), torch.randn(3, 3)
    z = F.normalize(u, dim=1) @ B.T
    assert torch.allclose(LocalHead("lls_m", B, m.clone(), 0.5)(u), m * z / 0.5)
    assert torch.allclose(LocalHead("lls_mxm", B, M.clone(), 0.5)(u), z @ M / 0.5)


@pytest.mark.parametrize("shape,size", [((3, 5, 28, 28), 4), ((3, 5, 14, 12), 2), ((3, 5, 7, 7), 2),
                                        ((2, 4, 5, 7), 3), ((2, 3, 2, 2), 4)])
def test_pooling_equals_adaptive_average_pooling(shape, size):
    a = torch.randn(shape, requires_grad=True)
    expected = F.adaptive_avg_pool2d(a, size).flatten(1)
    g = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, a, g)
    for layout in (torch.contiguous_format, torch.channels_last):   # the matmul and the reshape-sum paths
        x = a.detach().contiguous(memory_format=layout).requires_grad_(True)
        u = pool_activity(x, size)
        torch.testing.assert_close(u, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(u, x, g)[0], expected_grad, rtol=1e-5, atol=1e-6)


def test_linear_pooling_identity_and_the_smallconvl_upsampling():
    a = torch.randn(4, 6)
    assert torch.equal(pool_activity(a, 0), a)
    # SmallConvL's linear block: 1024 features "pooled" to 2048 repeats each feature twice
    assert torch.equal(pool_activity(a, 12), a.repeat_interleave(2, dim=1))


def test_smallconv_local_dimensions_follow_the_reference():
    """D = C_out * s^2 on the activity before the block's max pooling: 32*16, 64*4, 128*4, then 512."""
    _, state = _state("lls", get_preset("smallconv"), (1, 28, 28), 10)
    assert [h.basis.shape[1] for h in state.heads] == [32 * 16, 64 * 4, 128 * 4, 512]
    assert state.pool_sizes == [4, 2, 2, 0]


# ----------------------------------------------------------------------------- locality

@pytest.mark.parametrize("variant", ["lls", "lls_mxm", "local_classifier"])
def test_no_gradient_crosses_blocks(variant):
    learner, state = _state(variant, TINY_CONV, (1, 12, 12))
    x, y = _batch((1, 12, 12))
    per_block = learner.block_parameters(state)
    h, losses = x, []
    for i in range(state.network.n_blocks):
        out, logits = learner.local_logits(state, i, h.detach())
        losses.append(F.cross_entropy(logits, y))
        h = out
    for l, loss in enumerate(losses):
        for k, params in enumerate(per_block):
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            if k == l:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or not g.any() for g in grads), (l, k)


def test_block_outputs_passed_on_are_detached():
    learner, state = _state("lls", TINY_CONV, (1, 12, 12))
    x, y = _batch((1, 12, 12))
    h = x
    for i in range(state.network.n_blocks):
        h, _ = learner.update_block(state, i, h, (x, y))
        assert not h.requires_grad and h.grad_fn is None


def test_the_head_gradient_never_reaches_the_blocks():
    learner, state = _state("lls", TINY_CONV, (1, 12, 12))
    x, y = _batch((1, 12, 12))
    for p in state.network.parameters():
        p.grad = None
    h = state.network.forward_blocks(x)[-1]                    # features still attached to the blocks
    head_before = [p.detach().clone() for p in state.network.head.parameters()]
    learner.after_blocks(state, h, (x, y))
    assert all(p.grad is None for block in state.network.blocks for p in block.parameters())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(head_before, state.network.head.parameters()))


# ------------------------------------------------------------------------ learning and schedules

def test_local_losses_fall_and_the_head_beats_chance_in_one_epoch():
    data = load_dataset("blobs", seed=0, n_train=400, n_test=200)
    metrics = []
    learner, state = _state("lls", input_shape=data.input_shape, n_classes=data.n_classes)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for start in range(0, len(x), 16):
        state, m = learner.update(state, (x[start:start + 16], y[start:start + 16]))
        metrics.append(m)
    for i in range(2):
        first = np.mean([m[f"local_loss/{i}"] for m in metrics[:5]])
        last = np.mean([m[f"local_loss/{i}"] for m in metrics[-5:]])
        assert last < first, (i, first, last)
    train_acc = (learner.predict(state, x).argmax(1) == y).float().mean().item()
    assert train_acc > 1 / data.n_classes + 0.3


def test_same_seed_same_local_losses():
    runs = []
    for _ in range(2):
        learner, state = _state("lls_m", TINY_CONV, (1, 12, 12), seed=5)
        losses = []
        for step in range(3):
            state, m = learner.update(state, _batch((1, 12, 12), seed=step))
            losses.append([m[f"local_loss/{i}"] for i in range(3)])
        runs.append(losses)
    assert runs[0] == runs[1]


def test_greedy_equals_simultaneous_for_one_block():
    spec = NetworkSpec(kind="mlp", widths=(16,))
    outs = []
    for schedule in ("simultaneous", "greedy"):
        learner, state = _state("lls", spec, schedule=schedule)
        for step in range(6):
            learner.update(state, _batch(seed=step))
        outs.append(learner.predict(state, _batch(seed=99)[0]))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_greedy_trains_one_block_at_a_time():
    learner, state = _state("lls", schedule="greedy")   # 2 blocks, 8 steps: block 0 first, then block 1
    snapshot = lambda: [[p.detach().clone() for p in ps] for ps in learner.block_parameters(state)]
    changed = lambda a, b: [any(not torch.equal(p, q) for p, q in zip(pa, pb)) for pa, pb in zip(a, b)]
    start = snapshot()
    for step in range(4):
        learner.update(state, _batch(seed=step))
    middle = snapshot()
    assert changed(start, middle) == [True, False]
    for step in range(4):
        learner.update(state, _batch(seed=10 + step))
    assert changed(middle, snapshot()) == [False, True]


# ------------------------------------------------------------- schedule-free evaluation and BN refresh

def test_batch_norm_refresh_before_evaluation_with_schedule_free():
    learner, state = _state("lls", TINY_CONV, (1, 12, 12))
    for step in range(4):
        learner.update(state, _batch((1, 12, 12), seed=step))
    bn = state.network.blocks[0][1]
    mean_before = bn.running_mean.clone()
    weight_train_point = state.network.blocks[0][0].weight.detach().clone()
    learner.predict(state, _batch((1, 12, 12), seed=50)[0])
    assert not torch.equal(bn.running_mean, mean_before)
    assert not torch.equal(state.network.blocks[0][0].weight, weight_train_point)   # averaged weights
    learner.update(state, _batch((1, 12, 12), seed=7))                              # back to training


def test_plain_adamw_evaluates_the_weights_it_trains():
    learner, state = _state("lls", TINY_CONV, (1, 12, 12), optimizer={"name": "adamw", "lr": 1e-3})
    learner.update(state, _batch((1, 12, 12)))
    before = copy.deepcopy(state.network.state_dict())
    learner.predict(state, _batch((1, 12, 12), seed=50)[0])
    after = state.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # no weight swap, no BN refresh


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("params,match", [
    ({"variant": "lls_x"}, "lls.variant='lls_x'.*lls, lls_m, lls_mxm"),
    ({"schedule": "sometimes"}, "lls.schedule='sometimes'.*simultaneous, greedy"),
    ({"temperature": 0.0}, "lls.temperature=0.0 is out of range; allowed: > 0"),
    ({"conv_pool": 0}, "lls.conv_pool=0 is out of range; allowed: >= 1"),
    ({"optimizer": {"name": "adamw_schedulefree", "schedule": "cosine"}}, "replaces the schedule"),
])
def test_bad_hyperparameters_are_clear_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        _state(**params)
