r"""Particle swarm kernels: the swarm move and the batched fitness of a neuron's particles.

Swarm move (canonical PSO, Kennedy & Eberhart with inertia; constriction values of Clerc & Kennedy):

.. math::  v \leftarrow \omega v + c_1 r_1 \odot (p^{best} - p) + c_2 r_2 \odot (g - p),\quad
           v \leftarrow \mathrm{clip}(v, -v_{max}, v_{max}),\quad p \leftarrow p + v,

with :math:`r_1, r_2 \sim U[0,1]^D` drawn outside (so numba and numpy see the same numbers), or, for
the whole-network move, inside the loop by a counter-based generator that numpy reproduces.

Neuron fitness: particle :math:`i` is a candidate :math:`(w_i, c_i)` for the incoming weights and
bias of neuron :math:`j` of layer :math:`\ell`. With the layer input :math:`A` (n x fan_in) cached,
the neuron's candidate output is :math:`a_i = g(A w_i + c_i)`; every other neuron keeps its
output, so the next pre-activation changes by a rank-one term,

.. math::  Z'_i = Z + (a_i - a^{old})\, u^\top,

where :math:`u` is column :math:`j` of the next layer's weights (for an output neuron,
:math:`g` is the identity, :math:`Z` the logits and :math:`u = e_j`). ``rank1_fitness`` returns
the mean cross-entropy of :math:`Z'_i` when :math:`Z` are the logits; ``rank1_next`` returns
:math:`g_{next}(Z'_i)` for deeper networks, whose remaining layers are matrix products.
Each kernel has a plain numpy reference (``*_numpy``) that the tests compare it with.
Activation codes: 0 logistic, 1 tanh, 2 relu, 3 identity, 4 leaky relu (slope 0.01), 5 gelu (tanh form).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "identity": 3, "leaky_relu": 4, "gelu": 5}


@njit(cache=True, fastmath=True)
def _act(z, code):
    if code == 0:
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    if code == 1:
        return math.tanh(z)
    if code == 2:
        return z if z > 0 else 0.0
    if code == 4:
        return z if z > 0 else 0.01 * z
    if code == 5:
        return 0.5 * z * (1.0 + math.tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
    return z


def activate_numpy(Z, code):
    if code == 0:
        return 0.5 * (1.0 + np.tanh(0.5 * Z))
    if code == 1:
        return np.tanh(Z)
    if code == 2:
        return np.maximum(Z, 0.0)
    if code == 4:
        return np.where(Z > 0, Z, 0.01 * Z)
    if code == 5:
        return 0.5 * Z * (1.0 + np.tanh(0.7978845608028654 * (Z + 0.044715 * Z ** 3)))
    return Z


# ------------------------------------------------------------------ swarm move

@njit(cache=True, fastmath=True, inline="always")
def _velocity(v, p, pb, g, r1, r2, w, c1, c2, vmax):
    """One coordinate's new velocity, clamped to [-vmax, vmax]."""
    v = w * v + c1 * r1 * (pb - p) + c2 * r2 * (g - p)
    if v > vmax:
        return vmax
    if v < -vmax:
        return -vmax
    return v


@njit(cache=True, fastmath=True)
def pso_move(P, V, pbest, gbest, r1, r2, w, c1, c2, vmax):
    """In place: the velocity and position update above; ``gbest`` (D,) is shared by all particles."""
    k, D = P.shape
    for i in range(k):
        for d in range(D):
            v = _velocity(V[i, d], P[i, d], pbest[i, d], gbest[d], r1[i, d], r2[i, d], w, c1, c2, vmax)
            V[i, d] = v
            P[i, d] += v


def pso_move_numpy(P, V, pbest, gbest, r1, r2, w, c1, c2, vmax):
    V[:] = np.clip(w * V + c1 * r1 * (pbest - P) + c2 * r2 * (gbest - P), -vmax, vmax)
    P += V


