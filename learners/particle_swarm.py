"""Neuron-wise particle swarm training (Kumar 2024, arXiv 2412.05667), and whole-network PSO.

``mode="neuron"``: every neuron (hidden and output) owns a swarm of ``n_particles`` candidates for
its incoming weights and bias. On each batch the neurons are visited in turn; a neuron's fitness is
the network's loss on the batch with every other neuron at its current best, so the network always
holds the assembled best weights. Particles persist across batches; their personal bests are
re-scored on each new batch when ``reevaluate`` is on (the spec's "noisy fitness" pitfall). The
layer input of the visited neuron is cached and only the rank-one change of the next layer is
recomputed (learners/_kernels/swarm.py).

``mode="global"``: classic gbest PSO where one particle is the whole weight vector (the baseline the
paper improves on), every particle's network evaluated in one batched forward pass.

No autograd anywhere: the weights are numpy arrays taken from the shared network with
``networks.to_numpy`` (identical initial weights) and only ever written back as copies.

The spec marks the algorithm as reconstructed [unverified]; the choices it leaves open are the
hyperparameters below (order, output neurons included, reevaluate, particles per neuron).
Locality: the search is decomposed per neuron, but each neuron's fitness is the global loss, so an
earlier block's update depends on the later blocks; the tags therefore say ``global``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from core.checks import Range
from core.errors import ConfigError
from learners._kernels import swarm as K
from learners.base import Learner, Tags, register
from networks import build, from_numpy, to_numpy
from learners.search import LogUniform, Uniform

MODES = ("neuron", "global")
_TORCH_ACTIVATIONS = {0: torch.sigmoid, 1: torch.tanh, 2: torch.relu, 3: lambda h: h,
                      4: lambda h: torch.nn.functional.leaky_relu(h, 0.01),
                      5: lambda h: torch.nn.functional.gelu(h, approximate="tanh")}
ORDERS = ("forward", "backward", "random")
KERNELS = ("numba", "numpy")
FITNESS_DTYPES = ("float32", "bfloat16")


@dataclass
class SwarmState:
    """All weights packed in ``wflat`` (rows [w_j, b_j] per layer, head last; the layout of
    learners/_kernels/swarm.py) and the swarms packed alike.

    Neuron mode: ``P, V, PB`` hold every neuron's k particles, ``PBf`` their personal-best losses.
    Global mode: ``P, V, PB`` are (k, n_weights) in the ``wflat`` layout, ``PBf`` (k,).
    Per-layer views come from `layer` and `neuron_swarm`, never stored, so pickling keeps them.
    """

    wflat: np.ndarray
    sizes: np.ndarray
    acts: np.ndarray
    woff: np.ndarray
    poff: np.ndarray
    noff: np.ndarray
    P: np.ndarray
    V: np.ndarray
    PB: np.ndarray
    PBf: np.ndarray
    spec: object
    rng: np.random.Generator
    k: int
    step: int = 0
    gbest_f: float = np.inf
    evaluations: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def layer(self, l):
        """(W, b) of layer l as views into ``wflat``."""
        rows = self.wflat[self.woff[l]:self.woff[l + 1]].reshape(self.sizes[l + 1], self.sizes[l] + 1)
        return rows[:, :-1], rows[:, -1]

    def neuron_swarm(self, l, j):
        """Views (P, V, PB, PBf) of neuron (l, j)'s swarm: (k, D), (k, D), (k, D), (k,)."""
        D = self.sizes[l] + 1
        a = self.poff[l] + j * self.k * D
        f = (self.noff[l] + j) * self.k
        view = lambda arr: arr[a:a + self.k * D].reshape(self.k, D)
        return view(self.P), view(self.V), view(self.PB), self.PBf[f:f + self.k]

    @property
    def network(self):
        layers = [{"W": W, "b": b} for W, b in map(self.layer, range(self.n_layers))]
        return from_numpy(build(self.spec, 0), layers)


