"""Backprop with a schedule-free optimiser is evaluated like the local rules it is compared with:
at the averaged weights, after a batch-norm refresh (learners/_schedule_free.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from core.errors import ConfigError
from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build

TINY_CONV = NetworkSpec(kind="convnet", channels=(4, 6), pool=(2, 1), adaptive_pool=2, widths=(12,),
                        batch_norm=True, activation="leaky_relu")
SHAPE = (1, 12, 12)


def _state(optimizer, **params):
    learner = make_learner("backprop", optimizer=optimizer, **params)
    spec = TINY_CONV.resolve(SHAPE, 3)
    info = DataInfo(input_shape=SHAPE, n_classes=3, n_train=64, batch_size=16, steps_per_epoch=4, n_epochs=2)
    return learner, learner.init(build(spec, 0), info, 0)


def _batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((16, *SHAPE), generator=gen) + 0.5, torch.randint(0, 3, (16,), generator=gen)


def _weights(state):
    return [p.detach().clone() for p in state.network.parameters()]


def test_schedule_free_predicts_at_the_averaged_weights_with_refreshed_batch_norm():
    learner, state = _state({"name": "adamw_schedulefree", "lr": 1e-2})
    for step in range(5):
        learner.update(state, _batch(step))
    train_point = _weights(state)
    bn = state.network.blocks[0][1]
    stats_before = bn.running_mean.clone()
    learner.predict(state, _batch(50)[0])
    eval_point = _weights(state)
    assert any(not torch.equal(a, b) for a, b in zip(train_point, eval_point))
    assert not torch.equal(bn.running_mean, stats_before)
    # a second evaluation before the next step neither moves the weights nor refreshes again
    stats_after = bn.running_mean.clone()
    learner.predict(state, _batch(51)[0])
    assert torch.equal(bn.running_mean, stats_after)
    assert all(torch.equal(a, b) for a, b in zip(eval_point, _weights(state)))
    # going back restores the training weights (up to the optimiser's float arithmetic) ...
    state.schedule_free.to_train()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(train_point, _weights(state)))
    # ... and every training step goes back first
    learner.predict(state, _batch(52)[0])
    learner.update(state, _batch(9))
    assert state.schedule_free.at_eval is False


def test_refresh_uses_the_kept_training_batches_only():
    learner, state = _state({"name": "adamw_schedulefree", "lr": 1e-2}, bn_refresh_batches=2)
    for step in range(5):
        learner.update(state, _batch(step))
    kept = state.schedule_free.recent
    assert len(kept) == 2 and torch.equal(kept[-1], _batch(4)[0])


def test_adam_evaluates_the_weights_it_trains():
    learner, state = _state({"name": "adam", "lr": 1e-2})
    learner.update(state, _batch(0))
    before = copy.deepcopy(state.network.state_dict())
    learner.predict(state, _batch(50)[0])
    after = state.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(state.schedule_free.recent) == 0   # nothing kept when nothing needs refreshing


def test_schedule_free_with_a_schedule_is_a_clear_error():
    with pytest.raises(ConfigError, match="adamw_schedulefree replaces the schedule.*schedule=constant"):
        _state({"name": "adamw_schedulefree", "schedule": "cosine"})


def test_negative_refresh_count_is_a_clear_error():
    with pytest.raises(ConfigError, match="backprop.bn_refresh_batches=-1 is out of range; allowed: >= 0"):
        _state({"name": "adam"}, bn_refresh_batches=-1)
