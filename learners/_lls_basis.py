"""The fixed periodic basis of LLS, built once per (rows, dim, waveform, frequencies) and cached.

LLS-DNN's ``generate_frequency_matrix`` (models/layers/lls_layers.py) writes row c as

    B[c, t] = sin(f_c * t),   f_c = linspace(min_freq, max_freq, rows)[c],   t = 0, 1, ..., dim - 1

in float32, with frequencies in radians per sample far above pi, so the rows alias into
deterministic, pseudo-random-looking patterns. Its waveform named "cosine" is this sine;
``square`` is ``sign(B)``; ``dct`` is the version left commented out in the reference,
``cos(pi * f_c * (t + 0.5) / dim)``. The reference rebuilds the basis on the GPU at every
call; here it is computed once on the CPU and copied into each block's head as a buffer.
"""
from __future__ import annotations

import functools
import math

import torch

from core.errors import ConfigError

WAVEFORMS = ("sin", "square", "dct")


def periodic_basis(rows: int, dim: int, waveform: str = "sin", min_freq: float = 50.0,
                   max_freq: float = 512.0) -> torch.Tensor:
    """The (rows, dim) float32 basis; the same arguments give a bit-identical tensor (a fresh copy)."""
    if waveform not in WAVEFORMS:
        raise ConfigError(f"waveform={waveform!r} is not known; allowed: {', '.join(WAVEFORMS)} "
                          "(the reference code's 'cosine' is 'sin')")
    if rows < 1 or dim < 1:
        raise ConfigError(f"the LLS basis needs rows >= 1 and dim >= 1, got rows={rows}, dim={dim}")
    return _cached(int(rows), int(dim), waveform, float(min_freq), float(max_freq)).clone()


@functools.lru_cache(maxsize=128)
def _cached(rows: int, dim: int, waveform: str, min_freq: float, max_freq: float) -> torch.Tensor:
    # float32 throughout, as the reference: at f*t ~ 1e5 rad the float32 product is what sets
    # the phase, so a float64 basis would be a different (equally arbitrary) pattern.
    freqs = torch.linspace(min_freq, max_freq, rows, dtype=torch.float32).unsqueeze(1)
    t = torch.arange(dim, dtype=torch.float32).unsqueeze(0)
    if waveform == "dct":
        return torch.cos(math.pi * freqs * (t + 0.5) / dim)
    basis = torch.sin(freqs * t)
    return torch.sign(basis) if waveform == "square" else basis
