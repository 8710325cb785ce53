"""Forward-only estimators: each estimate is of the gradient its paper says (the forward gradient and
weight/node perturbation of ∇L, the likelihood ratio of the noise-smoothed loss), the finite differences
tend to the forward gradient drawn along the same directions, variance reduction reduces variance,
nothing is backpropagated, local losses make the step blockwise, the FLOPs grow with the directions,
and every mode learns the digits."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from experiments.app import learner_config
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import get_learner_class, make_learner
from networks import NetworkSpec
from tests.learners._small_nets import random_batch, small_state

MLP = NetworkSpec(kind="mlp", widths=(6, 5), activation="tanh")
# average pooling: a max pool's kinks would spoil the finite differences' O(σ²) agreement
CONV = NetworkSpec(kind="convnet", channels=(3,), pool=(2,), pool_type="avg", widths=(5,), activation="tanh")
CONV_BN = NetworkSpec(kind="convnet", channels=(3,), pool=(2,), widths=(5,), batch_norm=True)
SHAPES = {"mlp": (4,), "convnet": (1, 6, 6)}
N_CLASSES = 3


def _setup(spec=MLP, seed=0, **params):
    return small_state("perturbation", spec, SHAPES[spec.kind], N_CLASSES, seed, **params)


def _batch(spec=MLP, seed=0, n=16):
    return random_batch(SHAPES[spec.kind], N_CLASSES, seed, n)


def _flat(grads: dict, params) -> torch.Tensor:
    return torch.cat([grads[p].reshape(-1) for p in params])


def _compare(learner, state, x, y, seed=0):
    """The rule's estimate (from a generator seeded with ``seed``) and autograd's gradient of the same
    loss, both flattened over every trainable parameter."""
    true = learner.true_gradients(state, x, y)
    estimate, _ = learner.estimate(state, x, y, torch.Generator().manual_seed(seed))
    params = list(true)
    return _flat(estimate, params), _flat(true, params)


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def _relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _n_params(state) -> int:
    return sum(p.numel() for p in state.network.parameters())


# ------------------------------------------------------------------ unbiased estimates

@pytest.mark.parametrize("tangent,local", [("weights", False), ("activities", False), ("activities", True)],
                         ids=["weights", "activities", "activities-local"])
def test_the_forward_gradient_averaged_over_many_tangents_is_the_gradient(tangent, local):
    """E[(∇L·v) v] = ∇L (Baydin et al.): the mean of K tangents' estimates has the relative error
    √((n+2)/K) of the second moment (n ≈ 80 weights here; local: of each block's local loss), or less
    with per-example activity tangents."""
    learner, state = _setup(mode="forward_gradient", tangent=tangent, local_losses=local, layerwise=False,
                            n_directions=1000)
    estimate, true = _compare(learner, state, *_batch())
    assert _cos(estimate, true) > 0.95
    assert _relative_error(estimate, true) < 1.2 * math.sqrt((_n_params(state) + 2) / 1000)


@pytest.mark.parametrize("distribution,extra", [("gaussian", 2), ("rademacher", 0)])
def test_the_forward_gradient_second_moment_grows_with_the_number_of_weights(distribution, extra):
    """E‖ĝ‖² = (n + 2)‖∇L‖² for Gaussian tangents and n‖∇L‖² for Rademacher ones: the variance that
    makes the weight-tangent forward gradient slow on wide networks."""
    learner, state = _setup(mode="forward_gradient", tangent="weights", layerwise=False, n_directions=1,
                            distribution=distribution)
    x, y = _batch()
    true = learner.true_gradients(state, x, y)
    params = list(true)
    gen = torch.Generator().manual_seed(1)
    squares = [float(_flat(learner.estimate(state, x, y, gen)[0], params).pow(2).sum()) for _ in range(1000)]
    ratio = np.mean(squares) / float(_flat(true, params).pow(2).sum())
    assert ratio == pytest.approx(_n_params(state) + extra, rel=0.15)


@pytest.mark.parametrize("mode", ["weight", "node"])
@pytest.mark.parametrize("antithetic", [True, False], ids=["central", "one-sided"])
def test_weight_and_node_perturbation_average_to_the_gradient(mode, antithetic):
    learner, state = _setup(mode=mode, sigma=1e-3, antithetic=antithetic, layerwise=False, n_directions=1000)
    estimate, true = _compare(learner, state, *_batch())
    assert _cos(estimate, true) > 0.95
    assert _relative_error(estimate, true) < 1.2 * math.sqrt((_n_params(state) + 2) / 1000)


@pytest.mark.parametrize("spec", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["all-sites", "layerwise"])
@pytest.mark.parametrize("mode,tangent", [("weight", "weights"), ("node", "activities")])
def test_finite_differences_tend_to_the_forward_gradient_along_the_same_directions(mode, tangent, layerwise,
                                                                                 spec):
    """Drawn from the same seed, weight perturbation uses the forward gradient's weight tangents and node
    perturbation its activity tangents; as σ → 0 the central difference of the loss along them becomes
    the JVP, with an O(σ²) error (O(σ) one-sided). Conv layers go through the same local Jacobian."""
    x, y = _batch(spec)
    fg, fg_state = _setup(spec, mode="forward_gradient", tangent=tangent, layerwise=layerwise, n_directions=2)
    reference = _flat(fg.estimate(fg_state, x, y, torch.Generator().manual_seed(5))[0],
                      list(fg_state.network.parameters()))
    for antithetic, sigma, tolerance in ((True, 1e-4, 1e-6), (False, 1e-6, 1e-4)):
        learner, state = _setup(spec, mode=mode, sigma=sigma, antithetic=antithetic, layerwise=layerwise,
                                n_directions=2)
        estimate, _ = learner.estimate(state, x, y, torch.Generator().manual_seed(5))
        assert _relative_error(_flat(estimate, list(state.network.parameters())), reference) < tolerance


def _pathwise_smoothed_gradient(learner, state, x, y, sigma, draws, seed):
    """∇E_ε[L] by the reparameterisation: autograd through the likelihood ratio's noisy passes, the
    batch repeated ``draws`` times so that one pass holds every draw."""
    (segment,), (shapes,) = learner.segments(state), state.site_shapes
    gen = torch.Generator().manual_seed(seed)
    xs, ys = x.repeat(draws, *([1] * (x.dim() - 1))), y.repeat(draws)
    noise = [sigma * torch.randn((len(xs), *s), generator=gen, dtype=x.dtype) for s in shapes]
    params = list(state.network.parameters())
    return dict(zip(params, torch.autograd.grad(F.cross_entropy(segment.run(xs, noise=noise)[0], ys), params)))


def test_the_likelihood_ratio_estimates_the_gradient_of_the_noise_smoothed_loss():
    """With small noise the likelihood ratio's mean is ∇L; with large noise it is ∇E_ε[L] (Jiang et al.),
    measured here by the pathwise gradient, and far from ∇L."""
    x, y = _batch()
    learner, state = _setup(mode="likelihood_ratio", sigma=0.01, layerwise=False, n_directions=1000)
    estimate, true = _compare(learner, state, x, y)
    assert _cos(estimate, true) > 0.95

    learner, state = _setup(mode="likelihood_ratio", sigma=1.0, layerwise=False, n_directions=1000)
    estimate, true = _compare(learner, state, x, y)
    smoothed = _flat(_pathwise_smoothed_gradient(learner, state, x, y, 1.0, 20000, seed=9),
                     list(state.network.parameters()))
    assert _relative_error(estimate, smoothed) < 0.2
    assert _relative_error(true, smoothed) > 0.5


def test_the_likelihood_ratio_variance_reductions_reduce_the_variance():
    """One draw at a time on the same batch: subtracting the clean loss and pairing ±ε each shrink the
    spread of the plain score-function estimate L ε hᵀ / σ, whose size grows like L / σ."""
    x, y = _batch()

    def spread(n_directions=1, **params):
        learner, state = _setup(mode="likelihood_ratio", sigma=0.05, layerwise=False, n_directions=n_directions,
                                **params)
        gen = torch.Generator().manual_seed(2)
        draws = torch.stack([_flat(g, list(g)) for g in (learner.estimate(state, x, y, gen)[0] for _ in range(300))])
        return float(draws.var(0).sum())

    plain = spread(baseline="none", antithetic=False)
    assert spread(baseline="clean", antithetic=False) < plain / 10
    assert spread(baseline="none", antithetic=True) < plain / 10
    assert spread(baseline="mean", antithetic=False, n_directions=2) < plain / 2


# ------------------------------------------------------------------ what the rule touches

MODES = [{"mode": "forward_gradient", "tangent": "activities"}, {"mode": "forward_gradient", "tangent": "weights"},
         {"mode": "weight"}, {"mode": "node"}, {"mode": "likelihood_ratio"}]
MODE_IDS = ["fg-activities", "fg-weights", "weight", "node", "likelihood_ratio"]


@pytest.mark.parametrize("params", MODES, ids=MODE_IDS)
def test_no_step_backpropagates(params, monkeypatch):
    """Every estimate comes from forward passes (and forward-mode JVPs): backward is never called."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backward pass was run")

    learner, state = _setup(**params, n_directions=2)
    before = [p.detach().clone() for p in state.network.parameters()]
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    learner.update(state, _batch())
    assert all(not torch.equal(a, p) for a, p in zip(before, state.network.parameters()))


