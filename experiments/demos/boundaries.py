"""Decision boundaries: every registered learner on ``moons`` and ``spirals``, same small network.

Each learner trains with the settings its contract test uses to learn toy data
(``contract_params``, ``contract_epochs``) on the same ``mlp_small`` network (64-64) and the
same seeded data; the figure shows the predicted class over the plane with the test points.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from experiments.demos._common import classification_learners, finish, main_for

DATASETS = ("moons", "spirals")


def train(name: str, dataset: str, *, quick: bool, seed: int):
    """Train learner ``name`` on ``dataset``; (learner, state, data) of the finished fit."""
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    from learners import get_learner_class, make_learner
    cls = get_learner_class(name)
    n_train = 120 if quick else 400
    data = load_dataset(dataset, seed=seed, n_train=n_train, n_test=200, val_size=0)
    epochs = 1 if quick else min(cls.contract_epochs, 40)
    learner = make_learner(name, **cls.contract_params)
    result = fit(learner, "mlp_small", data, seed=seed, loop=LoopConfig(n_epochs=epochs, progress=False))
    return learner, result.state, data, float(result.results["accuracy"].sel(split="test").values[-1])


def grid_predictions(learner, state, data, resolution: int):
    """The predicted class on a ``resolution`` x ``resolution`` grid over the data's range."""
    x = np.concatenate([data.x_train, data.x_test])
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    with torch.no_grad():
        classes = learner.predict(state, torch.from_numpy(grid)).argmax(1).numpy()
    return xs, ys, classes.reshape(resolution, resolution)


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    torch.set_num_threads(1)
    names = classification_learners()
    ncols = min(6, len(names))
    rows_per_set = -(-len(names) // ncols)
    fig, axes = plt.subplots(rows_per_set * len(DATASETS), ncols, figsize=(2.3 * ncols, 2.4 * rows_per_set * 2),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    accuracy: dict[str, dict[str, float]] = {d: {} for d in DATASETS}
    failed: dict[str, str] = {}
    for d, dataset in enumerate(DATASETS):
        for k, name in enumerate(names):
            ax = axes[d * rows_per_set + k // ncols, k % ncols]
            try:
                learner, state, data, acc = train(name, dataset, quick=quick, seed=seed)
                xs, ys, classes = grid_predictions(learner, state, data, 40 if quick else 90)
            except Exception as err:        # an unfinished learner must not stop the lesson
                failed[f"{name}/{dataset}"] = f"{type(err).__name__}: {err}"
                ax.text(0.5, 0.5, f"{name}\nfailed:\n{type(err).__name__}", ha="center", va="center",
                        fontsize=7, transform=ax.transAxes)
                continue
            accuracy[dataset][name] = acc
            ax.contourf(xs, ys, classes, levels=np.arange(data.n_classes + 1) - 0.5, cmap="coolwarm", alpha=0.35)
            ax.scatter(data.x_test[:, 0], data.x_test[:, 1], c=data.y_test, cmap="coolwarm", s=5,
                       edgecolors="k", linewidths=0.2)
            ax.set_title(f"{name}\n{dataset}: {100 * acc:.0f}%", fontsize=8)
    fig.suptitle("Decision boundaries, same 64-64 MLP (test points; title: test accuracy)")
    fig.tight_layout()
    return finish(out_dir, "boundaries", fig, {"accuracy": accuracy, "failed": failed, "learners": names})


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "boundaries", argv)


if __name__ == "__main__":
    sys.exit(main())
