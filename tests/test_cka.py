"""Linear CKA: its formula, its invariances, and the end-of-training comparison with a backprop twin."""
import numpy as np
import pytest

from experiments.cka import VARIABLE, CKAToBackprop, linear_cka
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner


def _hsic_cka(x, y):
    """Kornblith et al. 2019 eq. 2-3 written with the centring matrix H (an independent route)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_matches_the_hsic_form():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 7))
    y[:, :5] += 2 * x
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), rel=1e-10)
    wide = rng.normal(size=(10, 60))                  # the Gram branch (features > samples)
    assert linear_cka(wide, wide[:, :30]) == pytest.approx(_hsic_cka(wide, wide[:, :30]), rel=1e-10)


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-12)   # rotation, scale, shift
    assert linear_cka(x, rng.normal(size=(50, 6))) < 0.5
    assert np.isnan(linear_cka(x, np.ones((50, 3))))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, x[:10])


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs", seed=0, n_train=200, n_test=100)


def test_backprop_against_its_own_twin_is_one(blobs):
    from experiments.app import learner_config
    params = learner_config("backprop")
    params.pop("name")
    cb = CKAToBackprop(n_samples=100)
    result = fit(make_learner("backprop", **params), "mlp_small", blobs, seed=2,
                 loop=LoopConfig(n_epochs=2, progress=False), callbacks=[cb])
    cka = result.results["block_" + VARIABLE]
    assert np.isnan(cka.values[0]).all()                 # recorded at the end of training only
    np.testing.assert_allclose(cka.values[-1], 1.0, atol=1e-6)


def test_a_local_rule_is_compared_block_by_block(blobs):
    local = [n for n in available_learners() if get_learner_class(n).tags.locality == "blockwise"
             and not n.startswith("noprop")]
    if not local:
        pytest.skip("no blockwise learner with a network chain registered")
    cls = get_learner_class(local[0])
    cb = CKAToBackprop(n_samples=100)
    result = fit(make_learner(local[0], **cls.contract_params), "mlp_small", blobs, seed=0,
                 loop=LoopConfig(n_epochs=2, progress=False), callbacks=[cb])
    values = result.results["block_" + VARIABLE].values[-1]
    assert len(cb.values) == 2 and np.all((values > 0) & (values <= 1 + 1e-9))
    assert values.min() < 1 - 1e-4                      # a different rule: not backprop's representation
