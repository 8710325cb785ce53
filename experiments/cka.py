"""Representation similarity: linear CKA of each block's activity to a backprop-trained twin.

Linear centred kernel alignment (Kornblith et al. 2019, eq. 5), for activity matrices
X (n, p) and Y (n, q) over the same n samples, each column-centred::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for representations equal up to rotation and isotropic scaling, invariant to both, and
0 for orthogonal ones. `CKAToBackprop` is a callback that, at the end of a fit, trains a
backprop twin (same network spec, seed, data and loop; backprop's defaults) and records ``block_cka_backprop(epoch, block)`` at the last epoch:
block i of the learner against block i of the twin, on a fixed sample of the test split.
Learners without a `networks.Network` chain (NoProp) are skipped with the reason kept in
``skipped``; numpy learners are read through a torch copy of their weights.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from experiments.callbacks import Callback

VARIABLE = "cka_backprop"


def linear_cka(x, y) -> float:
    """Linear CKA between activity matrices ``x`` (n, p) and ``y`` (n, q); NaN if either is constant."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples: got {len(x)} and {len(y)} rows")
    x = x - x.mean(0)
    y = y - y.mean(0)
    # the n x n Gram form is cheaper when features outnumber samples
    if x.shape[1] + y.shape[1] > 2 * len(x):
        kx, ky = x @ x.T, y @ y.T
        cross, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        cross, nx, ny = (y.T @ x).norm() ** 2, (x.T @ x).norm(), (y.T @ y).norm()
    if nx == 0 or ny == 0:
        return float("nan")
    return float(cross / (nx * ny))


def block_activity(learner, state, x: torch.Tensor, input_shape, n_classes) -> list[torch.Tensor]:
    """Each block's output for ``x`` (eval mode, no autograd), through a copy of the state's network."""
    from experiments.alignment import network_input, reference_network
    net = reference_network(learner, state, input_shape, n_classes)
    net.eval()
    with torch.no_grad():
        return [h.reshape(len(h), -1) for h in net.forward_blocks(network_input(learner, state, net, x))]


def cka_per_block(acts_a: list[torch.Tensor], acts_b: list[torch.Tensor]) -> list[float]:
    """CKA of block i of ``a`` to block i of ``b`` (NaN where one has fewer blocks)."""
    return [linear_cka(a, b) if i < len(acts_b) else float("nan")
            for i, (a, b) in enumerate(zip(acts_a, acts_b + [None] * len(acts_a)))]


class CKAToBackprop(Callback):
    """At the end of a fit: ``block_cka_backprop`` at the last epoch (see the module docstring)."""

    def __init__(self, n_samples: int = 1000, twin_params: dict | None = None):
        self.n_samples, self.twin_params = n_samples, twin_params
        self.skipped: str | None = None
        self.values: list[float] | None = None

    def on_fit_end(self, run):
        from experiments.alignment import NotApplicable, preserved_random_state
        if run.status == "diverged" or not run.records:
            return
        data = run.data
        x = torch.from_numpy(np.ascontiguousarray(data.x_test[:self.n_samples])).to(run.loop.device)
        try:
            ours = block_activity(run.learner, run.state, x, run.info.input_shape, run.info.n_classes)
        except NotApplicable as err:
            self.skipped = str(err)
            return
        with preserved_random_state():
            twin = train_twin(run, self.twin_params)
        theirs = block_activity(twin.learner, twin.state, x, run.info.input_shape, run.info.n_classes)
        self.values = cka_per_block(ours, theirs)
        # the fit saves once more after on_fit_end, so this lands in results.nc at the last epoch
        run.records[-1].setdefault("block", {})[VARIABLE] = self.values


@dataclasses.dataclass
class _Twin:
    learner: object
    state: object


def train_twin(run, params: dict | None = None) -> _Twin:
    """Backprop on the run's network spec, data, seed and loop (no progress bar, no observers)."""
    from experiments.fit import fit
    from learners import make_learner
    learner = make_learner("backprop", **(params or {}))   # its class defaults, which learner/backprop.yaml states
    loop = dataclasses.replace(run.loop, progress=False, early_stopping=None,
                               **{k: False for k in ("alignment", "cka") if hasattr(run.loop, k)})
    result = fit(learner, run.network.spec, run.data, loop=loop, seed=run.seed)
    return _Twin(learner, result.state)
