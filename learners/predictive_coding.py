"""Predictive coding (PC) and incremental PC (iPC) on MLPs and convolutional networks.

Supervised discriminative PC (Whittington & Bogacz 2017; Millidge, Tschantz & Buckley 2022; the pcx
benchmark, Pinchetti et al. 2025): every layer's activity is a value node n_l. With n_0 = x, the
L weight layers predict the node above them, and the energy is the sum of their prediction errors:

    pcx form (default)  u_{l+1} = f_l(W_l n_l + b_l)          (f inside the prediction; the head's f is the identity)
    wb form             u_{l+1} = W_l f_{l-1}(n_l) + b_l      (f on the presynaptic value; f_{-1} = identity)
    e_{l+1} = n_{l+1} - u_{l+1},   E = sum_{l<L-1} ||e_{l+1}||^2 / 2 + E_out

with E_out = ||n_L - u_L||^2 / 2 (``output_energy: se``) or -sum_c n_{L,c} log softmax(u_L)_c
(``ce``, pcx's ``ce_energy``). The network's blocks are exactly the pcx form (Linear, then the
activation; the head is linear); in the wb form the nodes sit before each block's activation.

One training batch (pcx ``train_on_batch``):

1. Feed-forward initialisation: n_{l+1} = u_{l+1}, so every hidden error starts at zero.
2. The output node is clamped to n_L = u_L - beta (u_L - y) (one-hot y; for CE softmax(u_L) in place of
   u_L; beta = 1 clamps to y) and never relaxes.
3. T inference steps of SGD (with ``inference_momentum``, reset every batch) on the hidden nodes,
   per sample: n_l <- n_l - gamma dE/dn_l, with, in the pcx form and d_l = e_{l+1} * f_l'(a_l),
   dE/dn_l = e_l - W_l^T d_l  (wb form: e_l - f_{l-1}'(n_l) * W_l^T e_{l+1}).
4. ``standard``: one weight step on dE/dW_l = -d_l n_l^T / B (batch mean, times 1/beta as pcx's
   ``mul=1/beta``) at the relaxed nodes. ``incremental`` (iPC, Salvatori et al., ICLR 2024): the
   weights take that step at every one of the T inference steps, from the same errors as the nodes.

Test time: a forward pass. With the output free, the feed-forward values already have zero energy
and zero gradient, so relaxation would move nothing (pcx ``eval_on_batch``).

Node gradients are written out (no autograd), with autograd's own fused kernels for f': the relaxation
loop of one batch takes 0.47 ms against 2.34 ms with ``torch.autograd.grad`` of the same energy on the
default run's 64-64 MLP (5.0x), and 51 against 62 ms on a 784-1000-1000-10 MLP at batch 128 (1.2x),
one CPU thread (benchmarks/bench_pc.py). ``layer_energies`` is that differentiable energy; the tests
check the analytic gradients against it.

Locality. Layer l's weight gradient is a function of n_l, n_{l+1}, W_l and b_l only
(`weight_gradients`). The errors that relax the nodes do cross blocks, through W_l^T, and the contract
suite's locality audit (perturb block l+1, block l's update must not change) fails for that reason:
the relaxed n_{l+1} depends on W_{l+1}. So the tags say ``global`` and ``crosses_blocks``, like
feedback alignment's DFA, whose weight update is also local once its signal is known.

Convolutional networks carry the same energy over, as pcx's VGG models do: a node on each block's
output (after its pooling), the block as a whole predicting it. The analytic kernel covers Linear
layers only, so other blocks take `_AnyBlocks`, the same energy differentiated by autograd (the pcx
form only; the tests check it against the kernel on an MLP). Batch norm is refused: it makes one
sample's prediction depend on the others in its batch, so the conv presets run with
``network.batch_norm=false``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
# private, but the only way to ask whether a dispatch mode (FlopCounterMode) is active
from torch.utils._python_dispatch import _get_current_dispatch_mode

from core.checks import Range
from core.errors import ConfigError
from learners._optim import OptimizerConfig, Schedule, make_optimizer, make_scheduler
from learners.base import Learner, Tags, evaluating, register
from learners.search import IntRange, LogUniform

MODES = ("standard", "incremental")
PARAMETERISATIONS = ("pcx", "wb")
OUTPUT_ENERGIES = ("se", "ce")
PROBE_SAMPLES = 512          # evaluation samples block_metrics relaxes
_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Tanh: "tanh",
                nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Identity: "identity"}
_IDENTITY = ("identity", 0.0)


def _apply(act: tuple[str, float], a: torch.Tensor) -> torch.Tensor:
    kind, slope = act
    if kind == "identity":
        return a
    if kind == "relu":
        return torch.relu(a)
    if kind == "leaky_relu":
        return F.leaky_relu(a, slope)
    if kind == "elu":
        return F.elu(a)
    if kind == "tanh":
        return torch.tanh(a)
    if kind == "sigmoid":
        return torch.sigmoid(a)
    return F.gelu(a)


def _times_derivative(act: tuple[str, float], a: torch.Tensor, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g * f'(a), given a and z = f(a), by the fused kernels autograd itself uses for these activations:
    one pass over the batch each, where a mask or a formula takes two to four (on 1000-unit layers the
    elementwise work was a third of the relaxation loop's time)."""
    kind, slope = act
    if kind == "identity":
        return g
    if kind == "relu":
        return torch.ops.aten.threshold_backward(g, a, 0)
    if kind == "leaky_relu":
        return torch.ops.aten.leaky_relu_backward(g, a, slope, False)
    if kind == "elu":
        return torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, False, a)
    if kind == "tanh":
        return torch.ops.aten.tanh_backward(g, z)
    if kind == "sigmoid":
        return torch.ops.aten.sigmoid_backward(g, z)
    return torch.ops.aten.gelu_backward(g, a, approximate="none")


