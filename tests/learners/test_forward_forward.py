"""Forward-forward and collaborative FF: the testable properties of specs/forward_forward.md."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import make_learner
from learners._ff_local import rms_normalize
from learners.base import DataInfo
from learners.forward_forward import sample_negative_labels
from networks import NetworkSpec, build



def _state(widths=(32, 24, 16), n_inputs=20, n_classes=4, seed=0, n_epochs=2, steps=10, **params):
    learner = make_learner("forward_forward", **params)
    spec = NetworkSpec(kind="mlp", widths=widths, input_shape=(n_inputs,), n_classes=n_classes)
    info = DataInfo(input_shape=(n_inputs,), n_classes=n_classes, n_train=steps * 16, batch_size=16,
                    steps_per_epoch=steps, n_epochs=n_epochs)
    return learner, learner.init(build(spec, seed), info, seed)


def _batch(n=16, n_inputs=20, n_classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_inputs, generator=g), torch.randint(0, n_classes, (n,), generator=g)


# ---------------------------------------------------------------- normalisation and embedding

def test_rms_normalisation_gives_unit_mean_square_and_ignores_positive_scale():
    h = torch.rand(7, 50, dtype=torch.float64) * 3
    out = rms_normalize(h)
    torch.testing.assert_close(out.pow(2).mean(1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(rms_normalize(h * 12.5), out, rtol=1e-6, atol=1e-9)


def test_label_embedding_replaces_first_pixels_and_neutral_label_is_uniform():
    learner, _ = _state(label_strength=2.0)
    x, y = _batch()
    emb = learner.embed(x, y, 4)
    expected = torch.zeros(16, 4)
    expected[torch.arange(16), y] = 2.0
    torch.testing.assert_close(emb[:, :4], expected)
    torch.testing.assert_close(emb[:, 4:], x[:, 4:])
    neutral = learner.embed(x, None, 4)
    torch.testing.assert_close(neutral[:, :4], torch.full((16, 4), 0.5))


def test_replace_embedding_refuses_inputs_smaller_than_the_label():
    with pytest.raises(ConfigError, match="label_mode=replace.*append"):
        _state(n_inputs=4, n_classes=4)


def test_unknown_choice_names_key_value_and_allowed():
    with pytest.raises(ConfigError, match=r"negatives='mirror'.*uniform, hard, permutation_unsafe"):
        _state(negatives="mirror")


# ---------------------------------------------------------------- negatives

@pytest.mark.parametrize("how", ["uniform", "hard"])
def test_negative_labels_never_equal_the_true_label(how):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (5000,), generator=g)
    logits = torch.randn(5000, 10, generator=g) * 3
    # a logit of the true class far above the others: the hard sampler must still never pick it
    logits[torch.arange(5000), y] += 50
    neg = sample_negative_labels(y, 10, how, g, logits)
    assert not (neg == y).any()
    assert set(neg.tolist()) == set(range(10))


def test_permutation_negatives_do_hit_the_true_label():
    """The check above can fail: mpezeshki's permutation scheme collides about 1/C of the time."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (5000,), generator=g)
    rate = (sample_negative_labels(y, 10, "permutation_unsafe", g) == y).float().mean().item()
    assert 0.07 < rate < 0.13


def test_hard_negatives_follow_softmax_over_the_wrong_labels():
    n = 60000
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]]).repeat(n, 1)
    y = torch.zeros(n, dtype=torch.long)
    neg = sample_negative_labels(y, 4, "hard", torch.Generator().manual_seed(3), logits)
    freq = torch.bincount(neg, minlength=4).double() / n
    expected = torch.softmax(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), 0)
    assert freq[0] == 0
    # binomial standard error at n = 60000 is below 0.002
    torch.testing.assert_close(freq[1:], expected, rtol=0, atol=0.01)