@pytest.mark.parametrize("params", [{"mode": "forward_gradient"}, {"mode": "node"}, {"mode": "weight"}],
                         ids=["fg-activities", "node", "weight"])
def test_local_losses_make_the_update_of_a_block_independent_of_the_blocks_above(params):
    """The class's tags are global (its default estimates the output loss); with local_losses the
    contract suite's locality check holds: perturbing block i+1 leaves block i's update unchanged."""
    learner, state = _setup(local_losses=True, n_directions=2, **params)
    x, y = _batch()
    for i in range(state.network.n_blocks - 1):
        deltas = []
        for perturb in (False, True):
            s = copy.deepcopy(state)
            if perturb:
                with torch.no_grad():
                    for p in s.network.blocks[i + 1].parameters():
                        p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype))
            before = [p.detach().clone() for p in s.network.blocks[i].parameters()]
            learner.update(s, (x, y))
            deltas.append([p.detach() - b for p, b in zip(s.network.blocks[i].parameters(), before)])
        assert any(d.abs().sum() > 0 for d in deltas[0])
        for a, b in zip(*deltas):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_global_estimate_of_a_block_depends_on_the_blocks_above():
    learner, state = _setup(n_directions=2)
    x, y = _batch()
    deltas = []
    for perturb in (False, True):
        s = copy.deepcopy(state)
        if perturb:
            with torch.no_grad():
                for p in s.network.blocks[1].parameters():
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=p.dtype))
        before = s.network.blocks[0][1].weight.detach().clone()
        learner.update(s, (x, y))
        deltas.append(s.network.blocks[0][1].weight.detach() - before)
    assert not torch.equal(*deltas)


