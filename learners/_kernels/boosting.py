r"""Fitting one GBNN weak learner: a J-unit, one-hidden-layer regressor trained by full-batch Adam.

The weak learner of boosting step m is

.. math::  h(x) = W_2\, g(W_1 x + b_1) + b_2,\qquad W_1 \in R^{J\times d},\ W_2 \in R^{K\times J},

fitted to the pseudo-residuals :math:`R \in R^{n\times K}` of the subsample by minimising
sklearn's ``MLPRegressor`` objective

.. math::  \mathcal{L} = \frac{1}{2n}\sum_i \lVert h(x_i) - r_i\rVert^2
           + \frac{\lambda}{2n}\left(\lVert W_1\rVert^2 + \lVert W_2\rVert^2\right).

``fit_step_adam`` (numba) and ``fit_step_adam_numpy`` (the plain reference) run the same
Adam iterations (Kingma & Ba, beta1=0.9, beta2=0.999, eps=1e-8, bias-corrected) and update
``W1, b1, W2, b2`` in place; they agree to rounding (tests/learners/test_gradient_boosting.py).
Activation codes: 0 logistic, 1 tanh, 2 relu, 3 identity.
"""
from __future__ import annotations

import numpy as np
from numba import njit

ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "identity": 3}
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@njit(cache=True, fastmath=True, inline="always")
def _act(z, code):
    if code == 0:
        if z >= 0:
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z)
        return e / (1.0 + e)
    if code == 1:
        return np.tanh(z)
    if code == 2:
        return z if z > 0 else 0.0
    return z


@njit(cache=True, fastmath=True, inline="always")
def _act_grad(z, a, code):
    """g'(z) given z and a = g(z)."""
    if code == 0:
        return a * (1.0 - a)
    if code == 1:
        return 1.0 - a * a
    if code == 2:
        return 1.0 if z > 0 else 0.0
    return 1.0


@njit(cache=True, fastmath=True, inline="always")
def _adam(p, g, m, v, lr, c1, c2):
    for i in range(p.size):
        m.flat[i] = BETA1 * m.flat[i] + (1 - BETA1) * g.flat[i]
        v.flat[i] = BETA2 * v.flat[i] + (1 - BETA2) * g.flat[i] * g.flat[i]
        p.flat[i] -= lr * (m.flat[i] / c1) / (np.sqrt(v.flat[i] / c2) + EPS)


@njit(cache=True, fastmath=True)
def fit_step_adam(X, R, W1, b1, W2, b2, act, n_iter, lr, l2):
    """Full-batch Adam on the weak learner's objective (module docstring); returns the final loss."""
    n, d = X.shape
    J = W1.shape[0]
    K = W2.shape[0]
    Z = np.empty((n, J))
    H = np.empty((n, J))
    E = np.empty((n, K))
    dZ = np.empty((n, J))
    gW1 = np.empty_like(W1)
    gb1 = np.empty_like(b1)
    gW2 = np.empty_like(W2)
    gb2 = np.empty_like(b2)
    mW1, vW1 = np.zeros_like(W1), np.zeros_like(W1)
    mb1, vb1 = np.zeros_like(b1), np.zeros_like(b1)
    mW2, vW2 = np.zeros_like(W2), np.zeros_like(W2)
    mb2, vb2 = np.zeros_like(b2), np.zeros_like(b2)
    scale = 1.0 / n
    loss = 0.0
    for it in range(n_iter + 1):
        loss = 0.0
        for i in range(n):
            for j in range(J):
                s = b1[j]
                for f in range(d):
                    s += X[i, f] * W1[j, f]
                Z[i, j] = s
                H[i, j] = _act(s, act)
            for k in range(K):
                s = b2[k]
                for j in range(J):
                    s += H[i, j] * W2[k, j]
                e = s - R[i, k]
                E[i, k] = e
                loss += e * e
        reg = 0.0
        for x in W1.flat:
            reg += x * x
        for x in W2.flat:
            reg += x * x
        loss = 0.5 * scale * (loss + l2 * reg)
        if it == n_iter:
            break
        gW2[:] = l2 * scale * W2
        gb2[:] = 0.0
        gW1[:] = l2 * scale * W1
        gb1[:] = 0.0
        for i in range(n):
            for k in range(K):
                e = E[i, k] * scale
                gb2[k] += e
                for j in range(J):
                    gW2[k, j] += e * H[i, j]
            for j in range(J):
                s = 0.0
                for k in range(K):
                    s += E[i, k] * W2[k, j]
                dZ[i, j] = s * scale * _act_grad(Z[i, j], H[i, j], act)
        for i in range(n):
            for j in range(J):
                dz = dZ[i, j]
                gb1[j] += dz
                for f in range(d):
                    gW1[j, f] += dz * X[i, f]
        c1 = 1.0 - BETA1 ** (it + 1)
        c2 = 1.0 - BETA2 ** (it + 1)
        _adam(W1, gW1, mW1, vW1, lr, c1, c2)
        _adam(b1, gb1, mb1, vb1, lr, c1, c2)
        _adam(W2, gW2, mW2, vW2, lr, c1, c2)
        _adam(b2, gb2, mb2, vb2, lr, c1, c2)
    return loss


def activate_numpy(Z, act):
    if act == 0:
        return 0.5 * (1.0 + np.tanh(0.5 * Z))   # the logistic function, overflow-free
    if act == 1:
        return np.tanh(Z)
    if act == 2:
        return np.maximum(Z, 0.0)
    return Z


def _act_grad_numpy(Z, H, act):
    if act == 0:
        return H * (1.0 - H)
    if act == 1:
        return 1.0 - H * H
    if act == 2:
        return (Z > 0).astype(Z.dtype)
    return np.ones_like(Z)


def fit_step_adam_numpy(X, R, W1, b1, W2, b2, act, n_iter, lr, l2):
    """The plain numpy reference of `fit_step_adam` (same iterations, matrix form)."""
    n = X.shape[0]
    params = [W1, b1, W2, b2]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    loss = 0.0
    for it in range(n_iter + 1):
        Z = X @ W1.T + b1
        H = activate_numpy(Z, act)
        E = H @ W2.T + b2 - R
        loss = 0.5 / n * (np.sum(E * E) + l2 * (np.sum(W1 * W1) + np.sum(W2 * W2)))
        if it == n_iter:
            break
        E = E / n
        dZ = (E @ W2) * _act_grad_numpy(Z, H, act)
        grads = [dZ.T @ X + l2 / n * W1, dZ.sum(0), E.T @ H + l2 / n * W2, E.sum(0)]
        c1, c2 = 1.0 - BETA1 ** (it + 1), 1.0 - BETA2 ** (it + 1)
        for p, g, (m, v) in zip(params, grads, moments):
            m *= BETA1
            m += (1 - BETA1) * g
            v *= BETA2
            v += (1 - BETA2) * g * g
            p -= lr * (m / c1) / (np.sqrt(v / c2) + EPS)
    return loss
