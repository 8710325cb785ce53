"""GBNN's testable properties (Emami & Martinez-Munoz 2023) and learning."""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch

from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners._kernels.boosting import (ACTIVATIONS, fit_step_adam, fit_step_adam_numpy, fit_step_lbfgs,
                                        fit_step_lbfgs_numpy)
from learners.base import DataInfo
from learners.gradient_boosting import initial_F, mean_loss, newton_step, residuals
from networks import build, get_preset

FAST = dict(n_units=12, units_per_step=3, step_iterations=30, step_lr=0.05)
CASES = {"squared": ("friedman1", dict(n_train=150, n_test=50)),
         "binary": ("moons", dict(n_train=150, n_test=50)),
         "multiclass": ("blobs", dict(n_train=150, n_test=50))}


def _trained(kind, n_updates=2, **params):
    name, options = CASES[kind]
    data = load_dataset(name, seed=0, **options)
    learner = make_learner("gradient_boosting", **{**FAST, **params})
    spec = get_preset("mlp_small").resolve(data.input_shape, data.n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=len(data.x_train),
                    task=data.task, batch_size=len(data.x_train), steps_per_epoch=1, n_epochs=n_updates)
    state = learner.init(build(spec, 0), info, 0)
    batch = (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    for _ in range(n_updates):
        state, _ = learner.update(state, batch)
    return learner, state, data, batch


@pytest.mark.parametrize("kind", ["squared", "binary", "multiclass"])
def test_assembled_network_equals_boosted_prediction(kind):
    learner, state, data, _ = _trained(kind)
    x = torch.from_numpy(data.x_test)
    boosted = learner.boosted_decision(state, x)                 # F_0 + sum rho_m h_m(x)
    with torch.no_grad():
        assembled = state.assembled(torch.float64)(x.double()).numpy()   # the shared single-hidden-layer net
    np.testing.assert_allclose(learner.decision(state.kind, assembled), boosted, atol=1e-6, rtol=0)
    np.testing.assert_allclose(learner.predict(state, x).numpy(), assembled, atol=1e-4, rtol=1e-5)
    if kind == "binary":  # the factor 2: softmax of the two scores is sigmoid(2F)
        p1 = torch.softmax(torch.from_numpy(assembled), 1)[:, 1].numpy()
        np.testing.assert_allclose(p1, 1 / (1 + np.exp(-2 * boosted[:, 0])), atol=1e-6)


@pytest.mark.parametrize("kind", ["squared", "multiclass"])
def test_truncation_equals_staged_prediction(kind):
    learner, state, data, _ = _trained(kind)
    x = torch.from_numpy(data.x_test)
    J = learner.units_per_step
    for t in (1, 2, 3):
        truncated = make_learner("gradient_boosting", **{**FAST, "n_active_units": t * J})
        staged = copy.copy(state)
        staged.steps = state.steps[:t]
        expected = truncated.boosted_decision(staged, x)
        got = truncated.decision(state.kind, truncated._scores(state, truncated._inputs(state, x), t * J))
        np.testing.assert_allclose(got, expected, atol=1e-9)
        np.testing.assert_allclose(truncated.predict(state, x).numpy(), learner.decision(state.kind, got)
                                   if kind != "binary" else got, atol=1e-4)
    units, score = learner.units_curve(state, x, torch.from_numpy(data.y_test))
    assert list(units) == [J * (t + 1) for t in range(len(state.steps))]


@pytest.mark.parametrize("kind,n_classes", [("squared", 1), ("binary", 2), ("multiclass", 3)])
def test_initial_F_minimises_the_loss(kind, n_classes):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 1)) + 3 if kind == "squared" else rng.choice(n_classes, 60, p=None if kind == "binary"
                                                                             else [0.5, 0.3, 0.2])
    F0 = initial_F(kind, y, n_classes)
    base = mean_loss(kind, y, np.tile(F0, (len(y), 1)))
    for d in range(len(F0)):
        for eps in (1e-3, -1e-3):
            shifted = F0.copy()
            shifted[d] += eps
            assert mean_loss(kind, y, np.tile(shifted, (len(y), 1))) > base


