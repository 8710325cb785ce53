"""Backpropagation: the end-to-end baseline every other rule is compared with."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core.checks import Range
from learners._optim import OptimizerConfig, is_schedule_free, make_optimizer, make_scheduler, optimizer_step
from learners._schedule_free import ScheduleFreeEval
from learners.base import Learner, Tags, register
from learners.search import Choice, LogUniform


OUTPUT_LOSSES = ("cross_entropy", "bce")


def task_loss(scores: torch.Tensor, y: torch.Tensor, task: str, output_loss: str = "cross_entropy") -> torch.Tensor:
    """Mean squared error for regression. Classification: softmax cross-entropy on the logits, or with
    ``output_loss="bce"`` a sigmoid per class against the one-hot target, averaged over samples and
    classes (Torch7's BCECriterion, the output of Nøkland's DFA experiments)."""
    if task == "regression":
        return F.mse_loss(scores, y.reshape(scores.shape))
    if output_loss == "bce":
        return F.binary_cross_entropy_with_logits(scores, F.one_hot(y, scores.shape[-1]).to(scores.dtype))
    return F.cross_entropy(scores, y)


@dataclass
class BackpropState:
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    schedule_free: ScheduleFreeEval     # evaluates a schedule-free optimiser at its averaged weights
    task: str = "classification"
    step: int = 0


@register("backprop")
@dataclass(frozen=True, kw_only=True)
class Backprop(Learner):
    """Gradient of the task loss through the whole network, one optimiser for all weights."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    # schedule-free optimisers only: training batches kept to refresh batch norm at the averaged weights
    # before evaluating (as the local rules do, so that a schedule-free comparison is like for like).
    bn_refresh_batches: int = 50
    output_loss: str = "cross_entropy"     # classification: cross_entropy (softmax) | bce (sigmoid per class)

    tags = Tags(locality="global", crosses_blocks=True, backend="torch",
                tasks=("classification", "regression"))
    contract_params = {"optimizer": {"name": "adam", "lr": 0.01}}
    constraints = {"bn_refresh_batches": Range(0), "output_loss": OUTPUT_LOSSES}
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(1e-4, 1e-2), "optimizer.schedule": Choice(("constant", "cosine"))}

    def init(self, network, data_info, seed):
        network = network.to(data_info.device)
        opt = make_optimizer(network.parameters(), self.optimizer)
        # schedule-free optimisers bring their own warmup and need no schedule
        scheduler = None if is_schedule_free(opt) else make_scheduler(opt, self.optimizer, data_info.total_steps)
        return BackpropState(network=network, optimizer=opt, scheduler=scheduler, task=data_info.task,
                             schedule_free=ScheduleFreeEval([opt], network, self.bn_refresh_batches))

    def objective(self, state, x, y) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss one step descends, and the metrics it reports (rules built on backprop add terms)."""
        loss = task_loss(state.network(x), y, state.task, self.output_loss)
        return loss, {"loss": loss.item()}

    def update(self, state, batch):
        x, y = batch
        state.schedule_free.to_train(x)
        state.network.train()
        loss, metrics = self.objective(state, x, y)
        optimizer_step(state.optimizer, loss, state.scheduler)
        state.step += 1
        return state, metrics

    def predict(self, state, x):
        return state.schedule_free.predict(x)
