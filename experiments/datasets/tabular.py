"""Small tabular sets that need no download: scikit-learn's breast_cancer, wine and diabetes, and a
seeded synthetic regression set (Friedman #1).

Like ``digits``, the scikit-learn sets keep a fixed test split (independent of the seed) so every
seed is scored on the same rows; the seed varies the validation split and the initialisation.
Regression targets are standardised with the training split's mean and standard deviation
(R^2 is unchanged; RMSE is then in units of the target's standard deviation).
"""
from __future__ import annotations

import numpy as np

from experiments.datasets import RawData, register_dataset

TEST_SEED = 12345


def _fixed_split(x, y, test_size):
    order = np.random.default_rng(TEST_SEED).permutation(len(x))
    n_test = int(round(test_size * len(x)))
    return order[n_test:], order[:n_test]


def _standardise_targets(y_train, y_test):
    mean, std = y_train.mean(0), y_train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return (y_train - mean) / std, (y_test - mean) / std


def _sklearn_classification(loader, test_size):
    bunch = loader()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    train, test = _fixed_split(x, y, test_size)
    return RawData(x[train], y[train], x[test], y[test], class_names=[str(c) for c in bunch.target_names],
                   default_normalize="standard", default_val_size=0.1)


@register_dataset("breast_cancer")
def breast_cancer(seed=0, test_size=0.2):
    """Wisconsin breast cancer (569 samples, 30 features, 2 classes), from scikit-learn."""
    from sklearn.datasets import load_breast_cancer
    return _sklearn_classification(load_breast_cancer, test_size)


@register_dataset("wine")
def wine(seed=0, test_size=0.2):
    """UCI wine (178 samples, 13 features, 3 classes), from scikit-learn."""
    from sklearn.datasets import load_wine
    return _sklearn_classification(load_wine, test_size)


@register_dataset("diabetes")
def diabetes(seed=0, test_size=0.2):
    """Diabetes progression (442 samples, 10 features, regression), from scikit-learn."""
    from sklearn.datasets import load_diabetes
    bunch = load_diabetes()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.float64)
    train, test = _fixed_split(x, y, test_size)
    y_train, y_test = _standardise_targets(y[train], y[test])
    return RawData(x[train], y_train, x[test], y_test, task="regression",
                   default_normalize="standard", default_val_size=0.1)


@register_dataset("friedman1")
def friedman1(seed=0, n_train=1000, n_test=1000, n_features=10, noise=1.0):
    """Friedman #1: y = 10 sin(pi x1 x2) + 20 (x3 - 1/2)^2 + 10 x4 + 5 x5 + noise, x ~ U[0, 1]^d.

    Features beyond the fifth are irrelevant; a new seed is a new draw.
    """
    if n_features < 5:
        from core.errors import ConfigError
        raise ConfigError(f"data.options.n_features={n_features} is too small; friedman1 needs at least 5")
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.uniform(0, 1, size=(n, n_features))
    y = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
         + noise * rng.standard_normal(n))
    y_train, y_test = _standardise_targets(y[:n_train], y[n_train:])
    return RawData(x[:n_train].astype(np.float32), y_train, x[n_train:].astype(np.float32), y_test,
                   task="regression", default_normalize="standard", default_val_size=0.2)
