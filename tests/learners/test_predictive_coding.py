"""Predictive coding and incremental PC: the energy, its relaxation, locality and the link to backprop."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build, get_preset
from networks.spec import ACTIVATIONS

FORMS = ("pcx", "wb")
ENERGIES = ("se", "ce")


def _setup(activation="tanh", widths=(12, 10), dtype=torch.float64, n=16, seed=0, **params):
    """A small MLP (float64, so that equalities are not lost in rounding), a learner and a batch."""
    spec = NetworkSpec(kind="mlp", widths=widths, activation=activation).resolve((6,), 4)
    net = build(spec, seed).to(dtype)
    learner = make_learner("predictive_coding", **params)
    info = DataInfo(input_shape=(6,), n_classes=4, n_train=64, batch_size=n, steps_per_epoch=4, n_epochs=1)
    state = learner.init(net, info, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    y = torch.randint(0, 4, (n,), generator=gen)
    return learner, state, x, y


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_free_output_feedforward_values_have_zero_energy_and_stay(form, energy):
    learner, state, x, y = _setup(parameterisation=form, output_energy=energy, inference_lr=0.3)
    layers = learner.layers(state.network)
    start = learner.feedforward(layers, x)
    relaxed = learner.relax(state, x, None, steps=20)
    assert torch.count_nonzero(relaxed.energies) == 0
    for a, b in zip(start, relaxed.nodes):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_energy_starts_at_the_output_loss(form, energy):
    learner, state, x, y = _setup(parameterisation=form, output_energy=energy)
    first = learner.relax(state, x, y, steps=1).energies[0]
    assert torch.count_nonzero(first[:-1]) == 0
    out = state.network(x)
    loss = F.cross_entropy(out, y) if energy == "ce" else 0.5 * ((out - F.one_hot(y, 4)) ** 2).sum(1).mean()
    torch.testing.assert_close(first[-1], loss)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_relaxation_never_raises_the_energy_for_a_small_step(form, energy):
    learner, state, x, y = _setup(parameterisation=form, output_energy=energy, inference_lr=0.05,
                                  inference_momentum=0.0)
    relaxed = learner.relax(state, x, y, steps=100)
    total = relaxed.energies.sum(1)
    assert total[-1] < 0.95 * total[0]
    assert (total[1:] <= total[:-1] + 1e-12).all(), total
    # the clamped nodes never move: the input, and the output at its target
    torch.testing.assert_close(relaxed.nodes[0], x, rtol=0, atol=0)
    start = learner.feedforward(learner.layers(state.network), x)[-1]
    torch.testing.assert_close(relaxed.nodes[-1], learner.clamp(start, y, 4), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)   # every one a network may have
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_analytic_gradients_match_autograd(activation, form, energy):
    learner, state, x, y = _setup(activation, parameterisation=form, output_energy=energy)
    layers = learner.layers(state.network)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        nodes = learner.feedforward(layers, x)
        nodes[-1] = learner.clamp(nodes[-1], y, 4)
        nodes = [n if k in (0, len(nodes) - 1) else n + 0.3 * torch.randn(n.shape, generator=gen, dtype=n.dtype)
                 for k, n in enumerate(nodes)]
        errs = learner.errors(layers, nodes, free_output=False)
        node_grads = learner.node_gradients(layers, nodes, errs)
        weight_grads = learner.weight_gradients(layers, errs)
    hidden = [n.clone().requires_grad_(True) for n in nodes[1:-1]]
    params = [p for layer in layers for p in (layer.linear.weight, layer.linear.bias)]
    total = learner.layer_energies(layers, [nodes[0], *hidden, nodes[-1]]).sum()
    auto = torch.autograd.grad(total, hidden + params)
    for analytic, reference in zip(node_grads, auto[:len(hidden)]):
        # per sample: the batch-mean energy's gradient times the batch size
        torch.testing.assert_close(analytic, reference * len(x))
    for (gw, gb), rw, rb in zip(weight_grads, auto[len(hidden)::2], auto[len(hidden) + 1::2]):
        torch.testing.assert_close(gw, rw)
        torch.testing.assert_close(gb, rb)


def _weak_nudge(form, energy, activation="tanh"):
    """PC's update (times 1/beta) at the equilibrium of a weak nudge, the relaxed output error, and the
    batch's output loss at the feed-forward values."""
    learner, state, x, y = _setup(activation, parameterisation=form, output_energy=energy, beta=1e-3,
                                  inference_lr=0.2)
    layers = learner.layers(state.network)
    relaxed = learner.relax(state, x, y, steps=400)
    with torch.no_grad():
        errs = learner.errors(layers, relaxed.nodes, free_output=False)
        pc = [gw for gw, _ in learner.weight_gradients(layers, errs)]
    out = state.network(x)
    loss = F.cross_entropy(out, y) if energy == "ce" else 0.5 * ((out - F.one_hot(y, 4)) ** 2).sum(1).mean()
    return pc, errs[-1].e / learner.beta, out, loss, [layer.linear.weight for layer in layers]


