r"""Fitting one GBNN weak learner: a J-unit, one-hidden-layer regressor, full batch.

The weak learner of boosting step m is

.. math::  h(x) = W_2\, g(W_1 x + b_1) + b_2,\qquad W_1 \in R^{J\times d},\ W_2 \in R^{K\times J},

fitted to the pseudo-residuals :math:`R \in R^{n\times K}` of the subsample by minimising
sklearn's ``MLPRegressor`` objective

.. math::  \mathcal{L} = \frac{1}{2n}\sum_i \lVert h(x_i) - r_i\rVert^2
           + \frac{\lambda}{2n}\left(\lVert W_1\rVert^2 + \lVert W_2\rVert^2\right).

Two optimisers, each in numba with a plain numpy reference (``*_numpy``) running the same
iterations, updating ``W1, b1, W2, b2`` in place (compared in tests/learners/test_gradient_boosting.py):

- ``fit_step_lbfgs``: L-BFGS, two-loop recursion over the last m pairs
  :math:`s_k = \theta_{k+1}-\theta_k,\ y_k = \nabla\mathcal{L}_{k+1}-\nabla\mathcal{L}_k`,
  initial scaling :math:`\gamma = s^\top y / y^\top y`, backtracking until
  :math:`\mathcal{L}(\theta + t d) \le \mathcal{L}(\theta) + 10^{-4} t\, \nabla\mathcal{L}^\top d`.
  It stops early by scipy L-BFGS-B's rules (relative decrease ``ftol``, gradient ``gtol``), as
  the reference package's sklearn weak learners do.
- ``fit_step_adam``: Adam (Kingma & Ba, beta1=0.9, beta2=0.999, eps=1e-8, bias-corrected).
Both return (final loss, iterations run). Activation codes: 0 logistic, 1 tanh, 2 relu, 3 identity.
"""
from __future__ import annotations

import numpy as np
from numba import njit

ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "identity": 3}
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@njit(cache=True, fastmath=True)
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


@njit(cache=True, fastmath=True)
def _act_grad(z, a, code):
    """g'(z) given z and a = g(z)."""
    if code == 0:
        return a * (1.0 - a)
    if code == 1:
        return 1.0 - a * a
    if code == 2:
        return 1.0 if z > 0 else 0.0
    return 1.0


@njit(cache=True, fastmath=True)
def _activate_rows(Z, H, code):
    for j in range(Z.shape[0]):
        for i in range(Z.shape[1]):
            H[j, i] = _act(Z[j, i], code)


@njit(cache=True, fastmath=True)
def _loss_grad(theta, X, XT, RT, J, K, act, l2, grad, Z, H, E, dZ, gW1):
    """The objective of the module docstring and its gradient (into ``grad``), for the packed
    parameters theta = [W1 (J x d, row-major), b1, W2 (K x J, row-major), b2].

    Samples run along the last axis (``XT`` d x n, residuals ``RT`` K x n, scratch ``Z, H, dZ``
    J x n and ``E`` K x n) so that every elementwise loop is contiguous and vectorises, and the two
    products with the data are BLAS calls (W1 XT and dZ X). The former row-at-a-time loop nest was
    about 2x slower per call; tests/learners/test_gradient_boosting.py checks this against numpy."""
    n, d = X.shape
    o_b1 = J * d
    o_W2 = o_b1 + J
    o_b2 = o_W2 + K * J
    scale = 1.0 / n
    W1 = theta[:o_b1].reshape(J, d)
    np.dot(W1, XT, Z)
    for j in range(J):
        b = theta[o_b1 + j]
        for i in range(n):
            Z[j, i] += b
    _activate_rows(Z, H, act)
    loss = 0.0
    for k in range(K):
        b = theta[o_b2 + k]
        for i in range(n):
            E[k, i] = b - RT[k, i]
        for j in range(J):
            w = theta[o_W2 + k * J + j]
            for i in range(n):
                E[k, i] += w * H[j, i]
        for i in range(n):
            loss += E[k, i] * E[k, i]
    reg = 0.0
    for p in range(o_b1):
        reg += theta[p] * theta[p]
    for p in range(o_W2, o_b2):
        reg += theta[p] * theta[p]
    loss = 0.5 * scale * (loss + l2 * reg)
    for j in range(J):
        for i in range(n):
            dZ[j, i] = 0.0
    for k in range(K):
        s = 0.0
        for i in range(n):
            s += E[k, i]
        grad[o_b2 + k] = s * scale
        for j in range(J):
            w = theta[o_W2 + k * J + j]
            s = 0.0
            for i in range(n):
                s += E[k, i] * H[j, i]
                dZ[j, i] += E[k, i] * w
            grad[o_W2 + k * J + j] = scale * (s + l2 * w)
    for j in range(J):
        s = 0.0
        for i in range(n):
            dZ[j, i] *= scale * _act_grad(Z[j, i], H[j, i], act)
            s += dZ[j, i]
        grad[o_b1 + j] = s
    np.dot(dZ, X, gW1)
    for j in range(J):
        for f in range(d):
            grad[j * d + f] = gW1[j, f] + l2 * scale * theta[j * d + f]
    return loss


