"""Forward-Forward: positive vs negative goodness of every block over training.

Forward-Forward (Hinton 2022) trains each block to give real data with its true label
(positives) a high goodness -- the sum of squared activities -- and data with a wrong label
(negatives) a low one, the threshold between them being the block's unit count. The figure
follows both, per block, step by step on the 8x8 digits, with the learner's defaults from
``experiments/configs/learner/forward_forward.yaml``.
"""
from __future__ import annotations

import sys

import numpy as np

from experiments.callbacks import Callback
from experiments.demos._common import demo_learner, finish, main_for


class GoodnessTrace(Callback):
    """Keeps every step's ``goodness_pos/i`` and ``goodness_neg/i`` (observes only)."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_batch_end(self, run, metrics):
        self.steps.append({k: v for k, v in metrics.items() if k.startswith(("goodness_pos/", "goodness_neg/"))})


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, len(values)))
    return np.convolve(values, np.ones(width) / width, mode="valid")


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    learner = demo_learner("forward_forward", "forward_forward")
    data = load_dataset("digits", seed=seed)
    trace = GoodnessTrace()
    result = fit(learner, {"preset": "mlp_small", "widths": [100, 100, 100]}, data, seed=seed,
                 loop=LoopConfig(n_epochs=2 if quick else 25, batch_size=32, progress=False), callbacks=[trace])
    n_blocks = result.state.network.n_blocks
    thresholds = result.state.thresholds
    fig, axes = plt.subplots(1, n_blocks + 1, figsize=(4 * (n_blocks + 1), 3.6))
    final = {}
    steps_per_epoch = result.run.info.steps_per_epoch
    for i in range(n_blocks):
        pos = np.array([s[f"goodness_pos/{i}"] for s in trace.steps if f"goodness_pos/{i}" in s])
        neg = np.array([s[f"goodness_neg/{i}"] for s in trace.steps if f"goodness_neg/{i}" in s])
        width = max(1, steps_per_epoch // 3)
        ax = axes[i]
        ax.plot(smooth(pos, width), color="tab:green", label="positive (true label)")
        ax.plot(smooth(neg, width), color="tab:red", label="negative (wrong label)")
        ax.axhline(thresholds[i], color="k", ls="--", lw=1, label=f"threshold {thresholds[i]:.0f}")
        ax.set_title(f"block {i}")
        ax.set_xlabel("training step")
        ax.set_ylabel("goodness (sum of squares)")
        ax.grid(alpha=0.3)
        last = slice(-steps_per_epoch, None)
        final[str(i)] = {"positive": float(pos[last].mean()), "negative": float(neg[last].mean())}
    axes[0].legend(fontsize=8)
    acc = result.results["block_goodness_accuracy"].values if "block_goodness_accuracy" in result.results else None
    if acc is not None:
        for i in range(n_blocks):
            axes[-1].plot(result.results["epoch"].values, 100 * acc[:, i], marker="o", label=f"block {i}")
        axes[-1].legend(fontsize=8)
    axes[-1].set_title("label picked by one block's goodness")
    axes[-1].set_xlabel("epoch")
    axes[-1].set_ylabel("validation accuracy (%)")
    axes[-1].grid(alpha=0.3)
    test_acc = float(result.results["accuracy"].sel(split="test").values[-1])
    fig.suptitle(f"Forward-Forward on 8x8 digits: goodness of positives rises above the threshold, "
                 f"negatives fall below (test accuracy {100 * test_acc:.1f}%)")
    fig.tight_layout()
    return finish(out_dir, "forward_forward", fig, {"final_goodness": final, "test_accuracy": test_acc,
                                                     "thresholds": [float(t) for t in thresholds]})


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "forward_forward", argv)


if __name__ == "__main__":
    sys.exit(main())