# The whole-network move draws its 2 k D uniforms inside the loop: r1, r2 of element (i, d) come
# from one SplitMix64 output, mix(seed + (i D + d + 1) * golden), split into two 24-bit halves.
# SplitMix64 (Steele, Lea & Flood 2014) is exactly this counter-plus-finaliser construction, so
# each element's draw is independent of the order of the loop, the loop vectorises, and the
# numpy reference below reproduces it bit for bit. Drawing them with numpy's generator took
# 1.1 ms of a 15 ms iteration (100 x 2410 weights, benchmarks/bench_pso.py).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U24 = 1.0 / 16777216.0


@njit(cache=True, inline="always")
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, fastmath=True)
def pso_move_hashed(P, V, pbest, gbest, seed, w, c1, c2, vmax):
    """`pso_move` with r1, r2 drawn in the loop from ``seed`` (see above)."""
    k, D = P.shape
    s = np.uint64(seed)
    for i in range(k):
        for d in range(D):
            z = _mix64(s + np.uint64(i * D + d + 1) * _GOLDEN)
            r1 = np.int64(z >> np.uint64(40)) * _U24
            r2 = np.int64((z >> np.uint64(16)) & np.uint64(0xFFFFFF)) * _U24
            v = _velocity(V[i, d], P[i, d], pbest[i, d], gbest[d], r1, r2, w, c1, c2, vmax)
            V[i, d] = v
            P[i, d] += v


