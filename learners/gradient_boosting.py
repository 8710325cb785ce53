"""GBNN: a single hidden layer of T*J units grown by gradient boosting (Emami & Martinez-Munoz 2023).

Each boosting step fits a J-unit one-hidden-layer regressor to the pseudo-residuals of the
current additive model on a random subsample, scales it by a shrunk Newton step rho_m and
never revisits it (reference code GAA-UAM/GBNN).

How it maps onto the shared network definitions: GBNN ignores the hidden widths of the run's
network and builds its own ``NetworkSpec(widths=(n_units,), activation=...)`` with the same seed
(``networks.build``), so unit block m starts from the same weights as block m of a backprop run
on that network. Untrained units keep their initial input weights and have output weight 0, so
the assembled network (``state.network``) always equals the boosted prediction. Its two blocks
(``block_parameters``) are the hidden layer [W1, b1] and the output layer [W_out, b_out]; the
tensors share memory with the learner's numpy arrays. With ``features="frozen"`` the run's own
network blocks (optionally pre-trained by backprop) are a frozen feature extractor and GBNN
boosts the final layers on top of them (the paper's deep-network use).

The weak learner is trained by L-BFGS (as the reference's sklearn ``solver='lbfgs'``) or Adam, both
written in numba (learners/_kernels/boosting.py): sklearn's L-BFGS pays ~0.3 ms of Python per
iteration, the jitted one only the arithmetic. Departures from the reference code: its L-BFGS-B
(scipy, Wolfe line search) is replaced by plain L-BFGS with a backtracking Armijo search; the
multiclass F_0 is the log of the class priors (the loss minimiser; the code uses 0, which is the
same for balanced classes); squared loss is halved (see `mean_loss`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from core.checks import Range
from core.errors import ConfigError
from learners._kernels.boosting import (ACTIVATIONS, SCIPY_FTOL, activate_numpy, fit_step_adam,
                                        fit_step_adam_numpy, fit_step_lbfgs, fit_step_lbfgs_numpy)
from learners.base import Learner, Tags, register
from networks import build, from_numpy, to_numpy
from learners.search import Choice, LogUniform, Uniform

FEATURES = ("none", "frozen")
STEP_INITS = ("glorot", "network")
KERNELS = ("numba", "numpy")
SOLVERS = ("lbfgs", "adam")
LBFGS_MEMORY = 10
RHO_EPS = 1e-12


# ------------------------------------------------------------------ losses (spec table "Losses")

def loss_kind(task: str, n_classes: int) -> str:
    if task == "regression":
        return "squared"
    return "binary" if n_classes == 2 else "multiclass"


def initial_F(kind: str, y: np.ndarray, n_classes: int) -> np.ndarray:
    """F_0 = argmin_c sum_i L(y_i, c): mean(y); half log-odds of y in {-1, +1}; log class priors."""
    if kind == "squared":
        return y.reshape(len(y), -1).mean(0)
    if kind == "binary":
        ybar = np.clip(np.mean(2.0 * y - 1.0), -1 + 1e-12, 1 - 1e-12)
        return np.array([0.5 * np.log((1 + ybar) / (1 - ybar))])
    # The reference uses 0; log priors (centred) minimise the softmax loss also when classes
    # are imbalanced and equal 0 when they are balanced.
    priors = np.bincount(y, minlength=n_classes) / len(y)
    logp = np.log(np.maximum(priors, 1e-12))
    return logp - logp.mean()


def softmax(F: np.ndarray) -> np.ndarray:
    e = np.exp(F - F.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def mean_loss(kind: str, y: np.ndarray, F: np.ndarray) -> float:
    """The boosted loss of the spec's table, averaged over samples.

    Squared loss is taken as (y - F)^2 / 2: the table's residual y - F is the negative gradient of
    that (of (y - F)^2 it would be 2(y - F)); F_0, the residuals and the steps are unchanged.
    """
    if kind == "squared":
        return float(0.5 * np.mean(np.sum((y.reshape(F.shape) - F) ** 2, 1)))
    if kind == "binary":
        s = 2.0 * y - 1.0
        return float(np.mean(np.logaddexp(0.0, -2.0 * s * F[:, 0])))
    logz = np.log(np.sum(np.exp(F - F.max(1, keepdims=True)), 1)) + F.max(1)
    return float(np.mean(logz - F[np.arange(len(y)), y]))


def residuals(kind: str, y: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Pseudo-residuals r = -dL/dF (per sample): y - F; 2y/(1+exp(2yF)); onehot(y) - softmax(F)."""
    if kind == "squared":
        return y.reshape(F.shape) - F
    if kind == "binary":
        s = 2.0 * y - 1.0
        return (2.0 * s * 0.5 * (1.0 - np.tanh(s * F[:, 0])))[:, None]   # 2s/(1+e^{2sF}), overflow-free
    onehot = np.zeros_like(F)
    onehot[np.arange(len(y)), y] = 1.0
    return onehot - softmax(F)


