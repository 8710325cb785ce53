"""LLS: local learning with a fixed periodic basis (Apolinario, Roy, Roy, WACV 2025, arXiv 2405.15868).

Every block is trained by its own softmax cross-entropy on

    logits = B u_hat / tau,    u_hat = pool(a) / ||pool(a)||_2,

where ``a`` is the block's activity computed from a detached input, ``pool`` an adaptive
average pooling (s x s for conv maps, identity for linear blocks) and ``B`` a fixed C x D
periodic basis (`learners._lls_basis`), so plain LLS adds no trainable parameter. LLS-M
scales the logits by a learnable C-vector, LLS-MxM mixes them with a learnable C x C matrix.
The network's head is trained by cross-entropy on the detached last block output and is
what predicts. Follows mapolinario94/LLS-DNN (models/layers/lls_layers.py), including its
ablations: a fixed random matrix (``random_basis``) and a learnable local classifier
(``local_classifier``, the Nøkland-style local-loss baseline), both on un-normalised activity.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._lls_basis import WAVEFORMS, periodic_basis
from learners._optim import OptimizerConfig, is_schedule_free, make_optimizer, make_scheduler, optimizer_step
from learners._schedule_free import ScheduleFreeEval
from learners.base import LayerwiseLearner, Tags, evaluating, register
from learners.search import LogUniform

VARIANTS = ("lls", "lls_m", "lls_mxm", "lls_mxm_reduced", "random_basis", "local_classifier")
SCHEDULES = ("simultaneous", "greedy")
_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class LocalHead(nn.Module):
    """Pooled block activity -> local logits for one block.

    The fixed matrix (periodic basis or random matrix) is a buffer, never a parameter;
    the only parameters are the modulation of LLS-M / LLS-MxM or the learnable local
    classifier.
    """

    def __init__(self, variant: str, fixed: torch.Tensor | None, learnable: torch.Tensor | None,
                 temperature: float):
        super().__init__()
        self.variant, self.temperature = variant, temperature
        self.normalize = variant not in ("random_basis", "local_classifier")
        if fixed is not None:
            self.register_buffer("basis", fixed)
        else:
            self.basis = None
        self.learnable = nn.Parameter(learnable) if learnable is not None else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            u = F.normalize(u, dim=1)
        if self.variant == "local_classifier":
            return u @ self.learnable.T / self.temperature
        z = u @ self.basis.T
        if self.variant == "lls_m":
            z = self.learnable * z
        elif self.variant in ("lls_mxm", "lls_mxm_reduced"):
            z = z @ self.learnable
        return z / self.temperature


@dataclass
class LLSState:
    network: nn.Module
    heads: nn.ModuleList               # per block: its fixed basis and learnable readout (LLS-M, -MxM)
    optimizers: list                   # one per block (block and head), then the network head's
    schedulers: list
    splits: list                       # where each block's pooling starts (its activity is read there)
    pool_sizes: list
    total_steps: int
    schedule_free: ScheduleFreeEval    # evaluates schedule-free optimisers at their averaged weights
    channels_last: bool
    step: int = 0


@register("lls")
@dataclass(frozen=True, kw_only=True)
class LLS(LayerwiseLearner):
    """Blockwise cross-entropy against a fixed periodic basis; the head trains on detached features.

    ``variant``: lls | lls_m (C-vector modulation) | lls_mxm (C x C) | lls_mxm_reduced (a basis
    of ``reduced_rows`` rows and a reduced_rows x C matrix) | random_basis (fixed 0.1 N(0, 1)
    matrix, no normalisation) | local_classifier (learnable 0.1 N(0, 1) matrix, no normalisation).
    ``first_conv_pool`` / ``conv_pool``: side s of the s x s average pooling of conv activity
    (first conv block / the others); ``linear_pool``: 0 keeps a linear block's features as they
    are, n > 0 average-pools (or up-samples) them to n. Pooling acts on the block's activity
    before the block's own max/average pooling layer, as in the reference, where pooling
    follows the LLS layer. With a schedule-free optimiser, evaluation uses its averaged weights
    after ``bn_refresh_batches`` recent training batches refresh the batch-norm statistics.
    ``schedule``: simultaneous (every block steps on every batch) or greedy (block k trains
    during the k-th equal share of the steps, then stays frozen). ``channels_last`` stores conv
    activity channels-last, which on CPU makes max pooling ~8x and convolutions ~1.5-2.5x faster
    (same results up to float rounding).
    """

    variant: str = "lls"
    waveform: str = "square"
    min_freq: float = 50.0
    max_freq: float = 512.0
    temperature: float = 0.5
    label_smoothing: float = 0.0
    first_conv_pool: int = 4
    conv_pool: int = 2
    linear_pool: int = 0
    reduced_rows: int = 20
    # the schedule-free AdamW step of the paper's runs (LLS-DNN vendors it): see learners/_optim.py
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="adamw_schedulefree_paper", lr=5e-3))
    bn_refresh_batches: int = 50
    schedule: str = "simultaneous"
    channels_last: bool = True

    tags = Tags(locality="blockwise", crosses_blocks=False, backend="torch")
    contract_epochs = 10   # blobs and xor reach >= 0.99 test accuracy by epoch 4
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(5e-4, 2e-2), "temperature": LogUniform(0.1, 2.0)}

    # ------------------------------------------------------------------ setup

    constraints = {"variant": VARIANTS, "waveform": WAVEFORMS, "schedule": SCHEDULES,
                   "temperature": Range(0, low_open=True), "first_conv_pool": Range(1), "conv_pool": Range(1),
                   "reduced_rows": Range(1), "linear_pool": Range(0), "bn_refresh_batches": Range(0),
                   "label_smoothing": Range(0, 1)}

    def _check(self):
        if self.label_smoothing >= 1:
            raise ConfigError(f"lls.label_smoothing must be below 1, got {self.label_smoothing}")

    def pool_sizes(self, network) -> list[int]:
        """s per block: first_conv_pool for the first conv block, conv_pool for later ones,
        linear_pool (0 = identity) for linear blocks."""
        sizes, n_conv = [], 0
        for shape in network.block_shapes:
            if len(shape) == 3:
                sizes.append(self.first_conv_pool if n_conv == 0 else self.conv_pool)
                n_conv += 1
            else:
                sizes.append(self.linear_pool)
        return sizes

    def init(self, network, data_info, seed):
        self._check()
        if data_info.task != "classification":
            raise ConfigError(f"lls trains classifiers; got task {data_info.task!r}")
        if network.head is None:
            raise ConfigError("lls predicts with the network's head: build the network with head=True")
        network = network.to(data_info.device)
        if self._channels_last(data_info.input_shape):
            network = network.to(memory_format=torch.channels_last)
        n_classes = data_info.n_classes
        splits = [_pool_split(block) for block in network.blocks]
        sizes = self.pool_sizes(network)
        dims = _local_dims(network, splits, sizes, data_info.input_shape, data_info.device)
        gen = torch.Generator().manual_seed(seed_stream(seed, "lls.heads"))
        heads = nn.ModuleList([self._make_head(n_classes, d, gen) for d in dims]).to(data_info.device)
        optimizers = [make_optimizer(list(block.parameters()) + list(head.parameters()), self.optimizer)
                      for block, head in zip(network.blocks, heads)]
        optimizers.append(make_optimizer(network.head.parameters(), self.optimizer))
        schedulers = [None if is_schedule_free(opt) else make_scheduler(opt, self.optimizer, data_info.total_steps)
                      for opt in optimizers]
        return LLSState(network=network, heads=heads, optimizers=optimizers, schedulers=schedulers, splits=splits,
                        pool_sizes=sizes, total_steps=data_info.total_steps,
                        schedule_free=ScheduleFreeEval(optimizers, network, self.bn_refresh_batches),
                        channels_last=self._channels_last(data_info.input_shape))

    def _channels_last(self, input_shape) -> bool:
        return self.channels_last and len(input_shape) == 3

    @staticmethod
    def _layout(state, x: torch.Tensor) -> torch.Tensor:
        if state.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _make_head(self, n_classes: int, dim: int, gen: torch.Generator) -> LocalHead:
        v = self.variant
        if v in ("lls", "lls_m", "lls_mxm"):
            basis, learnable = periodic_basis(n_classes, dim, self.waveform, self.min_freq, self.max_freq), None
            if v == "lls_m":
                learnable = 0.01 * torch.randn(n_classes, generator=gen)
            elif v == "lls_mxm":
                learnable = 0.01 * torch.randn(n_classes, n_classes, generator=gen)
        elif v == "lls_mxm_reduced":
            basis = periodic_basis(self.reduced_rows, dim, self.waveform, self.min_freq, self.max_freq)
            learnable = 0.01 * torch.randn(self.reduced_rows, n_classes, generator=gen)
        elif v == "random_basis":
            # The reference draws C x hidden_dim (2048 for VGG8) and average-pools the matrix to D;
            # drawing C x D directly is the same for SmallConv, where hidden_dim = D.
            basis, learnable = 0.1 * torch.randn(n_classes, dim, generator=gen), None
        else:
            basis, learnable = None, 0.1 * torch.randn(n_classes, dim, generator=gen)
        return LocalHead(v, basis, learnable, self.temperature)

    # --------------------------------------------------------------- training

    def first_input(self, state, batch):
        x = self._layout(state, batch[0])
        state.schedule_free.to_train(x)
        state.network.train()
        return x

    def blocks_to_update(self, state):
        n = state.network.n_blocks
        if self.schedule == "simultaneous":
            return range(n)
        phase = min(state.step * n // max(state.total_steps, 1), n - 1)
        return range(phase, phase + 1)

    def local_logits(self, state, i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block i on input ``h``: (its output, its local logits). Gradients stay inside block i."""
        block, k = state.network.blocks[i], state.splits[i]
        a = h
        for m in block[:k]:
            a = m(a)
        out = a
        with torch.no_grad():  # the block's own pooling is not part of its local loss
            for m in block[k:]:
                out = m(out)
        logits = state.heads[i](pool_activity(a, state.pool_sizes[i]))
        return out, logits

    def update_block(self, state, i, h, batch):
        y = batch[1]
        out, logits = self.local_logits(state, i, h.detach())
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        optimizer_step(state.optimizers[i], loss, state.schedulers[i])
        acc = (logits.detach().argmax(1) == y).float().mean()
        return out.detach(), {"local_loss": loss.item(), "local_accuracy": acc.item()}

    def after_blocks(self, state, h, batch):
        net = state.network
        last = max(self.blocks_to_update(state))
        with torch.no_grad():  # greedy schedule: carry the batch through the blocks not trained yet
            for j in range(last + 1, net.n_blocks):
                h = net.run_block(j, h)
        scores = net.head(h.detach())
        loss = F.cross_entropy(scores, batch[1])
        optimizer_step(state.optimizers[-1], loss, state.schedulers[-1])
        return {"loss": loss.item()}

    # ------------------------------------------------------------- evaluation

    def prepare_eval(self, state) -> None:
        """Schedule-free: move to the averaged weights and refresh batch norm (once per step)."""
        blocks = state.network.blocks

        def features(x):
            for block in blocks:
                x = block(x)

        state.schedule_free.to_eval(features)

    def predict(self, state, x):
        self.prepare_eval(state)
        with evaluating(state.network) as net:
            return net(self._layout(state, x))

    def trainable_modules(self, state):
        return [state.network, state.heads]

    def optimizers(self, state):
        return list(state.optimizers)

    def block_metrics(self, state, x, y, batch_size: int = 1024):
        """Local accuracy and loss of every block on (x, y), at the evaluation weights."""
        self.prepare_eval(state)
        n = state.network.n_blocks
        correct, loss_sum = [0.0] * n, [0.0] * n
        with evaluating(state.network), evaluating(state.heads):
            for start in range(0, len(x), batch_size):
                h, yb = self._layout(state, x[start:start + batch_size]), y[start:start + batch_size]
                for i in range(n):
                    h, logits = self.local_logits(state, i, h)
                    correct[i] += (logits.argmax(1) == yb).sum().item()
                    loss_sum[i] += F.cross_entropy(logits, yb, reduction="sum").item()
        return {"local_accuracy": [c / len(x) for c in correct], "local_loss": [s / len(x) for s in loss_sum]}

    def block_parameters(self, state):
        return [list(block.parameters()) + list(head.parameters())
                for block, head in zip(state.network.blocks, state.heads)]


