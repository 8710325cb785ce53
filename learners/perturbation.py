"""Forward-only gradient estimators: forward gradient, weight and node perturbation, likelihood ratio.

Each step turns forward passes into a random estimate ĝ of the gradient and hands it to the usual
optimiser; nothing is backpropagated. With L = (1/B) Σ_b L_b the batch cross-entropy, z_l = W_l h_{l−1}
+ b_l the output of weight layer l (a *site*: one per block, the head's last), ξ, v, u, ε draws with
independent zero-mean unit-variance entries (``distribution``), σ = ``sigma``, K = ``n_directions``
draws averaged per step:

    mode                          estimate                                              passes per draw
    forward_gradient, weights     ĝ_θ = (∇L·v) v, v over the parameters, shared by      1 JVP
                                  the batch (Baydin et al. 2022)
    forward_gradient, activities  ĝ_{z_l,b} = (∇_z L_b·u_b) u_{l,b} / B, u per example    1 JVP
                                  (Ren et al. 2023, activity perturbation)
    weight                        ĝ_θ = [L(θ+σξ) − L(θ−σξ)] / (2σ) ξ  (antithetic)       2 forward
                                  ĝ_θ = [L(θ+σξ) − L(θ)] / σ ξ         (one-sided)        1 (+1 clean)
    node                          ĝ_{z_l,b} = [L_b(+σξ) − L_b(−σξ)] / (2σ) ξ_{l,b} / B   2 forward
                                  one-sided: [L_b(σξ) − L_b] / σ ξ_{l,b} / B             1 (+1 clean)
    likelihood_ratio              z_l ← z_l + σε_l; ĝ_{z_l,b} = (L_b(ε) − c_b) ε_{l,b}/(σB)  1 forward
                                  (Jiang et al., ULR: the score of the Gaussian noise)

Activity estimates become weight estimates through each weight layer's exact local Jacobian:
ĝ_{W_l} = Σ_b ĝ_{z_l,b} h_{l−1,b}ᵀ, ĝ_{b_l} = Σ_b ĝ_{z_l,b} (for a conv layer the same contraction,
``conv2d_weight``), with h_{l−1} the input the layer saw in that pass. For the likelihood ratio this is
the score ∇_W log N(z_l; W h_{l−1} + b, σ²I) = ε h_{l−1}ᵀ / σ, which is only right with the noisy
pass's own input; node perturbation, a finite difference, takes the mean of its two passes' inputs.

``layerwise`` (ULR's layer-wise noise injection, and its parameter-space analogue): one site per pass,
so no other layer's noise enters a layer's estimate; the passes start at their site from the clean
pass's input there, and K is per site. ``antithetic`` pairs every draw with its negative (central
differences for weight and node perturbation; ±ε for the likelihood ratio, each half with its own
pass's input). ``baseline`` (likelihood ratio) is c_b = 0 (``none``), the clean loss (``clean``), or the
mean loss of the other K − 1 noisy copies of the example (``mean``, leave-one-out so that it does not
depend on the copy's own noise). Node and weight perturbation estimate ∇L up to O(σ²) (σ is a
difference step), the forward gradient ∇L exactly, the likelihood ratio ∇E_ε[L], the gradient of
the loss smoothed by the training noise (σ is part of the model while training; prediction is clean).

``local_losses`` (Ren et al.'s local greedy losses): every block gets a linear readout (the last block
reads through the network's head) and its own cross-entropy on the detached output of the block below;
each mode estimates the gradient of block l's local loss from perturbations of block l and its readout
alone, and the step is blockwise. Without it every estimate is of the output loss: global.

Batch norm: estimation passes normalise with the batch's statistics and leave the running ones alone
(a forward transform may not mutate buffers it captured, and perturbed passes should not move them);
one clean no-gradient forward per step updates them, as backprop's forward would. The activity modes
draw noise per example, which batch norm mixes across the batch, and have no site for a norm's scale
and shift: they refuse a network with batch norm.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._optim import OptimizerConfig, Schedule, is_schedule_free, make_optimizer, make_scheduler
from learners._schedule_free import ScheduleFreeEval
from learners.base import Learner, Tags, evaluating, register
from learners.search import IntRange, LogUniform

MODES = ("forward_gradient", "weight", "node", "likelihood_ratio")
TANGENTS = ("weights", "activities")
DISTRIBUTIONS = ("gaussian", "rademacher")
BASELINES = ("none", "clean", "mean")
PROBE_SAMPLES = 512
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _layers(module: nn.Module) -> list[nn.Module]:
    return list(module) if isinstance(module, nn.Sequential) else [module]


def _is_site(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, nn.Conv2d))


class _Segment:
    """The layers one loss is computed through: the whole network (global) or one block and its readout
    (local losses). ``carry`` counts the layers whose output feeds the next segment (0: none)."""

    def __init__(self, modules: list[nn.Module], carry_modules: int = 0):
        self.layers = [layer for m in modules for layer in _layers(m)]
        self.carry = sum(len(_layers(m)) for m in modules[:carry_modules])
        self.sites = [k for k, layer in enumerate(self.layers) if _is_site(layer)]

    def params(self) -> list[dict[str, torch.Tensor]]:
        """Each layer's own trainable parameters, by name (empty for a parameter-free layer)."""
        return [{n: p for n, p in layer.named_parameters() if p.requires_grad} for layer in self.layers]

    def run(self, h, params=None, noise=None, start: int = 0, after: bool = False):
        """Logits, the input of every site (None before ``start``), and the carried output (None when
        ``start`` is past it). ``params`` (per layer) replaces the layers' own; ``noise`` (per site) is
        added to each site's output; ``start`` (a site) runs from that site's layer on ``h``, its input,
        or with ``after`` from the layer after it on ``h``, its output."""
        inputs: list = [None] * len(self.sites)
        carried = None
        first = self.sites[start] + int(after) if start or after else 0
        for k in range(first, len(self.layers)):
            layer = self.layers[k]
            site = self.sites.index(k) if _is_site(layer) else None
            if site is not None:
                inputs[site] = h
            h = functional_call(layer, params[k], (h,)) if params is not None and params[k] else layer(h)
            if site is not None and noise is not None and noise[site] is not None:
                h = h + noise[site]
            if k + 1 == self.carry:
                carried = h
        return h, inputs, carried


