"""Evaluation at a schedule-free optimiser's averaged weights, with the batch-norm refresh it needs.

Schedule-free AdamW (Defazio et al. 2024) trains at one weight sequence (y) and evaluates at another
(x, an average). Batch-norm running statistics gathered at y do not fit x, so before evaluating, the
authors' recipe (and LLS-DNN's `main.py`) runs some training batches through the network in train
mode at x. LLS-DNN uses the first 50 batches of a new pass over the loader; we keep the last
``refresh_batches`` training batches seen instead (same distribution, no data loader inside a
learner). Shared by every learner that offers `adamw_schedulefree`, so that backprop is evaluated
the same way as the local rules it is compared with.
"""
from __future__ import annotations

import collections
from typing import Callable, Iterable

import torch
from torch import nn

from learners._optim import is_schedule_free, schedule_free_mode
from learners.base import evaluating


class ScheduleFreeEval:
    """Switches a learner's optimisers between training and evaluation weights, at most once per step."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer], network: nn.Module, refresh_batches: int):
        self.optimizers = list(optimizers)
        self.network = network
        self.active = any(is_schedule_free(opt) for opt in self.optimizers)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())
        self.refresh_batches = int(refresh_batches) if (self.active and has_bn) else 0
        self.recent: collections.deque = collections.deque(maxlen=max(self.refresh_batches, 1))
        self.at_eval = False

    def to_train(self, x: torch.Tensor | None = None) -> None:
        """Before a training step: back to the training weights; remember ``x`` for the next refresh."""
        if self.at_eval:
            for opt in self.optimizers:
                schedule_free_mode(opt, train=True)
            self.at_eval = False
        if self.refresh_batches and x is not None:
            self.recent.append(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x`` in eval mode, at the averaged weights when schedule-free."""
        self.to_eval(self.network)
        with evaluating(self.network) as net:
            return net(x)

    def to_eval(self, features: Callable[[torch.Tensor], object]) -> None:
        """Before evaluating: move to the averaged weights and refresh batch norm by running
        ``features`` (the network's batch-norm layers, in train mode, no gradient) on the kept batches.
        Nothing happens if already there since the last training step."""
        if not self.active or self.at_eval:
            return
        for opt in self.optimizers:
            schedule_free_mode(opt, train=False)
        self.at_eval = True
        if self.refresh_batches and self.recent:
            was_training = self.network.training
            self.network.train()
            with torch.no_grad():
                for x in self.recent:
                    features(x)
            self.network.train(was_training)
