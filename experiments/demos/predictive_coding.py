"""Predictive coding: the energy settling while the value nodes relax.

A predictive-coding network (``learner=predictive_coding``) trains by first letting its value nodes
settle: from the forward pass, with the output clamped to the label, each inference step moves the
hidden nodes down the energy E = Σ_l ½‖n_{l+1} − f(W_l n_l)‖², so the errors the clamp puts at the
top spread down the layers. The figure relaxes test digits through a trained network: left, every
layer's energy over the inference steps (the top layer's falls, the hidden layers' rise as they
take their share); right, the output layer's prediction f(W n) of the true class moving from the
forward pass's value towards the clamped label, and how many nodes agree with the label.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from experiments.demos._common import demo_learner, finish, main_for


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    learner = demo_learner("predictive_coding", "predictive_coding")
    data = load_dataset("digits", seed=seed)
    result = fit(learner, "mlp_small", data, seed=seed,
                 loop=LoopConfig(n_epochs=1 if quick else 10, batch_size=32, progress=False))
    state = result.state
    x, y = torch.from_numpy(data.x_test[:300]), torch.from_numpy(data.y_test[:300])
    steps = 4 * learner.n_inference_steps      # longer than training's, to show where it settles
    trajectory = []                            # per step: the top layer's prediction of the label
    layers = learner.layers(state.network)
    with torch.no_grad():
        state.network.eval()
        for t in range(steps + 1):
            nodes = learner.relax(state, x, y, steps=t).nodes
            # the prediction of the top node from the layer below it, as the clamp pulls on it
            prediction = learner.feedforward(layers[-1:], nodes[-2])[-1]
            trajectory.append(prediction)
        energies = learner.relax(state, x, y, steps=steps).energies.numpy()      # (steps+1, layers)
    onehot = torch.nn.functional.one_hot(y, prediction.shape[1]).float()
    distance = [float((p - onehot).norm(dim=1).mean()) for p in trajectory]
    agree = [float((p.argmax(1) == y).float().mean()) for p in trajectory]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    ax = axes[0]
    t = np.arange(energies.shape[0])
    for layer in range(energies.shape[1]):
        name = "output (clamped)" if layer == energies.shape[1] - 1 else f"hidden node {layer + 1}"
        ax.plot(t, energies[:, layer], marker="o", ms=3, label=name)
    ax.plot(t, energies.sum(1), color="k", lw=2, label="total energy")
    ax.set_xlabel("inference step")
    ax.set_ylabel("energy (batch mean)")
    ax.set_title("the energy settling, layer by layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(np.arange(steps + 1), distance, marker="o", ms=3, color="tab:blue")
    ax.set_xlabel("inference step")
    ax.set_ylabel("|prediction of the top node - label| (mean)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(np.arange(steps + 1), np.array(agree) * 100, color="tab:red", marker="s", ms=3)
    twin.set_ylabel("prediction's top class = label (%)", color="tab:red")
    twin.set_ylim(0, 105)
    ax.axvline(learner.n_inference_steps, color="grey", ls="--", lw=1)
    ax.text(learner.n_inference_steps, ax.get_ylim()[1], " T in training", va="top", fontsize=8, color="grey")
    ax.grid(alpha=0.3)
    ax.set_title("the nodes moving towards the clamped label")
    test_acc = float(result.results["accuracy"].sel(split="test").values[-1])
    fig.suptitle(f"Predictive coding ({learner.mode}), 8x8 digits, 300 test images clamped to their labels "
                 f"(test accuracy of the forward pass {100 * test_acc:.1f}%)")
    fig.tight_layout()
    return finish(out_dir, "predictive_coding", fig, {
        "total_energy": energies.sum(1).tolist(), "layer_energy": energies.tolist(),
        "distance_to_label": distance, "agreement": agree, "test_accuracy": test_acc})


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "predictive_coding", argv)


if __name__ == "__main__":
    sys.exit(main())
