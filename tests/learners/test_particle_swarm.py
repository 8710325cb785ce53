"""Particle swarm: its testable properties and learning."""
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
from learners._kernels import swarm as K
from learners.base import DataInfo
from networks import NetworkSpec, build


def _setup(mode="neuron", widths=(6, 5, 4), activation="tanh", n=24, **params):
    data = load_dataset("blobs", seed=0, n_train=n, n_test=10, val_size=0)
    spec = NetworkSpec(widths=widths, activation=activation).resolve(data.input_shape, data.n_classes)
    learner = make_learner("particle_swarm", mode=mode, **{"n_particles": 5, **params})
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=n)
    state = learner.init(build(spec, 0), info, 0)
    X = data.x_train.astype(np.float64)
    return learner, state, X, data.y_train.astype(np.int64)


def _random_numbers(state, iterations=1, seed=0):
    D = state.sizes[:-1] + 1
    roff = np.concatenate([[0], np.cumsum(iterations * 2 * state.k * state.sizes[1:] * D)]).astype(np.int64)
    return np.random.default_rng(seed).random(int(roff[-1])), roff


def _sweep(learner, state, X, y, order_l, order_j, seed=0):
    R, roff = _random_numbers(state, learner.iterations, seed)
    return K.neuron_sweep(X, y, state.sizes, state.acts, state.wflat, state.woff, state.P, state.V, state.PB,
                          state.PBf, state.poff, state.noff, np.asarray(order_l, np.int64),
                          np.asarray(order_j, np.int64), R, roff, state.k, learner.iterations, learner.inertia,
                          learner.c1, learner.c2, learner.velocity_clamp, learner.reevaluate)[0]


