"""Shared set-up for the NoProp tests: a learner's state on toy data, oracle blocks, forward-hook counters."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from experiments.datasets import load_dataset
from learners import make_learner
from learners.base import DataInfo
from networks import build, get_preset


def make_state(name: str, *, n_classes: int = 3, dim: int = 5, n: int = 64, seed: int = 0, n_epochs: int = 2,
               **params):
    """(learner, state, x, y) on blobs with ``n_classes`` classes, network mlp_small."""
    learner = make_learner(name, **params)
    data = load_dataset("blobs", seed=seed, n_train=n, n_test=n, n_classes=n_classes, dim=dim)
    spec = get_preset("mlp_small").resolve(data.input_shape, data.n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=n, batch_size=n,
                    steps_per_epoch=1, n_epochs=n_epochs)
    state = learner.init(build(spec, seed), info, seed)
    return learner, state, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)


class OracleBlock(nn.Module):
    """A denoiser that knows the label: its input x *is* the one-hot label, its logits are scale * x."""

    def __init__(self, scale: float = 50.0):
        super().__init__()
        self.scale = scale

    def features(self, x):
        return x

    def forward(self, x, z, t=None, *, hx=None):
        return self.scale * (x if hx is None else hx)


def one_hot_inputs(n_classes: int, n: int, seed: int = 0):
    y = torch.from_numpy(np.random.default_rng(seed).integers(0, n_classes, n))
    return nn.functional.one_hot(y, n_classes).float(), y


class ForwardCalls:
    """Counts forward calls of every submodule of each watched block (context manager)."""

    def __init__(self, blocks):
        self.blocks = list(blocks)
        self.counts = [0] * len(self.blocks)
        self.handles = []

    def __enter__(self):
        for i, block in enumerate(self.blocks):
            for module in block.modules():
                self.handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def _hook(self, i):
        def hook(module, inputs, output):
            self.counts[i] += 1
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def accuracy(learner, state, x, y) -> float:
    return (learner.predict(state, x).argmax(1) == y).float().mean().item()


def two_class_problem(n: int = 256, seed: int = 0):
    """Two interleaved moons (not linearly separable): train and test tensors."""
    data = load_dataset("moons", seed=seed, n_train=n, n_test=n)
    return tuple(torch.from_numpy(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test))


def train_steps(learner, state, x, y, epochs: int, batch_size: int = 32):
    for _ in range(epochs):
        for batch in zip(x.split(batch_size), y.split(batch_size)):
            learner.update(state, batch)
    return state
