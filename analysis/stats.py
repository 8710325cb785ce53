"""Means and confidence intervals over seeds."""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats


def mean_and_interval(da: xr.DataArray, dim: str = "seed", level: float = 0.95):
    """Mean over ``dim`` and a Student-t interval at ``level`` (zero width for one seed)."""
    if dim not in da.dims:
        return da, da, da
    n = da.count(dim)
    mean = da.mean(dim)
    sem = da.std(dim, ddof=1) / np.sqrt(n)
    t = xr.apply_ufunc(lambda k: stats.t.ppf(0.5 + level / 2, np.maximum(k - 1, 1)), n)
    half = (t * sem).fillna(0.0)
    return mean, mean - half, mean + half
