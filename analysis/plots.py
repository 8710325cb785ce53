"""Figures from collected results. Each function takes data and an ``ax`` and returns the ax."""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")  # files, never windows: runs headless in CI and on clusters
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.stats import mean_and_interval, metric_bounds  # noqa: E402

_PALETTE = plt.get_cmap("tab20").colors


_COLORS: dict[str, tuple] = {}


def learner_color(name: str) -> tuple:
    """A fixed colour per learner name, the same in every figure a process draws: learners take
    the palette's colours in the order they are first drawn (`set_learner_order` fixes that order
    for a report). A variant ``"learner (key=value)"`` keeps its learner's colour."""
    if name not in _COLORS and " (" in name:
        name = name.split(" (")[0]
    if name not in _COLORS:
        i = len(_COLORS)
        # dark shades first, then the light ones: neighbours in the order differ most
        _COLORS[name] = _PALETTE[(2 * i) % len(_PALETTE)] if i < len(_PALETTE) // 2 \
            else _PALETTE[(2 * i + 1) % len(_PALETTE)]
    return _COLORS[name]


def set_learner_order(names) -> None:
    """Give ``names`` (in this order) the palette's first colours, before anything is drawn."""
    _COLORS.clear()
    for name in names:
        learner_color(str(name).split(" (")[0])


def _per_learner(da: xr.DataArray):
    if "learner" in da.dims:
        for name in da.learner.values:
            yield str(name), da.sel(learner=name)
    else:
        yield str(da.coords["learner"].item()) if "learner" in da.coords else "run", da


