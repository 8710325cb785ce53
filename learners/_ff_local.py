"""Pieces shared by forward-forward and mono-forward: choice checks, block schedules, normalisation.

Both rules train every block on its own local loss with a detached input. They
differ in the loss, not in the bookkeeping kept here: which blocks train at a
step (simultaneous or greedy, with optional early stopping per block), one
optimiser and learning-rate schedule per block, and the row normalisation FF
applies between blocks.
"""
from __future__ import annotations

import math

import torch

from core.checks import check_choice  # noqa: F401 - the rules import it from here too
from core.errors import ConfigError
from learners._optim import OptimizerConfig, make_optimizer, make_scheduler

SCHEDULES = ("simultaneous", "greedy")


def rms_normalize(h: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Hinton's ``ffnormrows`` / loeweX ``_layer_norm``: each row divided by sqrt(mean(h^2)) + eps.

    Afterwards mean(h^2) is 1 per row, so the next block sees the orientation
    of the activity vector and not its length (which is the goodness).
    """
    return h / (h.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


def l2_normalize(h: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """mpezeshki's variant: divide by the L2 norm + 1e-4 (not the RMS)."""
    return h / (h.norm(dim=1, keepdim=True) + eps)


NORMALIZERS = {"rms": rms_normalize, "l2": l2_normalize, "none": lambda h: h}


class BlockSchedule:
    """Which blocks train at each step.

    ``simultaneous``: every block, every step. ``greedy``: one block at a time
    for ``steps_per_block`` steps (the earlier ones frozen), or fewer when the
    block's validation local loss stops improving for ``patience`` epochs
    (see `observe`). After the last block's phase ends nothing trains.
    A plain object so that the training state pickles.
    """

    def __init__(self, kind: str, n_blocks: int, steps_per_block: int, patience: int | None = None,
                 min_delta: float = 0.0):
        self.kind, self.n_blocks = kind, n_blocks
        self.steps_per_block = max(int(steps_per_block), 1)
        self.patience, self.min_delta = patience, min_delta
        self.current = 0          # greedy: the block in training (n_blocks once all are done)
        self.steps_in_phase = 0
        self.best = math.inf
        self.since_best = 0
        self.phase_ends: list[int] = []   # step counts at which each greedy phase ended

    def active(self) -> range:
        if self.kind == "simultaneous":
            return range(self.n_blocks)
        return range(self.current, self.current + 1) if self.current < self.n_blocks else range(0)

    @property
    def done(self) -> bool:
        return self.kind == "greedy" and self.current >= self.n_blocks

    def after_step(self, step: int) -> None:
        if self.kind != "greedy" or self.done:
            return
        self.steps_in_phase += 1
        if self.steps_in_phase >= self.steps_per_block:
            self._advance(step)

    def observe(self, block: int, value: float, step: int) -> None:
        """Early stopping of the greedy phase on a per-epoch validation loss of the active block."""
        if self.kind != "greedy" or self.patience is None or block != self.current or self.done:
            return
        if value < self.best - self.min_delta:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
            if self.since_best >= self.patience:
                self._advance(step)

    def _advance(self, step: int) -> None:
        self.phase_ends.append(int(step))
        self.current += 1
        self.steps_in_phase, self.best, self.since_best = 0, math.inf, 0


def make_block_schedule(kind: str, n_blocks: int, data_info, epochs_per_block: int | None,
                        patience: int | None = None, min_delta: float = 0.0) -> BlockSchedule:
    """Greedy phases last ``epochs_per_block`` epochs each, or an equal share of the run when None."""
    check_choice("schedule", kind, SCHEDULES)
    if epochs_per_block is not None and epochs_per_block < 1:
        raise ConfigError(f"epochs_per_block must be >= 1 or null, got {epochs_per_block}")
    if patience is not None and patience < 1:
        raise ConfigError(f"patience must be >= 1 or null, got {patience}")
    if kind == "simultaneous":
        steps = data_info.total_steps
    elif epochs_per_block is not None:
        steps = epochs_per_block * data_info.steps_per_epoch
    else:
        steps = max(data_info.total_steps // n_blocks, 1)
    return BlockSchedule(kind, n_blocks, steps, patience, min_delta)


def block_optimizers(param_groups: list[list[torch.Tensor]], cfg: OptimizerConfig, schedule: BlockSchedule):
    """One optimiser per block, with a learning-rate schedule over that block's own training steps."""
    opts = [make_optimizer(params, cfg) for params in param_groups]
    scheds = [make_scheduler(opt, cfg, schedule.steps_per_block) for opt in opts]
    return opts, scheds