@njit(cache=True)
def _workspace(n, d, J, K):
    return np.empty((J, n)), np.empty((J, n)), np.empty((K, n)), np.empty((J, n)), np.empty((J, d))


def _pack(W1, b1, W2, b2):
    return np.concatenate((W1.ravel(), b1, W2.ravel(), b2))


def _unpack(theta, W1, b1, W2, b2):
    a, J, K = W1.size, b1.size, b2.size
    W1[...] = theta[:a].reshape(W1.shape)
    b1[...] = theta[a:a + J]
    W2[...] = theta[a + J:a + J + K * J].reshape(W2.shape)
    b2[...] = theta[a + J + K * J:]


def fit_step_adam(X, R, W1, b1, W2, b2, act, n_iter, lr, l2):
    """Full-batch Adam on the weak learner's objective (module docstring), in place; returns
    (final loss, ``n_iter``). The loop is `_adam_loop` (numba)."""
    theta = _pack(W1, b1, W2, b2)
    loss = _adam_loop(*_layouts(X, R), theta, W1.shape[0], W2.shape[0], act, int(n_iter), float(lr), float(l2))
    _unpack(theta, W1, b1, W2, b2)
    return loss, int(n_iter)


def _layouts(X, R):
    """(X, X^T, R^T) as contiguous float64: the kernels read the data both ways (see `_loss_grad`)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    return X, np.ascontiguousarray(X.T), np.ascontiguousarray(np.asarray(R, dtype=np.float64).T)


@njit(cache=True, fastmath=True)
def _adam_loop(X, XT, RT, theta, J, K, act, n_iter, lr, l2):
    n, d = X.shape
    P = theta.shape[0]
    Z, H, E, dZ, gW1 = _workspace(n, d, J, K)
    grad = np.empty(P)
    m = np.zeros(P)
    v = np.zeros(P)
    loss = 0.0
    for it in range(n_iter + 1):
        loss = _loss_grad(theta, X, XT, RT, J, K, act, l2, grad, Z, H, E, dZ, gW1)
        if it == n_iter:
            break
        c1 = 1.0 - BETA1 ** (it + 1)
        c2 = 1.0 - BETA2 ** (it + 1)
        for p in range(P):
            m[p] = BETA1 * m[p] + (1 - BETA1) * grad[p]
            v[p] = BETA2 * v[p] + (1 - BETA2) * grad[p] * grad[p]
            theta[p] -= lr * (m[p] / c1) / (np.sqrt(v[p] / c2) + EPS)
    return loss


# scipy's L-BFGS-B default ftol (factr 1e7 times the float64 epsilon), which sklearn's
# solver='lbfgs' -- and so the reference package's weak learners -- stop on.
SCIPY_FTOL = float(1e7 * np.finfo(float).eps)


def fit_step_lbfgs(X, R, W1, b1, W2, b2, act, n_iter, memory, l2, ftol=0.0, gtol=0.0):
    """L-BFGS (two-loop recursion, ``memory`` pairs, backtracking Armijo line search from step 1)
    on the weak learner's objective, like sklearn's ``solver='lbfgs'``, in place; returns
    (final loss, iterations run). The loop is `_lbfgs_loop` (numba).

    Stops after ``n_iter`` iterations or earlier by scipy L-BFGS-B's two rules: the relative
    decrease (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ``ftol``, or max |gradient| <= ``gtol``
    (sklearn's ``tol``). 0 turns a rule off."""
    theta = _pack(W1, b1, W2, b2)
    loss, iters = _lbfgs_loop(*_layouts(X, R), theta, W1.shape[0], W2.shape[0], act, int(n_iter), int(memory),
                              float(l2), float(ftol), float(gtol))
    _unpack(theta, W1, b1, W2, b2)
    return loss, iters


@njit(cache=True)
def _dot(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True)
def _max_abs(a):
    m = 0.0
    for i in range(a.shape[0]):
        m = max(m, abs(a[i]))
    return m


@njit(cache=True)
def _lbfgs_loop(X, XT, RT, theta, J, K, act, n_iter, memory, l2, ftol, gtol):
    n, d = X.shape
    P = theta.shape[0]
    grad = np.empty(P)
    trial = np.empty(P)
    gtrial = np.empty(P)
    q = np.empty(P)
    Z, H, E, dZ, gW1 = _workspace(n, d, J, K)
    S = np.zeros((memory, P))
    Y = np.zeros((memory, P))
    rho = np.zeros(memory)
    alpha = np.zeros(memory)
    loss = _loss_grad(theta, X, XT, RT, J, K, act, l2, grad, Z, H, E, dZ, gW1)
    stored = 0
    newest = -1
    iters = 0
    for it in range(n_iter):
        if gtol > 0 and _max_abs(grad) <= gtol:
            break
        # two-loop recursion: q = H grad, the direction is -q
        for p in range(P):
            q[p] = grad[p]
        for back in range(stored):
            i = (newest - back + memory) % memory
            alpha[i] = rho[i] * _dot(S[i], q)
            for p in range(P):
                q[p] -= alpha[i] * Y[i, p]
        if stored > 0:
            gamma = _dot(S[newest], Y[newest]) / _dot(Y[newest], Y[newest])
        else:
            gamma = 1.0 / max(1.0, np.sqrt(_dot(grad, grad)))
        for p in range(P):
            q[p] *= gamma
        for fwd in range(stored):
            i = (newest - stored + 1 + fwd + memory) % memory
            beta = rho[i] * _dot(Y[i], q)
            for p in range(P):
                q[p] += S[i, p] * (alpha[i] - beta)
        slope = -_dot(grad, q)
        if slope >= 0:                      # not a descent direction: restart from the gradient
            for p in range(P):
                q[p] = grad[p] * gamma
            slope = -_dot(grad, q)
            stored = 0
        if slope == 0.0:
            break
        step = 1.0
        new_loss = loss
        accepted = False
        for _ in range(30):
            for p in range(P):
                trial[p] = theta[p] - step * q[p]
            new_loss = _loss_grad(trial, X, XT, RT, J, K, act, l2, gtrial, Z, H, E, dZ, gW1)
            if new_loss <= loss + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        newest = (newest + 1) % memory
        for p in range(P):
            S[newest, p] = trial[p] - theta[p]
            Y[newest, p] = gtrial[p] - grad[p]
        sy = _dot(S[newest], Y[newest])
        if sy > 1e-12:
            rho[newest] = 1.0 / sy
            stored = min(stored + 1, memory)
        else:
            newest = (newest - 1 + memory) % memory
        for p in range(P):
            theta[p] = trial[p]
            grad[p] = gtrial[p]
        decrease = (loss - new_loss) / max(abs(loss), abs(new_loss), 1.0)
        loss = new_loss
        iters += 1
        if decrease <= ftol:
            break
    return loss, iters


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
    n_iter = int(n_iter)
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
    return loss, n_iter


def _loss_grad_numpy(theta, X, R, J, K, act, l2):
    n, d = X.shape
    W1, b1, W2, b2 = (theta[:J * d].reshape(J, d), theta[J * d:J * d + J],
                      theta[J * d + J:J * d + J + K * J].reshape(K, J), theta[J * d + J + K * J:])
    Z = X @ W1.T + b1
    H = activate_numpy(Z, act)
    E = H @ W2.T + b2 - R
    loss = 0.5 / n * (np.sum(E * E) + l2 * (np.sum(W1 * W1) + np.sum(W2 * W2)))
    E = E / n
    dZ = (E @ W2) * _act_grad_numpy(Z, H, act)
    grad = np.concatenate([(dZ.T @ X + l2 / n * W1).ravel(), dZ.sum(0), (E.T @ H + l2 / n * W2).ravel(), E.sum(0)])
    return loss, grad


def fit_step_lbfgs_numpy(X, R, W1, b1, W2, b2, act, n_iter, memory, l2, ftol=0.0, gtol=0.0):
    """The plain numpy reference of `fit_step_lbfgs` (the same iterations and stopping rules)."""
    J, K = W1.shape[0], W2.shape[0]
    theta = np.concatenate([W1.ravel(), b1, W2.ravel(), b2])
    loss, grad = _loss_grad_numpy(theta, X, R, J, K, act, l2)
    S, Y, rho = [], [], []
    iters = 0
    for _ in range(n_iter):
        if gtol > 0 and np.max(np.abs(grad)) <= gtol:
            break
        q = grad.copy()
        alphas = []
        for s, y, r in zip(reversed(S), reversed(Y), reversed(rho)):
            a = r * (s @ q)
            alphas.append(a)
            q -= a * y
        gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0 / max(1.0, np.sqrt(grad @ grad))
        q *= gamma
        for (s, y, r), a in zip(zip(S, Y, rho), reversed(alphas)):
            q += s * (a - r * (y @ q))
        direction = -q
        slope = grad @ direction
        if slope >= 0:
            direction = -grad * gamma
            slope = grad @ direction
            S, Y, rho = [], [], []
        if slope == 0.0:
            break
        step = 1.0
        for _ in range(30):
            trial = theta + step * direction
            new_loss, new_grad = _loss_grad_numpy(trial, X, R, J, K, act, l2)
            if new_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s, y = trial - theta, new_grad - grad
        if s @ y > 1e-12:
            S.append(s)
            Y.append(y)
            rho.append(1.0 / (s @ y))
            if len(S) > memory:
                S.pop(0), Y.pop(0), rho.pop(0)
        decrease = (loss - new_loss) / max(abs(loss), abs(new_loss), 1.0)
        theta, grad, loss = trial, new_grad, new_loss
        iters += 1
        if decrease <= ftol:
            break
    a = J * W1.shape[1]
    W1[:] = theta[:a].reshape(W1.shape)
    b1[:] = theta[a:a + J]
    W2[:] = theta[a + J:a + J + K * J].reshape(W2.shape)
    b2[:] = theta[a + J + K * J:]
    return loss, iters