@dataclass(frozen=True)
class _Layer:
    """One weight layer: pre is applied to its input node, post to W n + b (see the module docstring)."""

    linear: nn.Linear
    pre: tuple[str, float]
    post: tuple[str, float]


@dataclass
class LayerErrors:
    """What one energy evaluation gives for layer l: its input f(n_l) (the wb form) or n_l, its
    pre-activation a_l, its prediction u_{l+1}, the error e_{l+1} of the node it predicts and
    d_l = e_{l+1} * f'(a_l)."""

    inp: torch.Tensor
    a: torch.Tensor
    u: torch.Tensor
    e: torch.Tensor
    d: torch.Tensor


@dataclass
class Relaxation:
    """The nodes n_0..n_L after relaxation and the energy of every layer at every step
    (``energies[t, l]``: batch mean of layer l's term before step t; the last row is after the last)."""

    nodes: list[torch.Tensor]
    energies: torch.Tensor | None


@dataclass
class PCState:
    """Training state: the network (its blocks and head are the weight layers) and the weights' optimiser.
    The nodes live for one batch only and are not kept."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule | None
    n_classes: int
    step: int = 0


def _advance(state) -> None:
    """The optimiser's step on the gradients already set, then the schedule's."""
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()


class _AnyBlocks:
    """The same energy over any stack of blocks, differentiated by autograd: convolutional networks,
    whose nodes sit on each block's output (after its pooling, as pcx's VGG models). Only the pcx form
    (the block, activation and pooling included, predicts the node above it). Layer l's weight
    gradient comes from its own term of the energy, with the nodes as leaves: it reads n_l, n_{l+1}
    and block l's weights only, as in the Linear kernel."""

    def __init__(self, learner: "PredictiveCoding", network: nn.Module):
        self.pc = learner
        self.fns = list(network.blocks) + [network.head]
        self.params = [p for f in self.fns for p in f.parameters()]

    def feedforward(self, x: torch.Tensor) -> list[torch.Tensor]:
        nodes = [x]
        for f in self.fns:
            nodes.append(f(nodes[-1]))
        return nodes

    def energies(self, nodes: list[torch.Tensor], free_output: bool) -> torch.Tensor:
        """Batch-mean energy of every layer, differentiable in the nodes and the weights."""
        values, last = [], len(self.fns) - 1
        for k, f in enumerate(self.fns):
            u = f(nodes[k])
            values.append(0.5 * ((nodes[k + 1] - u) ** 2).flatten(1).sum(1).mean() if k < last
                          else self.pc.output_energy_of(nodes[k + 1], u, free_output))
        return torch.stack(values)

    def weight_step(self, state, energies: torch.Tensor) -> None:
        """One optimiser step on dE/dW / beta, from ``energies`` as `relax` returns them (their graph
        holds the nodes as leaves, so each layer's gradient is its own term's)."""
        # backward(inputs=...) rather than autograd.grad, which fit's FLOP counter (its module
        # tracker's hooks) does not support
        for param in self.params:
            param.grad = None
        (energies.sum() / self.pc.beta).backward(inputs=self.params)
        _advance(state)

    def relax(self, state, x, y, steps: int, *, learn: bool, record: bool):
        """As `PredictiveCoding._relax`: the nodes, the energies at the start and after the last step
        (the latter with its graph, for `weight_step`), and (``record``) every step's energies."""
        with torch.no_grad():
            nodes = self.feedforward(x)
        free = y is None
        if not free:
            nodes[-1] = self.pc.clamp(nodes[-1], y, state.n_classes)
        hidden = [n.detach() for n in nodes[1:-1]]
        velocity = [torch.zeros_like(n) for n in hidden] if self.pc.inference_momentum else None
        trace, first = [], None
        for t in range(steps + 1):
            with torch.enable_grad():
                hidden = [n.requires_grad_(True) for n in hidden]
                energies = self.energies([nodes[0], *hidden, nodes[-1]], free)
                if first is None:
                    first = energies.detach()
                if record:
                    trace.append(energies.detach())
                if t == steps:
                    break
                # each sample relaxes on its own energy (the batch mean times the batch size); iPC's
                # weights step on the same evaluation
                if hidden:
                    (energies.sum() * len(x)).backward(inputs=hidden, retain_graph=learn)
                grads = [n.grad for n in hidden]
                if learn:
                    self.weight_step(state, energies)
            with torch.no_grad():
                for j, g in enumerate(grads):
                    if velocity is not None:
                        g = velocity[j].mul_(self.pc.inference_momentum).add_(g)
                    hidden[j] = hidden[j].detach() - self.pc.inference_lr * g      # a fresh leaf, no .grad
        nodes = [nodes[0], *(n.detach() for n in hidden), nodes[-1]]
        return nodes, first, energies, (torch.stack(trace) if record else None)