def test_hard_negative_training_reads_the_readout_logits():
    learner, state = _state(negatives="hard")
    with torch.no_grad():
        state.readout.weight.normal_(generator=torch.Generator().manual_seed(0))
    x, y = _batch()
    state, metrics = learner.update(state, (x, y))
    assert all(math.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------- goodness and readouts

def test_goodness_over_labels_batched_equals_one_pass_per_label():
    learner, state = _state()
    x, _ = _batch()
    batched = learner.goodness_over_labels(state, x)
    for c in range(4):
        per_label, _ = learner.forward_all(state, learner.embed(x, torch.full((16,), c), 4))
        for i, g in enumerate(per_label):
            torch.testing.assert_close(batched[i, :, c], g, rtol=1e-5, atol=1e-5)


def test_goodness_readout_excludes_the_first_block_by_default():
    x, _ = _batch()
    for first, blocks in [(1, [1, 2]), (0, [0, 1, 2])]:
        learner, state = _state(readout="goodness", readout_first_block=first)
        g = learner.goodness_over_labels(state, x)
        thetas = state.thresholds
        expected = sum(g[i] - thetas[i] for i in blocks)
        torch.testing.assert_close(learner.predict(state, x), expected)


def test_softmax_readout_reads_blocks_after_the_first_by_default():
    learner, state = _state(readout="softmax")
    assert state.readout.in_features == 24 + 16
    learner0, state0 = _state(readout="softmax", readout_first_block=0)
    assert state0.readout.in_features == 32 + 24 + 16
    x, _ = _batch()
    assert learner.predict(state, x).shape == (16, 4)


def test_readout_optimizer_has_its_own_settings():
    """Regression test for loeweX PR #7: the classifier was trained at the FF learning rate."""
    learner, state = _state(optimizer={"name": "sgd", "lr": 1e-3, "weight_decay": 3e-4},
                            readout_optimizer={"name": "sgd", "lr": 1e-2, "weight_decay": 3e-3})
    (group,) = state.readout_optimizer.param_groups
    assert (group["lr"], group["weight_decay"]) == (1e-2, 3e-3)
    assert group["params"] == [state.readout.weight]
    for opt in state.optimizers:
        assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (1e-3, 3e-4)
    before = state.readout.weight.detach().clone()
    learner.update(state, _batch())
    assert not torch.equal(before, state.readout.weight)


def test_fresh_block_goodness_is_about_half_the_threshold():
    """Spec property 1: N(0, 1/fan_in) weights on an RMS-normalised input give E[G] ~ N/2."""
    learner, state = _state(widths=(2000,), n_inputs=400, weight_init="hinton")
    x, _ = _batch(n=256, n_inputs=400)
    g, _ = learner.forward_all(state, learner.embed(x, None, 4))
    assert 0.35 * 2000 < g[0].mean().item() < 0.65 * 2000


# ---------------------------------------------------------------- peer normalisation

def test_peer_normalisation_statistic_has_the_block_width_and_reads_positives_only():
    learner, state = _state(peer_norm_lambda=0.03, peer_norm_momentum=0.9)
    x, y = _batch()
    with torch.no_grad():
        pos = learner._input(learner.embed(x, y, 4))
        expected = 0.9 * 0.5 + 0.1 * learner.activity(state.network, 0, pos).mean(0)
    learner.update(state, (x, y))
    means = state.running_means
    assert [tuple(m.shape) for m in means] == [(32,), (24,), (16,)]
    torch.testing.assert_close(means[0], expected)


# ---------------------------------------------------------------- locality, schedules, collaboration

@pytest.mark.parametrize("collaboration", ["none", "all", "previous"])
def test_no_gradient_reaches_another_block(collaboration):
    learner, state = _state(collaboration=collaboration)
    x, y = _batch()
    y_neg = sample_negative_labels(y, 4, "uniform", torch.Generator().manual_seed(0))
    losses, _ = learner.block_losses(state, x, y, y_neg, range(3))
    blocks = [list(b.parameters()) for b in state.network.blocks]
    for i, loss in losses.items():
        for k, params in enumerate(blocks):
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            if k == i:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), (i, k)


def test_collaboration_adds_the_other_blocks_goodness_inside_the_logit():
    x, y = _batch()
    y_neg = sample_negative_labels(y, 4, "uniform", torch.Generator().manual_seed(0))
    results = {}
    for mode in ("none", "all", "previous"):
        learner, state = _state(collaboration=mode, peer_norm_lambda=0.0)
        losses, _ = learner.block_losses(state, x, y, y_neg, range(3))
        results[mode] = [losses[i].item() for i in range(3)]
    # block 0 has no earlier block: "previous" is plain FF there; later blocks see a non-zero gamma
    assert results["previous"][0] == pytest.approx(results["none"][0], abs=0)
    assert results["previous"][2] != pytest.approx(results["none"][2])
    assert results["all"][0] != pytest.approx(results["none"][0])
    # with "all" every block's logit is the same total goodness above threshold
    assert results["all"][0] == pytest.approx(results["all"][2], rel=1e-5)


