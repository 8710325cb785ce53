"""Seeded two-dimensional toy sets for quick checks and classroom figures."""
from __future__ import annotations

import numpy as np


def blobs(n, rng, noise=1.0, n_classes=3, dim=2):
    """Isotropic Gaussian blobs; centres drawn once from the seed in [-5, 5]^dim."""
    centres = rng.uniform(-5, 5, size=(n_classes, dim))
    y = rng.integers(0, n_classes, size=n)
    return centres[y] + noise * rng.standard_normal((n, dim)), y


def moons(n, rng, noise=0.2):
    """Two interleaving half circles (scikit-learn's make_moons geometry)."""
    y = rng.integers(0, 2, size=n)
    t = rng.uniform(0, np.pi, size=n)
    x = np.where(y[:, None] == 0,
                 np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return x + noise * rng.standard_normal((n, 2)), y


def circles(n, rng, noise=0.1, factor=0.5):
    """A small circle inside a large one."""
    y = rng.integers(0, 2, size=n)
    t = rng.uniform(0, 2 * np.pi, size=n)
    r = np.where(y == 1, factor, 1.0)
    return r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + noise * rng.standard_normal((n, 2)), y


def xor(n, rng, noise=0.35):
    """Four Gaussian blobs (sigma ``noise``) at (+-1, +-1); the class is the XOR of the signs."""
    corner = rng.integers(0, 4, size=n)
    signs = np.stack([np.where(corner & 1, 1.0, -1.0), np.where(corner & 2, 1.0, -1.0)], 1)
    y = ((signs[:, 0] > 0) ^ (signs[:, 1] > 0)).astype(np.int64)
    return signs + noise * rng.standard_normal((n, 2)), y


def spirals(n, rng, noise=0.2, n_classes=2, turns=1.5):
    """Interleaved Archimedean spirals, one arm per class."""
    y = rng.integers(0, n_classes, size=n)
    r = rng.uniform(0.05, 1.0, size=n)
    theta = 2 * np.pi * turns * r + 2 * np.pi * y / n_classes
    x = 3 * r[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    return x + noise * rng.standard_normal((n, 2)) * r[:, None], y


GENERATORS = {"blobs": blobs, "moons": moons, "circles": circles, "xor": xor, "spirals": spirals}