def newton_step(kind: str, y: np.ndarray, r: np.ndarray, f: np.ndarray, F: np.ndarray) -> float:
    """One Newton step along f (before shrinkage): sum r f / sum f^2 h, h the loss curvature.

    Binary: h = |r| (2 - |r|) (Friedman's logistic step); multiclass: h = p (1 - p) with one
    rho shared by all classes; squared loss: rho = 1, as in the reference code.
    """
    if kind == "squared":
        return 1.0
    if kind == "binary":
        a = np.abs(r)
        h = a * (2.0 - a)
    else:
        p = softmax(F)
        h = p * (1.0 - p)
    return float(np.sum(r * f) / (np.sum(f * f * h) + RHO_EPS))


# ------------------------------------------------------------------ state

@dataclass
class GBNNState:
    """Hidden layer ``W1 (n_units, d)``, ``b1``; output ``W_out (n_out, n_units)``, ``b_out``.

    ``bias_steps[m]`` is step m's contribution to ``b_out`` (for truncation); ``steps`` keeps each
    partial model (W1_m, b1_m, W2_m, b2_m, rho_m) so the assembly can be checked against it.
    """

    W1: np.ndarray
    b1: np.ndarray
    W_out: np.ndarray
    b_out: np.ndarray
    bias_steps: np.ndarray
    F0: np.ndarray
    kind: str
    spec: object
    rng: np.random.Generator
    n_steps_done: int = 0
    step: int = 0
    steps: list = dataclasses.field(default_factory=list)
    features: object = None          # frozen torch feature network (features="frozen")
    pretrained: bool = False
    schedule: tuple = ()             # boosting steps to run in each update
    # early stopping (validation_fraction > 0): held-out rows, their F, the best step count so far
    val_rows: np.ndarray | None = None
    F_val: np.ndarray | None = None
    val_losses: list = dataclasses.field(default_factory=list)
    best_steps: int | None = None
    stopped: bool = False

    @property
    def network(self):
        """The assembled single-hidden-layer network as a shared torch `Network` (float32)."""
        return self.assembled()

    def assembled(self, dtype: torch.dtype = torch.float32):
        """The assembled network in ``dtype``; float64 keeps the learner's weights exactly."""
        net = build(self.spec, 0).to(dtype)
        return from_numpy(net, [{"W": self.W1, "b": self.b1}, {"W": self.W_out, "b": self.b_out}])