@pytest.mark.parametrize("mode", ["neuron", "global"])
def test_never_calls_autograd(mode, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("autograd was called")
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    learner, state, X, y = _setup(mode)
    batch = (torch.from_numpy(X).float().requires_grad_(True), torch.from_numpy(y))
    for _ in range(2):
        state, _ = learner.update(state, batch)
    scores = learner.predict(state, batch[0])
    assert not scores.requires_grad
    assert all(not p.requires_grad for ps in learner.block_parameters(state) for p in ps)


@pytest.mark.parametrize("widths,activation", [((6, 5, 4), "tanh"), ((7,), "tanh"), ((7,), "relu"),
                                               ((5, 4), "sigmoid"), ((5,), "gelu"), ((3, 4), "leaky_relu")])
def test_whole_network_fitness_matches_the_numpy_reference(widths, activation, monkeypatch):
    """The chunked torch fitness (tanh as a folded sigmoid, bias inside the GEMM) scores every
    particle as the plain numpy forward pass does, also with saturating weights and several chunks."""
    import learners.particle_swarm as ps
    monkeypatch.setattr(ps, "_CHUNK_FLOATS", 3 * 24 * widths[0])      # 3 particles per chunk
    learner, state, X, y = _setup("global", widths, activation, n_particles=8)
    P = state.P * 4.0                                                  # well into saturation
    numpy_learner = make_learner("particle_swarm", mode="global", n_particles=8, kernel="numpy")
    expected = numpy_learner.swarm_fitness(state, P, X, y)
    got = learner.swarm_fitness(state, P, X, y)
    assert expected.std() > 0.1                                        # the particles differ
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("widths,activation", [((6, 5, 4), "tanh"), ((7,), "relu"), ((5, 4), "sigmoid")])
def test_fused_sweep_matches_the_numpy_reference(widths, activation):
    learner, a, X, y = _setup(widths=widths, activation=activation, iterations=2)
    b = copy.deepcopy(a)
    order_l, order_j = learner.visiting_order(a)
    R, roff = _random_numbers(a, learner.iterations)
    loss_a = _sweep(learner, a, X, y, order_l, order_j)
    loss_b = learner._neuron_sweep_numpy(b, X, y, order_l, order_j, R, roff)
    assert loss_a == pytest.approx(loss_b, rel=1e-10)
    np.testing.assert_allclose(a.wflat, b.wflat, atol=1e-12)
    np.testing.assert_allclose(a.PB, b.PB, atol=1e-12)
    np.testing.assert_allclose(a.PBf, b.PBf, rtol=1e-10)
    assert not np.array_equal(a.wflat, _setup(widths=widths, activation=activation)[1].wflat)


def test_kernels_match_numpy_references():
    rng = np.random.default_rng(0)
    n, fan_in, C, k = 9, 5, 4, 6
    A, P = rng.normal(size=(n, fan_in)), rng.normal(size=(k, fan_in + 1))
    a_old, Z, u, y = rng.normal(size=n), rng.normal(size=(n, C)), rng.normal(size=C), rng.integers(0, C, n)
    for act in K.ACTIVATIONS.values():
        np.testing.assert_allclose(K.rank1_fitness(A, P, act, a_old, Z, u, y),
                                   K.rank1_fitness_numpy(A, P, act, a_old, Z, u, y), rtol=1e-10)
        np.testing.assert_allclose(K.rank1_next(A, P, act, a_old, Z, u, 1),
                                   K.rank1_next_numpy(A, P, act, a_old, Z, u, 1), rtol=1e-10, atol=1e-12)
    logits = rng.normal(size=(k, n, C)) * 30
    np.testing.assert_allclose(K.cross_entropy_rows(logits, y), K.cross_entropy_rows_numpy(logits, y), rtol=1e-10)
    V, pbest, g = rng.normal(size=P.shape), rng.normal(size=P.shape), rng.normal(size=fan_in + 1)
    r1, r2 = rng.random(P.shape), rng.random(P.shape)
    P2, V2 = P.copy(), V.copy()
    K.pso_move(P, V, pbest, g, r1, r2, 0.7, 1.5, 1.5, 0.3)
    K.pso_move_numpy(P2, V2, pbest, g, r1, r2, 0.7, 1.5, 1.5, 0.3)
    np.testing.assert_allclose(P, P2, rtol=1e-12)
    assert np.abs(V).max() <= 0.3 + 1e-15                        # the velocity clamp holds
    P3, V3 = P.copy(), V.copy()
    K.pso_move_hashed(P, V, pbest, g, 2**62 + 17, 0.7, 1.5, 1.5, 0.3)
    K.pso_move_hashed_numpy(P3, V3, pbest, g, 2**62 + 17, 0.7, 1.5, 1.5, 0.3)
    np.testing.assert_allclose(P, P3, rtol=1e-12)
    np.testing.assert_allclose(V, V3, rtol=1e-12)


def test_hashed_uniforms_are_uniform_independent_and_seeded():
    """The whole-network move's in-loop generator (SplitMix64 on a counter): U[0, 1) moments,
    r1 and r2 uncorrelated, neighbouring elements uncorrelated, a new seed gives a new stream."""
    r1, r2 = K.hashed_uniforms_numpy(12345, (200, 1000))
    n = r1.size
    for r in (r1, r2):
        assert r.min() >= 0 and r.max() < 1
        assert abs(r.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
        assert abs(r.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)        # var of (u - 1/2)^2 is 1/180
        assert np.histogram(r, bins=16, range=(0, 1))[0].min() > n / 16 * 0.97
    assert abs(np.corrcoef(r1.ravel(), r2.ravel())[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.corrcoef(r1.ravel()[:-1], r1.ravel()[1:])[0, 1]) < 5 / math.sqrt(n)
    again, _ = K.hashed_uniforms_numpy(12345, (200, 1000))
    other, _ = K.hashed_uniforms_numpy(12346, (200, 1000))
    np.testing.assert_array_equal(r1, again)
    assert np.mean(r1 == other) < 1e-3


def test_the_network_loss_never_increases_neuron_by_neuron_on_a_fixed_batch():
    learner, state, X, y = _setup(reevaluate=False)
    order_l, order_j = learner.visiting_order(state)
    losses = [K.cross_entropy_rows_numpy(learner._forward(state, X)[1][-1][None], y)[0]]
    pbest_history = []
    for sweep in range(3):
        for v, (l, j) in enumerate(zip(order_l, order_j)):
            losses.append(_sweep(learner, state, X, y, [l], [j], seed=100 * sweep + v))
        pbest_history.append(state.PBf.copy())
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]
    # with reevaluate off, every personal best fitness is non-increasing on the fixed batch
    for a, b in zip(pbest_history, pbest_history[1:]):
        assert np.all(b <= a)


def test_a_neuron_step_changes_only_that_neurons_weights_and_swarm():
    learner, state, X, y = _setup()
    for l, j in [(0, 2), (1, 0), (3, 1)]:
        before = copy.deepcopy(state)
        changed = False
        for seed in range(5):          # a few attempts: a step may find no better particle
            _sweep(learner, state, X, y, [l], [j], seed=seed)
            changed |= not np.array_equal(state.wflat, before.wflat)
        assert changed, f"neuron ({l}, {j}) never improved"
        D = state.sizes[l] + 1
        row = slice(state.woff[l] + j * D, state.woff[l] + (j + 1) * D)
        outside = np.ones(state.wflat.size, bool)
        outside[row] = False
        np.testing.assert_array_equal(state.wflat[outside], before.wflat[outside])
        mine = np.zeros(state.P.size, bool)
        mine[state.poff[l] + j * state.k * D:state.poff[l] + (j + 1) * state.k * D] = True
        np.testing.assert_array_equal(state.P[~mine], before.P[~mine])


def test_swarm_converges_on_a_convex_quadratic():
    rng = np.random.default_rng(0)
    D, k = 6, 20
    target = rng.normal(size=D)
    scale = np.linspace(1, 5, D)
    f = lambda P: ((P - target) ** 2 * scale).sum(-1)
    P = rng.uniform(-3, 3, size=(k, D))
    V = np.zeros_like(P)
    pbest, pbest_f = P.copy(), f(P)
    g = pbest[np.argmin(pbest_f)].copy()
    for _ in range(300):
        K.pso_move(P, V, pbest, g, rng.random(P.shape), rng.random(P.shape), 0.7298, 1.49618, 1.49618, 1.0)
        fp = f(P)
        better = fp < pbest_f
        pbest[better], pbest_f[better] = P[better], fp[better]
        g = pbest[np.argmin(pbest_f)].copy()
    np.testing.assert_allclose(g, target, atol=1e-3)


@pytest.mark.parametrize("mode", ["neuron", "global"])
def test_same_seed_same_weights(mode):
    weights = []
    for _ in range(2):
        learner, state, X, y = _setup(mode, order="random")
        for _ in range(2):
            state, _ = learner.update(state, (torch.from_numpy(X).float(), torch.from_numpy(y)))
        weights.append(state.wflat.copy())
    np.testing.assert_array_equal(*weights)


def _round_bf16(a):
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).bfloat16().double().numpy()


def test_bfloat16_fitness_scores_the_bf16_rounded_first_layer():
    """fitness_dtype=bfloat16 scores each particle as the network whose inputs, first-layer weights
    and first-layer pre-activations are rounded to bf16 (products accumulated in fp32), the rest in
    fp32: it matches that emulation far more closely than it matches the float32 score."""
    learner, state, X, y = _setup("global", (7,), "tanh", n=64, n_particles=8, fitness_dtype="bfloat16")
    P = state.P * 3.0
    got = learner.swarm_fitness(state, P, X, y)
    exact = make_learner("particle_swarm", mode="global", n_particles=8).swarm_fitness(state, P, X, y)
    k, (din, h, c) = len(P), state.sizes
    Wb0 = P[:, :state.woff[1]].reshape(k, h, din + 1)
    Wb1 = P[:, state.woff[1]:].reshape(k, c, h + 1)
    X1 = np.concatenate([X, np.ones((len(X), 1))], 1)
    Z = _round_bf16(np.einsum("ni,khi->knh", _round_bf16(X1), _round_bf16(Wb0)))
    logits = np.einsum("knh,kch->knc", np.tanh(Z), Wb1[:, :, :-1]) + Wb1[:, None, :, -1]
    logp = logits - logits.max(2, keepdims=True)
    logp -= np.log(np.exp(logp).sum(2, keepdims=True))
    emulated = -logp[:, np.arange(len(y)), y].mean(1)
    assert np.abs(got - exact).max() > 1e-4                  # the bf16 path was taken
    np.testing.assert_allclose(got, emulated, rtol=0, atol=1e-5)    # measured 2.4e-7
    assert np.abs(got - exact).max() < 2 ** -8 * exact.max()  # bf16's precision, no worse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fitness_stage_clock_leaves_the_scores_alone_and_names_every_stage(dtype):
    """The breakdown that benchmarks/bench_pso.py reports: the pass with its clock on gives the same
    scores, and the stages it times account for each part of the pass (two layers: no later hidden
    layer; bf16 adds the widening)."""
    from learners.particle_swarm import _batched_cross_entropy
    learner, state, X, y = _setup("global", (7,), "tanh", n=64, n_particles=8)
    P, Xt, yt = torch.from_numpy(state.P * 3.0), torch.from_numpy(X).float(), torch.from_numpy(y)
    totals = {}
    with torch.inference_mode():
        plain = _batched_cross_entropy(state, P, Xt, yt, dtype)
        timed = _batched_cross_entropy(state, P, Xt, yt, dtype, totals)
    torch.testing.assert_close(timed, plain, rtol=0, atol=0)
    expected = {"weights and set-up", "first-layer product", "first-layer activation", "later layers",
                "cross-entropy"} | ({"widening to fp32"} if dtype == torch.bfloat16 else set())
    assert set(totals) == expected
    assert all(t >= 0.0 for t in totals.values())


def test_bfloat16_fitness_is_for_the_global_mode_only():
    data = load_dataset("blobs", seed=0, n_train=50, n_test=10)
    with pytest.raises(ConfigError, match=r"^particle_swarm.fitness_dtype='bfloat16' applies to mode=global .*"
                                          r"got mode='neuron'.*use fitness_dtype=float32 here$"):
        fit(make_learner("particle_swarm", mode="neuron", fitness_dtype="bfloat16"), "mlp_small", data,
            loop=LoopConfig(n_epochs=1, progress=False))


def test_bfloat16_fitness_warns_where_the_cpu_has_no_native_bf16(monkeypatch):
    import learners.particle_swarm as ps
    monkeypatch.setattr(ps, "native_bf16_products", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16.*fitness_dtype=float32"):
        _setup("global", (4,), "tanh", fitness_dtype="bfloat16")


def test_smoke_xor_2_8_2_reaches_95_percent_train_accuracy():
    data = load_dataset("xor", seed=0, n_train=400, n_test=200)
    learner = make_learner("particle_swarm", n_particles=10, velocity_clamp=0.2)
    res = fit(learner, {"widths": [8], "activation": "tanh"}, data, seed=0,
              loop=LoopConfig(n_epochs=10, batch_size=64, progress=False))
    assert float(res.results["accuracy"].sel(split="train")[-1]) >= 0.95


@pytest.mark.parametrize("fitness_dtype", ["float32", "bfloat16"])
def test_whole_network_pso_learns_blobs(fitness_dtype):
    data = load_dataset("blobs", seed=0, n_train=300, n_test=200)
    learner = make_learner("particle_swarm", mode="global", n_particles=30, velocity_clamp=0.1, init_scale=1.0,
                           fitness_dtype=fitness_dtype)
    res = fit(learner, {"widths": [8], "activation": "tanh"}, data, seed=0,
              loop=LoopConfig(n_epochs=10, batch_size=300, progress=False))
    acc = res.results["accuracy"].sel(split="test").values
    assert acc[-1] >= 0.9
    assert np.all(np.diff(res.results["train_loss"].values) <= 1e-12)   # full batch: gbest never worsens


@pytest.mark.parametrize("key,value,allowed", [
    ("mode", "layer", "is not known; allowed: neuron, global"),
    ("order", "sideways", "is not known; allowed: forward, backward, random"),
    ("kernel", "cuda", "is not known; allowed: numba, numpy"),
    ("fitness_dtype", "float16", "is not known; allowed: float32, bfloat16"),
    ("n_particles", 0, "is out of range; allowed: >= 1"), ("iterations", 0, "is out of range; allowed: >= 1"),
    ("neuron_fraction", 0.0, "is out of range; allowed: > 0 and <= 1"),
    ("velocity_clamp", 0.0, "is out of range; allowed: > 0")])
def test_bad_settings_name_the_key(key, value, allowed):
    data = load_dataset("blobs", seed=0, n_train=50, n_test=10)
    with pytest.raises(ConfigError, match="^" + re.escape(f"particle_swarm.{key}={value!r} {allowed}") + "$"):
        fit(make_learner("particle_swarm", **{key: value}), "mlp_small", data,
            loop=LoopConfig(n_epochs=1, progress=False))


def test_refuses_conv_networks_and_regression():
    data = load_dataset("digits", seed=0)
    with pytest.raises(ConfigError, match="convolutional"):
        fit(make_learner("particle_swarm"), "smallconv", data, loop=LoopConfig(n_epochs=1, progress=False))
    with pytest.raises(ConfigError, match="regression"):
        fit(make_learner("particle_swarm"), "mlp_small", load_dataset("diabetes"),
            loop=LoopConfig(n_epochs=1, progress=False))


def test_refuses_an_activation_its_kernels_lack():
    data = load_dataset("blobs", seed=0, n_train=50, n_test=10)
    with pytest.raises(ConfigError, match=r"^particle_swarm's kernels have no network.activation='elu'; use one of"):
        fit(make_learner("particle_swarm"), NetworkSpec(widths=(8,), activation="elu"), data,
            loop=LoopConfig(n_epochs=1, progress=False))
