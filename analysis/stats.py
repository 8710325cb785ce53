"""Means and confidence intervals over seeds."""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats


def mean_and_interval(da: xr.DataArray, dim: str = "seed", level: float = 0.95,
                      bounds: tuple[float, float] | None = None):
    """Mean over ``dim`` and a Student-t interval at ``level`` (zero width for one seed), clipped to
    ``bounds`` where the quantity has them (an accuracy lies in [0, 1]; with three seeds a wide
    Student-t interval can reach past either end)."""
    if dim not in da.dims:
        return da, da, da
    n = da.count(dim)
    mean = da.mean(dim)
    sem = da.std(dim, ddof=1) / np.sqrt(n)
    t = xr.apply_ufunc(lambda k: stats.t.ppf(0.5 + level / 2, np.maximum(k - 1, 1)), n)
    half = (t * sem).fillna(0.0)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = lo.clip(*bounds), hi.clip(*bounds)
    return mean, lo, hi


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range a metric can take, for `mean_and_interval`: accuracy in [0, 1]; R^2 and losses open."""
    return (0.0, 1.0) if metric == "accuracy" else None
