"""A learner initialised on a small float64 network, and a random batch for it: the set-up of the
tests that compare a rule's gradients with a hand formula or with autograd."""
from __future__ import annotations

import torch

from learners import DataInfo, make_learner
from networks import NetworkSpec, build


def small_state(name: str, spec: NetworkSpec, shape: tuple, n_classes: int, seed: int = 0, **params):
    """``(learner, state)`` for learner ``name`` with ``params`` on ``spec`` built in float64."""
    learner = make_learner(name, **params)
    net = build(spec.resolve(shape, n_classes), seed).double()
    info = DataInfo(input_shape=shape, n_classes=n_classes, n_train=64, batch_size=16, steps_per_epoch=4, n_epochs=2)
    return learner, learner.init(net, info, seed)


def random_batch(shape: tuple, n_classes: int, seed: int = 0, n: int = 16):
    """``n`` standard-normal float64 inputs of ``shape`` and random labels, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen, dtype=torch.float64)
    return x, torch.randint(0, n_classes, (n,), generator=gen)
