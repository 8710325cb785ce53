"""Alignment with backprop: how close a learner's actual update is to the true gradient step.

At the end of every epoch, on a fixed probe batch, the `Alignment` callback

1. copies the learner's whole state (a *shadow*: network, optimiser, schedule, generators),
2. takes one ``learner.update`` on the shadow with the probe batch and reads each block's weight
   change ``delta_i`` (weight and bias of the block's Linear/Conv layer),
3. computes on another copy of the network, with the weights from before that step, the true
   backprop gradient ``g_i`` of the cross-entropy of ``network(x)`` for the same block,

and records per block

    cosine_i         = <delta_i, -g_i> / (|delta_i| |g_i|)
    sign_agreement_i = mean over entries with delta != 0 and g != 0 of [sign(delta) == sign(-g)]

as ``block_align_cosine(epoch, block)`` and ``block_align_sign(epoch, block)`` in results.nc.
Backprop with plain SGD (no momentum, no weight decay) gives cosine 1; momentum, Adam, local
losses, random feedback and swarms give less. A block whose weights the step did not move (a
greedy schedule on another block) gets NaN.

The callback observes only: the real state is never touched, and the global torch, numpy and
python random streams are saved and restored around the shadow step, so a fit with the callback
trains exactly as one without it.

Where it applies: learners whose ``state.network`` is a `networks.Network` (the torch rules but
NoProp, whose blocks denoise labels rather than form a chain from x to scores), and numpy learners
whose state has a ``spec`` and whose ``block_parameters`` are (W, b) per weight layer with the
shapes of that spec's network (particle swarm). Others raise `NotApplicable` from
`reference_network` and the callback records nothing (it says why in ``skipped``).
"""
from __future__ import annotations

import contextlib
import copy
import random

import numpy as np
import torch
import torch.nn.functional as F

from experiments.callbacks import Callback
from networks import Network, build

COSINE, SIGN = "align_cosine", "align_sign"


class NotApplicable(Exception):
    """This learner's state has no network through which backprop's gradient is defined."""


@contextlib.contextmanager
def preserved_random_state():
    """Save and restore the global torch / numpy / python random streams."""
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _is_torch_network_state(state) -> bool:
    return isinstance(getattr(state, "network", None), Network)


def block_tensors(learner, state) -> list[list[torch.Tensor]]:
    """Per block, the tensors compared with backprop: weight and bias of the block's weight layer."""
    if _is_torch_network_state(state):
        net = state.network
        return [[p for p in (net.weight_layer(i).weight, net.weight_layer(i).bias) if p is not None]
                for i in range(net.n_blocks)]
    spec = getattr(state, "spec", None)
    if spec is None or learner.tags.backend != "numpy":
        raise NotApplicable(f"learner {learner.name!r}: its state has no networks.Network (blocks form no "
                            "chain from the input to the scores), so backprop's gradient is not defined for it")
    params = learner.block_parameters(state)
    n_blocks = len(spec.widths) + len(spec.channels)
    return [list(p[:2]) for p in params[:n_blocks]]


def reference_network(learner, state, input_shape, n_classes) -> Network:
    """A torch copy of the state's network (weights as they are now) to take backprop's gradient on."""
    if _is_torch_network_state(state):
        net = copy.deepcopy(state.network)
    else:
        spec = getattr(state, "spec", None)
        if spec is None:
            raise NotApplicable(f"learner {learner.name!r}: no network spec in its state")
        net = build(spec.resolve(input_shape, n_classes), 0)
        ours = block_tensors(learner, state)
        # the head is the layer after the blocks, when the learner keeps one
        extra = learner.block_parameters(state)[len(ours):]
        layers = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        tensors = ours + [list(p[:2]) for p in extra]
        if len(tensors) != len(layers) or any(
                tuple(t[0].shape) != tuple(m.weight.shape) for t, m in zip(tensors, layers)):
            raise NotApplicable(f"learner {learner.name!r}: its weights do not have the shapes of its spec's "
                                "network (it grows or reshapes the network)")
        with torch.no_grad():
            for t, m in zip(tensors, layers):
                m.weight.copy_(torch.as_tensor(t[0], dtype=m.weight.dtype))
                if m.bias is not None and len(t) > 1:
                    m.bias.copy_(torch.as_tensor(t[1], dtype=m.bias.dtype))
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def network_input(learner, state, net: Network, x: torch.Tensor) -> torch.Tensor:
    """What the network's first block reads: the learner's `network_input` (the raw input, or the
    input with a neutral label for rules that embed one), zero-padded to a first layer the rule widened."""
    x = learner.network_input(state, x)
    first = net.weight_layer(0)
    if isinstance(first, torch.nn.Linear) and first.in_features != x[0].numel():
        flat = x.reshape(len(x), -1)
        return F.pad(flat, (0, first.in_features - flat.shape[1]))
    return x