@pytest.mark.parametrize("kind,n_classes", [("squared", 1), ("binary", 2), ("multiclass", 4)])
def test_residuals_are_the_negative_gradient(kind, n_classes):
    rng = np.random.default_rng(1)
    n = 7
    y = rng.normal(size=(n, 1)) if kind == "squared" else rng.integers(0, n_classes, n)
    F = rng.normal(size=(n, 1 if kind != "multiclass" else n_classes))
    r = residuals(kind, y, F)
    h = 1e-6
    for i in range(n):
        for d in range(F.shape[1]):
            up, down = F.copy(), F.copy()
            up[i, d] += h
            down[i, d] -= h
            # mean_loss averages over n samples: the per-sample gradient is n times its derivative
            grad = n * (mean_loss(kind, y, up) - mean_loss(kind, y, down)) / (2 * h)
            assert abs(-grad - r[i, d]) < 1e-5


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_newton_step_lowers_the_loss(kind):
    learner, state, data, batch = _trained(kind, n_updates=1)
    X = learner._inputs(state, batch[0])
    y = batch[1].numpy()
    F = learner.decision(state.kind, learner._scores(state, X))
    r = residuals(state.kind, y, F)
    rng = np.random.default_rng(0)
    f = r + 0.1 * rng.normal(size=r.shape)                     # a weak learner that roughly fits r
    rho = newton_step(state.kind, y, r, f, F)
    assert rho > 0
    assert mean_loss(state.kind, y, F + rho * f) < mean_loss(state.kind, y, F)


def test_earlier_units_never_change():
    learner, state, data, batch = _trained("multiclass", n_updates=0)
    state.schedule = (1,) * learner.n_steps          # one boosting step per update
    J = learner.units_per_step
    for m in range(learner.n_steps):
        before = copy.deepcopy(state)
        state, _ = learner.update(state, batch)
        np.testing.assert_array_equal(state.W1[:m * J], before.W1[:m * J])
        np.testing.assert_array_equal(state.b1[:m * J], before.b1[:m * J])
        np.testing.assert_array_equal(state.W_out[:, :m * J], before.W_out[:, :m * J])
        np.testing.assert_array_equal(state.bias_steps[:m], before.bias_steps[:m])
        assert not np.array_equal(state.W1[m * J:(m + 1) * J], before.W1[m * J:(m + 1) * J])
    assert state.n_steps_done == learner.n_steps


@pytest.mark.parametrize("activation,factor", [("sigmoid", 2.0), ("tanh", 6.0)])
def test_glorot_start_has_scikit_learns_bounds(activation, factor):
    """step_init=glorot: the weak learner starts as scikit-learn's MLP does (the reference's weak
    learner); with zero iterations the fitted unit is its start."""
    learner, state, data, batch = _trained("multiclass", n_updates=1, step_iterations=0, activation=activation,
                                           units_per_step=3, n_units=3)
    d, J, K = state.W1.shape[1], 3, data.n_classes
    W1, b1, W2, b2, _ = state.steps[0]
    hidden, out = math.sqrt(factor / (d + J)), math.sqrt(factor / (J + K))
    assert np.abs(W1).max() <= hidden and np.abs(b1).max() <= hidden
    assert np.abs(W2).max() <= out and np.abs(b2).max() <= out
    assert np.abs(W1).max() > 0.8 * hidden and np.abs(W2).max() > 0.5 * out     # the whole range, not a corner
    assert np.any(b2 != 0)


