"""The embedded tabular sets: shapes, tasks, fixed test splits, standardised regression targets."""
import numpy as np
import pytest

from experiments.datasets import load_dataset
from core.errors import ConfigError


@pytest.mark.parametrize("name,n_features,n_classes,n_total", [("breast_cancer", 30, 2, 569), ("wine", 13, 3, 178)])
def test_classification_sets(name, n_features, n_classes, n_total):
    a, b = load_dataset(name, seed=0), load_dataset(name, seed=1)
    assert a.task == "classification" and a.n_classes == n_classes and a.input_shape == (n_features,)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == n_total
    # the test rows do not depend on the seed; the validation split does
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_val, b.y_val) or not np.array_equal(a.x_val, b.x_val)
    assert set(np.unique(a.y_train)) == set(range(n_classes))
    np.testing.assert_allclose(a.x_train.mean(0), 0, atol=1e-4)      # standardised with train statistics


def test_diabetes_is_a_standardised_regression_set():
    ds = load_dataset("diabetes", seed=0)
    assert ds.task == "regression" and ds.n_classes == 1 and ds.input_shape == (10,)
    assert ds.y_train.dtype == np.float32
    y = np.concatenate([ds.y_train, ds.y_val])
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-5
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 442


def test_friedman1_follows_its_formula_and_is_seeded():
    a = load_dataset("friedman1", seed=3, n_train=3000, n_test=10, noise=0.0, val_size=0, normalize_="none")
    b = load_dataset("friedman1", seed=3, n_train=3000, n_test=10, noise=0.0, val_size=0, normalize_="none")
    c = load_dataset("friedman1", seed=4, n_train=3000, n_test=10, noise=0.0, val_size=0, normalize_="none")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    x = a.x_train.astype(np.float64)
    raw = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    # targets are the formula, standardised: a perfect linear relation
    assert np.corrcoef(raw, a.y_train)[0, 1] > 0.9999
    with pytest.raises(ConfigError, match="n_features"):
        load_dataset("friedman1", n_features=3)


def test_regression_flows_through_fit_with_r2_and_rmse():
    from experiments.fit import LoopConfig, fit
    from learners import make_learner
    data = load_dataset("diabetes", seed=0)
    res = fit(make_learner("gradient_boosting", n_units=8, units_per_step=4, step_iterations=20), "mlp_small", data,
              loop=LoopConfig(n_epochs=1, progress=False))
    r2 = float(res.results["r2"].sel(split="test")[-1])
    rmse = float(res.results["rmse"].sel(split="test")[-1])
    assert 0.2 < r2 < 1 and rmse > 0