def pool_activity(a: torch.Tensor, size: int) -> torch.Tensor:
    """u of the paper: conv maps average-pooled to size x size and flattened (D = C s^2);
    linear activity kept (size 0) or average-pooled to ``size`` features, which up-samples by
    repetition when size exceeds the width (the reference's SmallConvL quirk)."""
    if a.dim() == 4:
        n, c, h, w = a.shape
        if a.is_contiguous(memory_format=torch.channels_last) and h % size == 0 and w % size == 0:
            # equal windows: two sums over reshaped views, rows first. Forward and backward took
            # 2.9 ms against the averaging matmul's 6.5 on smallconv's first block (batch 128, 1 thread)
            rows = a.permute(0, 2, 3, 1).reshape(n * size, h // size, size, (w // size) * c).sum(1)
            u = rows.reshape(n, size, size, w // size, c).sum(3) * (1.0 / ((h // size) * (w // size)))
            return u.permute(0, 3, 1, 2).reshape(n, c * size * size)
        # otherwise adaptive_avg_pool2d as one matmul with its (s*s, H*W) averaging matrix: the same
        # numbers, but its backward on channels-last maps is ~5x cheaper on CPU than torch's pooling kernel.
        k = _pool_matrix(h, w, size).to(device=a.device, dtype=a.dtype)
        if a.is_contiguous(memory_format=torch.channels_last):
            u = torch.matmul(k, a.permute(0, 2, 3, 1).reshape(n, h * w, c)).transpose(1, 2)
        else:
            u = torch.matmul(a.reshape(n, c, h * w), k.T)
        return u.reshape(n, c * size * size)   # feature order (channel, row, column), as .view(n, -1)
    a = a.flatten(1)
    return a if size == 0 else F.adaptive_avg_pool1d(a.unsqueeze(1), size).squeeze(1)


@functools.lru_cache(maxsize=64)
def _pool_matrix(h: int, w: int, size: int) -> torch.Tensor:
    """K with (K @ a.flatten())[i * size + j] = mean of adaptive_avg_pool2d's window (i, j) of an h x w map."""
    def windows(n):
        m = torch.zeros(size, n)
        for i in range(size):
            lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m
    return torch.kron(windows(h), windows(w))


def _pool_split(block: nn.Module) -> int:
    """Index of the trailing pooling layers of a block (len(block) when it has none)."""
    layers = list(block)
    k = len(layers)
    while k > 0 and isinstance(layers[k - 1], _POOLING):
        k -= 1
    return k


def _local_dims(network, splits, sizes, input_shape, device) -> list[int]:
    """D of every block's local head, from one forward pass of a dummy batch."""
    dims = []
    with evaluating(network):
        h = torch.zeros((2, *input_shape), device=device)
        for block, k, s in zip(network.blocks, splits, sizes):
            a = h
            for m in block[:k]:
                a = m(a)
            dims.append(pool_activity(a, s).shape[1])
            h = block(h)
    return dims
