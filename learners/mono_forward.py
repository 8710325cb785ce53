"""Mono-Forward (Gong, Li, Abdulla 2025, arXiv 2501.09238): a local softmax head per block.

Block i owns a learnable projection M_i (n_classes x width_i) and minimises
CE(softmax(a_i M_i^T), y) on its own detached input: one forward pass, no
label in the input, no negative data. Prediction is argmax of the last
block's scores a_L M_L^T (``predict_from`` offers the sum over blocks or one
chosen block). The network's head is never used (spec pitfall 1).

Conv blocks: M_i meets a feature map (C_i, H, W) either through global average
pooling (``conv_features=pool``, M_i is n_classes x C_i) or by flattening it
(``flatten``, n_classes x C_i*H*W). The paper does not say which it uses
[unverified]; pooling is the default because it keeps M_i small.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.seeding import seed_stream
from learners._ff_local import SCHEDULES, block_optimizers, make_block_schedule
from learners._optim import OptimizerConfig, optimizer_step
from learners.base import LayerwiseLearner, Tags, evaluating, register
from learners.search import Choice, LogUniform


@dataclass
class MonoForwardState:
    network: nn.Module
    projections: nn.ParameterList      # M_i, one (n_classes, features) matrix per block
    optimizers: list                   # one per block, over the block and its M_i
    schedulers: list
    schedule: object                   # simultaneous or greedy (learners._ff_local.BlockSchedule)
    step: int = 0


@register("mono_forward")
@dataclass(frozen=True, kw_only=True)
class MonoForward(LayerwiseLearner):
    """Per-block cross-entropy on learnable class projections; no gradient crosses a block."""

    # Spyra & Dzwinel's MF configs use Adam without weight decay (lr 1.57e-3 on MNIST).
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    schedule: str = "simultaneous"           # simultaneous | greedy
    epochs_per_block: int | None = None      # greedy: epochs per block; null = an equal share of the run
    patience: int | None = None              # greedy: early stopping on the validation local loss
    min_delta: float = 1e-4
    predict_from: str = "last"               # last | sum | block=k (0-based)
    conv_features: str = "pool"              # pool | flatten: how M_i meets a conv feature map

    tags = Tags(locality="blockwise", crosses_blocks=False, backend="torch", supports_conv=True)
    contract_params = {"optimizer": {"name": "adam", "lr": 0.01}}
    contract_epochs = 30
    constraints = {"schedule": SCHEDULES, "conv_features": ("pool", "flatten")}
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(1e-4, 1e-2), "optimizer.schedule": Choice(("constant", "cosine"))}

    # ------------------------------------------------------------------ setup

    def _check(self, n_blocks: int) -> int | None:
        if self.predict_from in ("last", "sum"):
            return None
        if self.predict_from.startswith("block="):
            try:
                k = int(self.predict_from.split("=", 1)[1])
            except ValueError:
                k = None
            if k is not None and 0 <= k < n_blocks:
                return k
        raise ConfigError(f"mono_forward.predict_from={self.predict_from!r} is not allowed; use last, sum or "
                          f"block=k with k in 0..{n_blocks - 1}")

    def feature_width(self, network, i: int) -> int:
        shape = network.block_shapes[i]
        if len(shape) == 1 or self.conv_features == "pool":
            return shape[0]
        return math.prod(shape)

    def init(self, network, data_info, seed):
        network = network.to(data_info.device)
        self._check(network.n_blocks)
        if network.head is not None:
            # MF predicts from M_L; the head is not part of the rule (and not counted as a parameter).
            network.head.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed_stream(seed, "mono_forward.projections"))
        projections = nn.ParameterList()
        for i in range(network.n_blocks):
            m = torch.empty(data_info.n_classes, self.feature_width(network, i))
            # Spyra's MF_MLP: kaiming_uniform_(a=sqrt(5)) on M_i, as torch's Linear default.
            nn.init.kaiming_uniform_(m, a=math.sqrt(5), generator=gen)
            projections.append(nn.Parameter(m.to(data_info.device)))
        schedule = make_block_schedule(self.schedule, network.n_blocks, data_info, self.epochs_per_block,
                                       self.patience, self.min_delta)
        groups = [list(network.blocks[i].parameters()) + [projections[i]] for i in range(network.n_blocks)]
        opts, scheds = block_optimizers(groups, self.optimizer, schedule)
        return MonoForwardState(network=network, projections=projections, optimizers=opts, schedulers=scheds,
                                schedule=schedule)

    # ------------------------------------------------------------------ training

    def scores(self, state, i: int, a: torch.Tensor) -> torch.Tensor:
        """G_i = features(a_i) M_i^T, shape (batch, n_classes)."""
        if a.dim() > 2:
            a = a.mean(dim=(2, 3)) if self.conv_features == "pool" else a.flatten(1)
        return a @ state.projections[i].t()

    def blocks_to_update(self, state):
        return state.schedule.active()

    def update(self, state, batch):
        state.network.train()
        schedule = state.schedule
        if schedule.done:
            state.step += 1
            return state, {}
        state, metrics = super().update(state, batch)
        schedule.after_step(state.step)
        return state, metrics

    def local_loss(self, state, i: int, h: torch.Tensor, y: torch.Tensor):
        """(a_i, G_i, CE(G_i, y)) on the detached input h: the graph holds block i and M_i only."""
        a = state.network.run_block(i, h.detach())
        g = self.scores(state, i, a)
        return a, g, F.cross_entropy(g, y)

    def update_block(self, state, i, h, batch):
        y = batch[1]
        a, g, loss = self.local_loss(state, i, h, y)
        optimizer_step(state.optimizers[i], loss, state.schedulers[i])
        return a.detach(), {"loss": loss.item(), "accuracy": (g.argmax(1) == y).float().mean().item()}

    # ------------------------------------------------------------------ prediction

    def _all_scores(self, state, x, upto: int) -> list[torch.Tensor]:
        out = []
        with evaluating(state.network) as net:
            h = x
            for i in range(upto + 1):
                h = net.run_block(i, h)
                out.append(self.scores(state, i, h))
        return out

    def predict(self, state, x):
        n = state.network.n_blocks
        k = self._check(n)
        if self.predict_from == "last":
            return self._all_scores(state, x, n - 1)[-1]
        if self.predict_from == "sum":
            return torch.stack(self._all_scores(state, x, n - 1)).sum(0)
        return self._all_scores(state, x, k)[k]

    def block_metrics(self, state, x, y):
        """Per block: accuracy of its own scores and its local loss on the evaluated split.

        The greedy schedule's early stopping reads the local loss from here:
        the fit loop calls this once per epoch on the validation split (on the
        test split only when the data has no validation split, so give one).
        """
        n = state.network.n_blocks
        accs, losses = [0.0] * n, [0.0] * n
        totals = [torch.zeros(()) for _ in range(n)]
        count = 0
        for start in range(0, len(x), 2048):
            xb, yb = x[start:start + 2048], y[start:start + 2048]
            for i, g in enumerate(self._all_scores(state, xb, n - 1)):
                accs[i] += (g.argmax(1) == yb).sum().item()
                totals[i] = totals[i] + F.cross_entropy(g, yb, reduction="sum").cpu()
            count += len(xb)
        for i in range(n):
            accs[i] /= max(count, 1)
            losses[i] = totals[i].item() / max(count, 1)
        schedule = state.schedule
        if schedule.kind == "greedy" and not schedule.done:
            schedule.observe(schedule.current, losses[schedule.current], state.step)
        return {"eval_accuracy": accs, "eval_loss": losses}

    def trainable_modules(self, state):
        return [state.network, state.projections]

    def optimizers(self, state):
        return list(state.optimizers)

    def block_parameters(self, state):
        return [list(state.network.blocks[i].parameters()) + [state.projections[i]]
                for i in range(state.network.n_blocks)]