@register("particle_swarm")
@dataclass(frozen=True, kw_only=True)
class ParticleSwarm(Learner):
    """PSO without derivatives; constriction defaults w = 0.7298, c1 = c2 = 1.49618."""

    mode: str = "neuron"              # neuron | global
    # 5 particles and a fifth of the neurons per batch keep an epoch cheap enough for the quick run and
    # the MNIST-sized presets; experiment=pso_digits has the settings of the reported numbers
    n_particles: int = 5              # per neuron (neuron mode) or in all (global mode)
    inertia: float = 0.7298
    c1: float = 1.49618               # cognitive (pbest) acceleration
    c2: float = 1.49618               # social (gbest) acceleration
    velocity_clamp: float = 0.1       # |v| <= velocity_clamp, per coordinate
    init_scale: float = 0.5           # particle spread around the start: init_scale / sqrt(fan_in)
    iterations: int = 1               # swarm iterations per neuron per batch
    reevaluate: bool = True           # re-score personal bests on each new batch
    order: str = "forward"            # forward | backward | random neuron order
    include_output: bool = True       # output neurons are PSO-trained too
    neuron_fraction: float = 0.2      # share of the neurons visited per batch (random subset, in order)
    kernel: str = "numba"             # numba | numpy (the plain reference)
    fitness_dtype: str = "float32"    # global mode: bfloat16 runs the first layer's product in bf16

    tags = Tags(locality="global", crosses_blocks=True, backend="numpy", population=True,
                supports_conv=False)
    contract_params: ClassVar[dict] = {"n_particles": 6, "velocity_clamp": 0.1}
    contract_epochs: ClassVar[int] = 5
    # tuned by experiments.tune, the same trial budget for every learner
    search_space: ClassVar[dict] = {"inertia": Uniform(0.4, 0.9), "velocity_clamp": LogUniform(0.01, 0.5),
                                       "init_scale": LogUniform(0.1, 2.0)}

    # -------------------------------------------------------------- init

    constraints = {"mode": MODES, "order": ORDERS, "kernel": KERNELS, "fitness_dtype": FITNESS_DTYPES,
                   "n_particles": Range(1), "iterations": Range(1), "neuron_fraction": Range(0, 1, low_open=True),
                   "velocity_clamp": Range(0, low_open=True)}

    def _check(self, network):
        if self.fitness_dtype != "float32":
            if self.mode != "global" or self.kernel != "numba":
                raise ConfigError(f"particle_swarm.fitness_dtype={self.fitness_dtype!r} applies to mode=global with "
                                  f"kernel=numba (the batched torch pass), got mode={self.mode!r}, "
                                  f"kernel={self.kernel!r}; use fitness_dtype=float32 here")
            if not native_bf16_products():
                warnings.warn("particle_swarm.fitness_dtype=bfloat16: this CPU has no native bf16 "
                              "matrix products, so torch emulates them, usually slower than float32; "
                              "use fitness_dtype=float32", RuntimeWarning, stacklevel=2)
        spec = network.spec
        if spec.kind != "mlp" or spec.batch_norm or not spec.head:
            raise ConfigError(f"particle_swarm trains plain MLPs (kind=mlp, no batch norm, with a head); "
                              f"got kind={spec.kind!r}, batch_norm={spec.batch_norm}, head={spec.head}")
        if spec.activation not in K.ACTIVATIONS:
            raise ConfigError(f"particle_swarm's kernels have no network.activation={spec.activation!r}; "
                              f"use one of {sorted(K.ACTIVATIONS)}")

    def init(self, network, data_info, seed):
        self._check(network)
        if data_info.task != "classification":
            raise ConfigError(f"particle_swarm does classification only, got task={data_info.task!r}")
        layers = to_numpy(network)                     # identical initial weights, head last
        sizes = np.array([layers[0]["W"].shape[1]] + [l["W"].shape[0] for l in layers], np.int64)
        wflat = np.concatenate([np.concatenate([l["W"], l["b"][:, None]], 1).ravel() for l in layers])
        act = K.ACTIVATIONS[network.spec.activation]
        acts = np.array([act] * (len(layers) - 1) + [K.ACTIVATIONS["identity"]], np.int64)
        D = sizes[:-1] + 1
        woff = np.concatenate([[0], np.cumsum(sizes[1:] * D)]).astype(np.int64)
        k = self.n_particles
        rng = np.random.default_rng([int(seed), 11])
        # spread of the particles around the start, per weight: init_scale / sqrt(fan_in)
        sigma = np.concatenate([np.full(sizes[l + 1] * D[l], self.init_scale / np.sqrt(sizes[l]))
                                for l in range(len(layers))])
        if self.mode == "neuron":
            poff = (woff * k).astype(np.int64)
            noff = np.concatenate([[0], np.cumsum(sizes[1:])]).astype(np.int64)
            P = np.concatenate([
                (wflat[woff[l]:woff[l + 1]].reshape(sizes[l + 1], 1, D[l])
                 + sigma[woff[l]:woff[l + 1]].reshape(sizes[l + 1], 1, D[l])
                 * rng.standard_normal((sizes[l + 1], k, D[l]))).ravel()
                for l in range(len(layers))])
            PBf = np.full(noff[-1] * k, np.inf)
        else:
            poff, noff = np.zeros(1, np.int64), np.zeros(1, np.int64)
            P = wflat + sigma * rng.standard_normal((k, wflat.size))
            P[0] = wflat                               # the shared network's weights are particle 0
            PBf = np.full(k, np.inf)
        return SwarmState(wflat=wflat, sizes=sizes, acts=acts, woff=woff, poff=poff, noff=noff, P=P,
                          V=np.zeros_like(P), PB=P.copy(), PBf=PBf, spec=network.spec, rng=rng, k=k)

    # -------------------------------------------------------------- forward

    @staticmethod
    def _forward(state, X):
        """Pre-activations Z[l] and activations A[l] (A[0] = X) of every layer."""
        A, Z = [X], []
        for l in range(state.n_layers):
            W, b = state.layer(l)
            Z.append(A[-1] @ W.T + b)
            A.append(K.activate_numpy(Z[-1], state.acts[l]))
        return A, Z

    def predict(self, state, x):
        X = x.reshape(len(x), -1).detach().cpu().numpy().astype(np.float64)
        return torch.from_numpy(self._forward(state, X)[1][-1]).float()

    # -------------------------------------------------------------- training

    def update(self, state, batch):
        x, y = batch
        X = np.ascontiguousarray(x.reshape(len(x), -1).detach().cpu().numpy(), dtype=np.float64)
        y = y.detach().cpu().numpy().astype(np.int64)
        before = state.evaluations
        loss = self._neuron_sweep(state, X, y) if self.mode == "neuron" else self._global_step(state, X, y)
        state.step += 1
        # 2 flops per weight and sample per network evaluation (an upper bound: the cached
        # neuron-wise evaluation recomputes only the layers after the neuron)
        flops = 2.0 * float(state.wflat.size) * len(X) * (state.evaluations - before)
        return state, {"loss": float(loss), "flops": flops}

    def visiting_order(self, state) -> tuple[np.ndarray, np.ndarray]:
        """(layer, neuron) index arrays of one sweep."""
        L = state.n_layers
        layer_ids = range(L) if self.include_output else range(L - 1)
        pairs = np.array([(l, j) for l in layer_ids for j in range(state.sizes[l + 1])], np.int64).reshape(-1, 2)
        if self.order == "backward":
            pairs = pairs[::-1]
        elif self.order == "random":
            pairs = pairs[state.rng.permutation(len(pairs))]
        if self.neuron_fraction < 1:
            m = max(1, int(round(self.neuron_fraction * len(pairs))))
            pairs = pairs[np.sort(state.rng.choice(len(pairs), m, replace=False))]
        return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])

    def _neuron_sweep(self, state, X, y):
        order_l, order_j = self.visiting_order(state)
        D = state.sizes[:-1] + 1
        per_layer = self.iterations * 2 * state.k * state.sizes[1:] * D
        roff = np.concatenate([[0], np.cumsum(per_layer)]).astype(np.int64)
        R = state.rng.random(int(roff[-1]))
        if self.kernel == "numba":
            loss, evaluations = K.neuron_sweep(
                X, y, state.sizes, state.acts, state.wflat, state.woff, state.P, state.V, state.PB, state.PBf,
                state.poff, state.noff, order_l, order_j, R, roff, state.k, self.iterations, self.inertia,
                self.c1, self.c2, self.velocity_clamp, self.reevaluate)
            state.evaluations += int(evaluations)
            return loss
        return self._neuron_sweep_numpy(state, X, y, order_l, order_j, R, roff)

    # -------------------------------------------------------------- the plain reference of the sweep

    def _neuron_sweep_numpy(self, state, X, y, order_l, order_j, R, roff):
        """`K.neuron_sweep` written with numpy and the per-neuron numpy kernels."""
        A, Z = self._forward(state, X)
        current = K.cross_entropy_rows_numpy(Z[-1][None], y)[0]
        k = state.k
        for l, j in zip(order_l, order_j):
            P, V, PB, PBf = state.neuron_swarm(l, j)
            W, b = state.layer(l)
            D = P.shape[1]
            gbest = np.append(W[j], b[j])
            if self.reevaluate or not np.isfinite(PBf).all():
                PBf[:] = self._fitness(state, l, j, PB, A, Z, y)
            for t in range(self.iterations):
                rb = roff[l] + (j * self.iterations + t) * 2 * k * D
                r1 = R[rb:rb + k * D].reshape(k, D)
                r2 = R[rb + k * D:rb + 2 * k * D].reshape(k, D)
                K.pso_move_numpy(P, V, PB, gbest, r1, r2, self.inertia, self.c1, self.c2, self.velocity_clamp)
                f = self._fitness(state, l, j, P, A, Z, y)
                improved = f < PBf
                PB[improved] = P[improved]
                PBf[improved] = f[improved]
                best = int(np.argmin(f))
                if f[best] < current:                  # accept only a better assembled network
                    current = float(f[best])
                    gbest = P[best].copy()
                    W[j], b[j] = gbest[:-1], gbest[-1]
                    A, Z = self._forward(state, X)
        return current

    def _fitness(self, state, l, j, P, A, Z, y):
        """Loss of the network with neuron j of layer l set to each row of P, the rest fixed."""
        L = state.n_layers
        state.evaluations += len(P)
        if l == L - 1:                                 # an output neuron: its own logit
            u = np.zeros(Z[-1].shape[1])
            u[j] = 1.0
            return K.rank1_fitness_numpy(A[l], P, state.acts[l], Z[l][:, j], Z[-1], u, y)
        u = state.layer(l + 1)[0][:, j]
        if l == L - 2:                                 # the last hidden layer feeds the logits
            return K.rank1_fitness_numpy(A[l], P, state.acts[l], A[l + 1][:, j], Z[-1], u, y)
        H = K.rank1_next_numpy(A[l], P, state.acts[l], A[l + 1][:, j], Z[l + 1], u, state.acts[l + 1])
        for m in range(l + 2, L):
            W, b = state.layer(m)
            H = K.activate_numpy(H @ W.T + b, state.acts[m])
        return K.cross_entropy_rows_numpy(H, y)

    # -------------------------------------------------------------- whole-network PSO

    def _global_step(self, state, X, y):
        gbest = state.wflat
        if self.reevaluate or not np.isfinite(state.PBf).all():
            state.PBf[:] = self.swarm_fitness(state, state.PB, X, y)
            state.gbest_f = float(self.swarm_fitness(state, gbest[None], X, y)[0])
        move = K.pso_move_hashed if self.kernel == "numba" else K.pso_move_hashed_numpy
        for _ in range(self.iterations):
            # r1, r2 come from a counter-based generator inside the move, seeded from the run's
            # generator once per iteration (learners/_kernels/swarm.py)
            seed = int(state.rng.integers(2**62))
            move(state.P, state.V, state.PB, gbest.copy(), seed, self.inertia, self.c1, self.c2,
                 self.velocity_clamp)
            f = self.swarm_fitness(state, state.P, X, y)
            improved = f < state.PBf
            np.copyto(state.PB, state.P, where=improved[:, None])
            state.PBf[improved] = f[improved]
            best = int(np.argmin(f))
            if f[best] < state.gbest_f:
                state.gbest_f = float(f[best])
                state.wflat[:] = state.P[best]
        return state.gbest_f

    def swarm_fitness(self, state, P, X, y):
        """Mean cross-entropy of every particle's network on (X, y), in one batched pass (float32).

        The numba path does the matrix products with torch (its GEMM was ~5x numpy's here) under
        ``torch.inference_mode`` (no autograd); ``kernel=numpy`` is the plain numpy version.
        ``fitness_dtype=bfloat16`` rounds the inputs, the first layer's weights and its outputs to
        bf16 (8-bit mantissa): a particle is scored as its bf16-rounded network, an absolute error of
        up to ~6e-4 in the cross-entropy on digits (measured in docs/particle_swarm.md).
        """
        state.evaluations += len(P)
        if self.kernel == "numpy":
            return self._swarm_fitness_numpy(state, P, X, y)
        with torch.inference_mode():
            return _batched_cross_entropy(state, torch.from_numpy(P), torch.from_numpy(X).float(),
                                          torch.from_numpy(y), getattr(torch, self.fitness_dtype)
                                          ).double().numpy()

    def _swarm_fitness_numpy(self, state, P, X, y):
        k = len(P)
        H = X.astype(np.float32)
        for l in range(state.n_layers):
            din, dout = state.sizes[l], state.sizes[l + 1]
            rows = P[:, state.woff[l]:state.woff[l + 1]].reshape(k, dout, din + 1).astype(np.float32)
            W, b = rows[:, :, :-1], rows[:, :, -1]
            if l == 0:
                H = (H @ W.reshape(k * dout, din).T).reshape(len(X), k, dout).transpose(1, 0, 2) + b[:, None]
            else:
                H = np.matmul(H, W.transpose(0, 2, 1)) + b[:, None]
            H = K.activate_numpy(H, state.acts[l])
        return K.cross_entropy_rows_numpy(H.astype(np.float64), y)

    def block_parameters(self, state):
        return [[torch.from_numpy(W), torch.from_numpy(b)] for W, b in map(state.layer, range(state.n_layers))]