def learning_curves(ds: xr.Dataset, ax, *, metric="accuracy", split="test"):
    """Mean over seeds with a 95% band, one line per learner."""
    da = ds[metric].sel(split=split) if "split" in ds[metric].dims else ds[metric]
    markers = _variant_markers(_names(da))      # variants of one learner share its colour
    for name, sub in _per_learner(da):
        mean, lo, hi = mean_and_interval(sub, "seed")
        if metric == "accuracy":   # a t-interval over few seeds can leave [0, 1]; accuracy cannot
            lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
        epochs = sub["epoch"].values
        color = learner_color(name)
        ax.plot(epochs, mean, label=name, color=color, lw=2, marker=markers[name], ms=5,
                markevery=max(1, len(epochs) // 10), markeredgecolor="k", markeredgewidth=0.5)
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


_METRIC_LABELS = {"accuracy": "accuracy", "r2": "R^2", "rmse": "RMSE"}


def final_accuracy(ds: xr.Dataset, ax, *, split="test", metric="accuracy"):
    """Final-epoch accuracy (or ``metric``, e.g. ``r2``) per learner: mean over seeds with a 95%
    interval, seeds as dots."""
    da = final_epoch(ds[metric].sel(split=split))
    for i, (name, sub) in enumerate(_per_learner(da)):
        mean, lo, hi = mean_and_interval(sub, "seed", bounds=metric_bounds(metric))
        ax.bar(i, float(mean), color=learner_color(name), alpha=0.8)
        ax.errorbar(i, float(mean), yerr=[[float(mean - lo)], [float(hi - mean)]], color="k", capsize=4)
        vals = np.atleast_1d(sub.values)
        ax.scatter(np.full(len(vals), i), vals, color="k", s=10, zorder=3)
        ax.text(i, float(mean), f"{float(mean):.3f}", ha="center", va="bottom", fontsize=8)
    names = [n for n, _ in _per_learner(da)]
    ax.set_xticks(range(len(names)), [_tick_label(n) for n in names], rotation=30, ha="right")
    ax.set_ylabel(f"final {split} {_METRIC_LABELS.get(metric, metric)}")
    finite = da.values[np.isfinite(da.values)]
    if finite.size and metric == "accuracy":
        ax.set_ylim(max(0.0, finite.min() - 0.1), min(1.0, finite.max() + 0.05))
    ax.grid(axis="y", alpha=0.3)
    return ax


def final_epoch(da: xr.DataArray) -> xr.DataArray:
    """The epoch each run reports: its best epoch where it kept one (early stopping, the
    ``best_epoch`` coordinate), else its last recorded epoch (runs may stop early, leaving NaN at
    the end)."""
    valid = da.notnull()
    index = xr.DataArray(np.arange(da.sizes["epoch"]), dims="epoch")   # broadcasts whatever the dim order
    last = (valid * index).max("epoch")  # index of the last finite epoch
    if "best_epoch" in da.coords:
        best = da.coords["best_epoch"] - 1
        last = xr.where(best.notnull(), best, last)
        da = da.drop_vars("best_epoch")
    return da.isel(epoch=last.astype(int)).where(valid.any("epoch"))


def comparison_figure(ds: xr.Dataset, path, *, title="", metric="accuracy"):
    """Learning curves and final test accuracy (or ``metric``) side by side, saved as PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    learning_curves(ds, axes[0], metric=metric)
    final_accuracy(ds, axes[1], metric=metric)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------- comparison figures

_BLOCK_STYLES = ("-", "--", ":", "-.", (0, (1, 4)), (0, (5, 1, 1, 1)))
ALIGNMENT_VARS = ("block_align_cosine", "block_align_sign")
# per-block variables drawn elsewhere, or not over epochs
_NOT_PER_BLOCK_CURVES = ALIGNMENT_VARS + ("block_cka_backprop",)


def _tick_label(name: str) -> str:
    """A variant's label on two lines ("lls" over "(variant=lls_m)"), so that axis labels stay short."""
    return name.replace(" (", "\n(", 1)


def _names(da: xr.DataArray) -> list[str]:
    return [n for n, _ in _per_learner(da)]


def _total(da: xr.DataArray) -> xr.DataArray:
    """Sum over epochs, NaN (not 0) where a run recorded nothing."""
    return da.sum("epoch", min_count=1) if "epoch" in da.dims else da


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _errorbar(ax, x, y, *, color, label, xerr=None, yerr=None, marker="o"):
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, label=label, capsize=3, ms=7,
                markeredgecolor="k")


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower ``x`` and higher ``y``, by increasing x."""
    order = np.lexsort((-np.nan_to_num(y, nan=-np.inf), x))   # by x, then higher y first
    front, best = [], -np.inf
    for i in order:
        if np.isfinite(x[i]) and np.isfinite(y[i]) and y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


def accuracy_vs_cost(ds: xr.Dataset, ax, *, cost="wall_time", split="test", metric="accuracy"):
    """Final accuracy (mean, 95% interval) against a training cost, with the Pareto front drawn.

    ``cost``: ``wall_time`` (seconds of training, all epochs) or ``flops`` (FLOPs per training sample,
    all epochs). One point per learner; the dashed line joins the learners no other beats on both.
    """
    acc = final_epoch(ds[metric].sel(split=split))
    if cost == "flops":
        n_train = ds["n_train"] if "n_train" in ds else 1
        cost_da, label = _total(ds["flops"]) / n_train, "training FLOPs per sample (all epochs)"
    else:
        cost_da, label = _total(ds["wall_time"]), "training wall time (s, all epochs)"
    xs, ys, seen = [], [], {}
    for (name, a), (_, c) in zip(_per_learner(acc), _per_learner(cost_da)):
        base = name.split(" (")[0]
        seen[base] = seen.get(base, -1) + 1       # variants of one learner: same colour, other marker
        mean, lo, hi = mean_and_interval(a, "seed", bounds=metric_bounds(metric))
        cmean, clo, chi = mean_and_interval(c, "seed")
        x, y = float(cmean), float(mean)
        xs.append(x)
        ys.append(y)
        if not (np.isfinite(x) and x > 0 and np.isfinite(y)):
            continue
        _errorbar(ax, x, y, color=learner_color(name), label=name,
                  xerr=[[x - float(clo)], [float(chi) - x]], yerr=[[y - float(lo)], [float(hi) - y]],
                  marker=_MARKERS[seen[base] % len(_MARKERS)])
    xs, ys = np.array(xs), np.array(ys)
    ok = np.isfinite(xs) & (xs > 0)
    front = [i for i in pareto_front(np.where(ok, xs, np.nan), ys)]
    if len(front) > 1:
        ax.plot(xs[front], ys[front], "k--", lw=1, alpha=0.6, label="Pareto front")
    if ok.any() and xs[ok].max() > 20 * xs[ok].min():
        ax.set_xscale("log")
    ax.margins(0.1)
    ax.set_xlabel(label)
    ax.set_ylabel(f"final {split} {_METRIC_LABELS.get(metric, metric)}")
    ax.grid(alpha=0.3, which="both")
    if ok.any():
        ax.legend(fontsize=7, loc="best")
    return ax


def peak_memory(ds: xr.Dataset, ax):
    """Peak memory above the start of the fit (MiB) per learner: mean over seeds, seeds as dots."""
    var = "peak_memory_total" if "peak_memory_total" in ds and np.isfinite(ds["peak_memory_total"].values).any() \
        else "peak_memory"
    da = ds[var] if var == "peak_memory_total" else ds[var].max("epoch")
    da = da / 2**20
    for i, (name, sub) in enumerate(_per_learner(da)):
        mean, lo, hi = mean_and_interval(sub, "seed")
        ax.bar(i, float(mean), color=learner_color(name), alpha=0.8)
        vals = np.atleast_1d(sub.values)
        ax.scatter(np.full(len(vals), i), vals, color="k", s=10, zorder=3)
        ax.text(i, float(mean), f"{float(mean):.0f}", ha="center", va="bottom", fontsize=8)
    names = _names(da)
    ax.set_xticks(range(len(names)), [_tick_label(n) for n in names], rotation=30, ha="right")
    ax.set_ylabel("peak memory (MiB)")
    ax.grid(axis="y", alpha=0.3)
    return ax


def _variant_markers(names: list[str]) -> dict[str, str]:
    """Variants of one learner share its colour; a marker tells them apart."""
    seen, out = {}, {}
    for name in names:
        base = name.split(" (")[0]
        seen[base] = seen.get(base, -1) + 1
        out[name] = _MARKERS[seen[base] % len(_MARKERS)]
    return out


def block_curves(ds: xr.Dataset, var: str, ax, *, legend=True):
    """``var(epoch, block)`` over epochs: colour per learner, line style per block, mean over seeds."""
    da = ds[var]
    markers = _variant_markers(_names(da))
    drawn = False
    for name, sub in _per_learner(da):
        mean = sub.mean("seed") if "seed" in sub.dims else sub
        for b in mean["block"].values:
            line = mean.sel(block=b)
            if not np.isfinite(line.values).any():
                continue
            ax.plot(line["epoch"].values, line.values, color=learner_color(name),
                    ls=_BLOCK_STYLES[int(b) % len(_BLOCK_STYLES)], marker=markers[name], ms=4,
                    label=f"{name} block {int(b)}")
            drawn = True
    ax.set_title(var.removeprefix("block_").replace("_", " "), fontsize=9)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if legend and drawn:
        ax.legend(fontsize=6, ncol=2)
    return ax


def _shared_legend(fig, ds: xr.Dataset, variables: list[str]):
    """One legend for the whole figure: a colour (and marker) per learner, a line style per block."""
    from matplotlib.lines import Line2D
    names = [n for n in _names(ds["accuracy"] if "accuracy" in ds else ds[variables[0]])
             if any(np.isfinite(ds[v].sel(learner=n).values).any() if "learner" in ds[v].dims else True
                    for v in variables)]
    markers = _variant_markers(names)
    handles = [Line2D([], [], color=learner_color(n), marker=markers[n], lw=2, label=n) for n in names]
    blocks = [int(b) for b in ds["block"].values
              if any(np.isfinite(ds[v].sel(block=b).values).any() for v in variables)] if "block" in ds.dims else [0]
    handles += [Line2D([], [], color="k", ls=_BLOCK_STYLES[b % len(_BLOCK_STYLES)], label=f"block {b}")
                for b in blocks]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def per_block_variables(ds: xr.Dataset) -> list[str]:
    """Per-block variables recorded over epochs (local losses, goodness, probe accuracies, ...)."""
    return [v for v in ds.data_vars if v.startswith("block_") and "block" in ds[v].dims
            and "epoch" in ds[v].dims and v not in _NOT_PER_BLOCK_CURVES and np.isfinite(ds[v].values).any()]


def grid_figure(ds: xr.Dataset, variables: list[str], path, *, title="", ncols=3, ylims=None):
    """One `block_curves` panel per variable, saved as PNG; ``None`` when there is nothing to draw."""
    if not variables:
        return None
    ncols = min(ncols, len(variables))
    nrows = -(-len(variables) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, var in zip(axes.flat, variables):
        block_curves(ds, var, ax, legend=False)
        if ylims and var in ylims:
            ax.set_ylim(*ylims[var])
    for ax in axes.flat[len(variables):]:
        ax.axis("off")
    _shared_legend(fig, ds, variables)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))   # room for the title
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def alignment_figure(ds: xr.Dataset, path, *, title=""):
    """Cosine and sign agreement with backprop's gradient, per block over epochs."""
    variables = [v for v in ALIGNMENT_VARS if v in ds and np.isfinite(ds[v].values).any()]
    return grid_figure(ds, variables, path, title=title or "alignment with backprop", ncols=2,
                       ylims={"block_align_cosine": (-1.05, 1.05), "block_align_sign": (0, 1.02)})


def cka_bars(ds: xr.Dataset, ax, var="block_cka_backprop"):
    """Linear CKA of each block's activity to a backprop-trained twin, at the end of training.

    Learners without a value (CKA does not apply to them) are left out and named below the axis."""
    da = final_epoch(ds[var])
    has = {name: np.isfinite(sub.values).any() for name, sub in _per_learner(da)}
    names = [n for n in has if has[n]]
    blocks = [b for b in (da["block"].values if "block" in da.dims else [0])
              if "block" not in da.dims or np.isfinite(da.sel(block=b).values).any()]
    width = 0.8 / max(len(blocks), 1)
    for i, name in enumerate(names):
        sub = da.sel(learner=name) if "learner" in da.dims else da
        for k, b in enumerate(blocks):
            vals = sub.sel(block=b) if "block" in sub.dims else sub
            mean, lo, hi = mean_and_interval(vals, "seed")
            if np.isfinite(float(mean)):
                ax.bar(i - 0.4 + width * (k + 0.5), float(mean), width, color=learner_color(name),
                       alpha=0.35 + 0.65 * (k + 1) / len(blocks), edgecolor="k", lw=0.5)
    ax.set_xticks(range(len(names)), [_tick_label(n) for n in names], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA to backprop (bars: blocks in order)")
    ax.grid(axis="y", alpha=0.3)
    missing = [n for n in has if not has[n]]
    if missing:
        ax.set_xlabel("not applicable: " + ", ".join(missing), fontsize=8)
    return ax


def save_single(draw, ds: xr.Dataset, path, *, title="", figsize=(7, 4.5), **kwargs):
    """Draw one ``draw(ds, ax, **kwargs)`` panel into its own PNG."""
    fig, ax = plt.subplots(figsize=figsize)
    draw(ds, ax, **kwargs)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tuning_curves(learners: dict, ax):
    """Best validation score so far against trial number, one line per learner (``learners``: the
    ``learners`` mapping of a tuning folder's ``tuning.yaml``); dots are the trials themselves."""
    for name, study in learners.items():
        trials = sorted(study["trials"], key=lambda t: t["number"])
        values = np.array([np.nan if t["value"] is None else t["value"] for t in trials], dtype=float)
        best = np.fmax.accumulate(np.where(np.isnan(values), -np.inf, values))
        best[np.isinf(best)] = np.nan
        x = np.arange(1, len(values) + 1)
        color = learner_color(name)
        ax.plot(x, best, color=color, label=name, drawstyle="steps-post")
        ax.scatter(x, values, color=color, s=8, alpha=0.4)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation score so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
