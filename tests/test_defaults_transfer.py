"""Every classification learner's command-line defaults learn beyond the digits run (slow).

`altlearn learner=NAME` trains the settings of experiments/configs/learner/NAME.yaml on whatever
data and network the command names. Those defaults must learn on every dataset and network preset
altlearn ships that the learner supports, not only on the quick digits run (mlp_small): here each
learner's YAML, unchanged, trains at a short budget on digits, on MNIST and Fashion-MNIST subsets
with a wide (mlp_2x1000) and a deeper (mlp_3x1000) MLP, and on MNIST with smallconv where the learner
supports convolutions. A rule whose defaults only suit small networks (an Adam learning rate that
blows up the logits of 1000-unit layers, say) sits at chance here.

The bar is the test accuracy of a clearly learning run, far above chance (10%) and far below what
these budgets reach (see MIN_ACCURACY). One epoch over a few thousand images keeps the whole module
within a few minutes on one CPU thread; the test split is cut to a seeded subset because some rules
pay for prediction by the sample (NoProp-CT/FM integrate 100 steps, NoProp-DT chains 10 blocks).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from experiments.app import learner_config
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner
from networks import get_preset

pytestmark = pytest.mark.slow

N_VAL = 200             # validation images, carved from the training split before the subset
N_TEST = 500            # test images (seeded subset of the 10000; 2.2 points of standard error at 50%)
N_EVAL_TRAIN = 200      # training images the loop evaluates
# particle_swarm and gradient_boosting cost another order per image (a swarm per neuron scored on
# the whole network's loss; L-BFGS over the whole training set for each of 50 boosting steps),
# so they train on 256 images of the same data (8 steps).
N_TRAIN_SLOW = 256
SLOW_LEARNERS = ("particle_swarm", "gradient_boosting")
# the forward-only estimators take a noisy step (K directions per site): one epoch of 2000 images on
# fashion_mnist-mlp_3x1000 reached 37.0 / 43.6 / 27.2% test for seeds 0-2, two epochs 65.6 / 43.4 /
# 54.0%, so they get two epochs on the MNIST-like sets to be judged on learning, not on the seed
TWO_EPOCH_LEARNERS = ("perturbation",)

# setting: (dataset, network, epochs, training images). digits is the default run's data and network
# (all 1437 training images); the MNIST-like sets take one epoch of the default batch (32): 63 steps
# with 2000 images, smallconv too (with 1000 images, 32 steps, NoProp-CT's defaults stayed under the
# bar there).
SETTINGS = {
    "digits-mlp_small": ("digits", "mlp_small", 5, None),
    "mnist-mlp_2x1000": ("mnist", "mlp_2x1000", 1, 2000),
    "mnist-mlp_3x1000": ("mnist", "mlp_3x1000", 1, 2000),
    "fashion_mnist-mlp_2x1000": ("fashion_mnist", "mlp_2x1000", 1, 2000),
    "fashion_mnist-mlp_3x1000": ("fashion_mnist", "mlp_3x1000", 1, 2000),
    "mnist-smallconv": ("mnist", "smallconv", 1, 2000),
}
# 10 classes everywhere: chance is 10%. Backprop reaches about 90% (MNIST) and 75-80% (Fashion-MNIST)
# at these budgets; a rule stuck at chance or barely off it fails, a slow one passes.
MIN_ACCURACY = {"digits": 0.5, "mnist": 0.4, "fashion_mnist": 0.4}

CLASSIFIERS = [n for n in available_learners() if "classification" in get_learner_class(n).tags.tasks]


def _supports(name: str, setting: str) -> bool:
    cls = get_learner_class(name)
    _, network, _, _ = SETTINGS[setting]
    if get_preset(network).kind == "convnet" and not cls.tags.supports_conv:
        return False
    if name == "gradient_boosting" and setting not in ("digits-mlp_small", "mnist-mlp_2x1000",
                                                       "fashion_mnist-mlp_2x1000"):
        # GBNN builds its own single hidden layer and ignores the run's widths and convolutions:
        # one network per dataset covers it
        return False
    if name == "particle_swarm" and network == "mlp_3x1000":
        # a batch step of 32 images took about 40 s on mlp_3x1000 (3 s on mlp_2x1000): the swarms
        # of the first layers score every particle through two 1000x1000 layers. Even a handful of
        # steps is past this module's budget; mlp_2x1000 covers the wide case on both datasets.
        return False
    return True


def _marks(name: str, setting: str) -> list:
    _, network, _, _ = SETTINGS[setting]
    if name == "drtp" and network == "mlp_3x1000":
        # DRTP's signal for a sample never shrinks, so ReLU activity without batch norm grows without
        # bound (docs/feedback_alignment.md, "Activations"; the paper uses tanh), and the wide ReLU
        # presets have neither. No setting of the learner alone (Adam 3e-5 to 1e-3, L2 1e-3 to 1e-1,
        # SGD, the three feedback inits) took one epoch on mnist-mlp_3x1000 past 29% validation
        # accuracy (47% on mlp_2x1000); it learns on mlp_small and with batch norm (smallconv).
        # Strict: the day its defaults learn here, this mark must go.
        return [pytest.mark.xfail(strict=True, reason="DRTP with ReLU and no batch norm: activity grows "
                                                      "without bound (docs/feedback_alignment.md)")]
    if name == "drtp" and network == "mlp_2x1000":
        # the same cause on mlp_2x1000, but it sits at the bar: one epoch reached 47% validation on one CPU
        # and 48.8% (MNIST) / 41.2% (Fashion-MNIST) test on another, below 40% on others; float
        # rounding of the CPU's kernels decides the side, so the mark cannot be strict here
        return [pytest.mark.xfail(strict=False, reason="DRTP with ReLU and no batch norm sits at the bar "
                                                       "on mlp_2x1000 (docs/feedback_alignment.md)")]
    if name == "predictive_coding" and network == "smallconv":
        # batch norm makes one sample's prediction depend on its batch: refused in one line
        # (docs/predictive_coding.md); convnets without batch norm train
        from core.errors import ConfigError
        return [pytest.mark.xfail(strict=True, raises=ConfigError, reason="predictive coding refuses batch norm")]
    if name == "perturbation" and network == "smallconv":
        # its default noise is per example, and batch norm mixes the examples of a batch: it refuses
        # batch norm in one line (docs/perturbation.md); the whole-weight modes train smallconv
        from core.errors import ConfigError
        return [pytest.mark.xfail(strict=True, raises=ConfigError,
                                  reason="per-example perturbation refuses batch norm")]
    if name == "counter_current" and setting in CCL_SLOW_START:
        # One epoch of 2000 images: the local losses first shrink the hidden activity towards a trivial
        # solution, before the forward and feedback networks align (docs/counter_current.md). Measured
        # with the defaults: mnist-mlp_3x1000 29.4%, fashion_mnist-mlp_2x1000 33.4%,
        # fashion_mnist-mlp_3x1000 11.2%, mnist-smallconv 24.8%; momentum, Adam, the authors' whole-net
        # clip, a smaller loss scale, feedback lr 1 and no clipping did not pass either.
        # Strict: the day its defaults learn here, this mark must go.
        return [pytest.mark.xfail(strict=True, reason="counter-current learning starts slowly on wide "
                                                      "nets (docs/counter_current.md)")]
    return []


CCL_SLOW_START = ("mnist-mlp_3x1000", "fashion_mnist-mlp_2x1000", "fashion_mnist-mlp_3x1000", "mnist-smallconv")


CASES = [pytest.param(name, setting, id=f"{name}-{setting}", marks=_marks(name, setting))
         for name in CLASSIFIERS for setting in SETTINGS if _supports(name, setting)]


@functools.lru_cache(maxsize=None)
def _data(dataset: str, root: str | None, n_train: int | None):
    if dataset == "digits":
        return load_dataset("digits", seed=0)
    data = load_dataset(dataset, seed=0, val_size=N_VAL, root=root, download=False, max_train=n_train)
    pick = np.sort(np.random.default_rng([0, 7]).choice(len(data.x_test), N_TEST, replace=False))
    return dataclasses.replace(data, x_test=data.x_test[pick], y_test=data.y_test[pick])


@pytest.mark.parametrize("name,setting", CASES)
def test_command_line_defaults_learn(name, setting, request):
    dataset, network, epochs, n_train = SETTINGS[setting]
    root = None if dataset == "digits" else str(request.getfixturevalue("data_root"))
    if name in SLOW_LEARNERS and n_train is not None:
        n_train = min(n_train, N_TRAIN_SLOW)
    if name in TWO_EPOCH_LEARNERS and dataset != "digits":
        epochs = 2
    data = _data(dataset, root, n_train)
    params = learner_config(name)
    learner = make_learner(params.pop("name"), **params)
    loop = LoopConfig(n_epochs=epochs, threads=1, progress=False, count_flops=False, eval_train_max=N_EVAL_TRAIN)
    result = fit(learner, network, data, loop=loop, seed=0)
    accuracy = float(result.results["accuracy"].sel(split="test").values[-1])
    print(f"{name} {setting}: test accuracy {accuracy:.4f}")
    assert accuracy >= MIN_ACCURACY[dataset], (
        f"{name}'s defaults (learner/{name}.yaml) reach {accuracy:.1%} test accuracy on {setting} "
        f"after {epochs} epoch(s) on {len(data.x_train)} images; at least {MIN_ACCURACY[dataset]:.0%} expected")