# ------------------------------------------------------------------ whole-network fitness

def native_bf16_products() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX, as oneDNN sees it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_CHUNK_FLOATS = 1 << 19     # ~2 MiB of first-layer activations per particle chunk: stays in L2


def _layer_weights(state, Pt, l: int, tanh_before: bool, tanh_here: bool):
    """Layer l of every particle as float32 (W (k, out, in), b (k, out)), rewritten for the fitness
    pass below: inputs arriving as s = sigmoid(2z) instead of tanh(z) = 2s - 1 fold into the weights
    (W' = 2W, b' = b - W 1), and a tanh layer's pre-activation is doubled, so that tanh costs one
    sigmoid (torch's tanh took 2.6 ns per value here, its sigmoid 0.42)."""
    k = Pt.shape[0]
    din, dout = int(state.sizes[l]), int(state.sizes[l + 1])
    rows = Pt[:, state.woff[l]:state.woff[l + 1]].reshape(k, dout, din + 1).float()
    W, b = rows[:, :, :-1], rows[:, :, -1]
    if tanh_before:
        W, b = 2.0 * W, b - W.sum(2)
    if tanh_here:
        W, b = 2.0 * W, 2.0 * b
    return W, b


def _activate_(H, code: int, tanh_folded: bool):
    """Activation in place; with ``tanh_folded`` (code 1) it leaves s = sigmoid(2z) for the next layer."""
    if code in (0, 1):
        torch.sigmoid(H, out=H)
        if code == 1 and not tanh_folded:
            H.mul_(2.0).sub_(1.0)
        return H
    if code == 2:
        return H.clamp_(min=0.0)
    if code == 3:
        return H
    return _TORCH_ACTIVATIONS[code](H)


