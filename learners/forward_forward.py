"""Forward-Forward (Hinton 2022, arXiv 2212.13345) and Collaborative FF (Lorberbom et al. 2024).

Each block learns, on its own detached and normalised input, to give high
goodness G = sum_j h_j^2 to positive data (the image with its true label
embedded in the first pixels) and low goodness to negative data (the same
image with a wrong label): p(positive) = sigmoid((G - theta) / T) with a
logistic loss (paper eq. 1; theta = the block's unit count as in Hinton's
MATLAB code and loeweX, whose ``sum_of_squares - z.shape[1]`` is this theta).

Readouts: ``goodness`` embeds every label in turn (one batched [B*C, D] pass)
and picks the label with the largest goodness summed over blocks >=
``readout_first_block``; ``softmax`` applies a linear classifier to the
RMS-normalised activities of those blocks under a neutral label. The
classifier is trained at every step on detached features, with its own
optimiser settings (the bug of loeweX PR #7 was that it was not).

Collaborative FF (``collaboration``): block i's logit adds the stop-gradient
goodness of the other blocks, ``(G_i - theta_i) + sum_t sg(G_t - theta_t)``
(all other blocks, or only the earlier ones). With ``none`` it is exactly FF.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._ff_local import NORMALIZERS, SCHEDULES, block_optimizers, make_block_schedule
from learners._optim import OptimizerConfig, make_optimizer, make_scheduler
from learners.base import Learner, Tags, register
from learners.search import LogUniform, Uniform

GOODNESS = ("sum_sq", "mean_sq")
NEGATIVES = ("uniform", "hard", "permutation_unsafe")
READOUTS = ("goodness", "softmax")
COLLABORATION = ("none", "all", "previous")
LABEL_MODES = ("replace", "append")


class StraightThroughReLU(torch.autograd.Function):
    """ReLU forward, identity backward (loeweX ``ReLU_full_grad``; not in the paper)."""

    @staticmethod
    def forward(ctx, z):
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def sample_negative_labels(y: torch.Tensor, n_classes: int, how: str, gen: torch.Generator,
                           logits: torch.Tensor | None = None) -> torch.Tensor:
    """Wrong labels for the negative pass.

    ``uniform``: uniform over the C-1 wrong labels (loeweX). ``hard``: from
    softmax(logits) with the true class removed (Hinton's MATLAB ``choosefrom``
    on the neutral-label softmax). ``permutation_unsafe``: a permutation of the
    batch labels (mpezeshki), which equals the true label about 1/C of the
    time; kept only to reproduce that bug.
    """
    if how == "uniform":
        shift = torch.randint(1, n_classes, y.shape, generator=gen, device="cpu").to(y.device)
        return (y + shift) % n_classes
    if how == "hard":
        if logits is None:
            raise ValueError("hard negatives need the readout's logits")
        masked = logits.detach().float().clone()
        masked[torch.arange(len(y)), y] = -math.inf
        probs = torch.softmax(masked, dim=1)
        return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(y.device)
    return y[torch.randperm(len(y), generator=gen, device="cpu").to(y.device)]


@dataclass
class FFState:
    network: nn.Module
    optimizers: list                   # one per block (its goodness loss)
    schedulers: list
    schedule: object                   # simultaneous or greedy (learners._ff_local.BlockSchedule)
    readout: nn.Linear                 # the softmax readout on detached block activity
    readout_optimizer: torch.optim.Optimizer
    readout_scheduler: object
    running_means: list                # per block, the mean activity of each unit (peer normalisation)
    thresholds: list                   # per block, the goodness threshold
    n_classes: int
    generator: torch.Generator         # negatives and label draws
    step: int = 0


@register("forward_forward")
@dataclass(frozen=True, kw_only=True)
class ForwardForward(Learner):
    """Per-block logistic goodness loss on positive and negative data; label embedded in the input."""

    goodness: str = "sum_sq"                 # sum_sq | mean_sq
    threshold: float | None = None           # null: the block's unit count (sum_sq) or 1.0 (mean_sq)
    temperature: float = 1.0
    normalization: str = "rms"               # between blocks: rms (Hinton, loeweX) | l2 (mpezeshki) | none
    normalize_input: bool = True             # the input image is RMS-normalised too (MATLAB, loeweX)
    label_mode: str = "replace"              # replace the first n_classes inputs | append them (low-dim data)
    label_strength: float = 1.0              # one-hot value; the neutral label is strength / n_classes
    negatives: str = "uniform"               # uniform | hard | permutation_unsafe
    peer_norm_lambda: float = 0.03           # 0 disables peer normalisation
    peer_norm_momentum: float = 0.9
    relu_grad: str = "exact"                 # exact | straight_through (loeweX ReLU_full_grad)
    # softmax: on 64-unit blocks the goodness of one block is a weak classifier (digits: 91% vs 97%)
    readout: str = "softmax"                 # softmax (neutral label) | goodness (all labels; the paper's)
    readout_first_block: int = 1             # both readouts use blocks >= this (the paper skips block 0)
    schedule: str = "simultaneous"           # simultaneous | greedy
    epochs_per_block: int | None = None      # greedy: epochs per block; null = an equal share of the run
    collaboration: str = "none"              # none | all | previous (Collaborative FF)
    weight_init: str = "network"             # network (the spec's seeded init) | hinton: N(0, 1/fan_in), b=0
    probe_max_samples: int = 2000            # per-block goodness accuracy is measured on at most this many
    # Departure from loeweX's config.yaml (SGD lr 1e-3, momentum 0.9, weight decay 3e-4; classifier lr
    # 1e-2, wd 3e-3; experiment=reproduce_ff_mnist keeps it): Adam at 3e-4 for the blocks and 1e-2 for
    # the readout learn on every dataset and network preset. With 3e-3 for both, 1000-unit blocks barely
    # learn: one epoch on 3000 MNIST images reached 25% (2x1000) and 22% (3x1000) validation accuracy,
    # against 77% and 78% with these.
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=3e-4))
    readout_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-2))

    tags = Tags(locality="blockwise", crosses_blocks=False, backend="torch", supports_conv=False)
    contract_params = {"label_mode": "append", "readout_first_block": 0, "peer_norm_lambda": 0.0,
                       "optimizer": {"name": "adam", "lr": 0.01},
                       "readout_optimizer": {"name": "adam", "lr": 0.01}}
    contract_epochs = 30
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(1e-4, 3e-2), "readout_optimizer.lr": LogUniform(1e-4, 3e-2),
                    "peer_norm_lambda": Uniform(0.0, 0.1)}
    constraints = {"goodness": GOODNESS, "normalization": tuple(NORMALIZERS), "label_mode": LABEL_MODES,
                   "negatives": NEGATIVES, "relu_grad": ("exact", "straight_through"), "readout": READOUTS,
                   "schedule": SCHEDULES, "collaboration": COLLABORATION, "weight_init": ("network", "hinton"),
                   "temperature": Range(0, low_open=True), "peer_norm_momentum": Range(0, 1),
                   "readout_first_block": Range(0)}

    # ------------------------------------------------------------------ setup

    def _check(self, network, n_classes: int, n_inputs: int):
        if network.spec.kind != "mlp":
            raise ConfigError(f"forward_forward trains MLPs only (labels are embedded in the flattened "
                              f"input); network.kind={network.spec.kind!r}")
        if self.relu_grad == "straight_through" and network.spec.activation != "relu":
            raise ConfigError(f"forward_forward.relu_grad=straight_through needs network.activation=relu, "
                              f"got {network.spec.activation!r}")
        if self.peer_norm_momentum >= 1:
            raise ConfigError(f"forward_forward.peer_norm_momentum must be below 1, got {self.peer_norm_momentum}")
        if self.label_mode == "replace" and n_inputs <= n_classes:
            raise ConfigError(f"forward_forward.label_mode=replace overwrites the first {n_classes} of only "
                              f"{n_inputs} inputs; use label_mode=append for low-dimensional data")
        if self.negatives != "hard" and n_classes < 2:
            raise ConfigError("forward_forward needs at least 2 classes for negative labels")

    def readout_blocks(self, n_blocks: int) -> range:
        """Blocks read by both readouts; with a single block, that block (there is nothing else)."""
        return range(min(self.readout_first_block, n_blocks - 1), n_blocks)

    def thresholds(self, network) -> list[float]:
        if self.threshold is not None:
            return [float(self.threshold)] * network.n_blocks
        # paper eq. 1 with theta = number of units (MATLAB `layernums{l}`, loeweX `z.shape[1]`);
        # the same threshold per unit for the mean of squares.
        return [float(network.block_width(i)) if self.goodness == "sum_sq" else 1.0
                for i in range(network.n_blocks)]

    def init(self, network, data_info, seed):
        network = network.to(data_info.device)
        n_classes = data_info.n_classes
        n_inputs = math.prod(data_info.input_shape)
        self._check(network, n_classes, n_inputs)
        if network.head is not None:
            network.head.requires_grad_(False)   # FF predicts by goodness or its own readout
        gen = torch.Generator().manual_seed(seed_stream(seed, "forward_forward.init"))
        if self.label_mode == "append":
            self._widen_first_layer(network, n_classes, gen)
        if self.weight_init == "hinton":
            with torch.no_grad():
                for i in range(network.n_blocks):
                    layer = network.weight_layer(i)
                    std = 1.0 / math.sqrt(layer.weight.shape[1])
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                    if layer.bias is not None:
                        layer.bias.zero_()
        schedule = make_block_schedule(self.schedule, network.n_blocks, data_info, self.epochs_per_block)
        opts, scheds = block_optimizers([list(b.parameters()) for b in network.blocks], self.optimizer, schedule)
        width = sum(network.block_width(i) for i in self.readout_blocks(network.n_blocks))
        readout = nn.Linear(width, n_classes, bias=False).to(data_info.device)
        nn.init.zeros_(readout.weight)   # loeweX: zero-initialised, bias-free classifier
        readout_opt = make_optimizer(readout.parameters(), self.readout_optimizer)
        return FFState(
            network=network, optimizers=opts, schedulers=scheds, schedule=schedule,
            readout=readout, readout_optimizer=readout_opt,
            readout_scheduler=make_scheduler(readout_opt, self.readout_optimizer, data_info.total_steps),
            # MATLAB initialises the running mean activity at 0.5 (loeweX too); one entry per unit.
            running_means=[torch.full((network.block_width(i),), 0.5, device=data_info.device)
                           for i in range(network.n_blocks)],
            thresholds=self.thresholds(network), n_classes=n_classes, generator=gen)

    @staticmethod
    def _widen_first_layer(network, n_classes, gen):
        """label_mode=append: the first layer gets n_classes more inputs (same init rule, fresh columns)."""
        old = network.weight_layer(0)
        new = nn.Linear(old.in_features + n_classes, old.out_features, bias=old.bias is not None)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(new.in_features)
            new.weight.uniform_(-bound, bound, generator=gen)
            new.weight[:, :old.in_features] = old.weight
            if old.bias is not None:
                new.bias.copy_(old.bias)
        block = network.blocks[0]
        for idx, module in enumerate(block):
            if module is old:
                block[idx] = new.to(old.weight.device)

    # ------------------------------------------------------------------ pieces

    def network_input(self, state, x):
        """The input with the neutral label: what the blocks read when FF scores without a label."""
        return self.embed(x, None, state.n_classes)

    def trainable_modules(self, state):
        return [state.network, state.readout]

    def optimizers(self, state):
        return list(state.optimizers) + [state.readout_optimizer]

    def embed(self, x: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
        """Flattened input with the label (one-hot * strength) or, for None, the neutral label embedded."""
        flat = x.reshape(len(x), -1)
        if labels is None:
            code = torch.full((len(x), n_classes), self.label_strength / n_classes, dtype=flat.dtype,
                              device=flat.device)
        else:
            code = F.one_hot(labels, n_classes).to(flat.dtype) * self.label_strength
        if self.label_mode == "append":
            return torch.cat([flat, code], dim=1)
        return torch.cat([code, flat[:, n_classes:]], dim=1)

    def block_goodness(self, h: torch.Tensor) -> torch.Tensor:
        return h.pow(2).sum(1) if self.goodness == "sum_sq" else h.pow(2).mean(1)

    def activity(self, network, i: int, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised activity h_i of block i (its goodness lives in this vector's length)."""
        z = network.weight_layer(i)(x)
        if network.spec.activation == "relu":
            return StraightThroughReLU.apply(z) if self.relu_grad == "straight_through" else F.relu(z)
        return network.blocks[i][-1](z)

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        return NORMALIZERS[self.normalization](h)

    def _input(self, x_embedded):
        return NORMALIZERS["rms"](x_embedded) if self.normalize_input else x_embedded

    @torch.no_grad()
    def forward_all(self, state, x_embedded: torch.Tensor, upto: int | None = None):
        """(goodness per block, normalised activity per block) without autograd."""
        net = state.network
        h = self._input(x_embedded)
        goodness, normalised = [], []
        for i in range(net.n_blocks if upto is None else upto + 1):
            a = self.activity(net, i, h)
            goodness.append(self.block_goodness(a))
            h = self.normalize(a)
            normalised.append(h)
        return goodness, normalised

    def readout_features(self, state, normalised: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([normalised[i] for i in self.readout_blocks(state.network.n_blocks)], dim=1)

    def goodness_over_labels(self, state, x: torch.Tensor) -> torch.Tensor:
        """Goodness of every block for every candidate label, (n_blocks, B, C), in one [B*C, D] pass."""
        c = state.n_classes
        b = len(x)
        labels = torch.arange(c, device=x.device).repeat(b)
        tiled = x.reshape(b, -1).repeat_interleave(c, dim=0)
        goodness, _ = self.forward_all(state, self.embed(tiled, labels, c))
        return torch.stack(goodness).reshape(len(goodness), b, c)

    # ------------------------------------------------------------------ training

    def update(self, state, batch):
        x, y = batch
        state.network.train()
        c = state.n_classes
        active = state.schedule.active()
        # Neutral-label pass with the weights before this step: the readout's features, and the
        # logits hard negatives are drawn from (MATLAB runs it before choosing negatives).
        _, neutral = self.forward_all(state, self.embed(x, None, c))
        features = self.readout_features(state, neutral)
        logits = state.readout(features) if self.negatives == "hard" else None
        y_neg = sample_negative_labels(y, c, self.negatives, state.generator, logits)
        losses, metrics = self.block_losses(state, x, y, y_neg, active)
        if losses:
            for i in active:
                state.optimizers[i].zero_grad(set_to_none=True)
            sum(losses.values()).backward()   # one backward; each loss reaches only its own block
            for i in active:
                state.optimizers[i].step()
                state.schedulers[i].step()
        metrics["readout_loss"] = self.train_readout(state, features, y)
        state.step += 1
        state.schedule.after_step(state.step)
        return state, metrics

    def block_losses(self, state, x, y, y_neg, active) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """Local loss of each block in ``active`` (FF logistic loss + peer normalisation), with metrics.

        Every block reads the detached, normalised output of the block below,
        so the graph of loss i holds block i's parameters only.
        """
        net = state.network
        c, thetas = state.n_classes, state.thresholds
        b = len(x)
        h = self._input(torch.cat([self.embed(x, y, c), self.embed(x, y_neg, c)]))
        # Collaboration needs every block's goodness; plain FF stops after the last block in training.
        last = net.n_blocks - 1 if self.collaboration != "none" else (max(active) if len(active) else -1)
        goodness, activities = [], []
        for i in range(last + 1):
            with torch.set_grad_enabled(i in active):
                a = self.activity(net, i, h.detach())
            goodness.append(self.block_goodness(a))
            activities.append(a)
            h = self.normalize(a.detach())
        centred = [(g - t).detach() for g, t in zip(goodness, thetas)]
        target = torch.cat([torch.ones(b, device=x.device), torch.zeros(b, device=x.device)])
        losses: dict[int, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        for i in active:
            logit = goodness[i] - thetas[i] + self.collaboration_offset(centred, i)
            ff_loss = F.binary_cross_entropy_with_logits(logit / self.temperature, target)
            losses[i] = ff_loss
            if self.peer_norm_lambda > 0:
                losses[i] = ff_loss + self.peer_norm_lambda * self.peer_loss(state, i, activities[i][:b])
            with torch.no_grad():
                g_pos, g_neg = goodness[i][:b], goodness[i][b:]
                metrics[f"loss/{i}"] = ff_loss.item()
                metrics[f"goodness_pos/{i}"] = g_pos.mean().item()
                metrics[f"goodness_neg/{i}"] = g_neg.mean().item()
                # Hinton's "pairsumerrs": how often the negative input is at least as good as the positive
                metrics[f"pair_error/{i}"] = (g_neg >= g_pos).float().mean().item()
        return losses, metrics

    def collaboration_offset(self, centred: list[torch.Tensor], i: int):
        """gamma_i of Collaborative FF: the other blocks' (stop-gradient) goodness above threshold."""
        if self.collaboration == "none":
            return 0.0
        others = [t for t in range(len(centred)) if t != i and (self.collaboration == "all" or t < i)]
        if not others:
            return 0.0
        return torch.stack([centred[t] for t in others]).sum(0)

    def peer_loss(self, state, i: int, positive_activity: torch.Tensor) -> torch.Tensor:
        """loeweX's form of MATLAB peer normalisation: lambda * mean_j (mean(m) - m_j)^2.

        m is the running mean activity of each unit over positive samples
        (momentum 0.9, start 0.5); only this batch's share of it carries a gradient.
        """
        mom = self.peer_norm_momentum
        running = state.running_means[i] * mom + positive_activity.mean(0) * (1 - mom)
        state.running_means[i] = running.detach()
        return (running.mean() - running).pow(2).mean()

    def train_readout(self, state, features: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(state.readout(features.detach()), y)
        state.readout_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.readout_optimizer.step()
        state.readout_scheduler.step()
        return loss.item()

    # ------------------------------------------------------------------ prediction

    def predict(self, state, x):
        net = state.network
        was_training = net.training
        net.eval()
        try:
            if self.readout == "softmax":
                _, neutral = self.forward_all(state, self.embed(x, None, state.n_classes))
                with torch.no_grad():
                    return state.readout(self.readout_features(state, neutral))
            g = self.goodness_over_labels(state, x)
            # Scores: goodness above threshold over temperature, summed over the readout blocks
            # (same argmax as the summed goodness of the paper's energy test).
            thetas = state.thresholds
            return sum((g[i] - thetas[i]) / self.temperature for i in self.readout_blocks(net.n_blocks))
        finally:
            net.train(was_training)

    def block_metrics(self, state, x, y):
        """Per block: accuracy of picking the label with the highest goodness of that block alone,
        on the first ``probe_max_samples`` samples of the evaluated split."""
        x, y = x[:self.probe_max_samples], y[:self.probe_max_samples]
        correct = torch.zeros(state.network.n_blocks)
        for start in range(0, len(x), 512):
            g = self.goodness_over_labels(state, x[start:start + 512])
            correct += (g.argmax(2) == y[start:start + 512]).sum(1).float().cpu()
        return {"goodness_accuracy": (correct / max(len(x), 1)).tolist()}
