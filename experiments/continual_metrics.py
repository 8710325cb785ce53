"""Continual-learning metrics from the accuracy matrix, recorded with every continual run.

``A[i, j]`` is the test accuracy on task j after training task i (tasks 0..K-1),
the variable ``task_accuracy(trained_task, eval_task)`` of a continual run.

- ACC (average accuracy after the last task)::

      ACC = 1/K * sum_{j=0}^{K-1} A[K-1, j]

- BWT (backward transfer, GPM/HLOP convention; negative = forgetting)::

      BWT = 1/(K-1) * sum_{j=0}^{K-2} (A[K-1, j] - A[j, j])

- forgetting (Chaudhry et al. 2018: drop from the best accuracy a task ever had
  after it was learned to its final accuracy)::

      F = 1/(K-1) * sum_{j=0}^{K-2} max_{l in [j, K-2]} (A[l, j] - A[K-1, j])

With K = 1, BWT and F are NaN (nothing can be forgotten). Every function works
on arrays with extra leading dimensions (learner, seed, ...).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

TRAINED, EVAL = "trained_task", "eval_task"


def acc(matrix: xr.DataArray) -> xr.DataArray:
    """Mean accuracy over all tasks after the last task."""
    return matrix.isel({TRAINED: -1}).mean(EVAL)


def bwt(matrix: xr.DataArray) -> xr.DataArray:
    """Mean change, from just after learning to the end, of every task but the last."""
    k = matrix.sizes[TRAINED]
    if k < 2:
        return xr.full_like(acc(matrix), np.nan)
    final = matrix.isel({TRAINED: -1, EVAL: slice(0, k - 1)})
    diag = _diagonal(matrix).isel({EVAL: slice(0, k - 1)})
    return (final - diag).mean(EVAL)


def forgetting(matrix: xr.DataArray) -> xr.DataArray:
    """Mean drop from each task's best accuracy after learning it to its final accuracy."""
    k = matrix.sizes[TRAINED]
    if k < 2:
        return xr.full_like(acc(matrix), np.nan)
    trained = xr.DataArray(np.arange(k), dims=TRAINED)
    evaluated = xr.DataArray(np.arange(k), dims=EVAL)
    # A[l, j] for j <= l <= K-2: after task j was learned, before the last task
    best = matrix.where((trained >= evaluated) & (trained <= k - 2)).max(TRAINED)
    final = matrix.isel({TRAINED: -1})
    return (best - final).isel({EVAL: slice(0, k - 1)}).mean(EVAL)


def _diagonal(matrix: xr.DataArray) -> xr.DataArray:
    index = xr.DataArray(np.arange(matrix.sizes[TRAINED]), dims=EVAL)
    return matrix.isel({TRAINED: index, EVAL: index})


def continual_metrics(matrix: xr.DataArray) -> xr.Dataset:
    """ACC, BWT and forgetting as one Dataset (variables ``acc``, ``bwt``, ``forgetting``)."""
    out = xr.Dataset({"acc": acc(matrix), "bwt": bwt(matrix), "forgetting": forgetting(matrix)})
    return out.drop_vars([c for c in (TRAINED, EVAL) if c in out.coords])
