"""Continual-learning figures and tables from the accuracy matrix ``task_accuracy(trained_task,
eval_task)``; the metrics themselves (ACC, BWT, forgetting, with their formulas) are computed when a
run is recorded, in `experiments.continual_metrics`, and re-exported here."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.stats import mean_and_interval  # noqa: E402
from experiments.continual_metrics import EVAL, TRAINED, acc, bwt, continual_metrics, forgetting  # noqa: E402,F401


# ---------------------------------------------------------------- figures

def accuracy_matrix_heatmap(matrix: xr.DataArray, ax, *, title: str = "", vmin: float = 0.0):
    """``matrix(trained_task, eval_task)`` (averaged over any other dims) as an annotated heatmap."""
    other = [d for d in matrix.dims if d not in (TRAINED, EVAL)]
    m = matrix.mean(other) if other else matrix
    values = 100 * m.transpose(TRAINED, EVAL).values
    image = ax.imshow(values, vmin=100 * vmin, vmax=100, cmap="viridis", aspect="equal")
    k_rows, k_cols = values.shape
    if k_rows <= 12:
        for i in range(k_rows):
            for j in range(k_cols):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="w" if values[i, j] < 100 * (vmin + 0.6 * (1 - vmin)) else "k")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_xticks(range(k_cols))
    ax.set_yticks(range(k_rows))
    if title:
        ax.set_title(title, fontsize=9)
    return image


def acc_bwt_bars(metrics: xr.Dataset, ax, *, dim: str = "learner", order=None):
    """ACC and BWT (percent) per ``dim`` value: mean over seeds with a 95% interval, seeds as dots."""
    names = list(order) if order is not None else [str(v) for v in np.atleast_1d(metrics[dim].values)]
    width = 0.38
    for offset, key, color in ((-width / 2, "acc", "tab:blue"), (width / 2, "bwt", "tab:red")):
        for i, name in enumerate(names):
            sub = 100 * metrics[key].sel({dim: name}) if dim in metrics[key].dims else 100 * metrics[key]
            mean, lo, hi = mean_and_interval(sub, "seed")
            ax.bar(i + offset, float(mean), width, color=color, alpha=0.8, label=key.upper() if i == 0 else None)
            ax.errorbar(i + offset, float(mean), yerr=[[float(mean - lo)], [float(hi - mean)]], color="k",
                        capsize=3)
            vals = np.atleast_1d(sub.values)
            ax.scatter(np.full(len(vals), i + offset), vals, color="k", s=8, zorder=3)
            ax.text(i + offset, float(mean), f"{float(mean):.1f}", ha="center",
                    va="bottom" if float(mean) >= 0 else "top", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("percent")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def continual_figure(ds: xr.Dataset, path, *, title: str = "", order=None):
    """One heatmap per learner and the ACC/BWT bars; ``ds`` as `analysis.collect` returns it."""
    matrix = ds["task_accuracy"]
    names = list(order) if order is not None else (
        [str(v) for v in matrix["learner"].values] if "learner" in matrix.dims else [str(ds["learner"].item())])
    metrics = continual_metrics(matrix)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.4 * (len(names) + 1) + 1, 3.6))
    image = None
    for ax, name in zip(axes[:-1], names):
        sub = matrix.sel(learner=name) if "learner" in matrix.dims else matrix
        m = continual_metrics(sub.mean("seed") if "seed" in sub.dims else sub)
        image = accuracy_matrix_heatmap(sub, ax, title=f"{name}\nACC {100 * float(m.acc):.1f}  "
                                        f"BWT {100 * float(m.bwt):.1f}")
    for ax in axes[1:-1]:
        ax.set_ylabel("")
    if "learner" not in metrics.dims:
        metrics = metrics.expand_dims(learner=names)
    acc_bwt_bars(metrics, axes[-1], order=names)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:-1]), shrink=0.8, label="test accuracy (%)")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def continual_table(ds: xr.Dataset, order=None) -> str:
    """Markdown: ACC, BWT and forgetting per learner, mean ± 95% CI over seeds (percent)."""
    metrics = continual_metrics(ds["task_accuracy"])
    names = list(order) if order is not None else [str(v) for v in np.atleast_1d(ds["learner"].values)]
    lines = ["| learner | ACC (%) | BWT (points) | forgetting (points) | seeds |", "|---|---|---|---|---|"]
    for name in names:
        cells = []
        for key in ("acc", "bwt", "forgetting"):
            sub = 100 * (metrics[key].sel(learner=name) if "learner" in metrics[key].dims else metrics[key])
            mean, lo, hi = mean_and_interval(sub, "seed")
            cells.append(f"{float(mean):.2f} ± {float(hi - mean):.2f}")
        n = int(np.isfinite(np.atleast_1d(metrics["acc"].sel(learner=name).values
                                          if "learner" in metrics["acc"].dims else metrics["acc"].values)).sum())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def write_continual_report(folder, out_dir=None, *, title: str | None = None, order=None) -> str:
    """``continual.png`` (heatmaps + bars) and ``continual.md`` (table) for the runs under ``folder``."""
    from analysis.collect import collect
    folder = Path(folder)
    out_dir = Path(out_dir or folder)
    ds = collect(folder)
    table = continual_table(ds, order=order)
    continual_figure(ds, out_dir / "continual.png", title=title or folder.name, order=order)
    (out_dir / "continual.md").write_text(
        f"# {title or folder.name}: continual metrics\n\nGenerated by "
        f"`python -c \"from analysis.continual import write_continual_report; write_continual_report('{folder}')\"` "
        f"from {ds.attrs['n_runs']} result files. ACC: mean test accuracy over all tasks after the last task; "
        "BWT: mean (final - just-learned) accuracy over all but the last task; forgetting: mean drop from "
        "the best accuracy after learning (formulas in analysis/continual.py).\n\n"
        f"{table}\n\n![continual](continual.png)\n")
    return table
