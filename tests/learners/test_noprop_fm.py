"""NoProp-FM: the straight path, the oracle field, the parameterisation and the anchor loss."""
from __future__ import annotations

import re

import pytest
import torch

from core.errors import ConfigError
from tests.learners._noprop_helpers import accuracy, make_state, one_hot_inputs, train_steps, two_class_problem


def test_target_velocity_is_recovered_on_the_straight_path():
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(50, 4, generator=gen), torch.randn(50, 4, generator=gen)
    t = torch.rand(50, 1, generator=gen) * 0.99
    z_t = t * z1 + (1 - t) * z0
    # the conditional field (z_1 − z_t)/(1 − t) on the path is the target z_1 − z_0 of Eq. 11
    torch.testing.assert_close((z1 - z_t) / (1 - t), z1 - z0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_euler_with_the_oracle_field_lands_exactly_on_the_label_embedding(steps):
    learner, state, _, _ = make_state("noprop_fm", embedding="learned", embedding_dim=6)
    x, y = one_hot_inputs(3, 50)
    u = state.network.embedding(y).detach()
    oracle = lambda z, t: (u - z) / (1 - t).unsqueeze(1)   # noqa: E731  = u_y − z_0 along the path
    z1 = learner.integrate(state, x, torch.Generator().manual_seed(0), steps, field=oracle)
    torch.testing.assert_close(z1, u, rtol=1e-4, atol=1e-4)


def test_prediction_is_the_nearest_embedding():
    learner, state, _, _ = make_state("noprop_fm", embedding="learned", embedding_dim=6, eval_steps=5)
    W = state.network.embedding.weight.detach()
    z = torch.randn(40, 6)
    nearest = torch.cdist(z, W).argmin(1)
    object.__setattr__(learner, "integrate", lambda *args, **kwargs: z)   # a frozen dataclass: patch for the test
    scores = learner.sample_scores(state, torch.zeros(40, 5), torch.Generator())
    assert torch.equal(scores.argmax(1), nearest)


def test_velocity_is_in_the_row_span_of_the_embeddings():
    learner, state, x, y = make_state("noprop_fm", embedding="learned", embedding_dim=8)
    W = state.network.embedding.weight.detach()          # 3 x 8: a 3-dimensional span in R^8
    v = learner.velocity(state, torch.randn(len(x), 8), torch.rand(len(x)), x=x).detach()
    projected = v @ torch.linalg.pinv(W) @ W
    torch.testing.assert_close(projected, v, atol=1e-4, rtol=1e-4)
    assert torch.linalg.matrix_rank(v) <= 3


@pytest.mark.parametrize("embedding,anchored", [("one_hot", False), ("learned", True), ("prototype", True)])
def test_anchor_loss_only_with_a_learned_embedding(embedding, anchored):
    learner, state, x, y = make_state("noprop_fm", embedding=embedding)
    loss, metrics = learner.loss(state, x, y, torch.Generator().manual_seed(0))
    assert ("ce" in metrics) == anchored
    loss.backward()
    classifier_grad = state.network.classifier.weight.grad
    assert (classifier_grad is not None) == anchored
    if anchored:
        assert state.network.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("key,value,allowed", [
    ("integrator", "rk4", "is not known; allowed: euler, heun"),
    ("inference_steps", 0, "is out of range; allowed: >= 1"), ("sigma", -0.1, "is out of range; allowed: >= 0"),
    ("embedding", "fixed", "is not known; allowed: one_hot, learned, prototype")])
def test_bad_settings_name_the_key(key, value, allowed):
    with pytest.raises(ConfigError, match="^" + re.escape(f"noprop_fm.{key}={value!r} {allowed}") + "$"):
        make_state("noprop_fm", **{key: value})


@pytest.mark.slow   # the contract suite already checks blobs and xor
def test_two_class_problem_in_seconds():
    x, y, x_test, y_test = two_class_problem()
    learner, state, _, _ = make_state("noprop_fm", n_classes=2, dim=2, inference_steps=20,
                                      optimizer={"name": "adam", "lr": 0.01})
    train_steps(learner, state, x, y, epochs=15)
    assert accuracy(learner, state, x_test, y_test) > 0.9