def backprop_gradients(learner, state, x, y, input_shape, n_classes, task="classification"):
    """Per block, the gradient of the task loss of ``network(x)`` w.r.t. the compared tensors."""
    net = reference_network(learner, state, input_shape, n_classes)
    net.train()
    scores = net(network_input(learner, state, net, x))
    loss = F.mse_loss(scores, y.reshape(scores.shape).to(scores.dtype)) if task == "regression" \
        else F.cross_entropy(scores, y)
    per_block = [[p for p in (net.weight_layer(i).weight, net.weight_layer(i).bias) if p is not None]
                 for i in range(net.n_blocks)]
    flat = [p for ps in per_block for p in ps]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, k = [], 0
    for ps in per_block:
        out.append([torch.zeros_like(p) if g is None else g.detach() for p, g in zip(ps, grads[k:k + len(ps)])])
        k += len(ps)
    return out


def _flat(tensors) -> torch.Tensor:
    return torch.cat([torch.as_tensor(t).detach().reshape(-1).to(torch.float64) for t in tensors])


def cosine_and_sign(delta: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """Cosine between ``delta`` and ``-grad``; fraction of entries where both are non-zero and agree in sign."""
    nd, ng = delta.norm(), grad.norm()
    if nd == 0 or ng == 0:
        return float("nan"), float("nan")
    cos = float(-(delta @ grad) / (nd * ng))
    both = (delta != 0) & (grad != 0)
    sign = float((torch.sign(delta[both]) == -torch.sign(grad[both])).double().mean()) if both.any() \
        else float("nan")
    return cos, sign


def block_alignment(learner, state, batch, *, input_shape, n_classes, task="classification") -> dict:
    """``{"align_cosine": [per block], "align_sign": [per block]}`` for one step on ``batch``.

    Neither ``state`` nor any global random stream is changed.
    """
    x, y = batch
    with preserved_random_state():
        before = [[t.detach().clone() if isinstance(t, torch.Tensor) else torch.as_tensor(np.array(t))
                   for t in ts] for ts in block_tensors(learner, state)]
        grads = backprop_gradients(learner, state, x, y, input_shape, n_classes, task)
        shadow = copy.deepcopy(state)
        shadow, _ = learner.update(shadow, (x, y))
        after = block_tensors(learner, shadow)
    cosines, signs = [], []
    for b, a, g in zip(before, after, grads):
        delta = _flat(a) - _flat(b)
        cos, sign = cosine_and_sign(delta, _flat(g))
        cosines.append(cos)
        signs.append(sign)
    return {COSINE: cosines, SIGN: signs}


def probe_batch(data, n: int, seed: int, device: str = "cpu"):
    """A fixed batch of ``n`` training samples, drawn from its own seeded stream."""
    n = min(n, len(data.x_train))
    idx = np.sort(np.random.default_rng([int(seed), 7]).choice(len(data.x_train), n, replace=False))
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[idx])).to(device)
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[idx])).to(device)
    return x, y


class Alignment(Callback):
    """Records ``block_align_cosine`` and ``block_align_sign`` per epoch (see the module docstring).

    ``n_probe`` samples of the training set form the fixed probe batch; ``every`` epochs it measures
    (the others get NaN). Learners it does not apply to are recorded nothing and named in ``skipped``.
    """

    def __init__(self, n_probe: int = 256, every: int = 1):
        self.n_probe, self.every = n_probe, max(1, int(every))
        self.probe = None
        self.skipped: str | None = None
        self.history: list[dict] = []

    def on_fit_start(self, run):
        self.probe = probe_batch(run.data, self.n_probe, run.seed, run.loop.device)
        try:
            block_tensors(run.learner, run.state)
        except NotApplicable as err:
            self.skipped = str(err)

    def on_epoch_end(self, run, record):
        if self.skipped or (run.epoch + 1) % self.every:
            return
        values = block_alignment(run.learner, run.state, self.probe, input_shape=run.info.input_shape,
                                 n_classes=run.info.n_classes, task=run.info.task)
        self.history.append(values)
        # an observer adding its observations to the epoch's record, saved with it (not learning)
        record.setdefault("block", {}).update(values)