def test_network_start_uses_the_shared_networks_rows():
    learner, fresh, data, batch = _trained("multiclass", n_updates=0, step_init="network", units_per_step=3,
                                           n_units=3)
    learner, state, data, batch = _trained("multiclass", n_updates=1, step_iterations=0, step_init="network",
                                           units_per_step=3, n_units=3)
    W1, b1, W2, b2, _ = state.steps[0]
    np.testing.assert_array_equal(W1, fresh.W1[:3])
    np.testing.assert_array_equal(b1, fresh.b1[:3])
    assert np.abs(W2).max() <= 1 / math.sqrt(3) and np.all(b2 == 0)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_numba_weak_learner_matches_numpy_reference(act):
    rng = np.random.default_rng(0)
    X, R = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    params = [rng.normal(size=(4, 5)), rng.normal(size=4), rng.normal(size=(3, 4)), np.zeros(3)]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    la, _ = fit_step_adam(X, R, *a, ACTIVATIONS[act], 25, 0.01, 1e-3)
    lb, _ = fit_step_adam_numpy(X, R, *b, ACTIVATIONS[act], 25, 0.01, 1e-3)
    assert la == pytest.approx(lb, rel=1e-9)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-8, atol=1e-10)
    assert la < fit_step_adam(X, R, *[p.copy() for p in params], ACTIVATIONS[act], 0, 0.01, 1e-3)[0]


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_numba_lbfgs_matches_numpy_reference_and_beats_adam(act):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    R = np.tanh(X[:, :3]) + 0.1 * rng.normal(size=(40, 3))
    params = [rng.normal(size=(4, 5)), rng.normal(size=4), rng.normal(size=(3, 4)), np.zeros(3)]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    # few iterations: on a non-convex objective rounding differences grow with the iterations
    (la, ia), (lb, ib) = (fit_step_lbfgs(X, R, *a, ACTIVATIONS[act], 8, 10, 1e-3),
                          fit_step_lbfgs_numpy(X, R, *b, ACTIVATIONS[act], 8, 10, 1e-3))
    assert la == pytest.approx(lb, rel=1e-7)
    assert ia == ib == 8
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-8)
    long_lbfgs, _ = fit_step_lbfgs(X, R, *[p.copy() for p in params], ACTIVATIONS[act], 60, 10, 1e-3)
    long_adam, _ = fit_step_adam(X, R, *[p.copy() for p in params], ACTIVATIONS[act], 60, 0.01, 1e-3)
    assert long_lbfgs < long_adam