@register("predictive_coding")
@dataclass(frozen=True, kw_only=True)
class PredictiveCoding(Learner):
    """Value nodes relaxed on a sum of squared prediction errors; local weight updates from the errors."""

    mode: str = "standard"                  # standard (weights step after relaxation) | incremental (iPC)
    parameterisation: str = "pcx"           # pcx: u = f(W n + b) | wb: u = W f(n) + b (Whittington & Bogacz)
    output_energy: str = "se"               # se (squared error, pcx PC-SE) | ce (cross-entropy, pcx PC-CE)
    n_inference_steps: int = 8              # T
    inference_lr: float = 0.1               # gamma, per sample
    inference_momentum: float = 0.0         # SGD momentum of the nodes, reset every batch
    beta: float = 1.0                       # output nudging: n_L = u_L - beta (u_L - y); weight step x 1/beta
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    # standard mode: run the relaxation through torch.compile, which fuses its many small element-wise
    # ops (1.6x faster steps on pcx's MNIST MLP on CPU) after a one-off compilation of a few seconds
    # per process and setting: for long runs, not for the default run or a lesson
    torch_compile: bool = False

    tags = Tags(locality="global", crosses_blocks=True, backend="torch", supports_conv=True)
    contract_params = {"optimizer": {"name": "adam", "lr": 0.01}}
    contract_epochs = 30
    constraints = {"mode": MODES, "parameterisation": PARAMETERISATIONS, "output_energy": OUTPUT_ENERGIES,
                   "n_inference_steps": Range(1), "inference_lr": Range(0), "inference_momentum": Range(0, 1),
                   "beta": Range(-1, 1)}
    # tuned by experiments.tune, the same trial budget for every learner; pcx's tuned MNIST/F-MNIST MLP
    # settings span lr_x 0.01-0.85 and T 4-8
    search_space = {"optimizer.lr": LogUniform(1e-4, 1e-2), "inference_lr": LogUniform(1e-2, 1.0),
                    "n_inference_steps": IntRange(2, 20)}

    # ------------------------------------------------------------ set-up

    def init(self, network, data_info, seed):
        if self.beta == 0:
            raise ConfigError(f"{self.name}.beta=0 is not allowed; allowed: -1 <= beta <= 1, beta != 0 "
                              "(the weight step is multiplied by 1/beta)")
        if data_info.task != "classification":
            raise ConfigError(f"{self.name} trains classifiers; got task {data_info.task!r}")
        self.path(network)         # refuses what neither path can run, before any training
        network = network.to(data_info.device)
        opt = make_optimizer(network.parameters(), self.optimizer)
        # iPC steps the weights at every inference step: its schedule counts T times the batches
        steps = data_info.total_steps * (self.n_inference_steps if self.mode == "incremental" else 1)
        return PCState(network=network, optimizer=opt, scheduler=make_scheduler(opt, self.optimizer, steps),
                       n_classes=int(data_info.n_classes))

    def path(self, network) -> list[_Layer] | _AnyBlocks:
        """The analytic Linear kernel's layers for an MLP of Linear + activation blocks, else the
        autograd path over the blocks as they are (convolutional networks)."""
        try:
            return self.layers(network)
        except ConfigError:
            if network.head is None:
                raise
        norms = [type(m).__name__ for m in network.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        if norms:
            raise ConfigError(f"{self.name} does not take batch norm ({norms[0]}): it makes one sample's "
                              "prediction depend on the rest of its batch; use network.batch_norm=false")
        if self.parameterisation != "pcx":
            raise ConfigError(f"{self.name}.parameterisation={self.parameterisation!r} runs MLPs of Linear + "
                              "activation blocks; use parameterisation=pcx for other blocks")
        return _AnyBlocks(self, network)

    def layers(self, network) -> list[_Layer]:
        """The weight layers (blocks, then the head) with the activation on each side of W."""
        if network.head is None:
            raise ConfigError(f"{self.name} predicts the output node with the network's head: build the "
                              "network with head=True")
        linears, acts = [], []
        for i, block in enumerate(network.blocks):
            parts = [m for m in block if not isinstance(m, nn.Flatten)]
            if len(parts) != 2 or not isinstance(parts[0], nn.Linear) or type(parts[1]) not in _ACTIVATIONS or \
                    (isinstance(parts[1], nn.GELU) and parts[1].approximate != "none"):
                kinds = ", ".join(type(m).__name__ for m in parts)
                raise ConfigError(f"{self.name} runs MLPs of Linear + activation blocks; block {i} is {kinds} "
                                  "(convolutional networks and normalisation layers are not supported; use an "
                                  "MLP preset such as mlp_small)")
            act = parts[1]
            linears.append(parts[0])
            acts.append((_ACTIVATIONS[type(act)], float(getattr(act, "negative_slope", 0.0))))
        head = network.head if isinstance(network.head, nn.Linear) else \
            next(m for m in network.head.modules() if isinstance(m, nn.Linear))
        linears.append(head)
        acts.append(_IDENTITY)
        if self.parameterisation == "pcx":
            return [_Layer(lin, _IDENTITY, act) for lin, act in zip(linears, acts)]
        return [_Layer(lin, pre, _IDENTITY) for lin, pre in zip(linears, [_IDENTITY] + acts[:-1])]

    # ------------------------------------------------------------ energy

    def feedforward(self, layers: list[_Layer], x: torch.Tensor) -> list[torch.Tensor]:
        """n_0 = x and n_{l+1} = u_{l+1}: every error zero (pcx's STATUS.INIT step)."""
        nodes = [x.flatten(1)]
        for layer in layers:
            nodes.append(_apply(layer.post, F.linear(_apply(layer.pre, nodes[-1]), layer.linear.weight,
                                                     layer.linear.bias)))
        return nodes

    def clamp(self, prediction: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
        """The clamped output node: u_L - beta (u_L - y) for SE (pcx ``LinearModel.__call__``);
        p - beta (p - y) with p = softmax(u_L) for CE."""
        target = F.one_hot(y, n_classes).to(prediction.dtype)
        if self.output_energy == "ce":
            # departure: pcx nudges the logits for CE too; for beta != 1 that target is no distribution
            # and its output error does not vanish as beta -> 0. Nudging the probabilities gives
            # beta times backprop's output error at the start, so small-beta PC tends to backprop.
            # At beta = 1 (pcx's CE runs) both clamp the node to y.
            prediction = torch.softmax(prediction, 1)
        return prediction - self.beta * (prediction - target)

    def errors(self, layers: list[_Layer], nodes: list[torch.Tensor], free_output: bool,
               first: LayerErrors | None = None) -> list[LayerErrors]:
        """Every layer's prediction error at the current nodes and weights, batched over samples.
        ``first``: errors of an earlier call whose input, pre-activation and prediction of layer 0 still hold."""
        out = []
        last = len(layers) - 1
        for k, layer in enumerate(layers):
            if k == 0 and first is not None and last > 0:
                e = nodes[1] - first.u
                d = _times_derivative(layer.post, first.a, first.u, e)
                out.append(LayerErrors(first.inp, first.a, first.u, e, d))
                continue
            inp = _apply(layer.pre, nodes[k])
            a = F.linear(inp, layer.linear.weight, layer.linear.bias)
            if k == last:
                if free_output:
                    # a free output node sits at its prediction, its energy's minimum (zero for SE)
                    e = torch.zeros_like(a)
                elif self.output_energy == "ce":
                    # -dE_out/du for E_out = -sum_c n_c log softmax(u)_c
                    target = nodes[k + 1]
                    e = target - torch.softmax(a, 1) * target.sum(1, keepdim=True)
                else:
                    e = nodes[k + 1] - a
                out.append(LayerErrors(inp, a, a, e, e))
                continue
            u = _apply(layer.post, a)
            e = nodes[k + 1] - u
            out.append(LayerErrors(inp, a, u, e, _times_derivative(layer.post, a, u, e)))
        return out

    def energies_of(self, errs: list[LayerErrors], nodes: list[torch.Tensor], free_output: bool) -> torch.Tensor:
        """Batch-mean energy of every layer, from `errors`."""
        values = [0.5 * (r.e * r.e).sum(1).mean() for r in errs[:-1]]
        if free_output:
            values.append(torch.zeros((), dtype=nodes[0].dtype, device=nodes[0].device))
        elif self.output_energy == "ce":
            values.append(-(nodes[-1] * torch.log_softmax(errs[-1].a, 1)).sum(1).mean())
        else:
            values.append(0.5 * (errs[-1].e * errs[-1].e).sum(1).mean())
        return torch.stack(values)

    def layer_energies(self, layers: list[_Layer], nodes: list[torch.Tensor],
                       free_output: bool = False) -> torch.Tensor:
        """The batch-mean energy of every layer as a differentiable function of the nodes and weights
        (autograd's reference for the analytic gradients; not used in training)."""
        values = []
        for k, layer in enumerate(layers):
            a = F.linear(_apply(layer.pre, nodes[k]), layer.linear.weight, layer.linear.bias)
            values.append(0.5 * ((nodes[k + 1] - _apply(layer.post, a)) ** 2).sum(1).mean() if k < len(layers) - 1
                          else self.output_energy_of(nodes[k + 1], a, free_output))
        return torch.stack(values)

    def output_energy_of(self, node: torch.Tensor, u: torch.Tensor, free_output: bool) -> torch.Tensor:
        """E_out, batch mean, differentiable: the output node ``node`` against the head's output ``u``."""
        if free_output:
            return u.new_zeros(())
        if self.output_energy == "ce":
            return -(node * torch.log_softmax(u, 1)).sum(1).mean()
        return 0.5 * ((node - u) ** 2).sum(1).mean()

    def node_gradients(self, layers: list[_Layer], nodes: list[torch.Tensor],
                       errs: list[LayerErrors]) -> list[torch.Tensor]:
        """dE_n/dn_l of each sample's own energy for the hidden nodes l = 1..L-1 (pcx relaxes every sample
        at rate gamma whatever the batch size: its ``scale_by_batch_size``)."""
        grads = []
        for j in range(1, len(layers)):
            weight = layers[j].linear.weight
            if layers[j].pre == _IDENTITY:
                grads.append(torch.addmm(errs[j - 1].e, errs[j].d, weight, alpha=-1))     # e_j - d_j W_j
            else:
                back = _times_derivative(layers[j].pre, nodes[j], errs[j].inp, errs[j].d @ weight)
                grads.append(errs[j - 1].e - back)
        return grads

    def weight_gradients(self, layers: list[_Layer],
                         errs: list[LayerErrors]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(dE/dW_l, dE/db_l) of the batch-mean energy, times 1/beta (pcx ``mul=1/beta``). Layer l's
        pair reads only its own input node, pre-activation and error: the update is local."""
        scale = -1.0 / (self.beta * len(errs[0].d))
        return [((r.d.t() @ r.inp) * scale, r.d.sum(0) * scale) for r in errs]

    # ------------------------------------------------------------ relaxation

    def _relax(self, state, layers, x, y, steps: int, *, learn: bool, record: bool):
        """Feed-forward init, clamp, then ``steps`` inference steps; with ``learn`` the weights step at
        each of them (iPC). Returns the nodes, the last errors and (``record``) the energies per step."""
        nodes = self.feedforward(layers, x)
        free = y is None
        if not free:
            nodes[-1] = self.clamp(nodes[-1], y, state.n_classes)
        velocity = [torch.zeros_like(n) for n in nodes[1:-1]] if self.inference_momentum else None
        trace = []
        errs = self.errors(layers, nodes, free)
        first = errs
        # the input node is clamped, so with the weights held (standard PC) W_0 x + b_0 never changes:
        # computed once, it saves the widest matmul of an MNIST-sized MLP at every step
        reuse = None if learn else first[0]
        for t in range(steps):
            if record:
                trace.append(self.energies_of(errs, nodes, free))
            grads = self.node_gradients(layers, nodes, errs)
            if learn:
                # iPC: the weights and the nodes step together, on the gradients of the same energy
                self._weight_step(state, layers, errs)
            for j, g in enumerate(grads):
                if velocity is not None:
                    g = velocity[j].mul_(self.inference_momentum).add_(g)
                nodes[j + 1] = torch.add(nodes[j + 1], g, alpha=-self.inference_lr)
            # iPC has no use for the errors after its last step unless they are recorded
            errs = self.errors(layers, nodes, free, reuse) if record or not learn or t < steps - 1 else None
        if record:
            trace.append(self.energies_of(errs, nodes, free))
        return nodes, first, errs, (torch.stack(trace) if record else None)

    def _weight_step(self, state, layers, errs):
        for layer, (gw, gb) in zip(layers, self.weight_gradients(layers, errs)):
            layer.linear.weight.grad = gw
            if layer.linear.bias is not None:
                layer.linear.bias.grad = gb
        _advance(state)

    def relax(self, state, x: torch.Tensor, y: torch.Tensor | None = None, steps: int | None = None) -> Relaxation:
        """Relax the nodes for ``steps`` (default T) inference steps with the weights held, output clamped to
        ``y`` (free when None), and return the nodes and the energy of every layer at every step: the
        energy trajectory of one batch (for a demo or a plot; the state is not changed)."""
        layers = self.path(state.network)
        steps = self.n_inference_steps if steps is None else steps
        if isinstance(layers, _AnyBlocks):
            nodes, _, _, trace = layers.relax(state, x, y, steps, learn=False, record=True)
            return Relaxation(nodes=nodes, energies=trace)
        with torch.no_grad():
            nodes, _, _, trace = self._relax(state, layers, x, y, steps, learn=False, record=True)
        return Relaxation(nodes=nodes, energies=trace)

    def energy_trajectory(self, state, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(T+1, L) tensor: layer l's batch-mean energy before each inference step and after the last."""
        return self.relax(state, x, y).energies

    # ------------------------------------------------------------ training

    def update(self, state, batch):
        x, y = batch
        state.network.train()
        layers = self.path(state.network)
        incremental = self.mode == "incremental"
        if isinstance(layers, _AnyBlocks):
            nodes, first, last, _ = layers.relax(state, x, y, self.n_inference_steps, learn=incremental,
                                                 record=False)
            metrics = {"loss": first[-1].item()}
            if not incremental:
                metrics["energy"] = last.sum().item()
                layers.weight_step(state, last)
            state.step += 1
            return state, metrics
        with torch.no_grad():
            if self.torch_compile and not incremental and _get_current_dispatch_mode() is None:
                nodes, first, errs = _compiled_relaxation()(self, state, layers, x, y)
            else:
                nodes, first, errs, _ = self._relax(state, layers, x, y, self.n_inference_steps,
                                                    learn=incremental, record=False)
            loss = self.energies_of(first, nodes, False)[-1]
            metrics = {"loss": loss.item()}
            if not incremental:
                metrics["energy"] = self.energies_of(errs, nodes, False).sum().item()
                self._weight_step(state, layers, errs)
        state.step += 1
        return state, metrics

    def predict(self, state, x):
        with evaluating(state.network) as net:
            return net(x)

    def _training_relaxation(self, state, layers, x, y):
        """Standard PC's relaxation of one training batch, as one function for torch.compile."""
        nodes, first, errs, _ = self._relax(state, layers, x, y, self.n_inference_steps, learn=False, record=False)
        return nodes, first, errs

    def block_metrics(self, state, x, y):
        """Per layer (blocks, then the head as the last index): the energy of its prediction error
        before and after relaxing the first 512 evaluation samples with the output clamped to their labels."""
        energies = self.relax(state, x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]).energies
        return {"energy_before": energies[0].tolist(), "energy_after": energies[-1].tolist()}


_COMPILED = None


def _compiled_relaxation():
    """`PredictiveCoding._training_relaxation` through torch.compile, built on first use. One per
    process: torch's guards recompile it for another learner setting or batch shape.

    `update` calls it only outside a dispatch mode: called once under one (fit's FLOP counter on
    an epoch's first step), dynamo marks the function to be skipped for the rest of the process,
    and every later step runs eagerly. The counted step runs the same arithmetic eagerly instead."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(PredictiveCoding._training_relaxation, dynamic=False)
    return _COMPILED