def _site_grads(layer: nn.Module, h: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight and bias estimates from the site estimate ``g`` = ĝ_z (already divided by B): the layer's
    exact local Jacobian, as backprop's weight gradient given ∂L/∂z."""
    if isinstance(layer, nn.Linear):
        grads = {"weight": g.reshape(-1, g.shape[-1]).T @ h.reshape(-1, h.shape[-1])}
        reduce = tuple(range(g.dim() - 1))
    else:
        grads = {"weight": torch.nn.grad.conv2d_weight(h, layer.weight.shape, g, layer.stride, layer.padding,
                                                       layer.dilation, layer.groups)}
        reduce = (0, 2, 3)
    if layer.bias is not None:
        grads["bias"] = g.sum(reduce)
    return grads


def _accumulate(grads: dict, param: torch.Tensor, value: torch.Tensor) -> None:
    grads[param] = grads[param] + value if param in grads else value


@contextlib.contextmanager
def _batch_statistics_only(network: nn.Module):
    """Batch norm normalises with the batch's statistics and leaves its running ones untouched."""
    norms = [m for m in network.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@dataclass
class PerturbationState:
    network: nn.Module
    readouts: nn.ModuleList | None      # local losses: the readout of every block but the last (the head's)
    optimizer: torch.optim.Optimizer
    scheduler: Schedule | None
    generator: torch.Generator          # every direction and noise draw of training
    probe_generator: torch.Generator    # block_metrics' draws: evaluating never shifts training's stream
    site_shapes: list[list[tuple[int, ...]]]   # per segment, each site's output shape without the batch
    schedule_free: ScheduleFreeEval
    has_batch_norm: bool
    step: int = 0


@register("perturbation")
@dataclass(frozen=True, kw_only=True)
class Perturbation(Learner):
    """Gradient estimates from forward passes only (module docstring): K random directions per step."""

    mode: str = "forward_gradient"     # forward_gradient | weight | node | likelihood_ratio
    # K tangents, perturbations or noise copies averaged per step (per site with ``layerwise``). After an
    # epoch of 2000 MNIST images K = 1 left the 1000-unit MLPs near chance, and K = 8 over all sites at
    # once the three-layer one; 8 per site learned both (docs/perturbation.md, "Defaults")
    n_directions: int = 8
    tangent: str = "activities"        # forward_gradient: weights (Baydin) | activities (Ren)
    local_losses: bool = False         # a readout and a loss per block (Ren): blockwise instead of global
    distribution: str = "gaussian"     # gaussian | rademacher entries of every direction
    sigma: float = 0.01                # weight, node: finite-difference step; likelihood_ratio: noise std
    antithetic: bool = True            # weight, node: central differences; likelihood_ratio: ±ε pairs
    baseline: str = "clean"            # likelihood_ratio: none | clean | mean (over the K copies)
    layerwise: bool = True             # one site (its layer's parameters, or its units) perturbed per pass
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    # schedule-free optimisers only: training batches kept to refresh batch norm before evaluating
    bn_refresh_batches: int = 50

    # Conservative class tags: every estimate but the local losses' depends on the whole network
    # through the output loss. With local_losses=true block l's update reads nothing above block l
    # (tests/learners/test_perturbation.py checks it), but tags belong to the class.
    tags = Tags(locality="global", crosses_blocks=True, backend="torch", supports_conv=True)
    # one direction per site keeps the contract suite's runs short; blobs and xor need no more
    contract_params = {"optimizer": {"name": "adam", "lr": 0.01}, "n_directions": 1}
    contract_epochs = 30
    constraints = {"mode": MODES, "tangent": TANGENTS, "distribution": DISTRIBUTIONS, "baseline": BASELINES,
                   "n_directions": Range(1), "sigma": Range(0, low_open=True), "bn_refresh_batches": Range(0)}
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(1e-4, 1e-2), "n_directions": IntRange(1, 16, log=True),
                    "sigma": LogUniform(1e-3, 1e-1)}

    @property
    def perturbs_activities(self) -> bool:
        return self.mode in ("node", "likelihood_ratio") or (self.mode == "forward_gradient"
                                                             and self.tangent == "activities")

    # ------------------------------------------------------------ set-up

    def init(self, network, data_info, seed):
        if data_info.task != "classification":
            raise ConfigError(f"perturbation trains classifiers; got task {data_info.task!r}")
        if network.head is None:
            raise ConfigError("perturbation needs the network's head (build the network with head=True)")
        if self.mode == "likelihood_ratio" and self.baseline == "mean" and self.n_directions < 2:
            raise ConfigError("perturbation.baseline='mean' averages the other noisy copies: "
                              f"set n_directions >= 2 (got {self.n_directions})")
        if self.mode == "likelihood_ratio" and self.distribution != "gaussian":
            # the score ε/σ is that of Gaussian noise; ±1 noise has no density to differentiate
            raise ConfigError("perturbation mode=likelihood_ratio needs distribution=gaussian "
                              f"(got {self.distribution!r}): its score ε/σ is that of Gaussian noise")
        has_bn = any(isinstance(m, _BATCH_NORMS) for m in network.modules())
        if has_bn and self.perturbs_activities:
            raise ConfigError(f"perturbation mode={self.mode}"
                              f"{' tangent=activities' if self.mode == 'forward_gradient' else ''} draws "
                              "per-example noise, which batch norm mixes across the batch: use network.batch_norm="
                              "false, or mode=weight or forward_gradient with tangent=weights")
        device = data_info.device
        network = network.to(device)
        readouts = None
        if self.local_losses:
            # a stream of its own, so that the readouts never shift the draws of training
            gen = torch.Generator().manual_seed(seed_stream(seed, "perturbation.readouts"))
            like = network.weight_layer(0).weight
            readouts = nn.ModuleList(self._readout(math.prod(shape), data_info.n_classes, gen)
                                     for shape in network.block_shapes[:-1]).to(device=device, dtype=like.dtype)
        modules = [network] + ([readouts] if readouts is not None else [])
        opt = make_optimizer([p for m in modules for p in m.parameters()], self.optimizer)
        scheduler = None if is_schedule_free(opt) else make_scheduler(opt, self.optimizer, data_info.total_steps)
        state = PerturbationState(
            network=network, readouts=readouts, optimizer=opt, scheduler=scheduler,
            generator=torch.Generator(device).manual_seed(seed_stream(seed, "perturbation.directions")),
            probe_generator=torch.Generator(device).manual_seed(seed_stream(seed, "perturbation.probe")),
            site_shapes=[], has_batch_norm=has_bn,
            schedule_free=ScheduleFreeEval([opt], network, self.bn_refresh_batches))
        state.site_shapes = self._site_shapes(state, data_info.input_shape)
        return state

    @staticmethod
    def _readout(n_in: int, n_classes: int, gen: torch.Generator) -> nn.Module:
        # torch's own Linear init, from the given generator
        layer = nn.Linear(n_in, n_classes)
        with torch.no_grad():
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            layer.bias.uniform_(-1 / math.sqrt(n_in), 1 / math.sqrt(n_in), generator=gen)
        return nn.Sequential(nn.Flatten(), layer)

    def segments(self, state) -> list[_Segment]:
        network = state.network
        if not self.local_losses:
            return [_Segment([*network.blocks, network.head])]
        readouts = [*state.readouts, network.head]
        return [_Segment([block, readout], carry_modules=1) for block, readout in zip(network.blocks, readouts)]

    def _site_shapes(self, state, input_shape) -> list[list[tuple[int, ...]]]:
        like = state.network.weight_layer(0).weight
        x = torch.zeros((1, *input_shape), device=like.device, dtype=like.dtype)
        shapes = []
        with evaluating(state.network):
            for segment in self.segments(state):
                _, inputs, carried = segment.run(x)
                # each site's output shape: its layer on the input it recorded
                shapes.append([tuple(segment.layers[k](i).shape[1:]) for k, i in zip(segment.sites, inputs)])
                x = carried
        return shapes

    # ------------------------------------------------------------ draws

    def _draw(self, shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        if self.distribution == "rademacher":
            return torch.randint(0, 2, tuple(shape), generator=gen, device=like.device).to(like.dtype) * 2 - 1
        return torch.randn(tuple(shape), generator=gen, device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------ estimators, one segment each

    def _estimate(self, segment: _Segment, shapes, h, y, gen) -> tuple[dict, float, torch.Tensor | None]:
        """The estimate of the gradient of this segment's loss for each of its parameters (a dict keyed
        by the parameter), the loss (noisy modes: averaged over the noisy passes), the carried output."""
        if self.mode == "forward_gradient" and self.tangent == "weights":
            return self._forward_gradient_weights(segment, h, y, gen)
        if self.mode == "weight":
            return self._weight_perturbation(segment, h, y, gen)
        return self._activity_estimate(segment, shapes, h, y, gen)

    def _weight_rounds(self, segment: _Segment, h):
        """The parameter-space modes' rounds: (parameters perturbed, per layer; the site the pass starts
        at; its input). One round over every parameter, or with ``layerwise`` one per site, over the
        layers from that site to the next (a norm goes with its block's weight layer), starting from the
        clean pass's input there. Also the clean pass's logits and carried output when it ran."""
        params = segment.params()
        if not self.layerwise:
            return [(params, 0, h)], None, None
        logits, inputs, carried = segment.run(h)
        owner = [sum(1 for site in segment.sites if site <= k) - 1 for k in range(len(segment.layers))]
        rounds = [([d if owner[k] == i else {} for k, d in enumerate(params)], i, inputs[i])
                  for i in range(len(segment.sites))]
        return rounds, logits, carried

    def _forward_gradient_weights(self, segment, h, y, gen):
        """ĝ = (∇L·v) v with one tangent v over the parameters (Baydin et al. 2022); the K
        tangents run as one vectorised JVP (``vmap``), the same numbers as K calls at one call's overhead."""
        grads: dict = {}
        k = self.n_directions
        rounds, clean_logits, carried = self._weight_rounds(segment, h)
        if carried is None and segment.carry:
            clean_logits, _, carried = segment.run(h)
        loss = None if clean_logits is None else F.cross_entropy(clean_logits, y)
        for own, start, h_start in rounds:
            primal = [{n: p.detach() for n, p in d.items()} for d in own]

            def loss_of(params):
                return F.cross_entropy(segment.run(h_start, params=params, start=start)[0], y)

            tangents = [{n: self._draw((k, *p.shape), gen, p) for n, p in d.items()} for d in primal]
            losses, slopes = vmap(lambda v: jvp(loss_of, (primal,), (v,)))(tangents)
            loss = losses[0] if loss is None else loss
            for layer_own, layer_v in zip(own, tangents):
                for n, p in layer_own.items():
                    _accumulate(grads, p, torch.tensordot(slopes, layer_v[n], dims=1) / k)
        return grads, float(loss), carried

    def _weight_perturbation(self, segment, h, y, gen):
        """ĝ = [L(θ+σξ) − L(θ−σξ)]/(2σ) ξ, or [L(θ+σξ) − L(θ)]/σ ξ one-sided; ξ shared by the batch. The
        K perturbed networks run as one vectorised pass (``vmap``)."""
        grads: dict = {}
        k = self.n_directions
        rounds, clean_logits, carried = self._weight_rounds(segment, h)
        if clean_logits is None and (not self.antithetic or segment.carry):
            clean_logits, _, carried = segment.run(h)
        clean = None if clean_logits is None else F.cross_entropy(clean_logits, y)
        seen = []
        for own, start, h_start in rounds:
            def loss_at(params):
                return F.cross_entropy(segment.run(h_start, params=params, start=start)[0], y)

            xi = [{n: self._draw((k, *p.shape), gen, p) for n, p in d.items()} for d in own]

            def shifted(sign):
                return [{n: p.detach() + sign * self.sigma * e[n] for n, p in d.items()} for d, e in zip(own, xi)]

            plus = vmap(loss_at)(shifted(1))
            if self.antithetic:
                minus = vmap(loss_at)(shifted(-1))
                slopes = (plus - minus) / (2 * self.sigma)
                seen.append(((plus + minus) / 2).mean())
            else:
                slopes = (plus - clean) / self.sigma
                seen.append(clean)
            for d, e in zip(own, xi):
                for n, p in d.items():
                    _accumulate(grads, p, torch.tensordot(slopes, e[n], dims=1) / k)
        return grads, float(torch.stack(seen).mean()), carried

    def _activity_estimate(self, segment, shapes, h, y, gen):
        """Per-example estimates ĝ_z at the sites (forward gradient with activity tangents, node
        perturbation, likelihood ratio), turned into weight estimates by `_site_grads`.

        The K noisy passes of node perturbation and the likelihood ratio run as K copies of the batch in
        one pass (the "copies of data" of likelihood-ratio training); the forward gradient's K tangents share one primal
        pass in one vectorised JVP. Either way the estimates of K separate passes, at one's overhead."""
        grads: dict = {}
        k, n = self.n_directions, len(h)
        layers = [segment.layers[s] for s in segment.sites]
        like = layers[0].weight
        copies = y.repeat(k)

        def per_example(logits):
            return F.cross_entropy(logits, copies, reduction="none")

        def add_sites(inputs, coeff, draws):
            # coeff: a factor per copy of an example (K·B,); the mean over copies and batch is 1/(K·B)
            for layer, inp, e in zip(layers, inputs, draws):
                if e is not None:
                    g = (coeff / (k * n)).reshape(-1, *([1] * (e.dim() - 1))) * e
                    for name, value in _site_grads(layer, inp, g).items():
                        _accumulate(grads, getattr(layer, name), value)

        # Layerwise: one site per pass. Everything below the site is the clean pass, so that pass runs
        # once and each perturbed pass starts at its site.
        needs_clean = self.layerwise or segment.carry or (self.mode == "node" and not self.antithetic) or \
            (self.mode == "likelihood_ratio" and self.baseline == "clean")
        clean = clean_inputs = carried = None
        if needs_clean:
            logits, clean_inputs, carried = segment.run(h)
            clean = F.cross_entropy(logits, y, reduction="none").repeat(k)
        rounds = [(i, clean_inputs[i]) for i in range(len(shapes))] if self.layerwise else [(None, h)]
        seen = []
        for which, h_start in rounds:
            start = which or 0
            placed = (lambda draws: [draws[0] if i == which else None for i in range(len(shapes))]) \
                if which is not None else (lambda draws: draws)

            if self.mode == "forward_gradient":
                # The K tangents share the primal pass: one vectorised JVP (vmap over the tangents). All
                # sites at once: the tangents enter through zero-valued noise added at every site;
                # layerwise: the JVP starts at the site's output itself.
                if which is None:
                    primals = [torch.zeros((n, *shape), device=like.device, dtype=like.dtype) for shape in shapes]
                else:
                    primals = [layers[which](h_start)]

                def losses_of(z):
                    if which is None:
                        logits, inputs, _ = segment.run(h_start, noise=z)
                    else:
                        (logits, _, _), inputs = segment.run(z[0], start=which, after=True), []
                    # jvp's auxiliary output holds tensors only (a layerwise site's input is h_start)
                    return F.cross_entropy(logits, y, reduction="none"), inputs

                tangents = [self._draw((k, *z.shape), gen, like) for z in primals]
                losses, slopes, inputs = vmap(lambda u: jvp(losses_of, (primals,), (u,), has_aux=True),
                                              out_dims=(0, 0, None))(tangents)
                # the primal input of a site is the same for every tangent: sum the K estimates first
                summed = [(slopes.reshape(k, n, *([1] * (u.dim() - 2))) * u).sum(0) for u in tangents]
                add_sites(inputs or placed([h_start]), torch.ones(n, dtype=like.dtype, device=like.device),
                          placed(summed))
                seen.append(losses.mean())
                continue

            h_copies = h_start.repeat(k, *([1] * (h_start.dim() - 1)))
            draws = placed([self._draw((k * n, *shape), gen, like)
                            for i, shape in enumerate(shapes) if which is None or i == which])

            passes = []
            for sign in ((1, -1) if self.antithetic else (1,)):
                logits, inputs, _ = segment.run(h_copies, noise=[None if e is None else sign * self.sigma * e
                                                                 for e in draws], start=start)
                passes.append((per_example(logits), inputs))
            seen.extend(loss.mean() for loss, _ in passes)
            if self.mode == "node":
                if self.antithetic:
                    # central difference; the layer's input is the mean of the two passes' (h₀ + O(σ²))
                    (plus, plus_in), (minus, minus_in) = passes
                    slope = (plus - minus) / (2 * self.sigma)
                    inputs = [None if a is None else (a + b) / 2 for a, b in zip(plus_in, minus_in)]
                else:
                    (plus, inputs), = passes
                    slope = (plus - clean) / self.sigma
                add_sites(inputs, slope, draws)
                continue
            base = self._baseline(clean, [loss for loss, _ in passes], n)
            for sign, (loss, inputs) in zip((1, -1), passes):
                # each pass's own score sign·ε/σ with its own inputs; a pair averages two estimates
                add_sites(inputs, sign * (loss - base) / (len(passes) * self.sigma), draws)
        return grads, float(torch.stack(seen).mean()), carried

    def _baseline(self, clean, losses, n) -> torch.Tensor | float:
        """c of the likelihood ratio per copy of an example: 0, the clean loss, or the mean loss of the
        example's other K − 1 noisy copies (``losses``: one (K·B,) tensor per pass)."""
        if self.baseline == "clean":
            return clean
        if self.baseline == "mean":
            # leave-one-out: a baseline free of this copy's noise keeps the estimate unbiased
            per_copy = torch.stack(losses).mean(0).reshape(-1, n)          # K, B
            k = per_copy.shape[0]
            return ((per_copy.sum(0) - per_copy) / (k - 1)).reshape(-1)
        return 0.0

    def estimate(self, state, x, y, gen) -> tuple[dict, dict[str, float]]:
        """ĝ for every trainable parameter (a dict keyed by the parameter) and the step's metrics."""
        grads, metrics = {}, {}
        segments = self.segments(state)
        h = x
        with torch.no_grad(), _batch_statistics_only(state.network):
            for i, (segment, shapes) in enumerate(zip(segments, state.site_shapes)):
                seg_grads, loss, carried = self._estimate(segment, shapes, h, y, gen)
                grads.update(seg_grads)
                if self.local_losses:
                    metrics[f"local_loss/{i}"] = loss
                h = carried
        metrics["loss"] = loss
        return grads, metrics

    # ------------------------------------------------------------ training

    def update(self, state, batch):
        x, y = batch
        state.schedule_free.to_train(x)
        state.network.train()
        grads, metrics = self.estimate(state, x, y, state.generator)
        if state.has_batch_norm:
            # the running statistics move once per step, at the current weights (module docstring)
            with torch.no_grad():
                state.network(x)
        state.optimizer.zero_grad(set_to_none=True)
        for param, g in grads.items():
            param.grad = g
        state.optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        state.step += 1
        return state, metrics

    def predict(self, state, x):
        return state.schedule_free.predict(x)

    # ------------------------------------------------------------ hooks and metrics

    def trainable_modules(self, state):
        return [state.network] + ([state.readouts] if state.readouts is not None else [])

    def optimizers(self, state):
        return [state.optimizer]

    def true_gradients(self, state, x, y) -> dict:
        """Autograd's gradient of the loss each estimate is of (output loss, or each block's local loss),
        for the diagnostics; training never calls it."""
        params = [p for m in self.trainable_modules(state) for p in m.parameters()]
        with torch.enable_grad(), _batch_statistics_only(state.network):
            h, total = x, 0.0
            for segment in self.segments(state):
                logits, _, carried = segment.run(h)
                total = total + F.cross_entropy(logits, y)
                h = carried.detach() if carried is not None else None
            grads = torch.autograd.grad(total, params, allow_unused=True)
        return {p: g for p, g in zip(params, grads) if g is not None}

    def block_metrics(self, state, x, y):
        """``grad_cosine``: per block, the cosine between this rule's estimate (K directions, from the
        probe's own generator) and the true gradient of the same loss, over the block's parameters, on
        the first `PROBE_SAMPLES` of ``(x, y)``; the state is unchanged."""
        x, y = x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]
        was_training = state.network.training
        state.network.train()
        try:
            estimate, _ = self.estimate(state, x, y, state.probe_generator)
            true = self.true_gradients(state, x, y)
        finally:
            state.network.train(was_training)
        cosines = []
        for block in state.network.blocks:
            a = torch.cat([estimate[p].reshape(-1) for p in block.parameters() if p in estimate])
            b = torch.cat([true[p].reshape(-1) for p in block.parameters() if p in estimate])
            cosines.append(float(F.cosine_similarity(a.double(), b.double(), dim=0)))
        return {"grad_cosine": cosines}
