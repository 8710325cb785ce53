"""The alignment-with-backprop callback: exact for plain SGD, below 1 for local rules, observe-only."""
import numpy as np
import pytest
import torch

from experiments.alignment import COSINE, SIGN, Alignment, NotApplicable, block_alignment, block_tensors
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner

LOOP = LoopConfig(n_epochs=2, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs", seed=0, n_train=200, n_test=100)


def test_backprop_with_plain_sgd_is_aligned_exactly(blobs):
    learner = make_learner("backprop", optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0})
    result = fit(learner, "mlp_small", blobs, loop=LOOP, seed=0, callbacks=[Alignment(n_probe=64)])
    cos = result.results["block_" + COSINE].values
    assert cos.shape == (2, 2)                       # (epoch, block)
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    np.testing.assert_allclose(result.results["block_" + SIGN].values, 1.0)


def test_momentum_breaks_exact_alignment(blobs):
    learner = make_learner("backprop", optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    result = fit(learner, "mlp_small", blobs, loop=LOOP, seed=0, callbacks=[Alignment(n_probe=64)])
    cos = result.results["block_" + COSINE].values
    assert np.all(cos < 1 - 1e-4)


def _initial_state(name, data, **params):
    from experiments.fit import as_spec
    from learners import DataInfo
    from networks import build
    learner = make_learner(name, **params)
    spec = as_spec("mlp_small").resolve(data.input_shape, data.n_classes)
    info = DataInfo(input_shape=data.input_shape, n_classes=data.n_classes, n_train=len(data.x_train))
    return learner, learner.init(build(spec, 0), info, 0)


def _local_learners():
    return [n for n in available_learners() if get_learner_class(n).tags.locality != "global"]


@pytest.mark.parametrize("name", _local_learners())
def test_local_rules_are_not_backprop(name, blobs):
    cls = get_learner_class(name)
    learner = make_learner(name, **cls.contract_params)
    probe = (torch.from_numpy(blobs.x_train[:64]), torch.from_numpy(blobs.y_train[:64]))
    try:
        block_tensors(*_initial_state(name, blobs, **cls.contract_params))
    except NotApplicable as err:
        pytest.skip(f"alignment does not apply: {err}")
    result = fit(learner, "mlp_small", blobs, loop=LoopConfig(n_epochs=1, progress=False), seed=0)
    values = block_alignment(learner, result.state, probe, input_shape=blobs.input_shape,
                             n_classes=blobs.n_classes)
    cos = np.array(values[COSINE])
    assert np.isfinite(cos).any(), f"{name}: no block moved on the probe step"
    assert np.all(cos[np.isfinite(cos)] < 1 - 1e-4)


@pytest.mark.parametrize("name", ["backprop", *[pytest.param(n, marks=pytest.mark.slow) for n in _local_learners()[:1]]])
def test_callback_does_not_change_learning(name, blobs):
    cls = get_learner_class(name)
    params = cls.contract_params
    plain = fit(make_learner(name, **params), "mlp_small", blobs, loop=LOOP, seed=3)
    watched = fit(make_learner(name, **params), "mlp_small", blobs, loop=LOOP, seed=3,
                  callbacks=[Alignment(n_probe=32)])
    np.testing.assert_array_equal(plain.results["accuracy"].values, watched.results["accuracy"].values)
    for a, b in zip(plain.state.network.parameters(), watched.state.network.parameters()):
        assert torch.equal(a, b)


def test_learners_without_a_chain_network_are_skipped_with_a_reason(blobs):
    noprop = [n for n in available_learners() if n.startswith("noprop")]
    if not noprop:
        pytest.skip("no NoProp learner registered")
    learner, state = _initial_state(noprop[0], blobs)
    with pytest.raises(NotApplicable, match=f"{noprop[0]}.*not defined"):
        block_tensors(learner, state)
