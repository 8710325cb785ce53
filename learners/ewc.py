r"""Elastic weight consolidation (Kirkpatrick et al., PNAS 2017) on top of backprop.

After each task the diagonal Fisher information of the parameters is estimated
on that task's training data and the parameters are anchored:

.. math::  L(\theta) = L_{task}(\theta) + \frac{\lambda}{2} \sum_i F_i (\theta_i - \theta^*_i)^2

with :math:`F_i = \frac{1}{n}\sum_{s} (\partial_i \log p(y_s|x_s,\theta^*))^2` over
``fisher_samples`` samples, one gradient per sample (``fisher: empirical`` uses the
true labels y_s; ``fisher: true`` samples y_s from the model's own prediction, as the
paper defines it). Several tasks are consolidated the "online" way (Schwarz et al.
2018): :math:`F \leftarrow \gamma F + F_t` and :math:`\theta^* \leftarrow \theta_t`, one
penalty instead of one per task (``gamma = 1`` sums the Fishers). On a single task
(no ``end_task`` yet) this is exactly `backprop`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from core.checks import Range
from core.errors import ConfigError
from learners._optim import SCHEDULE_FREE
from learners.backprop import Backprop, BackpropState
from learners.base import Tags, register

FISHERS = ("empirical", "true")


@dataclass
class EWCState(BackpropState):
    fisher: list[torch.Tensor] | None = None    # the consolidated diagonal Fisher, per parameter tensor
    anchor: list[torch.Tensor] | None = None    # the weights at the end of the last task
    seed: int = 0
    tasks_done: int = 0


@register("ewc")
@dataclass(frozen=True, kw_only=True)
class EWC(Backprop):
    """Backprop plus a quadratic penalty anchoring the parameters important to earlier tasks."""

    ewc_lambda: float = 100.0
    fisher: str = "empirical"         # empirical | true
    fisher_samples: int = 1000        # per task (a seeded subset of its training data)
    gamma: float = 1.0                # decay of earlier tasks' Fisher (online EWC); 1 = sum

    tags = Tags(locality="global", crosses_blocks=True, backend="torch")
    constraints = {**Backprop.constraints, "fisher": FISHERS, "ewc_lambda": Range(0), "fisher_samples": Range(1),
                   "gamma": Range(0, 1)}

    def init(self, network, data_info, seed):
        if self.optimizer.name in SCHEDULE_FREE:
            # its evaluated model is an average of the weights it trains; the Fisher and the anchor
            # would be taken at the training weights, and evaluation would not match backprop's
            raise ConfigError(f"ewc does not support optimizer.name={self.optimizer.name!r} (the Fisher and the "
                              "anchor would be taken at weights other than the evaluated ones); use adam, "
                              "adamw or sgd")
        base = super().init(network, data_info, seed)
        return EWCState(**{f.name: getattr(base, f.name) for f in fields(base)}, seed=seed)

    def penalty(self, state) -> torch.Tensor | None:
        if state.fisher is None or self.ewc_lambda == 0:
            return None
        total = sum((f * (p - a) ** 2).sum()
                    for p, f, a in zip(state.network.parameters(), state.fisher, state.anchor))
        return 0.5 * self.ewc_lambda * total

    def objective(self, state, x, y):
        loss, metrics = super().objective(state, x, y)
        penalty = self.penalty(state)
        if penalty is None:
            return loss, metrics
        return loss + penalty, {**metrics, "ewc_penalty": penalty.item()}

    def end_task(self, state, task):
        """Consolidate: add this task's diagonal Fisher and move the anchor to the current weights."""
        x = getattr(task, "x_train", None)
        if x is None or len(x) == 0:
            return state
        rng = np.random.default_rng([state.seed, 31, state.tasks_done])
        pick = rng.choice(len(x), min(self.fisher_samples, len(x)), replace=False)
        device = next(state.network.parameters()).device
        xs = torch.as_tensor(np.ascontiguousarray(x[pick]), device=device)
        ys = torch.as_tensor(np.asarray(task.y_train)[pick], device=device)
        fisher_t = diagonal_fisher(state.network, xs, ys, mode=self.fisher, seed=int(rng.integers(2**31)))
        old = state.fisher
        state.fisher = fisher_t if old is None else [self.gamma * f + ft for f, ft in zip(old, fisher_t)]
        state.anchor = [p.detach().clone() for p in state.network.parameters()]
        state.tasks_done += 1
        return state

    def task_metrics(self, state):
        if state.fisher is None:
            return {}
        return {"fisher_mean": [float(f.mean()) for f in state.fisher]}


def diagonal_fisher(network, x, y, *, mode="empirical", seed=0, chunk=256) -> list[torch.Tensor]:
    """Mean over samples of the squared per-sample gradient of log p(y|x), per parameter tensor.

    For networks of Linear layers only (MLPs) the per-sample squares come from one
    backward pass per chunk: a sample's gradient of W is g a^T (output gradient g,
    input a), so sum_s (g_s a_s^T)^2 = (g^2)^T (a^2) elementwise. Otherwise torch.func's
    per-sample gradients.
    """
    was_training = network.training
    network.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    names = [k for k, _ in network.named_parameters()]
    try:
        linear_only = all(isinstance(m, torch.nn.Linear) or not list(m.parameters(recurse=False))
                          for m in network.modules())
        total = _fisher_linear(network, x, y, mode, gen, chunk) if linear_only else \
            _fisher_vmap(network, x, y, mode, gen, chunk)
    finally:
        network.train(was_training)
    return [total[k] / len(x) for k in names]


def _labels(network, xb, yb, mode, gen):
    if mode != "true":
        return yb
    with torch.no_grad():
        probs = F.softmax(network(xb), dim=1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def _fisher_linear(network, x, y, mode, gen, chunk):
    params = dict(network.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    layers = {name: m for name, m in network.named_modules() if isinstance(m, torch.nn.Linear)}
    inputs: dict = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: inputs.__setitem__(name, (inp[0], out)))
               for name, m in layers.items()]
    try:
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk]
            yb = _labels(network, xb, y[i:i + chunk], mode, gen)
            inputs.clear()
            log_p = F.log_softmax(network(xb), dim=1).gather(1, yb[:, None]).sum()
            outs = [inputs[name][1] for name in layers]
            grads = torch.autograd.grad(log_p, outs)
            for (name, m), g in zip(layers.items(), grads):
                a = inputs[name][0].detach()
                prefix = f"{name}." if name else ""
                total[prefix + "weight"] += (g ** 2).T @ (a ** 2)
                if m.bias is not None:
                    total[prefix + "bias"] += (g ** 2).sum(0)
    finally:
        for h in handles:
            h.remove()
    return total


def _fisher_vmap(network, x, y, mode, gen, chunk):
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in network.named_parameters()}

    def log_prob(p, xi, yi):
        logits = functional_call(network, p, (xi[None],))
        return F.log_softmax(logits, dim=1)[0].gather(0, yi[None])[0]

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        yb = _labels(network, xb, y[i:i + chunk], mode, gen)
        grads = per_sample(params, xb, yb)
        for k in total:
            total[k] += (grads[k] ** 2).sum(0)
    return total
