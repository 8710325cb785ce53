"""Mono-forward: the testable properties of specs/mono_forward.md."""
from __future__ import annotations

import copy

import pytest
import torch

from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build, get_preset



def _state(widths=(32, 24, 16), n_inputs=20, n_classes=4, seed=0, n_epochs=2, steps=10, spec=None, **params):
    learner = make_learner("mono_forward", **params)
    spec = spec or NetworkSpec(kind="mlp", widths=widths, input_shape=(n_inputs,), n_classes=n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=n_classes, n_train=steps * 16, batch_size=16,
                    steps_per_epoch=steps, n_epochs=n_epochs)
    return learner, learner.init(build(spec, seed), info, seed)


def _batch(n=16, shape=(20,), n_classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def test_adds_n_classes_by_width_parameters_per_block_and_drops_the_head():
    data = load_dataset("blobs", seed=0, n_train=100, n_test=50, n_classes=4, dim=6)
    spec = get_preset("mlp_small").resolve(data.input_shape, data.n_classes)
    result = fit(make_learner("mono_forward"), spec, data, seed=0, loop=LoopConfig(n_epochs=1, progress=False, count_flops=False))
    projections = result.state.projections
    assert [tuple(m.shape) for m in projections] == [(4, 64), (4, 64)]
    blocks = sum(p.numel() for p in result.state.network.blocks.parameters())
    assert result.results.attrs["n_parameters"] == blocks + 4 * 64 + 4 * 64


def test_scores_have_shape_batch_by_classes():
    learner, state = _state()
    x, y = _batch()
    h = x
    for i in range(3):
        a, g, _ = learner.local_loss(state, i, h, y)
        assert g.shape == (16, 4)
        h = a.detach()


@pytest.mark.parametrize("i", [0, 1, 2])
def test_no_gradient_reaches_another_block(i):
    learner, state = _state()
    x, y = _batch()
    h = x
    for k in range(i):
        h = state.network.run_block(k, h)     # with grad: the rule itself must cut the graph
    _, _, loss = learner.local_loss(state, i, h, y)
    params = learner.block_parameters(state)
    for k, ps in enumerate(params):
        grads = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
        if k == i:
            assert all(g is not None for g in grads)
        else:
            assert all(g is None for g in grads), (i, k)


def test_prediction_reads_the_chosen_block_only():
    x, _ = _batch()
    base = {mode: _state(predict_from=mode) for mode in ("last", "sum", "block=1")}
    for mode, (learner, state) in base.items():
        ref = learner.predict(state, x)
        # the network's head is never used
        with torch.no_grad():
            state.network.head.weight.add_(1.0)
        torch.testing.assert_close(learner.predict(state, x), ref, rtol=0, atol=0)
        changed = {}
        for k in range(3):
            moved = copy.deepcopy(state)
            with torch.no_grad():
                moved.projections[k].add_(0.5)
            changed[k] = not torch.equal(learner.predict(moved, x), ref)
        expected = {"last": {0: False, 1: False, 2: True}, "sum": {0: True, 1: True, 2: True},
                    "block=1": {0: False, 1: True, 2: False}}[mode]
        assert changed == expected, mode
    # and the scores are a_L M_L^T
    learner, state = base["last"]
    a = state.network.forward_blocks(x)[-1]
    torch.testing.assert_close(learner.predict(state, x), a @ state.projections[2].t())


def test_one_forward_pass_per_block_per_step_and_no_label_in_the_input():
    learner, state = _state()
    calls = [0, 0, 0]
    inputs = []
    for i, block in enumerate(state.network.blocks):
        block.register_forward_hook(lambda m, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    state.network.blocks[0].register_forward_pre_hook(lambda m, inp: inputs.append(inp[0].clone()))
    x, y = _batch()
    learner.update(state, (x, y))
    assert calls == [1, 1, 1]
    torch.testing.assert_close(inputs[0], x, rtol=0, atol=0)


def test_learns_a_separable_toy_set_with_one_hidden_block():
    data = load_dataset("blobs", seed=0, n_train=500, n_test=200, n_classes=3, noise=0.5)
    learner = make_learner("mono_forward", optimizer={"name": "adam", "lr": 0.01})
    result = fit(learner, {"kind": "mlp", "widths": [32]}, data, seed=0,
                 loop=LoopConfig(n_epochs=3, progress=False, count_flops=False))
    assert float(result.results["accuracy"].sel(split="train")[-1]) >= 0.95


def test_greedy_schedule_trains_blocks_in_turn_and_matches_simultaneous_for_one_block():
    learner, state = _state(schedule="greedy", epochs_per_block=1, steps=2, n_epochs=3)
    x, y = _batch()
    snap = lambda s: [[p.detach().clone() for p in ps] for ps in learner.block_parameters(s)]
    for step in range(7):
        before = snap(state)
        state, metrics = learner.update(state, (x, y))
        after = snap(state)
        moved = [any(not torch.equal(a, b) for a, b in zip(pa, pb)) for pa, pb in zip(after, before)]
        expected_block = step // 2 if step < 6 else None
        assert moved == [k == expected_block for k in range(3)], (step, moved)
    assert state.schedule.done and metrics == {}
    finals = []
    for schedule in ("simultaneous", "greedy"):
        learner, state = _state(widths=(16,), schedule=schedule)
        for _ in range(5):
            state, _ = learner.update(state, (x, y))
        finals.append(learner.block_parameters(state)[0])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_greedy_early_stopping_on_the_validation_local_loss_moves_to_the_next_block():
    learner, state = _state(schedule="greedy", patience=2, epochs_per_block=100)
    x, y = _batch(n=64)
    schedule = state.schedule
    with torch.no_grad():
        # a frozen-looking block 0: its local loss cannot improve when nothing changes
        for _ in range(3):
            learner.block_metrics(state, x, y)
    assert schedule.current == 1 and schedule.phase_ends == [0]


def test_block_metrics_report_each_blocks_accuracy_and_loss():
    learner, state = _state()
    x, y = _batch(n=40)
    metrics = learner.block_metrics(state, x, y)
    assert len(metrics["eval_accuracy"]) == len(metrics["eval_loss"]) == 3
    _, g, loss = learner.local_loss(state, 0, x, y)
    assert metrics["eval_loss"][0] == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("features,width", [("pool", 8), ("flatten", 8 * 4 * 4)])
def test_convnet_projection_meets_the_feature_map(features, width):
    spec = NetworkSpec(kind="convnet", channels=(4, 8), pool=(2, 2), widths=(16,), input_shape=(1, 16, 16),
                       n_classes=4)
    learner, state = _state(spec=spec, conv_features=features)
    assert tuple(state.projections[1].shape) == (4, width)
    x, y = _batch(shape=(1, 16, 16))
    state, metrics = learner.update(state, (x, y))
    assert {"loss/0", "loss/1", "loss/2"} <= set(metrics)
    assert learner.predict(state, x).shape == (16, 4)


@pytest.mark.parametrize("value", ["block=3", "middle", "block=x"])
def test_bad_predict_from_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError, match=rf"predict_from={value!r}.*last, sum or block=k with k in 0..2"):
        _state(predict_from=value)


def test_fused_adam_gives_the_same_training_up_to_rounding():
    """optimizer.fused (the benchmark's fast setting) changes speed, not the rule."""
    x, y = _batch()
    finals = []
    for fused in (False, True):
        learner, state = _state(optimizer={"name": "adam", "lr": 1e-2, "fused": fused})
        for _ in range(5):
            state, _ = learner.update(state, (x, y))
        finals.append(learner.predict(state, x))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-4, atol=1e-5)