class _StageClock:
    """Process time per named stage of the fitness pass, added into ``totals`` (a dict); off when
    ``totals`` is None. For benchmarks/bench_pso.py's breakdown of where an iteration goes."""

    def __init__(self, totals):
        self.totals = totals
        self.last = time.process_time() if totals is not None else 0.0

    def lap(self, stage: str):
        if self.totals is not None:
            now = time.process_time()
            self.totals[stage] = self.totals.get(stage, 0.0) + now - self.last
            self.last = now


def _batched_cross_entropy(state, Pt, X, y, first_dtype=torch.float32, stage_times=None):
    """Mean cross-entropy per particle (float32, shape (k,)) of all k particle networks on (X, y).

    The particles go through in chunks so that a chunk's activations stay in cache: the first layer
    is one GEMM of [X, 1] with the chunk's stacked [W | b] (bias inside the product, no broadcast
    copy), the later layers are batched products W @ H^T in (particle, unit, sample) layout so that
    every elementwise pass and the softmax over classes run on contiguous rows. This took the
    100-particle digits iteration from 74 to ~13 ms of one core (benchmarks/bench_pso.py).

    ``first_dtype=torch.bfloat16`` does the first product in bf16 (this machine's AVX512-BF16
    product was ~4x faster than fp32's, which is most of the fp32 iteration) and widens its output
    to fp32 before the activation: widening then an fp32 sigmoid took 1.15 ms per iteration here,
    a bf16 sigmoid then widening 1.6.

    ``stage_times``: a dict that receives the process time of each stage (see ``_StageClock``).
    """
    clock = _StageClock(stage_times)
    k, n, L = Pt.shape[0], X.shape[0], state.n_layers
    acts = [int(a) for a in state.acts]
    tanh = [a == 1 for a in acts]
    folded = [tanh[l] and l < L - 1 for l in range(L)]       # tanh output passed on as sigmoid(2z)
    layers = [_layer_weights(state, Pt, l, l > 0 and folded[l - 1], tanh[l]) for l in range(L)]
    W0, b0 = layers[0]
    h0 = W0.shape[1]
    stacked = (torch.cat([W0, b0[:, :, None]], 2).permute(2, 0, 1).reshape(W0.shape[2] + 1, k * h0)
               .to(first_dtype))
    X1 = torch.cat([X, torch.ones(n, 1)], 1).to(first_dtype)
    chunk = max(1, min(k, _CHUNK_FLOATS // max(1, n * h0)))
    buf = torch.empty(n, chunk * h0)
    narrow = torch.empty(n, chunk * h0, dtype=first_dtype) if first_dtype != torch.float32 else None
    index = y.view(1, 1, n)
    out = torch.empty(k)
    clock.lap("weights and set-up")
    for s in range(0, k, chunk):
        e = min(k, s + chunk)
        H = buf[:, :(e - s) * h0]
        if narrow is None:
            torch.mm(X1, stacked[:, s * h0:e * h0], out=H)
            clock.lap("first-layer product")
        else:
            torch.mm(X1, stacked[:, s * h0:e * h0], out=narrow[:, :(e - s) * h0])
            clock.lap("first-layer product")
            H.copy_(narrow[:, :(e - s) * h0])
            clock.lap("widening to fp32")
        H = _activate_(H, acts[0], folded[0])
        clock.lap("first-layer activation")
        H = H.view(n, e - s, h0).permute(1, 2, 0)                 # (particles, units, samples) view
        for l in range(1, L):
            W, b = layers[l]
            H = _activate_(torch.baddbmm(b[s:e, :, None], W[s:e], H), acts[l], folded[l])
        clock.lap("later layers")
        # logits (particles, classes, samples). torch's log_softmax kernel: 0.6 of the time of the
        # max / exp / sum / log passes written out (its exp is the cheaper one of its softmax code)
        picked = torch.log_softmax(H, 1).gather(1, index.expand(e - s, 1, n))
        out[s:e] = picked.mean((1, 2)).neg_()
        clock.lap("cross-entropy")
    return out