@register("gradient_boosting")
@dataclass(frozen=True, kw_only=True)
class GradientBoosting(Learner):
    """GBNN. Each update runs its share of the T = n_units / units_per_step boosting steps."""

    n_units: int = 200                 # T*J, the reference's total_nn
    # Departures from the reference package's defaults (J 1, shrinkage 1.0, subsample 0.5, 200
    # iterations, alpha 1e-4), chosen on the validation splits of digits, breast_cancer, wine and
    # diabetes (docs/gradient_boosting.md, "Choosing the defaults"): 4 units per step, shrinkage 0.5,
    # 100 iterations, every weak learner fit on all rows with an L2 penalty of 1.0. With alpha 1e-4
    # each 4-unit step over-fits its residuals and diabetes collapses (train R^2 0.96, test ~0.07).
    units_per_step: int = 4            # J, num_nn_step
    shrinkage: float = 0.5             # eta
    subsample: float = 1.0
    activation: str = "sigmoid"        # the reference's 'logistic'
    solver: str = "lbfgs"              # lbfgs | adam: the weak learner's full-batch optimiser (numba)
    step_iterations: int = 100         # max_iter of each weak learner
    # L-BFGS stops earlier by scipy L-BFGS-B's rules, as the reference's sklearn weak learners do:
    # relative loss decrease <= step_ftol (scipy's default), or max |gradient| <= step_gtol
    # (sklearn's tol; the reference passes 0). On digits the reference's weak learners stop after
    # 56 iterations on average, not 200. 0 turns a rule off.
    step_ftol: float = SCIPY_FTOL
    step_gtol: float = 0.0
    # How each weak learner starts: "glorot" draws all its weights and biases U(+-sqrt(f/(fan_in +
    # fan_out))), f = 2 for sigmoid, 6 otherwise -- scikit-learn's MLP init, which the reference's
    # weak learners get; "network" starts its input weights from the shared network's rows
    # m*J..(m+1)*J (as a backprop run on that network with that seed) and its output weights
    # U(+-1/sqrt(J)). On digits (J=1, 10 seeds, `python benchmarks/bench_gbnn.py`) "network"
    # reached 94.07 %, "glorot" 96.35 %, the package 95.42 % on its 7 seeds that did not collapse
    # (benchmarks/results/gbnn.md).
    step_init: str = "glorot"
    step_lr: float = 0.01              # Adam's learning rate (solver=adam)
    step_l2: float = 1.0               # sklearn's alpha
    rho_max: float = 100.0             # |rho| clip (the spec's pitfall: f ~ 0 divides by ~0)
    # Early stopping of the boosting (a departure from the reference, which always grows n_units):
    # validation_fraction > 0 holds out that share of the training rows (stratified for
    # classification), boosts on the rest, stops after n_iter_no_change steps without a lower
    # held-out loss and predicts with the best number of steps -- scikit-learn's GradientBoosting*
    # `validation_fraction` / `n_iter_no_change`. On small noisy sets the full growth overfits
    # (diabetes: train R^2 0.96, test R^2 ~0.07 over 5 seeds).
    validation_fraction: float = 0.0
    n_iter_no_change: int = 10
    n_active_units: int | None = None  # truncate to the first units at test time (multiple of J)
    curve_points: int = 10             # points of the accuracy-vs-units curve (block_metrics)
    features: str = "none"             # none | frozen: boost on the run network's frozen blocks
    pretrain_epochs: int = 0           # backprop epochs of the feature network before freezing
    pretrain_lr: float = 1e-3
    kernel: str = "numba"              # numba | numpy (the plain reference, for benchmarks)

    tags = Tags(locality="global", crosses_blocks=True, backend="numpy", full_batch=True,
                supports_conv=True, tasks=("classification", "regression"))
    contract_params: ClassVar[dict] = {"n_units": 40, "units_per_step": 4, "step_iterations": 100,
                                       "step_lr": 0.05, "subsample": 1.0}
    contract_epochs: ClassVar[int] = 5
    # tuned by experiments.tune, the same trial budget for every learner
    search_space: ClassVar[dict] = {"shrinkage": Uniform(0.1, 1.0), "step_l2": LogUniform(1e-3, 10.0),
                                       "units_per_step": Choice((1, 2, 4, 8))}

    # -------------------------------------------------------------- init

    constraints = {"activation": tuple(ACTIVATIONS), "features": FEATURES, "step_init": STEP_INITS, "solver": SOLVERS,
                   "kernel": KERNELS, "units_per_step": Range(1), "n_iter_no_change": Range(1),
                   "validation_fraction": Range(0, 1), "subsample": Range(0, 1, low_open=True),
                   "shrinkage": Range(0, low_open=True), "step_ftol": Range(0), "step_gtol": Range(0)}

    def _check(self):
        """What the declared constraints cannot say: bounds that join two fields, an open upper end."""
        J = self.units_per_step
        if self.n_units < J or self.n_units % J:
            raise ConfigError(f"gradient_boosting.n_units={self.n_units} must be a positive multiple of "
                              f"units_per_step={J}")
        if self.validation_fraction >= 1:
            raise ConfigError(f"gradient_boosting.validation_fraction={self.validation_fraction} must be below 1 "
                              "(0: no early stopping)")
        if self.n_active_units is not None and (self.n_active_units < 0 or self.n_active_units % J):
            raise ConfigError(f"gradient_boosting.n_active_units={self.n_active_units} must be None or a "
                              f"non-negative multiple of units_per_step={J}")

    @property
    def n_steps(self) -> int:
        return self.n_units // self.units_per_step

    def init(self, network, data_info, seed):
        self._check()
        features = None
        if self.features == "frozen":
            features = network
            in_shape = network.block_shapes[-1] if network.n_blocks else tuple(data_info.input_shape)
        else:
            in_shape = tuple(data_info.input_shape)
        kind = loss_kind(data_info.task, data_info.n_classes)
        spec = dataclasses.replace(network.spec, kind="mlp", channels=(), pool=(), batch_norm=False,
                                   input_shape=(int(np.prod(in_shape)),), widths=(self.n_units,),
                                   activation=self.activation, bias=True, head=True)
        hidden, head = to_numpy(build(spec, seed))
        n_out = head["W"].shape[0]
        # the whole budget of steps spread evenly over the updates the fit loop will make
        total = max(int(data_info.total_steps), 1)
        marks = [round(self.n_steps * (u + 1) / total) for u in range(total)]
        schedule = tuple(b - a for a, b in zip([0] + marks[:-1], marks))
        return GBNNState(W1=hidden["W"].copy(), b1=hidden["b"].copy(), W_out=np.zeros((n_out, self.n_units)),
                         b_out=np.zeros(n_out), bias_steps=np.zeros((self.n_steps, n_out)), F0=np.zeros(0),
                         kind=kind, spec=spec, rng=np.random.default_rng([int(seed), 7]),
                         features=features, schedule=schedule)

    # -------------------------------------------------------------- mapping F <-> network outputs

    @staticmethod
    def _out_map(kind: str, n_out: int) -> np.ndarray:
        """M (n_out, dim F): outputs = M F. Binary scores are [-F, F], so softmax = sigmoid(2F)."""
        if kind == "binary":
            return np.array([[-1.0], [1.0]]) if n_out == 2 else np.ones((1, 1))
        return np.eye(n_out)

    @staticmethod
    def decision(kind: str, scores: np.ndarray) -> np.ndarray:
        """F from the network outputs (inverse of `_out_map`)."""
        if kind == "binary" and scores.shape[1] == 2:
            return 0.5 * (scores[:, 1:] - scores[:, :1])
        return scores

    # -------------------------------------------------------------- forward

    def _inputs(self, state, x) -> np.ndarray:
        if state.features is not None:
            with torch.no_grad():
                h = x
                for block in state.features.blocks:
                    h = block(h)
                x = h
        return x.reshape(len(x), -1).detach().cpu().numpy().astype(np.float64)

    def _scores(self, state, X: np.ndarray, n_units: int | None = None) -> np.ndarray:
        n = state.W1.shape[0] if n_units is None else n_units
        H = activate_numpy(X @ state.W1[:n].T + state.b1[:n], ACTIVATIONS[self.activation])
        bias = state.b_out - state.bias_steps[n // self.units_per_step:].sum(0)
        return H @ state.W_out[:, :n].T + bias

    # -------------------------------------------------------------- training

    def update(self, state, batch):
        x, y = batch
        if state.features is not None and self.pretrain_epochs and not state.pretrained:
            self._pretrain(state, x, y)
        state.pretrained = True
        X = self._inputs(state, x)
        y = y.detach().cpu().numpy()
        y = y.astype(np.float64) if state.kind == "squared" else y.astype(np.int64)
        n_out = state.W_out.shape[0]
        M = self._out_map(state.kind, n_out)
        if self.validation_fraction > 0:
            if state.val_rows is None:
                state.val_rows = self._validation_rows(state, y)
            keep = np.ones(len(y), bool)
            keep[state.val_rows] = False
            X_val, y_val, X, y = X[~keep], y[~keep], X[keep], y[keep]
        if state.n_steps_done == 0 and state.step == 0:
            state.F0 = initial_F(state.kind, y, n_out)
            state.b_out += M @ state.F0
        n_todo = state.schedule[state.step] if state.step < len(state.schedule) else 0
        n_todo = 0 if state.stopped else min(n_todo, self.n_steps - state.n_steps_done)
        F = self.decision(state.kind, self._scores(state, X))
        if self.validation_fraction > 0 and state.F_val is None:
            state.F_val = self.decision(state.kind, self._scores(state, X_val))
        rhos, iterations = [], []
        for _ in range(n_todo):
            F, n_iter = self._boost_once(state, X, y, F, M)
            rhos.append(state.steps[-1][4])
            iterations.append(n_iter)
            if self.validation_fraction > 0 and self._track_validation(state, X_val, y_val):
                break
        state.step += 1
        finished = state.stopped or state.step >= len(state.schedule) or state.n_steps_done == self.n_steps
        if state.best_steps is not None and finished and state.n_steps_done > state.best_steps:
            self._keep_best_steps(state)
            state.stopped = True
        J, d, n_out = self.units_per_step, X.shape[1], F.shape[1]
        n_sub = max(1, int(round(self.subsample * len(X))))
        # ~6 flops per weight and sample per iteration (forward + backward; line searches not counted),
        # plus the full-data forward of each step
        flops = (6.0 * sum(iterations) * n_sub + n_todo * 2.0 * len(X)) * (d * J + J * n_out)
        metrics = {"loss": mean_loss(state.kind, y, F), "n_units": float(state.n_steps_done * J), "flops": flops}
        if state.val_losses:
            metrics["holdout_loss"] = float(state.val_losses[-1])
        if rhos:
            metrics["rho"] = float(np.mean(rhos))
            metrics["step_iterations_run"] = float(np.mean(iterations))
        return state, metrics

    def _boost_once(self, state, X, y, F, M):
        """One boosting step m: fit h_m to the residuals on a subsample, add rho_m h_m (spec loop).
        Returns the new F and the weak learner's iteration count."""
        m, J = state.n_steps_done, self.units_per_step
        r = residuals(state.kind, y, F)
        n = len(X)
        n_sub = max(1, int(round(self.subsample * n)))
        pick = np.sort(state.rng.choice(n, n_sub, replace=False)) if n_sub < n else np.arange(n)
        units = slice(m * J, (m + 1) * J)
        W1, b1, W2, b2 = self._weak_learner_start(state, units, X.shape[1], r.shape[1])
        numba = self.kernel == "numba"
        args = (np.ascontiguousarray(X[pick]), np.ascontiguousarray(r[pick]), W1, b1, W2, b2,
                ACTIVATIONS[self.activation], int(self.step_iterations))
        if self.solver == "lbfgs":
            fit = fit_step_lbfgs if numba else fit_step_lbfgs_numpy
            _, n_iter = fit(*args, LBFGS_MEMORY, float(self.step_l2), float(self.step_ftol), float(self.step_gtol))
        else:
            fit = fit_step_adam if numba else fit_step_adam_numpy
            _, n_iter = fit(*args, float(self.step_lr), float(self.step_l2))
        H = activate_numpy(X @ W1.T + b1, ACTIVATIONS[self.activation])
        f = H @ W2.T + b2                                    # h_m on ALL training points
        rho = self.shrinkage * float(np.clip(newton_step(state.kind, y, r, f, F), -self.rho_max, self.rho_max))
        # assemble (the reference's to_NN): output columns rho M W2, bias += rho M b2
        state.W1[units], state.b1[units] = W1, b1
        state.W_out[:, units] = rho * (M @ W2)
        state.bias_steps[m] = rho * (M @ b2)
        state.b_out += state.bias_steps[m]
        state.steps.append((W1, b1, W2, b2, rho))
        state.n_steps_done += 1
        return F + rho * f, n_iter

    def _weak_learner_start(self, state, units: slice, d: int, K: int):
        """Initial (W1, b1, W2, b2) of a J-unit weak learner with d inputs and K outputs."""
        J = units.stop - units.start
        if self.step_init == "glorot":
            factor = 2.0 if self.activation == "sigmoid" else 6.0
            hidden, out = math.sqrt(factor / (d + J)), math.sqrt(factor / (J + K))
            return (state.rng.uniform(-hidden, hidden, (J, d)), state.rng.uniform(-hidden, hidden, J),
                    state.rng.uniform(-out, out, (K, J)), state.rng.uniform(-out, out, K))
        bound = 1.0 / math.sqrt(J)                           # torch's default init of a J-input layer
        return (state.W1[units].copy(), state.b1[units].copy(), state.rng.uniform(-bound, bound, size=(K, J)),
                np.zeros(K))

    def _validation_rows(self, state, y) -> np.ndarray:
        """Row indices held out for early stopping: a seeded, stratified (classification) share."""
        n = len(y)
        n_val = max(1, int(round(self.validation_fraction * n)))
        if state.kind == "squared":
            return np.sort(state.rng.choice(n, n_val, replace=False))
        rows = []
        for c in np.unique(y):                               # each class in proportion, at least one
            members = np.flatnonzero(y == c)
            take = min(len(members) - 1, max(1, int(round(self.validation_fraction * len(members)))))
            rows.append(state.rng.choice(members, take, replace=False) if take > 0 else [])
        return np.sort(np.concatenate(rows).astype(int))

    def _track_validation(self, state, X_val, y_val) -> bool:
        """Add the newest step to the held-out F; True once n_iter_no_change steps brought no better loss."""
        W1, b1, W2, b2, rho = state.steps[-1]
        f = activate_numpy(X_val @ W1.T + b1, ACTIVATIONS[self.activation]) @ W2.T + b2
        state.F_val = state.F_val + rho * f
        state.val_losses.append(mean_loss(state.kind, y_val, state.F_val))
        best = int(np.argmin(state.val_losses))
        state.best_steps = best + 1
        state.stopped = len(state.val_losses) - 1 - best >= self.n_iter_no_change
        return state.stopped

    def _keep_best_steps(self, state) -> None:
        """Drop the steps after the best held-out loss: their units go back to output weight 0 (as
        never-trained units), so the assembled network still equals the boosted prediction."""
        J = self.units_per_step
        for m in range(state.best_steps, state.n_steps_done):
            state.W_out[:, m * J:(m + 1) * J] = 0.0
            state.b_out -= state.bias_steps[m]
            state.bias_steps[m] = 0.0
        del state.steps[state.best_steps:]
        state.n_steps_done = state.best_steps

    def _pretrain(self, state, x, y):
        """Backprop on the run's network (blocks + head) before its blocks are frozen as features."""
        net = state.features
        gen = torch.Generator().manual_seed(int(state.rng.integers(2**31)))
        opt = torch.optim.Adam(net.parameters(), lr=self.pretrain_lr)
        net.train()
        for _ in range(self.pretrain_epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 32):
                idx = order[i:i + 32]
                out = net(x[idx])
                loss = (torch.nn.functional.mse_loss(out, y[idx].reshape(out.shape)) if state.kind == "squared"
                        else torch.nn.functional.cross_entropy(out, y[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)

    # -------------------------------------------------------------- prediction

    def predict(self, state, x):
        n = None
        if self.n_active_units is not None:
            n = min(self.n_active_units, state.n_steps_done * self.units_per_step)
        scores = self._scores(state, self._inputs(state, x), n)
        return torch.from_numpy(scores).float()

    def boosted_decision(self, state, x) -> np.ndarray:
        """F_0 + sum_m rho_m h_m(x) from the stored partial models (the un-assembled prediction)."""
        X = self._inputs(state, x)
        F = np.tile(state.F0, (len(X), 1))
        act = ACTIVATIONS[self.activation]
        for W1, b1, W2, b2, rho in state.steps:
            F = F + rho * (activate_numpy(X @ W1.T + b1, act) @ W2.T + b2)
        return F

    def units_curve(self, state, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(units, score) of the first t*J units for t = 1..T trained: accuracy, or R^2 for regression."""
        X = self._inputs(state, x)
        J, T = self.units_per_step, state.n_steps_done
        if T == 0:
            return np.zeros(0, int), np.zeros(0)
        H = activate_numpy(X @ state.W1[:T * J].T + state.b1[:T * J], ACTIVATIONS[self.activation])
        per_step = np.einsum("nmj,omj->mno", H.reshape(len(X), T, J), state.W_out[:, :T * J].reshape(-1, T, J))
        per_step += state.bias_steps[:T, None, :]
        base = state.b_out - state.bias_steps[:T].sum(0)
        scores = base + np.cumsum(per_step, 0)               # (T, n, n_out)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if state.kind == "squared":
            target = y.reshape(len(y), -1)
            mse = ((scores - target) ** 2).mean((1, 2))
            score = 1 - mse / max(target.var(0).mean(), 1e-12)
        else:
            score = (scores.argmax(2) == y).mean(1)
        return (np.arange(1, T + 1) * J), score

    def block_metrics(self, state, x, y):
        """The accuracy-vs-units curve (R^2 for regression) at ``curve_points`` truncations.

        Recorded as ``block_units_accuracy(epoch, block)``: entry k is the score of the first
        round((k+1)/P * trained) unit blocks, i.e. the "block" axis indexes truncation points.
        """
        units, score = self.units_curve(state, x, y)
        if not len(units):
            return {}
        P = min(self.curve_points, len(units))
        idx = [int(round((k + 1) / P * len(units))) - 1 for k in range(P)]
        name = "units_r2" if state.kind == "squared" else "units_accuracy"
        return {name: [float(score[i]) for i in idx], "units": [float(units[i]) for i in idx]}

    def block_parameters(self, state):
        params = [[torch.from_numpy(state.W1), torch.from_numpy(state.b1)],
                  [torch.from_numpy(state.W_out), torch.from_numpy(state.b_out)]]
        if state.features is not None:
            params = [list(b.parameters()) for b in state.features.blocks] + params
        return params
