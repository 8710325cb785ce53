"""Feedback alignment, DFA, sign symmetry, DRTP: each rule's hidden error is the one its paper defines,
everything else is backprop's (the head's gradient, batch norm, pooling), the feedback is fixed where it
should be, and every mode learns the digits."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.app import learner_config
from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import DataInfo, get_learner_class, make_learner
from learners.feedback_alignment import MODES, SIGN_MODES, FeedbackAlignment, upper_weights
from networks import NetworkSpec, build
from tests.learners._small_nets import random_batch, small_state

MLP = NetworkSpec(kind="mlp", widths=(7, 5), activation="tanh")
CONV = NetworkSpec(kind="convnet", channels=(4, 6), pool=(2, 1), adaptive_pool=2, widths=(12,),
                   batch_norm=True, activation="leaky_relu")
SHAPES = {"mlp": (6,), "convnet": (1, 12, 12)}
N_CLASSES = 3


def _setup(mode, spec=MLP, seed=0, **params):
    return small_state("feedback_alignment", spec, SHAPES[spec.kind], N_CLASSES, seed, mode=mode, **params)


def _batch(spec=MLP, seed=0, n=16):
    return random_batch(SHAPES[spec.kind], N_CLASSES, seed, n)


def _rule_grads(learner, state, x, y):
    """The rule's gradients on a copy (a training forward moves batch-norm statistics)."""
    state = copy.deepcopy(state)
    state.network.train()
    state.network.zero_grad(set_to_none=True)
    learner.backward(state, x, y)
    return {name: p.grad.clone() for name, p in state.network.named_parameters()}


def _backprop_grads(network, x, y):
    net = copy.deepcopy(network)
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _sgd(lr=0.1):
    return {"name": "sgd", "lr": lr, "momentum": 0.0}


# ------------------------------------------------------------------ the plumbing is backprop's

