"""Figures from collected results. Each function takes data and an ``ax`` and returns the ax."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files, never windows: runs headless in CI and on clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.stats import mean_and_interval  # noqa: E402

_PALETTE = plt.get_cmap("tab20").colors


def learner_color(name: str) -> tuple:
    """A fixed colour per learner name, the same in every figure."""
    from learners import available_learners
    names = available_learners()
    i = names.index(name) if name in names else abs(hash(name)) % len(_PALETTE)
    return _PALETTE[(2 * i) % len(_PALETTE)] if i < len(_PALETTE) // 2 else _PALETTE[(2 * i + 1) % len(_PALETTE)]


def _per_learner(da: xr.DataArray):
    if "learner" in da.dims:
        for name in da.learner.values:
            yield str(name), da.sel(learner=name)
    else:
        yield str(da.coords["learner"].item()) if "learner" in da.coords else "run", da


def learning_curves(ds: xr.Dataset, ax, *, metric="accuracy", split="test"):
    """Mean over seeds with a 95% band, one line per learner."""
    da = ds[metric].sel(split=split) if "split" in ds[metric].dims else ds[metric]
    for name, sub in _per_learner(da):
        mean, lo, hi = mean_and_interval(sub, "seed")
        epochs = sub["epoch"].values
        color = learner_color(name)
        ax.plot(epochs, mean, label=name, color=color, lw=2)
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def final_accuracy(ds: xr.Dataset, ax, *, split="test"):
    """Final-epoch accuracy per learner: mean over seeds with a 95% interval, seeds as dots."""
    da = final_epoch(ds["accuracy"].sel(split=split))
    for i, (name, sub) in enumerate(_per_learner(da)):
        mean, lo, hi = mean_and_interval(sub, "seed")
        ax.bar(i, float(mean), color=learner_color(name), alpha=0.8)
        ax.errorbar(i, float(mean), yerr=[[float(mean - lo)], [float(hi - mean)]], color="k", capsize=4)
        vals = np.atleast_1d(sub.values)
        ax.scatter(np.full(len(vals), i), vals, color="k", s=10, zorder=3)
        ax.text(i, float(mean), f"{float(mean):.3f}", ha="center", va="bottom", fontsize=8)
    names = [n for n, _ in _per_learner(da)]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"final {split} accuracy")
    finite = da.values[np.isfinite(da.values)]
    if finite.size:
        ax.set_ylim(max(0.0, finite.min() - 0.1), min(1.0, finite.max() + 0.05))
    ax.grid(axis="y", alpha=0.3)
    return ax


def final_epoch(da: xr.DataArray) -> xr.DataArray:
    """The last recorded epoch of each run (runs may stop early, leaving NaN at the end)."""
    valid = da.notnull()
    last = (valid * np.arange(da.sizes["epoch"])).max("epoch")  # index of the last finite epoch
    return da.isel(epoch=last.astype(int)).where(valid.any("epoch"))


def comparison_figure(ds: xr.Dataset, path, *, title=""):
    """Learning curves and final test accuracy side by side, saved as PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    learning_curves(ds, axes[0])
    final_accuracy(ds, axes[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