def test_evaluating_the_estimate_does_not_shift_training():
    """block_metrics draws from its own stream: an update after it is the update without it."""
    learner, state = _setup(n_directions=2)
    x, y = _batch()
    watched = copy.deepcopy(state)
    metrics = learner.block_metrics(watched, x, y)
    assert len(metrics["grad_cosine"]) == state.network.n_blocks
    assert all(-1 <= c <= 1 for c in metrics["grad_cosine"])
    learner.update(state, (x, y))
    learner.update(watched, (x, y))
    for a, b in zip(state.network.parameters(), watched.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ networks

@pytest.mark.parametrize("params", [{"mode": "forward_gradient"}, {"mode": "node"}, {"mode": "likelihood_ratio"}],
                         ids=["fg-activities", "node", "likelihood_ratio"])
def test_activity_modes_refuse_batch_norm_in_one_line(params):
    with pytest.raises(ConfigError, match=r"^perturbation mode=\w+( tangent=activities)? draws per-example noise[^\n]+$"):
        _setup(CONV_BN, **params)


@pytest.mark.parametrize("params", [{"mode": "forward_gradient", "tangent": "weights"}, {"mode": "weight"}],
                         ids=["fg-weights", "weight"])
def test_weight_space_modes_train_a_convnet_with_batch_norm(params):
    """Perturbed passes leave the running statistics alone; the one clean pass per step moves them once."""
    learner, state = _setup(CONV_BN, **params, n_directions=2)
    bn = state.network.blocks[0][1]
    x, y = _batch(CONV_BN)
    before = [p.detach().clone() for p in state.network.parameters()]
    learner.update(state, (x, y))
    assert int(bn.num_batches_tracked) == 1
    assert all(not torch.equal(a, p) for a, p in zip(before, state.network.parameters()))
    assert torch.isfinite(learner.predict(state, x)).all()


def test_likelihood_ratio_mean_baseline_needs_two_copies():
    with pytest.raises(ConfigError, match="n_directions >= 2"):
        _setup(mode="likelihood_ratio", baseline="mean", n_directions=1)


# ------------------------------------------------------------------ cost and learning

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("params", MODES + [{"mode": "forward_gradient", "local_losses": True}],
                         ids=MODE_IDS + ["fg-local"])
def test_flops_grow_with_the_number_of_directions(params):
    """The loop's FLOP counter sees every pass: each direction adds the same cost, on top of what the K
    directions share (the primal pass of a vectorised JVP, the clean pass layerwise passes start from)."""
    small = load_dataset("blobs", seed=0, n_train=64, n_test=32)
    flops = {}
    for k in (1, 2, 4):
        result = fit(make_learner("perturbation", **params, n_directions=k), "mlp_small", small, seed=0,
                     loop=LoopConfig(n_epochs=1, progress=False))
        flops[k] = float(result.results["flops"].sum())
    per_direction = flops[2] - flops[1]
    assert per_direction > 0
    assert flops[4] - flops[2] == pytest.approx(2 * per_direction, rel=0.02)


LEARNS = [({"mode": "forward_gradient"}, 0.003, 0.7), ({"mode": "forward_gradient", "local_losses": True}, 0.003, 0.6),
          ({"mode": "node"}, 0.003, 0.7), ({"mode": "likelihood_ratio"}, 0.003, 0.7),
          ({"mode": "forward_gradient", "tangent": "weights"}, 0.01, 0.4), ({"mode": "weight"}, 0.01, 0.4)]


@pytest.mark.parametrize("params,lr,bar", LEARNS, ids=["fg-activities", "fg-local", "node", "likelihood_ratio",
                                                        "fg-weights", "weight"])
def test_every_mode_learns_the_digits(params, lr, bar, digits):
    """Five epochs, one direction per site, chance 10%: the activity modes (per-example noise) learn
    fast; the parameter-space modes (one direction shared by the batch, variance ∝ weights) slowly."""
    learner = make_learner("perturbation", **params, n_directions=1, optimizer={"lr": lr})
    result = fit(learner, "mlp_small", digits, seed=0, loop=LoopConfig(n_epochs=5, progress=False))
    assert float(result.results["accuracy"].sel(split="test")[-1]) >= bar


def test_the_learner_yaml_lists_the_class_defaults():
    params = learner_config("perturbation")
    assert params.pop("name") == "perturbation"
    defaults = get_learner_class("perturbation")().hyperparameters()
    assert set(params) == set(defaults)
    for key, value in params.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                assert defaults[key][sub] == v, f"{key}.{sub}"
        else:
            assert defaults[key] == value, key


def test_the_likelihood_ratio_needs_gaussian_noise():
    with pytest.raises(ConfigError, match="^perturbation mode=likelihood_ratio needs distribution=gaussian"):
        _setup(mode="likelihood_ratio", distribution="rademacher")
