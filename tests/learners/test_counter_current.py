"""Counter-Current Learning: pairing, stop-gradients, the local loss by hand, locality and learning."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from core.errors import ConfigError
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build



def _state(widths=(5, 4, 3), n_inputs=6, n_classes=2, seed=0, spec=None, **params):
    learner = make_learner("counter_current", **params)
    spec = spec or NetworkSpec(kind="mlp", widths=widths, input_shape=(n_inputs,), n_classes=n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=64, batch_size=16,
                    steps_per_epoch=4, n_epochs=2)
    return learner, learner.init(build(spec, seed), info, seed)


def _batch(n=16, shape=(6,), n_classes=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def _forward_layers(state):
    """F_1..F_L: the blocks, then the head."""
    return list(state.network.blocks) + [state.network.head]


def _reached(loss, modules) -> list[bool]:
    """For each module, whether ``loss`` sends a non-zero gradient to any of its parameters."""
    params = [list(m.parameters()) for m in modules]
    flat = [p for ps in params for p in ps]
    grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
    out, k = [], 0
    for ps in params:
        gs = grads[k:k + len(ps)]
        out.append(any(g is not None and g.abs().sum() > 0 for g in gs))
        k += len(ps)
    return out


# ------------------------------------------------------------------ pairing and stop-gradients

def test_feedback_pass_mirrors_the_forward_shapes():
    learner, state = _state()
    signals = learner.feedback_pass(state)
    # c_l has the shape of forward layer l's input, one row per class: (x, 5, 4, 3) widths
    assert [tuple(c.shape) for c in signals] == [(2, 6), (2, 5), (2, 4), (2, 3)]
    # G_l's weight is F_l's transposed shape
    for forward, mirror in zip(_forward_layers(state), state.feedback):
        w = next(m for m in forward.modules() if isinstance(m, torch.nn.Linear)).weight
        assert tuple(mirror.layer.weight.shape) == tuple(w.t().shape)


def test_layer_i_of_one_network_is_paired_with_layer_L_minus_i_of_the_other():
    """Forward layer l (from the input) meets feedback layer L-l (from the label): the top forward
    block learns from the feedback layer next to the label, the input pair from the last one."""
    learner, state = _state()
    x, y = _batch()
    pair_losses, _, _ = learner.losses(state, x, y)
    forward = _forward_layers(state)
    feedback_from_label = list(reversed(state.feedback))    # G_L first: it reads the label
    L = len(forward)
    assert len(pair_losses) == L
    for l in range(1, L):
        f = _reached(pair_losses[l], forward)
        g = _reached(pair_losses[l], feedback_from_label)
        assert f == [k == l - 1 for k in range(L)], f"pair {l} reaches forward layers {f}"
        assert g == [k == L - l - 1 for k in range(L)], f"pair {l} reaches feedback layers {g}"
    # the input pair (x, c_0) trains the last feedback layer only
    assert _reached(pair_losses[0], forward) == [False] * L
    assert _reached(pair_losses[0], feedback_from_label) == [k == L - 1 for k in range(L)]


def test_forward_loss_never_reaches_the_feedback_network_and_feedback_loss_never_the_forward():
    learner, state = _state()
    x, y = _batch()
    pair_losses, ce, _ = learner.losses(state, x, y)
    forward, feedback = _forward_layers(state), list(state.feedback)
    # the cross-entropy (the forward network's own loss) reaches the head only, no feedback layer
    assert _reached(ce, forward) == [False] * (len(forward) - 1) + [True]
    assert not any(_reached(ce, feedback))
    # the input-space pair (the feedback network's own loss) reaches no forward layer
    assert not any(_reached(pair_losses[0], forward))


def test_after_one_update_without_local_losses_only_the_head_has_gradient():
    """.grad after a real step: with lambda_C = 0 only the CE remains; it must leave every feedback
    weight and every hidden block untouched (the ablation: a readout on fixed random features)."""
    learner, state = _state(loss_scale_c=0.0)
    x, y = _batch()
    before = copy.deepcopy(state)
    learner.update(state, (x, y))
    for p in state.feedback.parameters():
        assert p.grad is not None and not p.grad.abs().sum()
    for p in state.network.blocks.parameters():
        assert not p.grad.abs().sum()
    assert any(p.grad.abs().sum() > 0 for p in state.network.head.parameters())
    for new, old in zip(state.network.blocks.parameters(), before.network.blocks.parameters()):
        torch.testing.assert_close(new, old, rtol=0, atol=0)
    for new, old in zip(state.feedback.parameters(), before.feedback.parameters()):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


def _step(learner, state, x, y):
    before = [p.detach().clone() for p in state.network.blocks[0].parameters()]
    learner.update(state, (x, y))
    return [p.detach() - b for p, b in zip(state.network.blocks[0].parameters(), before)]


@pytest.mark.parametrize("target", ["block1", "block2", "head"])
def test_no_gradient_crosses_a_forward_block(target):
    """Block 0's update is a function of its own pair alone: perturbing any forward layer above it
    (a later block or the head) leaves it unchanged, bit for bit."""
    learner, state = _state()
    x, y = _batch()
    perturbed = copy.deepcopy(state)
    module = {"block1": perturbed.network.blocks[1], "block2": perturbed.network.blocks[2],
              "head": perturbed.network.head}[target]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    for a, b in zip(_step(learner, state, x, y), _step(learner, perturbed, x, y)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_official_per_network_clip_couples_the_layers():
    """clip_scope=network (the official code) scales every layer by one norm over the whole network, so
    block 0's step does depend on the head's gradient; the default per-layer clip does not."""
    x, y = _batch()
    steps = {}
    for scope in ("layer", "network"):
        learner, state = _state(clip_scope=scope, clip_norm=1e-3)
        perturbed = copy.deepcopy(state)
        with torch.no_grad():
            for p in perturbed.network.head.parameters():
                p.mul_(50.0)
        steps[scope] = [torch.equal(a, b) for a, b in zip(_step(learner, state, x, y),
                                                           _step(learner, perturbed, x, y))]
    assert all(steps["layer"]) and not all(steps["network"])


def test_per_layer_clip_bounds_each_layers_step():
    learner, state = _state(clip_norm=0.01, optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0})
    x, y = _batch()
    before = [[p.detach().clone() for p in m.parameters()] for m in _forward_layers(state)]
    learner.update(state, (x, y))
    for module, old in zip(_forward_layers(state), before):
        step = torch.cat([(p.detach() - o).reshape(-1) for p, o in zip(module.parameters(), old)])
        assert step.norm() <= 0.01 * (1 + 1e-5)


# ------------------------------------------------------------------ the local loss by hand

def _tiny(local_loss):
    """x = [1, 2], F_1 = identity (ReLU keeps it), y = 1; G_2 (the head's mirror) chosen so that
    c_1[0] = [1, 0] and c_1[1] = [0, 0.5]; identity feedback activation."""
    spec = NetworkSpec(kind="mlp", widths=(2,), input_shape=(2,), n_classes=2, bias=False)
    learner, state = _state(spec=spec, local_loss=local_loss, feedback_activation="identity")
    with torch.no_grad():
        state.network.weight_layer(0).weight.copy_(torch.eye(2))
        state.feedback[1].layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    assert torch.equal(learner.feedback_pass(state)[1], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
    pair_losses, _, _ = learner.losses(state, x, y)
    return pair_losses[1].item()


def test_similarity_loss_by_hand():
    # S = a c^T = [1*1 + 2*0, 1*0 + 2*0.5] = [1, 1] against T = [0, 1]: MSE = (1 + 0) / 2 = 0.5;
    # times lambda_C = 0.5 and 256/d = 128
    assert _tiny("similarity_onehot") == pytest.approx(0.5 * 128 * 0.5)


def test_cosine_loss_by_hand():
    # a/|a| = [1, 2]/sqrt(5); the class signals are already orthogonal (their Gram matrix is I after
    # normalising) and one example's Gram matrix is [[1]]: only the first term is left
    cos = [1 / math.sqrt(5), 2 / math.sqrt(5)]
    mse = (cos[0] ** 2 + (cos[1] - 1) ** 2) / 2
    assert _tiny("cosine_onehot_decorr") == pytest.approx(0.5 * mse, rel=1e-6)


def test_l2_pair_loss_by_hand():
    # a - c[y] = [1, 2] - [0, 0.5] = [1, 1.5]: MSE = (1 + 2.25) / 2, times lambda_C
    assert _tiny("l2_pair") == pytest.approx(0.5 * 3.25 / 2)


def test_filter_target_drops_examples_already_right():
    """Examples with p(true class) > 0.9 contribute zero rows: when every example is, no pair loss
    moves a forward block."""
    learner, state = _state(filter_target=True)
    x, y = _batch()
    head = state.network.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 100.0]))     # everything predicted as class 1, surely
    y = torch.ones_like(y)
    pair_losses, _, _ = learner.losses(state, x, y)
    assert not any(_reached(sum(pair_losses[1:]), list(state.network.blocks)))
    learner_off, state_off = _state(filter_target=False)
    pair_losses, _, _ = learner_off.losses(state_off, x, y)
    assert all(_reached(sum(pair_losses[1:]), list(state_off.network.blocks)))


# ------------------------------------------------------------------ networks, refusals, metrics

def test_conv_blocks_are_mirrored_back_to_their_input_maps():
    spec = NetworkSpec(kind="convnet", channels=(4, 6), pool=(2, 2), widths=(8,), input_shape=(1, 8, 8),
                       n_classes=3, batch_norm=True)
    learner, state = _state(spec=spec)
    signals = learner.feedback_pass(state)
    assert [tuple(c.shape) for c in signals] == [(3, 1, 8, 8), (3, 4, 4, 4), (3, 6, 2, 2), (3, 8)]
    x, y = _batch(shape=(1, 8, 8), n_classes=3)
    state, metrics = learner.update(state, (x, y))
    assert all(math.isfinite(v) for v in metrics.values())
    assert tuple(learner.predict(state, x).shape) == (16, 3)


@pytest.mark.parametrize("spec,message", [
    (NetworkSpec(kind="mlp", widths=(4,), input_shape=(3,), n_classes=2, head=False), "network.head=true"),
    (NetworkSpec(kind="convnet", channels=(2,), kernel_size=2, widths=(), input_shape=(1, 4, 4), n_classes=2),
     "network.kernel_size=2 must be odd"),
])
def test_refuses_networks_it_cannot_mirror_in_one_line(spec, message):
    learner = make_learner("counter_current")
    info = DataInfo(input_shape=spec.input_shape, n_classes=2, n_train=8)
    with pytest.raises(ConfigError, match=message) as err:
        learner.init(build(spec, 0), info, 0)
    assert "\n" not in str(err.value)


def test_refuses_schedule_free_optimizers_in_one_line():
    learner = make_learner("counter_current", feedback_optimizer={"name": "adamw_schedulefree"})
    spec = NetworkSpec(kind="mlp", widths=(4,), input_shape=(3,), n_classes=2)
    with pytest.raises(ConfigError, match=r"^counter_current.feedback_optimizer.name='adamw_schedulefree' is not "
                                          r"supported; allowed: sgd, adam, adamw$"):
        learner.init(build(spec, 0), DataInfo(input_shape=(3,), n_classes=2, n_train=8), 0)


def test_block_metrics_are_cosines_per_block():
    learner, state = _state()
    x, y = _batch(n=40)
    metrics = learner.block_metrics(state, x, y)
    assert set(metrics) == {"pair_cosine", "weight_cosine"}
    for values in metrics.values():
        assert len(values) == 3 and all(-1 <= v <= 1 for v in values)


# ------------------------------------------------------------------ learning

def test_learns_digits_clearly_above_chance():
    data = load_dataset("digits", seed=0)
    result = fit(make_learner("counter_current"), "mlp_small", data, seed=0,
                 loop=LoopConfig(n_epochs=5, progress=False, count_flops=False))
    accuracy = float(result.results["accuracy"].sel(split="test")[-1])
    assert accuracy > 0.7, accuracy           # chance is 10%
    # the pairs align: each hidden block's activations point towards their class signal
    assert (result.results["block_pair_cosine"].values[-1] > 0.2).all()
