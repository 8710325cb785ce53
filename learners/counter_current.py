"""Counter-Current Learning (Kao & Hariharan, NeurIPS 2024, arXiv 2409.19841): two anti-parallel networks.

The forward network is the run's network: forward layers F_1..F_L are its blocks and its head
(F_L, the logits). A feedback network of mirrored shape runs from the label towards the input:
G_l maps the space of F_l's output back to the space of F_l's input. With sg the stop-gradient
and φ, ψ the forward and feedback activations,

    a_0 = x,            a_l = φ(F_l(sg(a_{l−1})))   (l = 1..L−1),   b = F_L(sg(a_{L−1}))
    c_L = I_C,          c_{l−1} = ψ(G_l(sg(c_l)))   (l = L..2),     c_0 = G_1(sg(c_1))

Layer l of the forward network meets layer L−l of the feedback network (counted from its own
input, the label): the pair at depth l is (a_l, c_l), l = 0..L−1, so the top forward layer learns
from the first feedback layer and the bottom feedback layer from the input itself (the paper's
"bottom layer of the feedback network guides the top layer of the forward network and vice
versa"). The feedback input is the C×C identity, one signal per class, as the official code
(``data_bw = args.T10``); an example's target at depth l is the row c_l[y].

Per pair, with A = a_l (B×d, flattened), P = c_l (C×d), T the one-hot targets (B×C):

    similarity_onehot     ℓ_l = λ_C · (256/d) · MSE(A Pᵀ, T)                       (official MLP loss)
    cosine_onehot_decorr  ℓ_l = λ_C · MSE(Â P̂ᵀ, T) + λ_ssl · [MSE(Â Âᵀ, I_B) + MSE(P̂ P̂ᵀ, I_C)]
                          with rows L2-normalised                                  (official CNN loss)
    l2_pair               ℓ_l = λ_C · MSE(A, P[y])       (the Figure 1 caption's "difference of activations")

and one step descends Σ_l ℓ_l + CE(b, y). The pair's own gradient is not stopped: ℓ_l moves F_l
and G_{l+1} towards each other, and nothing else (every layer reads a detached input). The CE
reaches only F_L. Prediction is the forward network alone: argmax b.

Departures from the official code, each named where it is made: gradients are clipped per layer
by default, not per network (``clip_scope``); the warm-up scales the learning rate, not the loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._optim import OptimizerConfig, Schedule, make_optimizer, make_scheduler
from learners.base import Learner, Tags, evaluating, register
from learners.search import LogUniform
from networks.build import initialise

LOCAL_LOSSES = ("similarity_onehot", "cosine_onehot_decorr", "l2_pair")
FEEDBACK_ACTIVATIONS = ("elu", "same", "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity")
CLIP_SCOPES = ("layer", "network")
OPTIMIZERS = ("sgd", "adam", "adamw")
PROBE_SAMPLES = 512
# The official loss scales the raw similarity by 256/d so that one λ_C fits layers of any width
# (its MLPs are 256 wide); kept as written (utils/loss.py, compute_scl_loss_classification).
WIDTH_REFERENCE = 256
# A filtered example is one the forward network already gets right with p > 0.9 (hard-coded there).
FILTER_MARGIN = 0.1


def _activation(name: str, spec) -> nn.Module:
    if name == "same":
        name = spec.activation
    return {"elu": nn.ELU(), "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(spec.leaky_slope), "tanh": nn.Tanh(),
            "sigmoid": nn.Sigmoid(), "gelu": nn.GELU(), "identity": nn.Identity()}[name]


def _weight_layer(module: nn.Module) -> nn.Module:
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    return next(m for m in layers if isinstance(m, (nn.Linear, nn.Conv2d)))


class Mirror(nn.Module):
    """G_l: from the space of F_l's output back to the shape of F_l's input.

    A linear F_l is mirrored by a linear map the other way. A conv block (conv, activation, pooling)
    is mirrored by nearest-neighbour upsampling to the block's input size, then a stride-1 conv with
    the kernel's size and the channels swapped, as the official ``C2Conv``/``cnn_pool`` reverse path
    (upsample, then conv, then activation)."""

    def __init__(self, forward_layer: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 activation: nn.Module | None):
        super().__init__()
        bias = forward_layer.bias is not None
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if isinstance(forward_layer, nn.Conv2d):
            k = forward_layer.kernel_size
            self.layer = nn.Conv2d(forward_layer.out_channels, forward_layer.in_channels, k,
                                   padding=(k[0] // 2, k[1] // 2), bias=bias)
        else:
            self.layer = nn.Linear(forward_layer.out_features, forward_layer.in_features, bias=bias)
        self.activation = activation

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        n = len(c)
        if isinstance(self.layer, nn.Conv2d):
            c = c.reshape(n, *self.in_shape)
            size = tuple(self.out_shape[1:])
            if tuple(c.shape[2:]) != size:
                c = F.interpolate(c, size=size, mode="nearest")
        else:
            c = c.reshape(n, -1)
        c = self.layer(c)
        if self.activation is not None:
            c = self.activation(c)
        return c.reshape(n, *self.out_shape)


@dataclass
class CounterCurrentState:
    network: nn.Module                  # the forward network: blocks F_1..F_{L-1}, head F_L
    feedback: nn.ModuleList             # feedback[l-1] = G_l, l = 1..L (feedback[L-1] mirrors the head)
    optimizer: torch.optim.Optimizer    # forward network
    feedback_optimizer: torch.optim.Optimizer
    scheduler: Schedule
    feedback_scheduler: Schedule
    n_classes: int
    step: int = 0


@register("counter_current")
@dataclass(frozen=True, kw_only=True)
class CounterCurrent(Learner):
    """A forward and a mirrored feedback network pulled together pairwise by layer-local losses."""

    local_loss: str = "similarity_onehot"  # similarity_onehot (official MLP) | cosine_onehot_decorr (official CNN)
                                           # | l2_pair
    loss_scale_c: float = 0.5              # λ_C, every official MLP config and the MNIST CNN config
    loss_scale_ssl: float = 0.5            # λ_ssl, cosine_onehot_decorr only
    filter_target: bool = False            # zero the rows of examples already classified with p > 0.9
    feedback_activation: str = "elu"       # ψ; the official configs use ELU in both networks
    # Two optimisers, as the official code: plain SGD on each network. Its MLP configs use lr 1 at batch
    # 256; the default here is that rate scaled linearly to the default loop's batch of 32 (1 * 32/256).
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=0.125, momentum=0.0))
    feedback_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=0.125, momentum=0.0))
    clip_norm: float = 1.0                 # gradient-norm clip (0 = none)
    clip_scope: str = "layer"              # layer (each weight layer alone) | network (official: each network whole)
    gradient_centralization: bool = False  # subtract each weight gradient's mean over its inputs (official GradC)

    tags = Tags(locality="blockwise", crosses_blocks=False, backend="torch", supports_conv=True)
    contract_params = {}
    contract_epochs = 30
    constraints = {"local_loss": LOCAL_LOSSES, "feedback_activation": FEEDBACK_ACTIVATIONS,
                   "clip_scope": CLIP_SCOPES, "loss_scale_c": Range(0), "loss_scale_ssl": Range(0),
                   "clip_norm": Range(0)}
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(0.01, 3.0), "feedback_optimizer.lr": LogUniform(0.01, 3.0),
                    "loss_scale_c": LogUniform(0.05, 2.0)}

    # ------------------------------------------------------------------ set-up

    def _check(self, network, data_info):
        if data_info.task != "classification":
            raise ConfigError(f"counter_current trains classifiers; got task {data_info.task!r}")
        if network.head is None:
            raise ConfigError("counter_current needs the network's head as its last forward layer F_L; "
                              "set network.head=true")
        for key, cfg in (("optimizer", self.optimizer), ("feedback_optimizer", self.feedback_optimizer)):
            if cfg.name not in OPTIMIZERS:
                raise ConfigError(f"counter_current.{key}.name={cfg.name!r} is not supported; "
                                  f"allowed: {', '.join(OPTIMIZERS)}")
        spec = network.spec
        if spec.kind == "convnet" and spec.kernel_size % 2 == 0:
            raise ConfigError(f"counter_current: network.kernel_size={spec.kernel_size} must be odd, so that "
                              "each feedback conv keeps the size of the map it mirrors")

    def build_feedback(self, network, input_shape, seed: int) -> nn.ModuleList:
        """G_1..G_L, each mirroring one forward layer; no activation on c_0 (it lives in input space)."""
        spec = network.spec
        shapes = [tuple(input_shape)] + [tuple(s) for s in network.block_shapes]
        layers = [network.weight_layer(i) for i in range(network.n_blocks)] + [_weight_layer(network.head)]
        mirrors = nn.ModuleList()
        for l, layer in enumerate(layers):
            out_shape = shapes[l]
            in_shape = shapes[l + 1] if l + 1 < len(shapes) else (spec.n_classes,)
            act = None if l == 0 else _activation(self.feedback_activation, spec)
            mirrors.append(Mirror(layer, in_shape, out_shape, act))
        # the same init scheme as the forward network (the official code: torch's default for both)
        initialise(mirrors, spec, seed_stream(seed, "counter_current.feedback"))
        return mirrors

    def init(self, network, data_info, seed):
        self._check(network, data_info)
        device = data_info.device
        network = network.to(device)
        feedback = self.build_feedback(network, data_info.input_shape, seed).to(device)
        opt = make_optimizer(network.parameters(), self.optimizer)
        fb_opt = make_optimizer(feedback.parameters(), self.feedback_optimizer)
        return CounterCurrentState(
            network=network, feedback=feedback, optimizer=opt, feedback_optimizer=fb_opt,
            scheduler=make_scheduler(opt, self.optimizer, data_info.total_steps),
            feedback_scheduler=make_scheduler(fb_opt, self.feedback_optimizer, data_info.total_steps),
            n_classes=data_info.n_classes)

    # ------------------------------------------------------------------ the two passes

    def forward_pass(self, state, x) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[a_1, ..., a_{L-1}] and the logits b, every layer on a detached input."""
        acts, h = [], x
        for block in state.network.blocks:
            h = block(h.detach())
            acts.append(h)
        return acts, state.network.head(h.detach())

    def feedback_pass(self, state) -> list[torch.Tensor]:
        """[c_0, ..., c_{L-1}]: the feedback network on the C×C identity, every layer on a detached input."""
        ref = next(state.feedback.parameters())
        c = torch.eye(state.n_classes, dtype=ref.dtype, device=ref.device)
        signals = [None] * len(state.feedback)
        for l in reversed(range(len(state.feedback))):
            c = state.feedback[l](c.detach())
            signals[l] = c
        return signals

    # ------------------------------------------------------------------ the loss

    def pair_loss(self, kind: str, a: torch.Tensor, c: torch.Tensor, y: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """ℓ for one pair: ``a`` (B, ...) forward activations, ``c`` (C, ...) the class signals."""
        A = a.reshape(len(a), -1)
        P = c.reshape(len(c), -1)
        if mask is not None:
            A = A * mask[:, None]
        if kind == "l2_pair":
            return self.loss_scale_c * F.mse_loss(A, P[y] * (1.0 if mask is None else mask[:, None]))
        T = F.one_hot(y, len(P)).to(A.dtype)
        if kind == "similarity_onehot":
            return self.loss_scale_c * (WIDTH_REFERENCE / A.shape[1]) * F.mse_loss(A @ P.t(), T)
        A_hat = A / (A.norm(dim=1, keepdim=True) + 1e-8)
        P_hat = P / (P.norm(dim=1, keepdim=True) + 1e-8)
        eye_b = torch.eye(len(A), dtype=A.dtype, device=A.device)
        eye_c = torch.eye(len(P), dtype=A.dtype, device=A.device)
        return (self.loss_scale_c * F.mse_loss(A_hat @ P_hat.t(), T)
                + self.loss_scale_ssl * (F.mse_loss(A_hat @ A_hat.t(), eye_b) + F.mse_loss(P_hat @ P_hat.t(), eye_c)))

    def losses(self, state, x, y) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The pair losses [ℓ_0, ..., ℓ_{L-1}] (ℓ_l on (a_l, c_l); ℓ_0 on (x, c_0)), CE(b, y) and b."""
        acts, logits = self.forward_pass(state, x)
        signals = self.feedback_pass(state)
        mask = None
        if self.filter_target:
            # official utils/loss.py: rows of examples whose softmax on the true class is within 0.1
            # of 1 are zeroed. The gate reads the output, so it is a global third factor on every pair.
            with torch.no_grad():
                p_true = F.softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
                mask = (p_true <= 1 - FILTER_MARGIN).to(logits.dtype)
        pairs = [x] + acts
        pair_losses = [self.pair_loss(self.local_loss, a, c, y, mask) for a, c in zip(pairs, signals)]
        return pair_losses, F.cross_entropy(logits, y), logits

    # ------------------------------------------------------------------ one step

    def _layer_groups(self, state) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        net = state.network
        forward = [list(b.parameters()) for b in net.blocks] + [list(net.head.parameters())]
        return forward, [list(m.parameters()) for m in state.feedback]

    def _centralise(self, params):
        # official utils/loss.py gradient_centralization: weights only, mean over the input dimensions
        for p in params:
            if p.grad is not None and p.dim() > 1:
                p.grad -= p.grad.mean(dim=tuple(range(1, p.dim())), keepdim=True)

    def _clip(self, state):
        """Scale each group's gradients to norm at most ``clip_norm`` (torch's ``clip_grad_norm_`` rule,
        max_norm / (norm + 1e-6) capped at 1), all groups in one pass: per-call overhead was a third
        of a step on the digits MLP."""
        if not self.clip_norm:
            return
        forward, feedback = self._layer_groups(state)
        if self.clip_scope == "network":
            # official: one norm over each whole network; it couples the layers' step sizes
            groups = [[p for g in forward for p in g], [p for g in feedback for p in g]]
        else:
            # a norm over all layers would make one layer's step shrink when another's gradient is
            # large; per layer, every update stays a function of its own pair alone
            groups = forward + feedback
        grads, owner = [], []
        for k, group in enumerate(groups):
            for p in group:
                if p.grad is not None:
                    grads.append(p.grad)
                    owner.append(k)
        if not grads:
            return
        index = torch.tensor(owner, device=grads[0].device)
        norms = torch.stack(torch._foreach_norm(grads))
        totals = torch.zeros(len(groups), dtype=norms.dtype, device=norms.device).index_add_(0, index, norms ** 2)
        factors = (self.clip_norm / (totals.sqrt() + 1e-6)).clamp(max=1.0)[index]
        torch._foreach_mul_(grads, list(factors.unbind()))

    def update(self, state, batch):
        x, y = batch
        for module in (state.network, state.feedback):
            if not module.training:
                module.train()
        pair_losses, ce, logits = self.losses(state, x, y)
        total = sum(pair_losses) + ce
        state.optimizer.zero_grad(set_to_none=True)
        state.feedback_optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.gradient_centralization:
            self._centralise(list(state.network.parameters()) + list(state.feedback.parameters()))
        self._clip(state)
        state.optimizer.step()
        state.feedback_optimizer.step()
        state.scheduler.step()
        state.feedback_scheduler.step()
        state.step += 1
        with torch.no_grad():
            # one transfer for every number the step reports
            accuracy = (logits.argmax(1) == y).to(ce.dtype).mean()
            values = torch.stack([total.detach(), ce.detach(), accuracy] + [v.detach() for v in pair_losses]).tolist()
        metrics = {"loss": values[0], "ce": values[1], "accuracy": values[2], "input_pair_loss": values[3]}
        for i, value in enumerate(values[4:]):
            metrics[f"pair_loss/{i}"] = value
        return state, metrics

    # ------------------------------------------------------------------ prediction and probes

    def predict(self, state, x):
        with evaluating(state.network) as net:
            return net(x)

    def block_metrics(self, state, x, y):
        """Per forward block i (layer l = i+1), on the first samples of the evaluated split:

        - ``pair_cosine``: mean cosine between a_l and its class signal c_l[y];
        - ``weight_cosine``: cosine between F_l and the adjoint of G_l (Gᵀ; for a conv, channels
          swapped and kernel flipped), the weight alignment the paper reports rising during training.
        """
        x, y = x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]
        with evaluating(state.network), evaluating(state.feedback):
            acts, _ = self.forward_pass(state, x)
            signals = self.feedback_pass(state)
        pair_cos, weight_cos = [], []
        for i, a in enumerate(acts):
            a_flat = a.reshape(len(a), -1)
            c_flat = signals[i + 1].reshape(len(signals[i + 1]), -1)[y]
            pair_cos.append(float(F.cosine_similarity(a_flat, c_flat, dim=1, eps=1e-8).mean()))
            w = state.network.weight_layer(i).weight.detach()
            g = state.feedback[i].layer.weight.detach()
            g_adj = g.transpose(0, 1).flip(-1, -2) if g.dim() == 4 else g.t()
            weight_cos.append(float(F.cosine_similarity(w.reshape(1, -1), g_adj.reshape(1, -1), eps=1e-12)))
        return {"pair_cosine": pair_cos, "weight_cosine": weight_cos}

    # ------------------------------------------------------------------ hooks

    def trainable_modules(self, state):
        return [state.network, state.feedback]

    def optimizers(self, state):
        return [state.optimizer, state.feedback_optimizer]