def hashed_uniforms_numpy(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The r1, r2 that `pso_move_hashed` draws for ``seed`` (plain numpy, wrapping uint64 arithmetic)."""
    k, D = shape
    z = np.uint64(seed) + np.arange(1, k * D + 1, dtype=np.uint64).reshape(k, D) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) * _U24,
            ((z >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float64) * _U24)


def pso_move_hashed_numpy(P, V, pbest, gbest, seed, w, c1, c2, vmax):
    r1, r2 = hashed_uniforms_numpy(seed, P.shape)
    pso_move_numpy(P, V, pbest, gbest, r1, r2, w, c1, c2, vmax)


# ------------------------------------------------------------------ neuron fitness

@njit(cache=True, fastmath=True)
def rank1_fitness(A, P, act, a_old, Z, u, y):
    """Mean cross-entropy of the logits Z + (g(A w_i + c_i) - a_old) u^T for each particle i."""
    n, fan_in = A.shape
    k = P.shape[0]
    C = Z.shape[1]
    out = np.empty(k)
    row = np.empty(C)
    for i in range(k):
        total = 0.0
        for s in range(n):
            z = P[i, fan_in]
            for f in range(fan_in):
                z += A[s, f] * P[i, f]
            delta = _act(z, act) - a_old[s]
            m = -np.inf
            for c in range(C):
                row[c] = Z[s, c] + delta * u[c]
                if row[c] > m:
                    m = row[c]
            acc = 0.0
            for c in range(C):
                acc += math.exp(row[c] - m)
            total += m + math.log(acc) - row[y[s]]
        out[i] = total / n
    return out


def rank1_fitness_numpy(A, P, act, a_old, Z, u, y):
    a = activate_numpy(P[:, :-1] @ A.T + P[:, -1:], act)            # (k, n)
    logits = Z[None] + (a - a_old)[:, :, None] * u[None, None, :]    # (k, n, C)
    return cross_entropy_rows_numpy(logits, y)


@njit(cache=True, fastmath=True)
def rank1_next(A, P, act, a_old, Z, u, act_next):
    """g_next(Z + (g(A w_i + c_i) - a_old) u^T) for each particle i, shape (k, n, width)."""
    n, fan_in = A.shape
    k = P.shape[0]
    W = Z.shape[1]
    out = np.empty((k, n, W))
    for i in range(k):
        for s in range(n):
            z = P[i, fan_in]
            for f in range(fan_in):
                z += A[s, f] * P[i, f]
            delta = _act(z, act) - a_old[s]
            for c in range(W):
                out[i, s, c] = _act(Z[s, c] + delta * u[c], act_next)
    return out


def rank1_next_numpy(A, P, act, a_old, Z, u, act_next):
    a = activate_numpy(P[:, :-1] @ A.T + P[:, -1:], act)
    return activate_numpy(Z[None] + (a - a_old)[:, :, None] * u[None, None, :], act_next)


@njit(cache=True, fastmath=True)
def cross_entropy_rows(logits, y):
    """Mean cross-entropy over samples for each leading index: logits (k, n, C) -> (k,)."""
    k, n, C = logits.shape
    out = np.empty(k)
    for i in range(k):
        total = 0.0
        for s in range(n):
            m = -np.inf
            for c in range(C):
                if logits[i, s, c] > m:
                    m = logits[i, s, c]
            acc = 0.0
            for c in range(C):
                acc += math.exp(logits[i, s, c] - m)
            total += m + math.log(acc) - logits[i, s, y[s]]
        out[i] = total / n
    return out


def cross_entropy_rows_numpy(logits, y):
    m = logits.max(2, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(2)) + m[..., 0]
    picked = np.take_along_axis(logits, y[None, :, None].astype(np.int64).repeat(len(logits), 0), 2)[..., 0]
    return (logz - picked).mean(1)


# ------------------------------------------------------------------ a whole neuron-wise sweep
#
# Layout shared with learners/particle_swarm.py: ``sizes`` are the layer widths (input first);
# layer l's weights are rows [w_j, b_j] of length D_l = sizes[l] + 1, packed in ``wflat`` from
# ``woff[l]``; neuron (l, j)'s k particles (each of length D_l) start at ``poff[l] + j k D_l`` in
# ``P``, ``V``, ``PB`` and its personal-best fitnesses at ``(noff[l] + j) k`` in ``PBf``; its
# random numbers for iteration t are r1, r2 = the two k D_l blocks starting at
# ``roff[l] + (j iters + t) 2 k D_l`` of ``R``.

@njit(cache=True, fastmath=True)
def _layer_forward(Ain, wflat, off, din, dout, act, Zout, Aout):
    n = Ain.shape[0]
    D = din + 1
    for s in range(n):
        for o in range(dout):
            t = wflat[off + o * D + din]
            for f in range(din):
                t += Ain[s, f] * wflat[off + o * D + f]
            Zout[s, o] = t
            Aout[s, o] = _act(t, act)


@njit(cache=True, fastmath=True)
def _mean_ce(logits, y):
    n, C = logits.shape
    total = 0.0
    for s in range(n):
        m = -np.inf
        for c in range(C):
            if logits[s, c] > m:
                m = logits[s, c]
        acc = 0.0
        for c in range(C):
            acc += math.exp(logits[s, c] - m)
        total += m + math.log(acc) - logits[s, y[s]]
    return total / n


@njit(cache=True, fastmath=True)
def _particle_loss(p, base, l, j, A, Z, sizes, acts, wflat, woff, y, bufs_z, bufs_a):
    """Loss of the network with neuron (l, j) set to p[base:base + D_l], all else as cached."""
    L = sizes.shape[0] - 1
    n = A[0].shape[0]
    din = sizes[l]
    Ain = A[l]
    # the neuron's candidate output minus its current output
    delta = bufs_a[0][:, 0]
    for s in range(n):
        t = p[base + din]
        for f in range(din):
            t += Ain[s, f] * p[base + f]
        delta[s] = _act(t, acts[l]) - A[l + 1][s, j]
    if l == L - 1:
        out = bufs_z[L - 1]
        out[:, :] = Z[L - 1]
        for s in range(n):
            out[s, j] += delta[s]
        return _mean_ce(out, y)
    # rank-one change of layer l+1, then the remaining layers in full
    dnext = sizes[l + 2]
    D1 = sizes[l + 1] + 1
    h = bufs_a[l + 1]
    zn = bufs_z[l + 1]
    for s in range(n):
        for o in range(dnext):
            zn[s, o] = Z[l + 1][s, o] + delta[s] * wflat[woff[l + 1] + o * D1 + j]
            h[s, o] = _act(zn[s, o], acts[l + 1])
    for m in range(l + 2, L):
        _layer_forward(bufs_a[m - 1], wflat, woff[m], sizes[m], sizes[m + 1], acts[m], bufs_z[m], bufs_a[m])
    return _mean_ce(bufs_z[L - 1], y)


@njit(cache=True, fastmath=True)
def neuron_sweep(X, y, sizes, acts, wflat, woff, P, V, PB, PBf, poff, noff, order_l, order_j, R, roff,
                 k, iters, w, c1, c2, vmax, reevaluate):
    """One pass over the neurons in ``order``, all in place; returns the final batch loss.

    For each neuron: re-score its personal bests (if ``reevaluate``), then ``iters`` times move
    the swarm towards (pbest, gbest = the neuron's current weights), score every particle with
    `_particle_loss`, update personal bests, and accept the best particle as the neuron's weights
    only if it lowers the loss of the assembled network (then refresh the cached activations).
    """
    L = sizes.shape[0] - 1
    n = X.shape[0]
    A = [X]
    Z = []
    bufs_z = []
    bufs_a = []
    for l in range(L):
        Z.append(np.empty((n, sizes[l + 1])))
        A.append(np.empty((n, sizes[l + 1])))
        bufs_z.append(np.empty((n, sizes[l + 1])))
        bufs_a.append(np.empty((n, max(sizes[l + 1], 1))))
        _layer_forward(A[l], wflat, woff[l], sizes[l], sizes[l + 1], acts[l], Z[l], A[l + 1])
    current = _mean_ce(Z[L - 1], y)
    fit = np.empty(k)
    evaluations = 0
    for v in range(order_l.shape[0]):
        l = order_l[v]
        j = order_j[v]
        D = sizes[l] + 1
        pb = poff[l] + j * k * D
        fb = (noff[l] + j) * k
        g = wflat[woff[l] + j * D:woff[l] + (j + 1) * D].copy()
        need = reevaluate
        for i in range(k):
            if not np.isfinite(PBf[fb + i]):
                need = True
        if need:
            for i in range(k):
                PBf[fb + i] = _particle_loss(PB, pb + i * D, l, j, A, Z, sizes, acts, wflat, woff, y,
                                             bufs_z, bufs_a)
            evaluations += k
        for t in range(iters):
            rb = roff[l] + (j * iters + t) * 2 * k * D
            for i in range(k):
                for d in range(D):
                    q = pb + i * D + d
                    vel = (w * V[q] + c1 * R[rb + i * D + d] * (PB[q] - P[q])
                           + c2 * R[rb + k * D + i * D + d] * (g[d] - P[q]))
                    if vel > vmax:
                        vel = vmax
                    elif vel < -vmax:
                        vel = -vmax
                    V[q] = vel
                    P[q] += vel
            best = 0
            for i in range(k):
                fit[i] = _particle_loss(P, pb + i * D, l, j, A, Z, sizes, acts, wflat, woff, y, bufs_z, bufs_a)
                if fit[i] < PBf[fb + i]:
                    PBf[fb + i] = fit[i]
                    for d in range(D):
                        PB[pb + i * D + d] = P[pb + i * D + d]
                if fit[i] < fit[best]:
                    best = i
            evaluations += k
            if fit[best] < current:
                current = fit[best]
                for d in range(D):
                    g[d] = P[pb + best * D + d]
                    wflat[woff[l] + j * D + d] = g[d]
                # refresh the cache: neuron j of layer l, then every later layer
                for s in range(n):
                    tt = g[D - 1]
                    for f in range(D - 1):
                        tt += A[l][s, f] * g[f]
                    Z[l][s, j] = tt
                    A[l + 1][s, j] = _act(tt, acts[l])
                for m in range(l + 1, L):
                    _layer_forward(A[m], wflat, woff[m], sizes[m], sizes[m + 1], acts[m], Z[m], A[m + 1])
    return current, evaluations
