"""NoProp: the denoising chain carrying pure noise to a class embedding.

NoProp-DT (Li, Teh, Pascanu 2025) trains each of its T blocks alone to denoise a noisy class
embedding given the image. At inference z_0 is Gaussian noise and block t maps z_{t-1} to z_t
(``NoPropDT.chain``); z_T is read by the classifier. The figure follows z_t for test digits:
left, their path in the plane of the two main directions of the class embeddings; right, the
distance of z_t to the true class's embedding and the accuracy of the nearest embedding, per step.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from experiments.demos._common import demo_learner, finish, main_for


def chain_with_start(learner, state, x, seed: int):
    """[z_0, z_1, ..., z_T] for ``x``: the learner's own chain, with its starting noise made visible."""
    gen = torch.Generator().manual_seed(seed)
    dim = state.network.embedding.weight.shape[1]
    z0 = torch.randn(len(x), dim, generator=torch.Generator().manual_seed(seed))  # the chain's first draw
    with torch.no_grad():
        state.network.eval()
        zs = learner.chain(state, x, gen)
    return [z0] + list(zs)


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    # a short chain: readable, and a minute on a laptop
    learner = demo_learner("noprop_dt", "noprop", n_blocks=5)
    data = load_dataset("digits", seed=seed)
    result = fit(learner, "mlp_small", data, seed=seed,
                 loop=LoopConfig(n_epochs=1 if quick else 15, batch_size=32, progress=False))
    state = result.state
    x, y = torch.from_numpy(data.x_test[:300]), torch.from_numpy(data.y_test[:300])
    zs = [z.numpy() for z in chain_with_start(learner, state, x, seed)]
    U = state.network.embedding.weight.detach().numpy()            # (classes, dim)
    target = U[y.numpy()]
    distance = [float(np.linalg.norm(z - target, axis=1).mean()) for z in zs]
    nearest = [float((np.argmin(((z[:, None] - U[None]) ** 2).sum(-1), 1) == y.numpy()).mean()) for z in zs]
    # the plane of the two main directions of where the chain ends (the classes spread out there)
    ends = np.concatenate([U, zs[-1]])
    centre = ends.mean(0)
    _, _, Vt = np.linalg.svd(ends - centre, full_matrices=False)
    to2d = lambda a: (a - centre) @ Vt[:2].T
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    ax = axes[0]
    colors = plt.get_cmap("tab10")(y.numpy()[:60] % 10)
    path = np.stack([to2d(z[:60]) for z in zs])                      # (T+1, 60, 2)
    for j in range(path.shape[1]):
        ax.plot(path[:, j, 0], path[:, j, 1], color=colors[j], lw=0.7, alpha=0.6)
    ax.scatter(*path[0].T, color="grey", s=8, label="z_0: noise")
    ax.scatter(*path[-1].T, c=colors, s=14, edgecolors="k", linewidths=0.3, label="z_T")
    u2 = to2d(U)
    ax.scatter(*u2.T, marker="*", s=250, c=plt.get_cmap("tab10")(np.arange(len(U)) % 10), edgecolors="k",
               label="class embeddings")
    for c, (px, py) in enumerate(u2):
        ax.annotate(str(c), (px, py), fontsize=8, ha="center", va="center")
    ax.set_title("paths of z_t (60 test digits, colour: true class)")
    ax.legend(fontsize=8)
    ax = axes[1]
    steps = np.arange(len(zs))
    ax.plot(steps, distance, marker="o", color="tab:blue", label="|z_t - u_y| (mean)")
    ax.set_xlabel("denoising step t")
    ax.set_ylabel("distance to the true class embedding", color="tab:blue")
    twin = ax.twinx()
    twin.plot(steps, np.array(nearest) * 100, marker="s", color="tab:red", label="nearest embedding = class")
    twin.set_ylabel("nearest-embedding accuracy (%)", color="tab:red")
    twin.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("noise to class, step by step")
    test_acc = float(result.results["accuracy"].sel(split="test").values[-1])
    fig.suptitle(f"NoProp-DT, {len(zs) - 1} blocks, 8x8 digits (test accuracy {100 * test_acc:.1f}%)")
    fig.tight_layout()
    return finish(out_dir, "noprop", fig, {"distance": distance, "nearest_accuracy": nearest,
                                           "test_accuracy": test_acc})


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "noprop", argv)


if __name__ == "__main__":
    sys.exit(main())
