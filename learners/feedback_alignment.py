"""Feedback alignment and its relatives: FA, DFA, sDFA, sign symmetry (uSF, brSF, frSF) and DRTP.

Every rule keeps the network's own forward pass and backprop's local weight update
ΔW_l ∝ −δ_l h_{l−1}ᵀ. The output layer (the network's head) always learns with its true gradient;
only the error δ_l that reaches a hidden block differs. With e = ∂L/∂logits of the batch-mean
cross-entropy, y* the one-hot target, N the batch size and B fixed unless said otherwise:

    mode  error of hidden block l                    feedback
    fa    δ_l = (B_{l+1}ᵀ δ_{l+1}) ⊙ f'(a_l)         B_{l+1} random, W_{l+1}'s shape (Lillicrap et al. 2016)
    usf   as fa, B_{l+1} = s · sign(W_{l+1})          s the std of the feedback init  (Liao et al. 2016)
    brsf  as fa, B_{l+1} = |M_t| ⊙ sign(W_{l+1})      M_t drawn afresh every batch    (biotorch)
    frsf  as fa, B_{l+1} = |M| ⊙ sign(W_{l+1})        M drawn once                    (biotorch)
    dfa   δ_l = (B_lᵀ e) ⊙ f'(a_l)                   B_l random, n_classes x size of block l (Nøkland 2016)
    sdfa  δ_l = (B_lᵀ sign(e) / N) ⊙ f'(a_l)         as dfa                          (Frenkel et al. 2021)
    drtp  δ_l = (B_lᵀ y* / N) ⊙ f'(a_l)              as dfa; no output error needed  (Frenkel et al. 2021)

(f'(a_l) stands for the backward of everything inside block l after its weight layer: batch norm,
activation, pooling. These stay on ordinary backprop inside a block, as in biotorch and in Xiao et
al.'s sign-symmetry code; only Linear/Conv2d weights get asymmetric feedback.)

How: FA and the sign modes run the blocks through custom autograd Functions for the Linear and
Conv2d layers whose backward gives the weight and bias their usual gradient but sends the input
gradient through B instead of W (``torch.nn.grad.conv2d_input`` with B for a convolution; the sign
modes' B = m ⊙ sign(W) is built there, in backward, not held through the step). DFA, sDFA and DRTP
run every block on the detached output of the block below and, in one backward pass, inject their
projected signal at each block's output (`_Inject`; the head learns on the detached last block).
``state.feedback[l]`` always belongs to the block whose error it carries: for fa the matrix B_{l+1}
(the head's shape for the last block), for the sign modes the magnitude (uSF: s; brSF: this batch's
|M_t|; frSF: |M|), signed with W_{l+1}'s current signs where it is used
(`FeedbackAlignment.feedback_matrices`); for dfa/sdfa/drtp B_l. The first layer's feedback is
never needed (the input takes no gradient), so none is kept.

Feedback init (``feedback_init``); every draw comes from the state's generator, seeded from ``seed``:

- ``biotorch`` (default): ``xavier_uniform_`` for B, |M| and B_l, and s = √(2/(fan_in+fan_out)),
  the std of that init. biotorch (Sanfiz & Akrout 2021) is the one reference that implements fa,
  dfa, usf, brsf and frsf in one code base with published numbers for all of them, and every one of
  its benchmark configs uses this init, so results here compare with its table like for like.
  (biotorch also re-initialises the *forward* weights with xavier; here W comes from the network
  spec: ``network.init=xavier`` to match.)
- ``nokland``: U[−1/√n, 1/√n] with n the size of the layer the feedback reaches (fan_in of W for
  fa and the sign modes, as Nøkland's FA layer copies the initial U[±1/√fan_in] weights; the
  flattened block size for dfa/drtp, as his ErrorFeedback module), s = 1/√(3 fan_in).
- ``frenkel``: ``kaiming_uniform_`` with torch's default gain, U[±√(6/n)] (Frenkel et al.'s DRTP
  code), s = √(2/fan_in).

Tags: ``feedback_alignment`` is ``global`` and ``crosses_blocks``. That is true of fa and the sign
modes (the error passes back through every block) and, by the contract suite's locality audit, of
dfa and sdfa too: their signal crosses no block with Wᵀ, but the output error e depends on every
block's forward weights, so perturbing block l+1 changes block l's update. DRTP's signal y* B_l
depends on nothing above block l: it is blockwise. Tags belong to the class, so ``drtp`` (a thin
subclass, mode drtp only) carries the true tags; ``feedback_alignment`` with ``mode=drtp`` trains
the same way under the conservative tags.

Per-block metrics (`FeedbackAlignment.block_metrics`, once per epoch on the first 512 samples of
the evaluation split, network in eval mode, the state unchanged):

- ``weight_angle`` (fa and sign modes): degrees between the flattened, normalised W_{l+1} and the
  matrix that stands in for it when block l's error is made, as used in backward (signed for the
  sign modes: biotorch measures its unsigned |M| for frsf; for brsf the magnitudes of the last batch);
  biotorch's ``compute_matrix_angle``. Indexed by the block whose error the matrix carries, so the
  first layer's feedback, which biotorch also measures but which is never used, has no entry.
- ``weight_ratio`` (fa and sign modes): ‖B_{l+1}‖_F / ‖W_{l+1}‖_F.
- ``signal_angle`` (every mode): the angle, averaged over the samples, between the error the rule
  sends to block l (for dfa/drtp the injected signal) and backprop's ∂L/∂h_l on the same batch.
  For dfa/sdfa/drtp B_l and W have different shapes, so this is their only angle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._optim import OptimizerConfig, Schedule, is_schedule_free, make_optimizer, make_scheduler
from learners._schedule_free import ScheduleFreeEval
from learners.backprop import OUTPUT_LOSSES, task_loss
from learners.base import Learner, Tags, evaluating, register
from learners.search import Choice, LogUniform

MODES = ("fa", "usf", "brsf", "frsf", "dfa", "sdfa", "drtp")
SIGN_MODES = ("usf", "brsf", "frsf")
DIRECT_MODES = ("dfa", "sdfa", "drtp")
FEEDBACK_INITS = ("biotorch", "nokland", "frenkel")
DFA_CONV = ("dense", "dense_prepool")
PROBE_SAMPLES = 512
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# ------------------------------------------------------------------ weight layers with feedback

class _Signed(NamedTuple):
    """The sign modes' feedback as it enters a layer: B = magnitude ⊙ sign(W), built in backward from
    W's signs (the same as in forward: the step comes after), so that no weight-sized B is made in
    forward and held through the step."""

    magnitude: torch.Tensor


def _through_feedback(feedback, weight, apply):
    """``apply(B)`` for the feedback B: the tensor itself, or for the sign modes m ⊙ sign(W) (m a
    matrix, or uSF's scalar s), the same numbers as `FeedbackAlignment.feedback_matrices`."""
    return apply(feedback if weight is None else torch.sign(weight).mul_(feedback))


def _save_feedback(ctx, x, weight, feedback):
    signed = isinstance(feedback, _Signed)
    ctx.save_for_backward(x, weight if signed else None, feedback.magnitude if signed else feedback)


class _FeedbackLinear(torch.autograd.Function):
    """y = x Wᵀ + b. Backward: W and b get backprop's gradient; the input gets g B, B in W's place
    (B a tensor, or `_Signed`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        _save_feedback(ctx, x, weight, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, feedback = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_x = _through_feedback(feedback, weight, lambda B: grad @ B) if ctx.needs_input_grad[0] else None
        grad_w = flat_grad.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat_grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class _FeedbackConv2d(torch.autograd.Function):
    """conv2d(x, W) + b. Backward: W and b get backprop's gradient; the input gets the transposed
    convolution of g with B (B has the kernel's shape, or is `_Signed`), as biotorch's and willwx's
    conv layers."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        _save_feedback(ctx, x, weight, feedback)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.weight_shape = weight.shape
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, feedback = ctx.saved_tensors
        conv = ctx.conv
        grad_x = _through_feedback(feedback, weight, lambda B: torch.nn.grad.conv2d_input(x.shape, B, grad, *conv)) \
            if ctx.needs_input_grad[0] else None
        grad_w = torch.nn.grad.conv2d_weight(x, ctx.weight_shape, grad, *conv) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


class _Inject(torch.autograd.Function):
    """_Inject.apply(loss, h_1..h_L, s_1..s_L) is the loss; in backward the loss's gradient goes on and
    each h_l gets s_l as its gradient (the direct modes' signals, held by this node alone and freed
    once passed on)."""

    @staticmethod
    def forward(ctx, loss, *points_and_signals):
        ctx.save_for_backward(*points_and_signals[len(points_and_signals) // 2:])
        return loss          # autograd returns it as a view: no copy

    @staticmethod
    def backward(ctx, grad):
        signals = ctx.saved_tensors
        return (grad, *signals, *([None] * len(signals)))


def _layers(module: nn.Module) -> list[nn.Module]:
    return list(module) if isinstance(module, nn.Sequential) else [module]


def _is_weight_layer(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, nn.Conv2d))


def _weight_layer(layer: nn.Module, h: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
    if feedback is None:
        return layer(h)
    if isinstance(layer, nn.Linear):
        return _FeedbackLinear.apply(h, layer.weight, layer.bias, feedback)
    return _FeedbackConv2d.apply(h, layer.weight, layer.bias, feedback, layer.stride, layer.padding,
                                 layer.dilation, layer.groups)


def _run(module: nn.Module, h: torch.Tensor, feedback: torch.Tensor | None = None,
         prepool: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a block (or the head): its weight layer with ``feedback`` in backward, the rest as is.

    Returns the output and the injection point: the output, or with ``prepool`` the tensor before
    the block's trailing pooling layers (Frenkel et al.'s place for a conv block's signal)."""
    layers = _layers(module)
    n_pool = 0
    if prepool:
        while n_pool < len(layers) and isinstance(layers[len(layers) - 1 - n_pool], _POOLS):
            n_pool += 1
    point = None
    for k, layer in enumerate(layers):
        if k == len(layers) - n_pool:
            point = h
        h = _weight_layer(layer, h, feedback) if _is_weight_layer(layer) else layer(h)
    return h, (h if point is None else point)


def _head_layer(network) -> nn.Linear:
    return next(m for m in _layers(network.head) if isinstance(m, nn.Linear))


def upper_weights(network) -> list[torch.Tensor]:
    """Per block l, the forward weights W_{l+1} that carry its error under backprop (the head's last)."""
    return [network.weight_layer(i + 1).weight for i in range(network.n_blocks - 1)] + [_head_layer(network).weight]


def matrix_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Degrees between two tensors taken as flat vectors (biotorch's ``compute_matrix_angle``)."""
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)))


def mean_sample_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Degrees between a[n] and b[n], averaged over the samples n where both are non-zero."""
    a, b = a.detach().reshape(len(a), -1).double(), b.detach().reshape(len(b), -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return float("nan")
    cos = ((a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)).mean())


def _fans(shape) -> tuple[int, int]:
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


# ------------------------------------------------------------------ the learner

@dataclass
class FAState:
    """Training state of the feedback-alignment family (see the module docstring for ``feedback``)."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule | None
    feedback: list[torch.Tensor]          # per block; never a parameter, never stepped
    generator: torch.Generator            # every feedback draw (brsf: one per batch)
    schedule_free: ScheduleFreeEval
    n_classes: int
    step: int = 0


@register("feedback_alignment")
@dataclass(frozen=True, kw_only=True)
class FeedbackAlignment(Learner):
    """Backprop's forward pass and local updates with a random or sign-only feedback path."""

    mode: str = "fa"                       # fa | usf | brsf | frsf | dfa | sdfa | drtp
    feedback_init: str = "biotorch"        # biotorch (xavier) | nokland (U±1/sqrt(n)) | frenkel (kaiming)
    dfa_conv: str = "dense"                # dfa/sdfa/drtp on conv blocks: dense (on the block output, after
                                           # pooling; Nøkland) | dense_prepool (before pooling; Frenkel)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    # schedule-free optimisers only: training batches kept to refresh batch norm at the averaged
    # weights before evaluating (as backprop does)
    bn_refresh_batches: int = 50
    output_loss: str = "cross_entropy"     # cross_entropy (softmax) | bce (a sigmoid per class, Nøkland)
    # zero every forward weight and bias at the start, as Nøkland's tanh and sigmoid nets (fa and dfa
    # alike): the feedback alone breaks the symmetry. Not for ReLU nets, whose zeroed units never fire.
    zero_forward_init: bool = False

    tags = Tags(locality="global", crosses_blocks=True, backend="torch", supports_conv=True)
    contract_params = {"optimizer": {"name": "adam", "lr": 0.01}}
    contract_epochs = 30
    # tuned by experiments.tune, the same trial budget for every learner; biotorch's tuned lrs span
    # 1e-4 (dfa, Adam) to 0.1 (SGD), so the range reaches lower than backprop's
    search_space = {"optimizer.lr": LogUniform(1e-5, 1e-2), "optimizer.schedule": Choice(("constant", "cosine"))}

    constraints = {"mode": MODES, "feedback_init": FEEDBACK_INITS, "dfa_conv": DFA_CONV,
                   "bn_refresh_batches": Range(0), "output_loss": OUTPUT_LOSSES}

    # ------------------------------------------------------------ set-up

    @property
    def direct(self) -> bool:
        return self.mode in DIRECT_MODES

    def init(self, network, data_info, seed):
        if data_info.task != "classification":
            raise ConfigError(f"{self.name} trains classifiers; got task {data_info.task!r}")
        if network.head is None:
            raise ConfigError(f"{self.name} trains the network's head with its true gradient: build the "
                              "network with head=True")
        network = network.to(data_info.device)
        # a stream of its own: drawn from the network's init stream, B would start aligned with W
        gen = torch.Generator().manual_seed(seed_stream(seed, "feedback_alignment.feedback"))
        # drawn before the forward weights are zeroed: usf and brsf read W's signs at the start
        feedback = self._initial_feedback(network, data_info, gen)
        if self.zero_forward_init:
            if self.mode in SIGN_MODES:
                raise ConfigError(f"{self.name}.zero_forward_init=true leaves mode={self.mode!r} no signs to "
                                  "feed back: use it with fa, dfa, sdfa or drtp")
            with torch.no_grad():
                for module in network.modules():
                    if isinstance(module, (nn.Linear, nn.Conv2d)):
                        for p in module.parameters(recurse=False):
                            p.zero_()
        opt = make_optimizer(network.parameters(), self.optimizer)
        # schedule-free optimisers bring their own warmup and need no schedule
        scheduler = None if is_schedule_free(opt) else make_scheduler(opt, self.optimizer, data_info.total_steps)
        return FAState(network=network, optimizer=opt, scheduler=scheduler, feedback=feedback, generator=gen,
                       schedule_free=ScheduleFreeEval([opt], network, self.bn_refresh_batches),
                       n_classes=int(data_info.n_classes))

    def _loss(self, logits, y):
        return task_loss(logits, y, "classification", self.output_loss)

    def _draw(self, shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        t = torch.empty(tuple(shape))
        if self.feedback_init == "biotorch":
            nn.init.xavier_uniform_(t, generator=gen)
        elif self.feedback_init == "nokland":
            bound = 1.0 / math.sqrt(_fans(t.shape)[0])
            t.uniform_(-bound, bound, generator=gen)
        else:
            nn.init.kaiming_uniform_(t, generator=gen)
        return t.to(device=like.device, dtype=like.dtype)

    def _init_std(self, shape) -> float:
        """s of uSF: the standard deviation of the feedback init for a matrix of this shape."""
        fan_in, fan_out = _fans(shape)
        if self.feedback_init == "biotorch":
            return math.sqrt(2.0 / (fan_in + fan_out))
        if self.feedback_init == "nokland":
            return 1.0 / math.sqrt(3.0 * fan_in)
        return math.sqrt(2.0 / fan_in)

    def _initial_feedback(self, network, data_info, gen) -> list[torch.Tensor]:
        if self.direct:
            like = network.weight_layer(0).weight
            sizes = [math.prod(p.shape[1:]) for p in self._injection_points(network, data_info.input_shape)]
            return [self._draw((data_info.n_classes, n), gen, like) for n in sizes]
        weights = upper_weights(network)
        if self.mode == "usf":
            return [torch.tensor(self._init_std(w.shape), dtype=w.dtype, device=w.device) for w in weights]
        draws = [self._draw(w.shape, gen, w) for w in weights]
        return draws if self.mode == "fa" else [d.abs() for d in draws]

    def _injection_points(self, network, input_shape) -> list[torch.Tensor]:
        """One sample's injection point per block (their shapes size B_l)."""
        like = network.weight_layer(0).weight
        x = torch.zeros((1, *input_shape), device=like.device, dtype=like.dtype)
        points = []
        with evaluating(network):
            h = x
            for block in network.blocks:
                h, point = _run(block, h, prepool=self.dfa_conv == "dense_prepool")
                points.append(point)
        return points

    # ------------------------------------------------------------ feedback

    def feedback_matrices(self, state) -> list[torch.Tensor]:
        """Per block, the matrix its error comes through, as the next backward uses it: B_{l+1} (fa),
        magnitude ⊙ sign(W_{l+1}) with W's current signs (sign modes), B_l (dfa, sdfa, drtp)."""
        if self.mode not in SIGN_MODES:
            return list(state.feedback)
        with torch.no_grad():
            return [m * torch.sign(w) for m, w in zip(state.feedback, upper_weights(state.network))]

    def _layer_feedback(self, state) -> list:
        """Per block, the feedback as the layers take it: B (fa), `_Signed` magnitudes (sign modes)."""
        if self.mode in SIGN_MODES:
            return [_Signed(m) for m in state.feedback]
        return list(state.feedback)

    def _redraw(self, state):
        """brSF: fresh magnitudes |M_t| for this batch, W's signs are applied where they are used."""
        if self.mode == "brsf":
            state.feedback = [self._draw(w.shape, state.generator, w).abs_() for w in upper_weights(state.network)]

    # ------------------------------------------------------------ forward passes

    def _feedback_forward(self, network, x, feedback):
        """Logits and block outputs with block l's weight layer sending its input gradient through
        ``feedback[l-1]`` (None everywhere: ordinary backprop)."""
        h, outputs = x, []
        for i, block in enumerate(network.blocks):
            h, _ = _run(block, h, feedback[i - 1] if feedback and i else None)
            outputs.append(h)
        logits, _ = _run(network.head, h, feedback[-1] if feedback else None)
        return logits, outputs

    def _direct_forward(self, network, x, detach: bool = True):
        """Logits and injection points, each block (and the head) on the detached output of the one below."""
        h, points = x, []
        prepool = self.dfa_conv == "dense_prepool"
        for block in network.blocks:
            h, point = _run(block, h, prepool=prepool)
            points.append(point)
            h = h.detach() if detach else h
        return network.head(h), points

    def _source(self, state, e, y, dtype) -> torch.Tensor:
        """What the direct modes project, one row per sample: e (dfa), sign(e) / N (sdfa), y* / N (drtp)."""
        n = len(y)
        if self.mode == "dfa":
            return e
        if self.mode == "sdfa":
            # departure: Frenkel et al. project sign(e) itself; / N puts it on the scale of e of the
            # batch-mean loss, so that one learning rate means the same in every mode
            return torch.sign(e) / n
        # the one-hot target y* (Frenkel et al.), divided by N as sdfa's sign(e) (the same departure)
        return F.one_hot(y, state.n_classes).to(dtype) / n

    def _signals(self, state, e, y, points) -> list[torch.Tensor]:
        """The projected signal at each injection point, one row per sample: e B_l (dfa), sign(e) B_l / N
        (sdfa), y* B_l / N (drtp), i.e. the module docstring's B_lᵀ e with samples as rows."""
        source = self._source(state, e, y, points[0].dtype)
        return [(source @ B).reshape(p.shape) for B, p in zip(state.feedback, points)]

    # ------------------------------------------------------------ training

    def backward(self, state, x, y) -> torch.Tensor:
        """Fill the network's ``.grad`` with this rule's gradients for one batch; returns the loss."""
        network = state.network
        if self.direct:
            logits, points = self._direct_forward(network, x)
            loss = self._loss(logits, y)
            e = None if self.mode == "drtp" else torch.autograd.grad(loss, logits, retain_graph=True)[0]
            source = self._source(state, e, y, points[0].dtype)
            # one pass: the head's true gradient from the loss, each block's from its signal. Only the
            # graph keeps the block outputs and signals, each freed once its block is done: injecting with
            # backward([loss, *points], [None, *signals]) would hold them all to the end of the pass, a
            # step peaking above backprop's
            injected = _Inject.apply(loss, *points, *[(source @ B).reshape(p.shape)
                                                      for B, p in zip(state.feedback, points)])
            del logits, points, e, source
            injected.backward()
        else:
            # nothing of the forward pass is kept but the graph: holding the block outputs would keep
            # each alive to the end of backward
            loss = self._loss(self._feedback_forward(network, x, self._layer_feedback(state))[0], y)
            loss.backward()
        return loss

    def update(self, state, batch):
        x, y = batch
        state.schedule_free.to_train(x)
        state.network.train()
        self._redraw(state)
        state.optimizer.zero_grad(set_to_none=True)
        loss = self.backward(state, x, y)
        state.optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        state.step += 1
        return state, {"loss": loss.item()}

    def predict(self, state, x):
        return state.schedule_free.predict(x)

    # ------------------------------------------------------------ metrics

    def hidden_signals(self, state, x, y) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per block, the error this rule sends to the block's output (injection point) and
        backprop's ∂L/∂(that tensor), on ``(x, y)`` with the network in eval mode; no state changes."""
        network = state.network
        with evaluating(network), torch.enable_grad():
            if self.direct:
                logits, points = self._direct_forward(network, x, detach=False)
                loss = self._loss(logits, y)
                grads = torch.autograd.grad(loss, [logits, *points])
                rule = self._signals(state, grads[0], y, points)
                return [s.detach() for s in rule], list(grads[1:])
            logits, outputs = self._feedback_forward(network, x, self._layer_feedback(state))
            rule = torch.autograd.grad(self._loss(logits, y), outputs)
            logits, outputs = self._feedback_forward(network, x, None)
            true = torch.autograd.grad(self._loss(logits, y), outputs)
            return list(rule), list(true)

    def block_metrics(self, state, x, y):
        """``signal_angle`` for every mode, ``weight_angle`` and ``weight_ratio`` for fa and the sign modes
        (see the module docstring), on the first `PROBE_SAMPLES` of ``(x, y)``."""
        x, y = x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]
        rule, true = self.hidden_signals(state, x, y)
        metrics = {"signal_angle": [mean_sample_angle(a, b) for a, b in zip(rule, true)]}
        if not self.direct:
            pairs = list(zip(self.feedback_matrices(state), upper_weights(state.network)))
            metrics["weight_angle"] = [matrix_angle(B, W) for B, W in pairs]
            metrics["weight_ratio"] = [float(B.norm() / W.detach().norm()) for B, W in pairs]
        return metrics


@register("drtp")
@dataclass(frozen=True, kw_only=True)
class DRTP(FeedbackAlignment):
    """Direct random target projection (Frenkel, Lefebvre, Bol 2021): `feedback_alignment` with
    ``mode=drtp`` under its true tags. Block l learns from y* B_l alone, which depends on nothing
    above it, so the update is blockwise and no error crosses a block boundary."""

    mode: str = "drtp"

    tags = Tags(locality="blockwise", crosses_blocks=False, backend="torch", supports_conv=True)
    # its blockwise tags hold for mode=drtp only
    constraints = {**FeedbackAlignment.constraints, "mode": ("drtp",)}
