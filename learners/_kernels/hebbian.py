r"""Oja subspace iterations of HLOP's lateral neurons on one layer's batch of inputs.

The lateral neurons of a layer hold rows :math:`H = [H_{old}; H_{new}]` (M x N).
The old rows are frozen; only the k new rows learn. For a batch X (B x N) the
residual of the old rows, :math:`X_{res} = X - X H_{old}^T H_{old}`, is fixed, so
each of the ``n_iter`` iterations computes

.. math::

    Y &= X H_{new}^T                                   \quad (B\times k)\\
    \Delta H_{new} &= \tfrac{1}{B}\, Y^T (X_{res} - Y H_{new})
                   = \langle y x^T\rangle - \langle y y^T\rangle H \ \text{(new rows)}\\
    \Delta H_{new} &\leftarrow \mathrm{clip}(\Delta H_{new}, -c, c)\\
    m &\leftarrow \mu\, m + (1-\mu)\, \Delta H_{new}\\
    H_{new} &\leftarrow H_{new} + \eta\, m

which is Oja's subspace rule with the reconstruction from all rows
(pkuxmq/HLOP-SNN ``hlop_module.py``: clamp c = 10, mu = 0.9, 5 iterations).

``oja_subspace_iterations`` (numba) and ``oja_subspace_iterations_numpy`` (the
plain reference) update ``h_new`` and ``mom`` in place and agree to rounding
(tests/learners/test_hebbian_projection.py). Opt in with ``kernel: numba``: it beat the
torch version clearly only at tiny sizes (~6x at fan-in 64, where torch's per-op overhead
dominates), by ~5% at the permuted-MNIST sizes on an idle core (benchmarks/results/hebbian.md),
and in the experiments on the shared machine it was several times slower, because its
``np.dot`` runs on scipy's OpenBLAS, whose threads ignore torch's thread setting and
oversubscribe a loaded machine. So torch is the default.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def oja_subspace_iterations(x, x_res, h_new, mom, lr, momentum, clamp, n_iter):
    """In place on float32 C-contiguous ``h_new`` (k x N) and ``mom`` (k x N)."""
    b = x.shape[0]
    inv_b = np.float32(1.0 / b)
    lr32, mu, one_minus_mu, c = np.float32(lr), np.float32(momentum), np.float32(1.0 - momentum), np.float32(clamp)
    for _ in range(n_iter):
        y = np.dot(x, h_new.T)
        r = x_res - np.dot(y, h_new)
        dh = np.dot(y.T, r)
        k, n = dh.shape
        for i in range(k):
            for j in range(n):
                d = dh[i, j] * inv_b
                if d > c:
                    d = c
                elif d < -c:
                    d = -c
                m = mu * mom[i, j] + one_minus_mu * d
                mom[i, j] = m
                h_new[i, j] += lr32 * m


def oja_subspace_iterations_numpy(x, x_res, h_new, mom, lr, momentum, clamp, n_iter):
    """The plain numpy reference of `oja_subspace_iterations` (same arguments, in place)."""
    for _ in range(n_iter):
        y = x @ h_new.T
        dh = np.clip(y.T @ (x_res - y @ h_new) / x.shape[0], -clamp, clamp)
        mom *= momentum
        mom += (1 - momentum) * dh
        h_new += lr * mom