@pytest.mark.parametrize("spec", [MLP, CONV], ids=["mlp", "conv"])
def test_fa_with_the_forward_weights_as_feedback_is_backprop(spec):
    """B = W (the transposed matrix of the math: B has W's shape and errors go back as Bᵀ δ), copied
    before every step: three SGD steps give backprop's weights, batch norm and pooling included."""
    learner, state = _setup("fa", spec, optimizer=_sgd())
    bp = make_learner("backprop", optimizer=_sgd())
    bp_state = bp.init(copy.deepcopy(state.network), DataInfo(input_shape=SHAPES[spec.kind], n_classes=N_CLASSES,
                                                               n_train=64, batch_size=16), 0)
    for step in range(3):
        batch = _batch(spec, step)
        with torch.no_grad():
            for B, W in zip(state.feedback, upper_weights(state.network)):
                B.copy_(W)
        ours, true = _rule_grads(learner, state, *batch), _backprop_grads(state.network, *batch)
        for name in true:
            torch.testing.assert_close(ours[name], true[name], rtol=0, atol=1e-6, msg=name)
        learner.update(state, batch)
        bp.update(bp_state, batch)
    for a, b in zip(state.network.parameters(), bp_state.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(state.network.buffers(), bp_state.network.buffers()):   # batch-norm statistics
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", SIGN_MODES)
@pytest.mark.parametrize("spec", [MLP, CONV], ids=["mlp", "conv"])
def test_sign_modes_with_w_magnitudes_are_backprop(mode, spec):
    """The sign-symmetry path with its magnitude overridden by |W| uses |W| ⊙ sign(W) = W: backprop."""
    learner, state = _setup(mode, spec)
    state.feedback = [W.detach().abs() for W in upper_weights(state.network)]
    x, y = _batch(spec)
    ours, true = _rule_grads(learner, state, x, y), _backprop_grads(state.network, x, y)
    for name in true:
        torch.testing.assert_close(ours[name], true[name], rtol=0, atol=1e-10, msg=name)


def test_conv_input_gradient_is_the_transposed_convolution_with_b():
    """A conv layer's input gradient under FA is conv_transpose2d(δ, B); its weight gradient is backprop's."""
    from learners.feedback_alignment import _FeedbackConv2d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 9, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    out = _FeedbackConv2d.apply(x, W, b, B, (2, 2), (1, 1), (1, 1), 1)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    gx, gw, gb = torch.autograd.grad(out, (x, W, b), g)
    torch.testing.assert_close(gx, F.conv_transpose2d(g, B, stride=2, padding=1))
    x2, W2, b2 = (t.detach().requires_grad_() for t in (x, W, b))
    gx_bp, gw_bp, gb_bp = torch.autograd.grad(F.conv2d(x2, W2, b2, stride=2, padding=1), (x2, W2, b2), g)
    torch.testing.assert_close(gw, gw_bp)
    torch.testing.assert_close(gb, gb_bp)
    assert not torch.allclose(gx, gx_bp)


def test_dfa_on_one_hidden_layer_is_the_hand_formula_and_with_b_equal_w2_is_backprop():
    spec = NetworkSpec(kind="mlp", widths=(5,), activation="tanh")
    learner, state = _setup("dfa", spec)
    x, y = _batch(spec)
    net = state.network
    W1, b1 = net.weight_layer(0).weight, net.weight_layer(0).bias
    B = state.feedback[0]                                        # (n_classes, 5)
    assert tuple(B.shape) == (N_CLASSES, 5)
    ours = _rule_grads(learner, state, x, y)
    with torch.no_grad():
        a = x @ W1.T + b1
        h = torch.tanh(a)
        logits = net.head(h)
        e = (torch.softmax(logits, 1) - F.one_hot(y, N_CLASSES).double()) / len(x)   # ∂(mean CE)/∂logits
        delta = (e @ B) * (1 - h ** 2)                           # (B_1ᵀ e) ⊙ f'(a), samples as rows
    torch.testing.assert_close(ours["blocks.0.1.weight"], delta.T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours["blocks.0.1.bias"], delta.sum(0), rtol=0, atol=1e-12)
    # B_1 = W_2 (stored as n_classes x width, the math's W_2ᵀ): exactly backprop
    state.feedback[0] = net.head.weight.detach().clone()
    ours, true = _rule_grads(learner, state, x, y), _backprop_grads(net, x, y)
    for name in true:
        torch.testing.assert_close(ours[name], true[name], rtol=0, atol=1e-12, msg=name)


def test_dfa_with_bce_outputs_projects_the_sigmoid_error():
    """output_loss=bce: e = (sigmoid(a) - y*) / (N C), the gradient of Torch7's element-mean BCE, and the
    hidden update is (B e) ⊙ f'(a) hᵀ with that e; backprop's loss is the same BCE."""
    spec = NetworkSpec(kind="mlp", widths=(5,), activation="tanh")
    learner, state = _setup("dfa", spec, output_loss="bce")
    x, y = _batch(spec)
    net = state.network
    W1, b1 = net.weight_layer(0).weight, net.weight_layer(0).bias
    ours = _rule_grads(learner, state, x, y)
    with torch.no_grad():
        h = torch.tanh(x @ W1.T + b1)
        e = (torch.sigmoid(net.head(h)) - F.one_hot(y, N_CLASSES).double()) / (len(x) * N_CLASSES)
        delta = (e @ state.feedback[0]) * (1 - h ** 2)
    torch.testing.assert_close(ours["blocks.0.1.weight"], delta.T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours["head.weight"], e.T @ h, rtol=0, atol=1e-12)
    bp = make_learner("backprop", output_loss="bce")
    bp_state = bp.init(copy.deepcopy(net), DataInfo(input_shape=(6,), n_classes=N_CLASSES, n_train=64,
                                                    batch_size=16), 0)
    loss, _ = bp.objective(bp_state, x, y)
    torch.testing.assert_close(loss, F.binary_cross_entropy(torch.sigmoid(net(x)), F.one_hot(y, N_CLASSES).double()))


@pytest.mark.parametrize("mode", ["fa", "dfa"])
def test_zero_forward_init_zeroes_every_weight_and_the_feedback_breaks_the_symmetry(mode):
    """Nøkland's tanh nets start from all-zero weights: the first step moves only the first layer (every
    later layer sees h = tanh(0) = 0), and its hidden units differ because their feedback rows do."""
    spec = NetworkSpec(kind="mlp", widths=(5, 4), activation="tanh")
    learner, state = _setup(mode, spec, zero_forward_init=True, optimizer=_sgd())
    assert all(float(p.detach().abs().max()) == 0 for p in state.network.parameters())
    assert all(float(B.abs().max()) > 0 for B in state.feedback)
    x, y = _batch(spec)
    learner.update(state, (x, y))
    W1 = state.network.weight_layer(0).weight
    assert float(W1.abs().max()) > 0 and not torch.allclose(W1[0], W1[1])
    assert float(state.network.weight_layer(1).weight.abs().max()) == 0


def test_zero_forward_init_refuses_the_sign_modes():
    with pytest.raises(ConfigError, match="zero_forward_init=true leaves mode='usf' no signs"):
        _setup("usf", zero_forward_init=True)


def test_zeroed_dfa_learns_digits_with_rmsprop_and_bce(digits):
    """Nøkland's MNIST recipe (tanh, zero init, sigmoid outputs with BCE, RMSprop) on the digits."""
    learner = make_learner("feedback_alignment", mode="dfa", zero_forward_init=True, output_loss="bce",
                           feedback_init="nokland", optimizer={"name": "rmsprop", "lr": 1e-3})
    result = fit(learner, {"preset": "mlp_small", "activation": "tanh"}, digits, seed=0,
                 loop=LoopConfig(n_epochs=6, progress=False))
    assert float(result.results["accuracy"].sel(split="test")[-1]) > 0.85


@pytest.mark.parametrize("mode", ["sdfa", "drtp"])
def test_sdfa_and_drtp_project_the_sign_of_the_error_or_the_target(mode):
    spec = NetworkSpec(kind="mlp", widths=(5,), activation="tanh")
    learner, state = _setup(mode, spec)
    x, y = _batch(spec)
    net = state.network
    ours = _rule_grads(learner, state, x, y)
    with torch.no_grad():
        h = torch.tanh(net.weight_layer(0)(x))
        target = F.one_hot(y, N_CLASSES).double()
        source = torch.sign(torch.softmax(net.head(h), 1) - target) if mode == "sdfa" else target
        delta = (source @ state.feedback[0] / len(x)) * (1 - h ** 2)
    torch.testing.assert_close(ours["blocks.0.1.weight"], delta.T @ x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", [MLP, CONV], ids=["mlp", "conv"])
def test_the_output_layer_learns_with_backprops_gradient_in_every_mode(mode, spec):
    learner, state = _setup(mode, spec)
    x, y = _batch(spec)
    ours, true = _rule_grads(learner, state, x, y), _backprop_grads(state.network, x, y)
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(ours[name], true[name], rtol=0, atol=1e-12, msg=name)
    hidden = [name for name in true if name.startswith("blocks.") and name.endswith(".weight")
              and ours[name].dim() > 1]
    assert any(not torch.allclose(ours[n], true[n]) for n in hidden), "hidden blocks learned like backprop"


# ------------------------------------------------------------------ the feedback

@pytest.mark.parametrize("mode", ["fa", "usf", "frsf", "dfa", "sdfa", "drtp"])
def test_fixed_feedback_never_changes_and_is_never_trained(mode):
    learner, state = _setup(mode, CONV, optimizer={"name": "adam", "lr": 0.05})
    before = [B.clone() for B in state.feedback]
    params = {id(p) for p in state.network.parameters()}
    in_optimizer = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    for step in range(3):
        learner.update(state, _batch(CONV, step))
        for B, B0 in zip(state.feedback, before):
            assert torch.equal(B, B0)
            assert not B.requires_grad and B.grad is None
            assert id(B) not in params and id(B) not in in_optimizer
            assert all(B.data_ptr() != p.data_ptr() for p in state.network.parameters())


def test_sign_modes_share_w_signs_after_every_step_and_brsf_redraws_its_magnitudes():
    magnitudes = {}
    for mode in SIGN_MODES:
        learner, state = _setup(mode, CONV, optimizer=_sgd(lr=2.0))   # a large step flips some signs
        history = []
        flipped = False
        for step in range(3):
            signs = [torch.sign(W).clone() for W in upper_weights(state.network)]
            learner.update(state, _batch(CONV, step))
            for B, W, s in zip(learner.feedback_matrices(state), upper_weights(state.network), signs):
                assert torch.equal(torch.sign(B), torch.sign(W))
                flipped |= not torch.equal(torch.sign(W), s)
            history.append([m.clone() for m in state.feedback])
        assert flipped, mode
        magnitudes[mode] = history
    for first, second in zip(magnitudes["brsf"][0], magnitudes["brsf"][1]):
        assert not torch.equal(first, second)
        assert (first >= 0).all() and (second >= 0).all()
    for first, second in zip(magnitudes["frsf"][0], magnitudes["frsf"][2]):
        assert torch.equal(first, second)


def test_feedback_init_follows_biotorch_by_default_and_nokland_on_request():
    _, state = _setup("fa", MLP)
    for B, W in zip(state.feedback, upper_weights(state.network)):
        fan_out, fan_in = W.shape
        assert B.shape == W.shape and B.abs().max() <= math.sqrt(6 / (fan_in + fan_out))   # xavier_uniform
    _, state = _setup("usf", MLP)
    for s, W in zip(state.feedback, upper_weights(state.network)):
        torch.testing.assert_close(float(s), math.sqrt(2 / sum(W.shape)))                 # its std
    _, state = _setup("dfa", MLP, feedback_init="nokland")
    for B, width in zip(state.feedback, MLP.widths):
        assert B.shape == (N_CLASSES, width) and B.abs().max() <= 1 / math.sqrt(width)
        assert B.abs().max() > 0.8 / math.sqrt(width)                                     # U[-1/sqrt(n), 1/sqrt(n)]


def test_feedback_is_seeded_independent_of_the_weights_and_of_the_global_stream():
    before = torch.random.get_rng_state()
    learner, a = _setup("brsf", MLP, seed=1)
    learner.update(a, _batch())
    assert torch.equal(torch.random.get_rng_state(), before)
    _, b = _setup("brsf", MLP, seed=1)
    learner.update(b, _batch())
    _, c = _setup("brsf", MLP, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.feedback, b.feedback))
    assert not any(torch.equal(p, q) for p, q in zip(a.feedback, c.feedback))
    # not drawn from the network's own init stream: at the start B and W are about 90 degrees apart
    _, state = _setup("fa", NetworkSpec(kind="mlp", widths=(64, 64)), seed=0)
    for angle in FeedbackAlignment().block_metrics(state, *_batch(NetworkSpec(kind="mlp", widths=(64, 64))))[
            "weight_angle"]:
        assert 75 < angle < 105


# ------------------------------------------------------------------ locality and tags

def test_drtp_hidden_update_does_not_depend_on_the_head():
    learner, state = _setup("drtp", MLP)
    x, y = _batch()
    reference = _rule_grads(learner, state, x, y)
    with torch.no_grad():
        state.network.head.weight.add_(torch.randn(state.network.head.weight.shape,
                                                   generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    perturbed = _rule_grads(learner, state, x, y)
    for name in reference:
        if name.startswith("blocks."):
            assert torch.equal(reference[name], perturbed[name]), name
    assert not torch.equal(reference["head.weight"], perturbed["head.weight"])


def test_dfa_update_depends_on_later_blocks_through_the_output_error():
    """Why dfa is tagged global: no error passes back through W, but e depends on every block."""
    learner, state = _setup("dfa", MLP)
    x, y = _batch()
    reference = _rule_grads(learner, state, x, y)
    with torch.no_grad():
        state.network.weight_layer(1).weight.mul_(-1.0)
    assert not torch.equal(reference["blocks.0.1.weight"], _rule_grads(learner, state, x, y)["blocks.0.1.weight"])


def test_tags_and_the_drtp_learner():
    fa, drtp = get_learner_class("feedback_alignment"), get_learner_class("drtp")
    assert fa.tags.locality == "global" and fa.tags.crosses_blocks
    assert drtp.tags.locality == "blockwise" and not drtp.tags.crosses_blocks
    assert drtp().mode == "drtp" and issubclass(drtp, fa)
    wrong = make_learner("drtp", mode="fa")
    with pytest.raises(ConfigError, match=r"^drtp\.mode='fa' is not known; allowed: drtp$"):
        wrong.init(build(MLP.resolve((6,), 3), 0), DataInfo(input_shape=(6,), n_classes=3, n_train=8), 0)


@pytest.mark.parametrize("key,value,allowed", [
    ("mode", "bp", "is not known; allowed: fa, usf, brsf, frsf, dfa, sdfa, drtp"),
    ("feedback_init", "xavier", "is not known; allowed: biotorch, nokland, frenkel"),
    ("dfa_conv", "shared", "is not known; allowed: dense, dense_prepool"),
    ("bn_refresh_batches", -1, "is out of range; allowed: >= 0")])
def test_unknown_choices_are_clear_errors(key, value, allowed):
    params = {"mode": "fa", key: value}
    with pytest.raises(ConfigError, match="^" + re.escape(f"feedback_alignment.{key}={value!r} {allowed}") + "$"):
        _setup(params.pop("mode"), **params)


@pytest.mark.parametrize("name", ["feedback_alignment", "drtp"])
def test_config_file_equals_the_class_defaults(name):
    params = learner_config(name)
    assert params.pop("name") == name
    defaults = get_learner_class(name)().hyperparameters()
    for key, value in params.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                assert defaults[key][sub] == v, f"{key}.{sub}"
        else:
            assert defaults[key] == value, key
    assert set(defaults) - set(params) == set()


# ------------------------------------------------------------------ metrics

def test_block_metrics_leave_the_state_unchanged():
    learner, state = _setup("fa", CONV)
    learner.update(state, _batch(CONV))
    before = copy.deepcopy(state.network.state_dict())
    grads = [p.grad.clone() for p in state.network.parameters()]
    metrics = learner.block_metrics(state, *_batch(CONV, 5))
    assert set(metrics) == {"signal_angle", "weight_angle", "weight_ratio"}
    assert all(len(v) == 3 and all(np.isfinite(v)) for v in metrics.values())
    assert all(torch.equal(before[k], v) for k, v in state.network.state_dict().items())   # incl. BN statistics
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, state.network.parameters()))
    assert state.network.training
    learner, state = _setup("dfa", CONV, dfa_conv="dense_prepool")
    metrics = learner.block_metrics(state, *_batch(CONV, 5))
    assert set(metrics) == {"signal_angle"} and all(0 <= a <= 180 for a in metrics["signal_angle"])


def test_the_frsf_angle_is_measured_on_the_signed_matrix():
    learner, state = _setup("frsf", MLP)
    angles = learner.block_metrics(state, *_batch())["weight_angle"]
    assert all(a < 60 for a in angles)           # |M| ⊙ sign(W) leans towards W; |M| alone would not


# ------------------------------------------------------------------ learning

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


# DRTP and sDFA have no error that shrinks as a sample is learned, so with ReLU the hidden activity grows
# without bound; they are run, as by Frenkel et al., with tanh
LEARNS = {
    "fa": ({}, "mlp_small", 6), "usf": ({}, "mlp_small", 6), "brsf": ({}, "mlp_small", 6),
    "frsf": ({}, "mlp_small", 6), "dfa": ({}, "mlp_small", 6),
    "sdfa": ({"optimizer": {"lr": 0.01}}, {"preset": "mlp_small", "activation": "tanh"}, 10),
    "drtp": ({"optimizer": {"lr": 0.003}}, {"preset": "mlp_small", "activation": "tanh"}, 6),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_learns_digits(mode, digits):
    params, network, epochs = LEARNS[mode]
    result = fit(make_learner("feedback_alignment", mode=mode, **params), network, digits, seed=0,
                 loop=LoopConfig(n_epochs=epochs, progress=False))
    acc = float(result.results["accuracy"].sel(split="test")[-1])
    assert acc > 0.85, f"{mode}: {acc:.3f}"


@pytest.mark.parametrize("params", [{"mode": "fa"}, {"mode": "dfa", "dfa_conv": "dense_prepool"}], ids=["fa", "dfa"])
def test_learns_on_smallconv(params, digits):
    result = fit(make_learner("feedback_alignment", **params), "smallconv", digits, seed=0,
                 loop=LoopConfig(n_epochs=2, progress=False))
    assert float(result.results["accuracy"].sel(split="test")[-1]) > 0.9


def test_fa_weights_turn_towards_the_feedback(digits):
    result = fit(make_learner("feedback_alignment", mode="fa"), "mlp_small", digits, seed=0,
                 loop=LoopConfig(n_epochs=10, progress=False))
    weight = result.results["block_weight_angle"].values          # (epoch, block)
    signal = result.results["block_signal_angle"].values
    assert np.all(weight[0] > 80) and np.all(weight[-1] < weight[0] - 5), weight
    assert np.all(signal[-1] < signal[0] - 10), signal               # the error turns towards backprop's


@pytest.mark.parametrize("mode", ["fa", "dfa"])
def test_the_alignment_observer_applies(mode, digits):
    result = fit(make_learner("feedback_alignment", mode=mode), "mlp_small", digits, seed=0,
                 loop=LoopConfig(n_epochs=1, progress=False, alignment=True))
    cosine = result.results["block_align_cosine"].values
    assert cosine.shape == (1, 2) and np.all(np.isfinite(cosine)) and np.all(cosine < 1 - 1e-4)


# ------------------------------------------------------------------ the classroom demo

def test_alignment_demo(tmp_path):
    from experiments.demos import DEMOS, get_demo
    assert "alignment" in DEMOS
    numbers = get_demo("alignment").run(tmp_path, quick=True, seed=0)
    figure = Path(numbers["figure"])
    assert figure.is_file() and figure.stat().st_size > 5_000
    assert json.loads((tmp_path / "alignment.json").read_text())["figure"] == str(figure)
    fa = numbers["modes"]["fa"]
    assert np.mean(fa["weight_angle"]["last"]) < np.mean(fa["weight_angle"]["first"])
    assert np.mean(fa["signal_angle"]["last"]) < np.mean(fa["signal_angle"]["first"])
    assert "weight_angle" not in numbers["modes"]["dfa"]
    assert all(a < 60 for a in numbers["modes"]["usf"]["weight_angle"]["last"])