def test_collaboration_with_a_single_block_is_exactly_ff():
    x, y = _batch()
    weights = []
    for mode in ("none", "all", "previous"):
        learner, state = _state(widths=(16,), collaboration=mode)
        for _ in range(3):
            state, _ = learner.update(state, (x, y))
        weights.append(state.network.weight_layer(0).weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    torch.testing.assert_close(weights[0], weights[2], rtol=0, atol=0)


def test_greedy_trains_one_block_at_a_time_and_matches_simultaneous_for_one_block():
    learner, state = _state(schedule="greedy", n_epochs=2, steps=3)   # 6 steps, 2 per block
    x, y = _batch()
    w = lambda s, i: s.network.weight_layer(i).weight.detach().clone()
    start = [w(state, i) for i in range(3)]
    for step in range(6):
        before = [w(state, i) for i in range(3)]
        state, metrics = learner.update(state, (x, y))
        moved = [not torch.equal(before[i], w(state, i)) for i in range(3)]
        assert moved == [i == step // 2 for i in range(3)], (step, moved)
        assert {k.split("/")[1] for k in metrics if "/" in k} == {str(step // 2)}
    assert all(not torch.equal(start[i], w(state, i)) for i in range(3))
    finals = []
    for schedule in ("simultaneous", "greedy"):
        learner, state = _state(widths=(16,), schedule=schedule)
        for _ in range(4):
            state, _ = learner.update(state, (x, y))
        finals.append(w(state, 0))
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=0)


def test_straight_through_relu_matters_only_through_peer_normalisation():
    """d(h^2)/dz is 0 at a dead unit either way; the peer term's gradient passes only straight-through."""
    x, y = _batch()
    y_neg = sample_negative_labels(y, 4, "uniform", torch.Generator().manual_seed(0))
    grads = {}
    for mode in ("exact", "straight_through"):
        for lam in (0.0, 0.03):
            learner, state = _state(relu_grad=mode, peer_norm_lambda=lam)
            losses, _ = learner.block_losses(state, x, y, y_neg, range(1))
            grads[mode, lam] = torch.autograd.grad(losses[0], state.network.weight_layer(0).bias)[0]
            with torch.no_grad():
                h = learner._input(torch.cat([learner.embed(x, y, 4), learner.embed(x, y_neg, 4)]))
                dead = (state.network.weight_layer(0)(h) <= 0).all(0)
    assert dead.any()
    torch.testing.assert_close(grads["exact", 0.0], grads["straight_through", 0.0])
    assert (grads["exact", 0.03][dead] == 0).all()
    assert (grads["straight_through", 0.03][dead] != 0).all()


# ---------------------------------------------------------------- learning

def test_positive_goodness_rises_above_threshold_and_negative_falls_below():
    """Spec property 2 on blobs with appended labels, after 200 steps of one block."""
    data = load_dataset("blobs", seed=0, n_train=400, n_test=100, n_classes=4, dim=8)
    learner = make_learner("forward_forward", label_mode="append", peer_norm_lambda=0.0,
                           optimizer={"name": "adam", "lr": 0.01})
    spec = NetworkSpec(kind="mlp", widths=(64,), input_shape=(8,), n_classes=4)
    info = DataInfo(input_shape=(8,), n_classes=4, n_train=len(data.x_train), batch_size=32,
                    steps_per_epoch=10, n_epochs=20)
    state = learner.init(build(spec, 0), info, 0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = torch.from_numpy(rng.choice(len(x), 32, replace=False))
        state, _ = learner.update(state, (x[idx], y[idx]))
    y_neg = sample_negative_labels(y, 4, "uniform", torch.Generator().manual_seed(1))
    _, m = learner.block_losses(state, x, y, y_neg, range(1))
    assert m["goodness_pos/0"] > 64 > m["goodness_neg/0"]
    assert m["pair_error/0"] < 0.10


def test_fit_records_per_block_metrics_and_learns_digits():
    data = load_dataset("digits", seed=0)
    learner = make_learner("forward_forward", readout="softmax", optimizer={"name": "adam", "lr": 3e-3},
                           readout_optimizer={"name": "adam", "lr": 3e-3})
    result = fit(learner, "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=3, progress=False, count_flops=False))
    ds = result.results
    for var in ("block_loss", "block_goodness_pos", "block_goodness_neg", "block_pair_error",
                "block_goodness_accuracy"):
        assert ds[var].shape == (3, 2), var
    assert float(ds["accuracy"].sel(split="test")[-1]) > 0.7
    # the first block already separates positive from negative data: far above chance (0.1)
    assert float(ds["block_goodness_pos"][-1, 0]) > float(ds["block_goodness_neg"][-1, 0])
    assert float(ds["block_goodness_accuracy"][-1, 0]) > 0.5
    # parameters: the blocks plus the readout on block 2 (the unused head is not counted)
    assert ds.attrs["n_parameters"] == (64 * 64 + 64) + (64 * 64 + 64) + 64 * 10


def test_same_seed_same_block_losses():
    runs = []
    for _ in range(2):
        learner, state = _state(negatives="hard")
        x, y = _batch()
        runs.append([learner.update(state, (x, y))[1] for _ in range(3)])
    assert runs[0] == runs[1]


def test_state_deepcopy_continues_identically():
    learner, state = _state()
    x, y = _batch()
    clone = copy.deepcopy(state)
    _, m1 = learner.update(state, (x, y))
    _, m2 = learner.update(clone, (x, y))
    assert m1 == m2