def _cosine(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_weakly_nudged_equilibrium_update_approaches_backprop(form, energy, activation):
    """Whittington & Bogacz 2017: with a small output nudge (beta -> 0, the update scaled by 1/beta) and the
    nodes relaxed to equilibrium, PC's weight update points along backprop's gradient of the output loss.
    Not exactly: the clamped output node shares its error with the hidden nodes, so the output error at
    equilibrium is a per-sample shrunk copy of backprop's (next test), whatever beta; 0.983-0.9997 here."""
    pc, _, _, loss, weights = _weak_nudge(form, energy, activation)
    for k, (g, ref) in enumerate(zip(pc, torch.autograd.grad(loss, weights))):
        assert _cosine(g, ref) > 0.98, f"layer {k}: cosine {_cosine(g, ref):.5f}"
        assert 0.3 < float(g.norm() / ref.norm()) < 1.0


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("energy", ENERGIES)
def test_weakly_nudged_equilibrium_update_is_backprop_of_its_own_output_error(form, energy):
    """At that equilibrium every hidden error is the output error carried down by W^T (the fixed point of
    dE/dn = 0), so PC's update is backprop's gradient for the output error PC settled on."""
    pc, e_out, out, _, weights = _weak_nudge(form, energy)
    reference = torch.autograd.grad(-(e_out * out).sum() / len(out), weights)
    for k, (g, ref) in enumerate(zip(pc, reference)):
        assert _cosine(g, ref) > 0.99999, f"layer {k}"
        torch.testing.assert_close(g, ref, rtol=0, atol=5e-3 * float(ref.abs().max()))


@pytest.mark.parametrize("form", FORMS)
def test_each_layers_weight_update_reads_only_its_own_nodes(form):
    """Given the relaxed nodes, perturbing any other layer's weights leaves a layer's update unchanged."""
    learner, state, x, y = _setup(parameterisation=form, widths=(12, 10, 8))
    layers = learner.layers(state.network)
    nodes = learner.relax(state, x, y, steps=10).nodes
    with torch.no_grad():
        reference = learner.weight_gradients(layers, learner.errors(layers, nodes, free_output=False))
    for j in range(len(layers)):
        perturbed = copy.deepcopy(state)
        player = learner.layers(perturbed.network)
        with torch.no_grad():
            player[j].linear.weight.add_(torch.randn(player[j].linear.weight.shape, dtype=torch.float64))
            player[j].linear.bias.add_(1.0)
            grads = learner.weight_gradients(player, learner.errors(player, nodes, free_output=False))
        for k, ((gw, gb), (rw, rb)) in enumerate(zip(grads, reference)):
            if k == j:
                assert not torch.equal(gw, rw)
                continue
            torch.testing.assert_close(gw, rw, rtol=0, atol=0, msg=f"layer {k} depends on layer {j}")
            torch.testing.assert_close(gb, rb, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["standard", "incremental"])
def test_prediction_is_a_forward_pass(mode):
    learner, state, x, y = _setup("relu", mode=mode, dtype=torch.float32)
    for _ in range(3):
        state, _ = learner.update(state, (x, y))
    scores = learner.predict(state, x)
    with torch.no_grad():
        torch.testing.assert_close(scores, state.network(x), rtol=0, atol=0)
        # and it is the free relaxation's output node, which nothing moves
        torch.testing.assert_close(scores, learner.relax(state, x, None).nodes[-1], rtol=0, atol=0)


@pytest.mark.slow
def test_the_compiled_relaxation_trains_as_the_eager_one():
    """torch_compile=true: three standard-PC steps give the eager steps' weights (float32 rounding
    apart: the compiled kernels fuse and reorder the element-wise work)."""
    kwargs = dict(dtype=torch.float32, inference_momentum=0.5, n_inference_steps=4)
    learner, state, x, y = _setup("gelu", **kwargs)
    compiled, compiled_state, _, _ = _setup("gelu", torch_compile=True, **kwargs)
    for _ in range(3):
        state, metrics = learner.update(state, (x, y))
        compiled_state, compiled_metrics = compiled.update(compiled_state, (x, y))
    assert compiled_metrics["energy"] == pytest.approx(metrics["energy"], rel=1e-4)
    for p, q in zip(state.network.parameters(), compiled_state.network.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_flop_counted_step_leaves_later_steps_compiled():
    """fit counts FLOPs on each epoch's first step under FlopCounterMode; dynamo, called under it,
    would skip the compiled relaxation for good. That step runs eagerly and the next one compiles."""
    from torch._dynamo.utils import counters
    from torch.utils.flop_counter import FlopCounterMode
    torch._dynamo.reset()
    counters.clear()
    learner, state, x, y = _setup("gelu", dtype=torch.float32, torch_compile=True, n_inference_steps=3)
    with FlopCounterMode(display=False) as flops:
        state, _ = learner.update(state, (x, y))
    assert flops.get_total_flops() > 0
    assert counters["frames"]["ok"] == 0
    learner.update(state, (x, y))
    assert counters["frames"]["ok"] >= 1


def test_incremental_with_one_step_and_frozen_nodes_is_a_head_only_gradient_step():
    """iPC with T = 1 and gamma = 0 takes one step at the feed-forward state, where only the output
    error is nonzero: the head moves as backprop would move it; the blocks do not move."""
    learner, state, x, y = _setup(mode="incremental", n_inference_steps=1, inference_lr=0.0, output_energy="ce",
                                  optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0})
    reference = copy.deepcopy(state.network)
    loss = F.cross_entropy(reference(x), y)
    loss.backward()
    learner.update(state, (x, y))
    for block, ref in zip(state.network.blocks, reference.blocks):
        for p, q in zip(block.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(state.network.head.parameters(), reference.head.parameters()):
        torch.testing.assert_close(p, q - 0.1 * q.grad)


def test_block_metrics_report_each_layers_energy_before_and_after_relaxation():
    learner, state, x, y = _setup(inference_lr=0.1)
    metrics = learner.block_metrics(state, x, y)
    before, after = metrics["energy_before"], metrics["energy_after"]
    assert len(before) == len(after) == state.network.n_blocks + 1     # the blocks, then the head
    assert before[:-1] == [0.0, 0.0] and before[-1] > 0
    assert all(a > 0 for a in after[:-1]) and sum(after) < sum(before)
    assert learner.energy_trajectory(state, x, y).shape == (learner.n_inference_steps + 1, 3)


@pytest.mark.parametrize("mode", ["standard", "incremental"])
def test_both_modes_learn_digits(mode):
    data = load_dataset("digits", seed=0)
    result = fit(make_learner("predictive_coding", mode=mode), "mlp_small", data, seed=0,
                 loop=LoopConfig(n_epochs=3, progress=False, count_flops=False))
    assert float(result.results["accuracy"].sel(split="test")[-1]) > 0.85      # chance: 0.1
    assert {"block_energy_before", "block_energy_after", "train_loss"} <= set(result.results.data_vars)


def _conv_setup(seed=0, n=8, **params):
    """A small bias-carrying convnet without batch norm on 1x8x8 inputs (float64), a learner and a batch."""
    spec = NetworkSpec(kind="convnet", channels=(3, 4), pool=(2, 1), widths=(), batch_norm=False,
                       activation="tanh").resolve((1, 8, 8), 4)
    net = build(spec, seed).to(torch.float64)
    learner = make_learner("predictive_coding", **params)
    info = DataInfo(input_shape=(1, 8, 8), n_classes=4, n_train=64, batch_size=n, steps_per_epoch=4, n_epochs=1)
    state = learner.init(net, info, seed)
    gen = torch.Generator().manual_seed(seed)
    return learner, state, torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64), \
        torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.parametrize("mode", ["standard", "incremental"])
def test_the_autograd_path_trains_an_mlp_as_the_analytic_kernel(mode):
    from learners.predictive_coding import _AnyBlocks
    learner, state, x, y = _setup(mode=mode, inference_momentum=0.5, n_inference_steps=4)
    twin = copy.deepcopy(state)
    learner.update(state, (x, y))                          # the Linear kernel
    path = _AnyBlocks(learner, twin.network)
    _, _, last, _ = path.relax(twin, x, y, 4, learn=mode == "incremental", record=False)
    if mode == "standard":
        path.weight_step(twin, last)
    for p, q in zip(state.network.parameters(), twin.network.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_on_a_convnet_free_feedforward_values_have_zero_energy_and_stay():
    learner, state, x, _ = _conv_setup()
    relaxed = learner.relax(state, x, None)
    assert torch.all(relaxed.energies.abs() < 1e-12)
    forward = [x]
    for f in list(state.network.blocks) + [state.network.head]:
        forward.append(f(forward[-1]))
    for n, m in zip(relaxed.nodes, forward):
        torch.testing.assert_close(n, m.detach())


def test_on_a_convnet_relaxation_lowers_the_energy_and_weights_update_locally():
    learner, state, x, y = _conv_setup(inference_lr=0.05, n_inference_steps=10)
    total = learner.relax(state, x, y).energies.sum(1)
    assert torch.all(total[1:] <= total[:-1] + 1e-12) and total[-1] < total[0]
    # block 0's weight step reads only n_0 and n_1: changing block 1's weights after relaxation
    # (with the nodes held) leaves block 0's gradient as it was
    from learners.predictive_coding import _AnyBlocks
    path = _AnyBlocks(learner, state.network)
    nodes = learner.relax(state, x, y).nodes
    energy = path.energies(nodes, False).sum()
    block0 = list(state.network.blocks[0].parameters())
    before = torch.autograd.grad(energy, block0)
    with torch.no_grad():
        for p in state.network.blocks[1].parameters():
            p.add_(1.0)
    after = torch.autograd.grad(path.energies(nodes, False).sum(), block0)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_a_convnet_learns_digits():
    data = load_dataset("digits", seed=0)
    net = {"kind": "convnet", "channels": [8, 16], "pool": [2, 2], "widths": [], "batch_norm": False}
    # FLOPs counted, as in every run: the counter's hooks and the relaxation's gradients coexist
    result = fit(make_learner("predictive_coding", optimizer={"name": "adam", "lr": 3e-3}), net, data, seed=0,
                 loop=LoopConfig(n_epochs=5, progress=False))
    assert float(result.results["accuracy"].sel(split="test")[-1]) > 0.85      # chance: 0.1


def test_batch_norm_wb_on_convnets_and_zero_beta_are_refused():
    data = load_dataset("digits", seed=0)
    with pytest.raises(ConfigError, match="batch norm .*network.batch_norm=false"):
        fit(make_learner("predictive_coding"), {"preset": "smallconv", "widths": [16]}, data,
            loop=LoopConfig(n_epochs=1, progress=False))
    with pytest.raises(ConfigError, match="parameterisation='wb' runs MLPs"):
        _conv_setup(parameterisation="wb")
    with pytest.raises(ConfigError, match="beta"):
        _setup(beta=0.0)
    with pytest.raises(ConfigError, match="mode"):
        _setup(mode="zil")
