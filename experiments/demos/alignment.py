"""Feedback alignment: random feedback becomes useful because the forward weights turn towards it.

Feedback alignment (Lillicrap et al. 2016) sends a hidden block its error through a fixed random
matrix B instead of the transposed forward weights Wᵀ; direct feedback alignment (Nøkland 2016)
projects the output error straight to every block; sign symmetry (Liao et al. 2016) keeps only W's
signs. At the start B is unrelated to W (90 degrees apart). Training moves W towards B, so the
error each block receives turns towards backprop's. Each panel follows one rule on the 8x8 digits
(a 3x100 MLP, the learner's defaults from ``experiments/configs/learner/feedback_alignment.yaml``):
solid, the angle between the error the rule sends to each block and backprop's on the validation
images; dashed, the angle between the forward weights above the block and the feedback matrix that
replaces them (not defined for DFA, whose B has another shape). The last panel: test accuracy,
with backprop for reference.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from experiments.callbacks import Callback
from experiments.demos._common import demo_learner, finish, main_for

MODES = {"fa": "feedback alignment (FA)", "dfa": "direct feedback alignment (DFA)",
         "usf": "sign symmetry (uSF)"}


class AngleTrace(Callback):
    """Every ``every`` steps, the learner's per-block angles on a fixed batch (observes only)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int):
        self.x, self.y, self.every = x, y, max(1, every)
        self.steps: list[int] = []
        self.values: dict[str, list[list[float]]] = {}

    def record(self, run):
        self.steps.append(run.step)
        for key, per_block in run.learner.block_metrics(run.state, self.x, self.y).items():
            self.values.setdefault(key, []).append([float(v) for v in per_block])

    def on_fit_start(self, run):
        self.record(run)

    def on_batch_end(self, run, metrics):
        if run.step % self.every == 0:
            self.record(run)


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    demo_learner("feedback_alignment", "alignment")
    data = load_dataset("digits", seed=seed)
    network = {"preset": "mlp_small", "widths": [100, 100, 100]}
    loop = LoopConfig(n_epochs=2 if quick else 20, batch_size=32, progress=False)
    probe = (torch.from_numpy(data.x_val), torch.from_numpy(data.y_val))
    traces, accuracy = {}, {}
    for mode in MODES:
        trace = AngleTrace(*probe, every=4 if quick else 10)
        result = fit(demo_learner("feedback_alignment", "alignment", mode=mode), network, data, seed=seed,
                     loop=loop, callbacks=[trace])
        traces[mode] = trace
        accuracy[mode] = result.results["accuracy"].sel(split="test").values
    reference = fit(demo_learner("backprop", "alignment"), network, data, seed=seed, loop=loop)
    accuracy["backprop"] = reference.results["accuracy"].sel(split="test").values

    n_blocks = len(network["widths"])
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.8, n_blocks))
    fig, axes = plt.subplots(1, len(MODES) + 1, figsize=(4.3 * (len(MODES) + 1), 3.8))
    numbers: dict = {"modes": {}}
    for ax, (mode, title) in zip(axes, MODES.items()):
        trace = traces[mode]
        steps = np.array(trace.steps)
        summary = {}
        for key, style in (("signal_angle", "-"), ("weight_angle", "--")):
            if key not in trace.values:
                continue
            values = np.array(trace.values[key])           # (records, blocks)
            for i in range(n_blocks):
                label = f"block {i}" if key == "signal_angle" else None
                ax.plot(steps, values[:, i], style, color=colours[i], label=label)
            summary[key] = {"first": values[0].tolist(), "last": values[-1].tolist()}
        summary["test_accuracy"] = float(accuracy[mode][-1])
        numbers["modes"][mode] = summary
        ax.axhline(90, color="k", lw=0.8, ls=":")
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("angle (degrees)")
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "k-", label="error vs backprop's")
    axes[0].plot([], [], "k--", label="W vs its feedback B")
    axes[0].legend(fontsize=8, loc="lower left")
    ax = axes[-1]
    for name, acc in accuracy.items():
        ax.plot(np.arange(1, len(acc) + 1), 100 * acc, marker="o", ms=3, label=name,
                color="k" if name == "backprop" else None, ls="--" if name == "backprop" else "-")
    ax.set_title("test accuracy", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    numbers["backprop_test_accuracy"] = float(accuracy["backprop"][-1])
    fig.suptitle("Random feedback on 8x8 digits: the forward weights turn towards the feedback, and the "
                 "error each block receives turns towards backprop's")
    fig.tight_layout()
    return finish(out_dir, "alignment", fig, numbers)


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "alignment", argv)


if __name__ == "__main__":
    sys.exit(main())
