"""Catastrophic forgetting, and Hebbian projection against it.

A stream of permuted tasks (each task the same images with its own fixed pixel permutation;
permuted MNIST when its files are found, else the 8x8 digits; ``--quick``: digits) is learned
one task after the other by plain backprop (SGD) and by ``hebbian_projection`` around the same
backprop (HLOP, Xiao et al. 2024: updates projected away from the inputs of earlier tasks, the
subspace found by Hebbian lateral neurons). The figure shows each one's accuracy matrix
``A[i, j]`` (test accuracy on task j after training task i): forgetting is the fading below the
diagonal.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from experiments.demos._common import finish, main_for


def load(quick: bool, seed: int):
    from experiments.datasets import load_dataset
    from core.errors import DataError
    if not quick:
        try:
            return load_dataset("mnist", seed=seed, download=False), "permuted MNIST"
        except DataError:
            pass
    return load_dataset("digits", seed=seed), "permuted 8x8 digits"


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from analysis.continual import TRAINED, EVAL, accuracy_matrix_heatmap, continual_metrics
    from experiments.app import learner_config
    from experiments.continual import StreamConfig, build_stream, run_stream
    from experiments.fit import LoopConfig
    from learners import available_learners, make_learner
    torch.set_num_threads(1)
    data, label = load(quick, seed)
    n_tasks = 3 if quick else 4
    stream = build_stream(StreamConfig(name="permuted", n_tasks=n_tasks, setting="domain",
                                       max_train_per_task=600 if quick else 2000,
                                       max_test_per_task=300 if quick else 1000), data, seed=seed)
    hlop = learner_config("hebbian_projection") if "hebbian_projection" in available_learners() else None
    base = {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}}
    runs = {"backprop (SGD)": ("backprop", base)}
    if hlop is not None:
        hlop.pop("name")
        base = hlop.get("base_params") or base
        runs = {"backprop (SGD)": ("backprop", base), "hebbian_projection": ("hebbian_projection", hlop)}
    network = {"preset": "mlp_small", "widths": [100, 100]}
    loop = LoopConfig(n_epochs=4 if quick else 3, batch_size=32, progress=False)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1, 4))
    axes = np.atleast_1d(axes)
    numbers = {"data": label, "n_tasks": n_tasks}
    image = None
    for ax, (title, (name, params)) in zip(axes, runs.items()):
        result = run_stream(make_learner(name, **params), network, stream, loop=loop, seed=seed)
        matrix = result.results["task_accuracy"]
        m = continual_metrics(matrix)
        numbers[title] = {"matrix": matrix.transpose(TRAINED, EVAL).values.tolist(),
                          "acc": float(m.acc), "bwt": float(m.bwt)}
        image = accuracy_matrix_heatmap(matrix, ax, title=f"{title}\nACC {100 * float(m.acc):.1f}%  "
                                        f"BWT {100 * float(m.bwt):+.1f} points")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="test accuracy (%)")
    fig.suptitle(f"{label}: accuracy after each task (BWT < 0: forgetting)")
    return finish(out_dir, "forgetting", fig, numbers)


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "forgetting", argv)


if __name__ == "__main__":
    sys.exit(main())
