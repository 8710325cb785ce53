"""EWC: backprop before any consolidation, the Fisher estimate, and the quadratic anchor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.continual import StreamConfig, build_stream
from experiments.datasets import load_dataset
from core.errors import ConfigError
from learners import make_learner
from learners.base import DataInfo
from learners.ewc import _fisher_linear, _fisher_vmap
from networks import build, get_preset

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.0}


@pytest.fixture(scope="module")
def tasks():
    data = load_dataset("digits", seed=0)
    return build_stream(StreamConfig(name="permuted", n_tasks=2, max_train_per_task=300), data, seed=0).tasks


def _init(name, **params):
    learner = make_learner(name, optimizer=SGD, **params)
    spec = get_preset("mlp_small").resolve((1, 8, 8), 10)
    return learner, learner.init(build(spec, 0), DataInfo(input_shape=(1, 8, 8), n_classes=10, n_train=300), 0)


def _steps(learner, state, task, n=10):
    x, y = torch.from_numpy(task.x_train), torch.from_numpy(task.y_train)
    for i in range(n):
        idx = slice(30 * (i % 10), 30 * (i % 10) + 30)
        state, metrics = learner.update(state, (x[idx], y[idx]))
    return state, metrics


def test_before_consolidation_it_is_backprop(tasks):
    (ewc, s_ewc), (bp, s_bp) = _init("ewc", ewc_lambda=1e4), _init("backprop")
    s_ewc, metrics = _steps(ewc, s_ewc, tasks[0])
    s_bp, _ = _steps(bp, s_bp, tasks[0])
    assert "ewc_penalty" not in metrics
    x = torch.from_numpy(tasks[0].x_test)
    torch.testing.assert_close(ewc.predict(s_ewc, x), bp.predict(s_bp, x), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["empirical", "true"])
def test_fast_fisher_equals_per_sample_gradients(tasks, mode):
    net = build(get_preset("mlp_small").resolve((1, 8, 8), 10), 1)
    x, y = torch.from_numpy(tasks[0].x_train[:40]), torch.from_numpy(tasks[0].y_train[:40])
    fast = _fisher_linear(net, x, y, mode, torch.Generator().manual_seed(3), 16)
    slow = _fisher_vmap(net, x, y, mode, torch.Generator().manual_seed(3), 16)
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-4, atol=1e-7)


def test_consolidation_anchors_important_weights(tasks):
    first, second = tasks
    ewc, state = _init("ewc", ewc_lambda=50.0)
    state, _ = _steps(ewc, state, first, n=20)
    state = ewc.end_task(state, first)
    anchor = [p.detach().clone() for p in state.network.parameters()]
    fisher = state.fisher
    assert all(torch.equal(a, b) for a, b in zip(anchor, state.anchor))
    assert float(ewc.penalty(state).detach()) == 0.0                     # zero at the anchor
    # the penalty's gradient is lambda F (theta - theta*)
    with torch.no_grad():
        for p in state.network.parameters():
            p.add_(0.01)
    state.network.zero_grad()
    ewc.penalty(state).backward()
    for p, f in zip(state.network.parameters(), fisher):
        torch.testing.assert_close(p.grad, 50.0 * f * 0.01, rtol=1e-3, atol=1e-7)
    # training the next task moves the weights less than plain backprop does
    with torch.no_grad():
        for p, a in zip(state.network.parameters(), anchor):
            p.copy_(a)
    bp, bp_state = _init("backprop")
    bp_state.network.load_state_dict(state.network.state_dict())
    state, metrics = _steps(ewc, state, second)
    bp_state, _ = _steps(bp, bp_state, second)
    assert metrics["ewc_penalty"] > 0
    moved = lambda s: sum(float((f * (p.detach() - a) ** 2).sum())
                          for p, a, f in zip(s.network.parameters(), anchor, fisher))
    assert moved(state) < 0.8 * moved(bp_state)


def test_bad_fisher_names_the_key():
    with pytest.raises(ConfigError, match="ewc.fisher='diag'"):
        _init("ewc", fisher="diag")
    assert np.isfinite(_init("ewc")[0].ewc_lambda)


def test_schedule_free_optimiser_is_refused_with_the_alternatives():
    learner = make_learner("ewc", optimizer={"name": "adamw_schedulefree", "lr": 1e-3})
    spec = get_preset("mlp_small").resolve((1, 8, 8), 10)
    with pytest.raises(ConfigError, match="adamw_schedulefree.*use adam"):
        learner.init(build(spec, 0), DataInfo(input_shape=(1, 8, 8), n_classes=10, n_train=300), 0)