@pytest.mark.parametrize("ftol, gtol", [(1e-3, 0.0), (0.0, 5e-2)])
def test_lbfgs_stops_by_scipys_rules(ftol, gtol):
    """The relative-decrease and gradient rules end the fit early, at the same iteration in numba
    and numpy, and the rule that fired holds at the stopping point."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 5))
    R = np.tanh(X[:, :2]) + 0.1 * rng.normal(size=(60, 2))
    params = [rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=(2, 3)), np.zeros(2)]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    (la, ia), (lb, ib) = (fit_step_lbfgs(X, R, *a, 0, 500, 10, 1e-3, ftol, gtol),
                          fit_step_lbfgs_numpy(X, R, *b, 0, 500, 10, 1e-3, ftol, gtol))
    assert ia == ib and 0 < ia < 500
    assert la == pytest.approx(lb, rel=1e-6)
    if gtol:
        from learners._kernels.boosting import _loss_grad_numpy, _pack
        _, grad = _loss_grad_numpy(_pack(*a), X, R, 3, 2, 0, 1e-3)
        assert np.max(np.abs(grad)) <= gtol
    else:
        # one more iteration from where it stopped lowers the loss by less than ftol (relative),
        # or not at all: so did the last one, which is why it stopped
        before = fit_step_lbfgs(X, R, *[p.copy() for p in params], 0, ia - 1, 10, 1e-3)[0]
        assert (before - la) / max(abs(before), abs(la), 1) <= ftol


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_numba_and_numpy_kernels_give_the_same_model(solver):
    _, a, data, _ = _trained("multiclass", solver=solver, step_iterations=5)
    _, b, _, _ = _trained("multiclass", solver=solver, step_iterations=5, kernel="numpy")
    np.testing.assert_allclose(a.W_out, b.W_out, atol=1e-6)


@pytest.mark.parametrize("dataset,metric,threshold", [("friedman1", "r2", 0.75), ("moons", "accuracy", 0.9)])
def test_learns_regression_and_binary(dataset, metric, threshold):
    data = load_dataset(dataset, seed=0, n_train=400, n_test=300)
    learner = make_learner("gradient_boosting", n_units=40, units_per_step=4, step_iterations=100, step_lr=0.05,
                           subsample=1.0, shrinkage=1.0, step_l2=1e-4)
    res = fit(learner, "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=2, progress=False))
    assert float(res.results[metric].sel(split="test")[-1]) >= threshold
    assert res.results["train_loss"].values[-1] < res.results["train_loss"].values[0]
    name = "block_units_r2" if metric == "r2" else "block_units_accuracy"
    assert name in res.results and res.results[name].shape[-1] == 10


def test_frozen_feature_mode_boosts_on_top_of_fixed_blocks():
    data = load_dataset("blobs", seed=0, n_train=200, n_test=100)
    learner = make_learner("gradient_boosting", features="frozen", pretrain_epochs=2, **FAST)
    res = fit(learner, "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=2, progress=False))
    state = res.state
    before = [p.detach().clone() for p in state.features.blocks.parameters()]
    state, _ = learner.update(state, (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)))
    for p, q in zip(before, state.features.blocks.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    assert float(res.results["accuracy"].sel(split="test")[-1]) >= 0.9
    assert len(learner.block_parameters(state)) == state.features.n_blocks + 2


def test_early_stopping_keeps_the_best_held_out_step_count():
    # many over-fitting steps on a small noisy regression set: the held-out loss must turn up
    learner, state, data, batch = _trained("squared", n_updates=1, n_units=60, units_per_step=3,
                                           step_iterations=200, step_l2=0.0, shrinkage=1.0,
                                           validation_fraction=0.3, n_iter_no_change=3)
    losses = state.val_losses
    assert state.stopped and state.best_steps == int(np.argmin(losses)) + 1
    assert len(losses) < learner.n_steps and len(losses) - state.best_steps == 3   # stopped 3 steps after best
    assert state.n_steps_done == state.best_steps == len(state.steps)            # later steps dropped
    J = learner.units_per_step
    assert not state.W_out[:, state.best_steps * J:].any()
    x = torch.from_numpy(data.x_test)
    with torch.no_grad():
        assembled = state.assembled(torch.float64)(x.double()).numpy()
    np.testing.assert_allclose(learner.decision(state.kind, assembled), learner.boosted_decision(state, x),
                               atol=1e-6, rtol=0)
    held_out = set(state.val_rows.tolist())
    assert len(held_out) == round(0.3 * len(data.x_train))
    # classification holds out every class in proportion
    _, cstate, cdata, _ = _trained("multiclass", n_updates=1, validation_fraction=0.2)
    counts = np.bincount(cdata.y_train[cstate.val_rows], minlength=3)
    np.testing.assert_allclose(counts, 0.2 * np.bincount(cdata.y_train), atol=1)


@pytest.mark.parametrize("key,value,allowed", [
    ("activation", "softplus", "is not known; allowed: "), ("solver", "sgd", "is not known; allowed: lbfgs, adam"),
    ("kernel", "cuda", "is not known; allowed: numba, numpy"), ("features", "deep", "is not known; allowed: none, frozen"),
    ("subsample", 0.0, "is out of range; allowed: > 0 and <= 1"),
    ("n_iter_no_change", 0, "is out of range; allowed: >= 1"),
    ("validation_fraction", 1.0, "must be below 1"),
    ("n_units", 10, "must be a positive multiple of units_per_step=4"),
    ("n_active_units", 5, "must be None or a non-negative multiple of units_per_step=4")])
def test_bad_settings_name_the_key(key, value, allowed):
    data = load_dataset("blobs", seed=0, n_train=50, n_test=10)
    learner = make_learner("gradient_boosting", **{"units_per_step": 4, "n_units": 40, key: value})
    with pytest.raises(ConfigError, match="^" + re.escape(f"gradient_boosting.{key}={value!r} {allowed}")) as err:
        fit(learner, "mlp_small", data, loop=LoopConfig(n_epochs=1, progress=False))
    assert "\n" not in str(err.value)
