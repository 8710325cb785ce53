import math

import numpy as np
import pytest

from analysis.bayes_ceiling import bayes_accuracy, moons_posterior, xor_ceiling_closed_form, xor_posterior
from experiments.datasets.synthetic import moons, xor
from core.errors import ConfigError


def test_xor_rate_by_hand():
    # q = P(N(0, 0.35^2) > 1) = 0.00214 (normal table: z = 2.857), so 1 - 2q(1 - q) = 0.99573
    assert xor_ceiling_closed_form(0.35) == pytest.approx(1 - 2 * 0.002138 * (1 - 0.002138), abs=2e-5)
    assert bayes_accuracy("xor", 0.35, n=40_000) == pytest.approx(xor_ceiling_closed_form(0.35), abs=1e-3)


@pytest.mark.parametrize("name, draw, posterior, noise", [("moons", moons, moons_posterior, 0.2),
                                                          ("xor", xor, xor_posterior, 0.35)])
def test_posterior_is_calibrated_on_fresh_samples(name, draw, posterior, noise):
    # if p(y|x) were wrong (a shifted arc, a wrong width), the rule's counted accuracy on samples
    # drawn with their labels would not match the accuracy the posterior itself predicts
    x, y = draw(30_000, np.random.default_rng(7), noise=noise)
    p1 = posterior(x, noise)
    counted = ((p1 > 0.5) == (y == 1)).mean()
    predicted = np.maximum(p1, 1 - p1).mean()
    assert counted == pytest.approx(predicted, abs=3 * math.sqrt(predicted * (1 - predicted) / len(y)) + 1e-3)
    # and among the y = 1 samples the posterior averages higher than among the y = 0 ones
    assert p1[y == 1].mean() > 0.8 > 0.2 > p1[y == 0].mean()


def test_no_fitted_rule_beats_the_bayes_rule_on_moons():
    from sklearn.neighbors import KNeighborsClassifier
    rng = np.random.default_rng(3)
    x_train, y_train = moons(4000, rng)
    x_test, y_test = moons(20_000, rng)
    knn = (KNeighborsClassifier(25).fit(x_train, y_train).predict(x_test) == y_test).mean()
    bayes = ((moons_posterior(x_test, 0.2) > 0.5) == (y_test == 1)).mean()
    assert knn > 0.95 and bayes >= knn


def test_unknown_toy_is_named():
    with pytest.raises(ConfigError, match="spirals.*moons"):
        bayes_accuracy("spirals", 0.1)
