"""The contract every registered learner meets (the idea of sklearn's check_estimator).

New learners are picked up automatically from the registry.
"""
from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from experiments.callbacks import Callback
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner
from learners.base import DataInfo
from networks import build, get_preset

LEARNERS = available_learners()
CLASSIFIERS = [n for n in LEARNERS if "classification" in get_learner_class(n).tags.tasks]


def _learner(name):
    cls = get_learner_class(name)
    return make_learner(name, **copy.deepcopy(cls.contract_params))


def _setup(name, seed=0, dataset="blobs", n_train=200):
    learner = _learner(name)
    data = load_dataset(dataset, seed=seed, n_train=n_train, n_test=100)
    spec = get_preset("mlp_small").resolve(data.input_shape, data.n_classes)
    net = build(spec, seed)
    batch = 32 if not learner.tags.full_batch else len(data.x_train)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=len(data.x_train),
                    batch_size=batch, steps_per_epoch=max(1, len(data.x_train) // batch), n_epochs=2)
    state = learner.init(net, info, seed)
    x = torch.from_numpy(data.x_train[:batch])
    y = torch.from_numpy(data.y_train[:batch])
    return learner, state, x, y, data


@pytest.mark.parametrize("name", LEARNERS)
def test_hyperparameters_are_frozen_defaulted_dataclass(name):
    cls = get_learner_class(name)
    assert dataclasses.is_dataclass(cls)
    learner = cls()  # every field defaulted, no side effects
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(learner, dataclasses.fields(cls)[0].name, None) if dataclasses.fields(cls) else \
            (_ for _ in ()).throw(dataclasses.FrozenInstanceError())
    assert cls() == cls()
    assert learner.tags.locality in ("global", "blockwise", "neuronwise")


@pytest.mark.parametrize("name", LEARNERS)
def test_construction_has_no_side_effects(name):
    state_before = torch.random.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    get_learner_class(name)()
    assert torch.equal(torch.random.get_rng_state(), state_before)
    assert np.array_equal(np.random.get_state()[1], np_before)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_update_and_predict_shapes_and_finite_metrics(name):
    learner, state, x, y, data = _setup(name)
    state, metrics = learner.update(state, (x, y))
    assert isinstance(metrics, dict)
    for key, value in metrics.items():
        assert isinstance(value, float), (key, type(value))
        assert np.isfinite(value), key
    scores = learner.predict(state, torch.from_numpy(data.x_test))
    assert tuple(scores.shape) == (len(data.x_test), data.n_classes)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_same_seed_same_predictions(name):
    outs = []
    for _ in range(2):
        learner, state, x, y, data = _setup(name, seed=3)
        for _ in range(3):
            state, _ = learner.update(state, (x, y))
        outs.append(learner.predict(state, torch.from_numpy(data.x_test)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_state_pickles(name):
    learner, state, x, y, data = _setup(name)
    state, _ = learner.update(state, (x, y))
    clone = pickle.loads(pickle.dumps(state))
    xt = torch.from_numpy(data.x_test)
    torch.testing.assert_close(learner.predict(clone, xt), learner.predict(state, xt))
    # and training continues identically from the clone
    state, _ = learner.update(state, (x, y))
    clone, _ = learner.update(clone, (x, y))
    torch.testing.assert_close(learner.predict(clone, xt), learner.predict(state, xt))


@pytest.mark.parametrize("dataset,threshold", [("blobs", 0.9), ("xor", 0.9)])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_learns_toy_problem(name, dataset, threshold):
    cls = get_learner_class(name)
    data = load_dataset(dataset, seed=0, n_train=500, n_test=500)
    result = fit(_learner(name), "mlp_small", data, seed=0,
                 loop=LoopConfig(n_epochs=cls.contract_epochs, batch_size=32, progress=False))
    acc = float(result.results["accuracy"].sel(split="test")[-1])
    assert acc >= threshold, f"{name} reached {acc:.3f} on {dataset}"


class _Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, run, metrics):
        self.seen.append(dict(metrics))

    def on_epoch_end(self, run, record):
        self.seen.append(record["epoch"])


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_callbacks_do_not_change_results(name):
    data = load_dataset("blobs", seed=1, n_train=200, n_test=100)
    loop = LoopConfig(n_epochs=2, progress=False)
    plain = fit(_learner(name), "mlp_small", data, seed=1, loop=loop)
    recorder = _Recorder()
    watched = fit(_learner(name), "mlp_small", data, seed=1, loop=loop, callbacks=[recorder])
    assert recorder.seen
    np.testing.assert_array_equal(plain.results["accuracy"].values, watched.results["accuracy"].values)
    np.testing.assert_array_equal(plain.results["loss"].values, watched.results["loss"].values)


def _block_deltas(learner, state, x, y):
    before = [[p.detach().clone() for p in ps] for ps in learner.block_parameters(state)]
    state, _ = learner.update(state, (x, y))
    after = learner.block_parameters(state)
    return [[a.detach() - b for a, b in zip(pa, pb)] for pa, pb in zip(after, before)]


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if get_learner_class(n).tags.locality != "global"])
def test_locality_perturbing_later_block_leaves_earlier_update_unchanged(name):
    learner, state, x, y, data = _setup(name)
    n_blocks = len(learner.block_parameters(state))
    assert n_blocks >= 2
    for i in range(n_blocks - 1):
        reference = copy.deepcopy(state)
        perturbed = copy.deepcopy(state)
        with torch.no_grad():
            for p in learner.block_parameters(perturbed)[i + 1]:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.5)
        d_ref = _block_deltas(learner, reference, x, y)[i]
        d_pert = _block_deltas(learner, perturbed, x, y)[i]
        assert any(d.abs().sum() > 0 for d in d_ref), f"{name}: block {i} did not change"
        for a, b in zip(d_ref, d_pert):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: block {i} update depends on block {i+1}")


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if get_learner_class(n).tags.locality == "global"])
def test_global_learner_update_does_depend_on_later_blocks(name):
    """The locality check can fail: for backprop, perturbing block 1 changes block 0's update."""
    learner, state, x, y, data = _setup(name)
    reference, perturbed = copy.deepcopy(state), copy.deepcopy(state)
    with torch.no_grad():
        for p in learner.block_parameters(perturbed)[1]:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    d_ref = _block_deltas(learner, reference, x, y)[0]
    d_pert = _block_deltas(learner, perturbed, x, y)[0]
    assert any(not torch.equal(a, b) for a, b in zip(d_ref, d_pert))
