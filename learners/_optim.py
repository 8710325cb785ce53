"""Optimiser and learning-rate schedule settings shared by the torch learners."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.errors import ConfigError

# adamw_schedulefree: Defazio et al. 2024 (the `schedulefree` package, imported only when
# asked for); it keeps two weight sequences, so call `schedule_free_mode(opt, train)` around evaluation.
# adamw_schedulefree_paper: the package's AdamWScheduleFreePaper, the version of the paper's
# experiments and the one LLS-DNN vendors (its utils/adamwschedulefree.py computes the same step).
# Its step size carries Adam's bias correction sqrt(1 - beta2^k), and the weight of each iterate in
# the evaluated average is lr_max^2 with that step size, so iterates of the first few thousand steps
# count less (step 1: 0.1% of a late one, step 1000: 63%). The current AdamWScheduleFree
# corrects the second moment instead, keeps lr constant and so averages uniformly from step 1.
# sgd_schedulefree: the package's SGDScheduleFree (LLS-DNN's SGDSF; `momentum` is its beta).
SCHEDULE_FREE = ("adamw_schedulefree", "adamw_schedulefree_paper", "sgd_schedulefree")
# rmsprop: torch's RMSprop (decay ``alpha`` of the squared-gradient average, eps outside the root, as
# Torch7's optim.rmsprop that Nøkland's DFA experiments used); ``momentum`` is not applied to it.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", *SCHEDULE_FREE)
SCHEDULES = ("constant", "cosine", "linear_cooldown")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """One optimiser and its schedule.

    Schedules, as a factor on ``lr`` at step s of S total steps:
    ``constant`` 1; ``cosine`` final + (1 - final) * (1 + cos(pi s / S)) / 2;
    ``linear_cooldown`` 1 until ``cooldown_start`` * S, then linear down to
    ``final_lr_fraction`` at S (the schedule of loeweX/Forward-Forward, which
    cools down over the second half). ``warmup_steps`` ramps linearly first.
    """

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = 0.99            # rmsprop's decay of its squared-gradient average
    eps: float = 1e-8              # adam, adamw, rmsprop: the term added to the root
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    cooldown_start: float = 0.5
    final_lr_fraction: float = 0.0
    # adam/adamw: torch's fused kernel (one pass over the weights; the same update up to float
    # rounding, several times faster on CPU for million-weight layers). None (default): fused
    # wherever torch has the kernel (floating-point weights on CPU or CUDA); False: torch's
    # per-tensor loop.
    fused: bool | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer.name={self.name!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optimizer.schedule={self.schedule!r} is not known; allowed: {', '.join(SCHEDULES)}")
        if self.name in SCHEDULE_FREE and self.schedule != "constant":
            raise ConfigError(f"optimizer.schedule={self.schedule!r}: {self.name} replaces the schedule; "
                              "use schedule=constant (warmup_steps is allowed)")
        if self.name == "sgd_schedulefree" and not 0 < self.momentum < 1:
            raise ConfigError(f"optimizer.momentum={self.momentum} must be in (0, 1) for sgd_schedulefree "
                              "(it interpolates between the averaged and the latest weights)")
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be positive, got {self.lr}")
        if not (0 <= self.alpha < 1 and self.eps > 0):
            raise ConfigError(f"optimizer.alpha={self.alpha} must be in [0, 1) and optimizer.eps={self.eps} positive")
        object.__setattr__(self, "betas", tuple(self.betas))


def _fused(params, cfg: OptimizerConfig) -> bool | None:
    if cfg.fused is not None:
        return cfg.fused or None
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    ok = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return True if ok else None


def make_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """``params`` may be tensors or torch parameter groups (dicts with their own settings)."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                fused=_fused(params, cfg))
    if cfg.name in SCHEDULE_FREE:
        try:
            import schedulefree
        except ImportError as err:
            raise ConfigError(f"optimizer.name={cfg.name!r} needs the schedulefree package: "
                              "pip install schedulefree") from err
        if cfg.name == "sgd_schedulefree":
            opt = schedulefree.SGDScheduleFree(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
        else:
            cls = schedulefree.AdamWScheduleFreePaper if cfg.name.endswith("_paper") else \
                schedulefree.AdamWScheduleFree
            opt = cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                      warmup_steps=cfg.warmup_steps)
        opt.train()
        return opt
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=_fused(params, cfg))


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    return hasattr(optimizer, "train") and hasattr(optimizer, "eval") and \
        "train_mode" in optimizer.param_groups[0]


def schedule_free_mode(optimizer: torch.optim.Optimizer, train: bool) -> None:
    """Put a schedule-free optimiser's weights at its training (y) or evaluation (x) point; others: no-op.

    Its warmup (``warmup_steps``) is its own, so drive it without a `Schedule`."""
    if is_schedule_free(optimizer):
        optimizer.train() if train else optimizer.eval()


def lr_factor(cfg: OptimizerConfig, step: int, total_steps: int) -> float:
    """The schedule's multiplier on the base learning rate at ``step`` (0-based)."""
    total = max(int(total_steps), 1)
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(step / total, 1.0)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    if progress < cfg.cooldown_start:
        return 1.0
    span = max(1.0 - cfg.cooldown_start, 1e-12)
    return 1.0 - (1.0 - cfg.final_lr_fraction) * (progress - cfg.cooldown_start) / span


class Schedule:
    """Sets each parameter group's lr to its base lr times the schedule factor.

    Written out rather than torch's LambdaLR so the state pickles and each
    group (e.g. a readout with its own lr) keeps its own base rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
        self.optimizer, self.cfg, self.total_steps = optimizer, cfg, total_steps
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self):
        factor = lr_factor(self.cfg, self.step_count, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self):
        self.step_count += 1
        self._apply()


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int) -> Schedule:
    return Schedule(optimizer, cfg, total_steps)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scheduler: Schedule | None = None) -> None:
    """One step on ``loss``: clear the gradients, backpropagate, step, then advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
