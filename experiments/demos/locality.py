"""Locality: which parameters one update of each learner touches, and what it listens to.

For every registered learner, on the same 3-block MLP and the same batch of blobs:

- left: the share of each block's trainable entries (``learner.block_parameters``) that one
  ``update`` changes;
- right: whether block 0's update changes when only the *last* block's weights are perturbed
  beforehand (same state, same batch, same random stream). Backprop and every rule whose signal
  crosses block boundaries listen to downstream weights; blockwise rules (Forward-Forward,
  Mono-Forward, LLS, NoProp-DT) do not. The learner's declared tags are printed beside it.
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import torch

from experiments.demos._common import classification_learners, finish, main_for


def _values(params) -> list[np.ndarray]:
    return [np.array(torch.as_tensor(p).detach().cpu().numpy(), dtype=np.float64, copy=True).ravel()
            for p in params]


def probe(name: str, data, *, seed: int, widths=(32, 32, 32)) -> dict:
    """Share of entries changed per block, and whether block 0's step depends on the last block."""
    from experiments.fit import as_spec
    from experiments.alignment import preserved_random_state
    from learners import DataInfo, get_learner_class, make_learner
    from networks import build
    cls = get_learner_class(name)
    learner = make_learner(name, **cls.contract_params)
    spec = as_spec({"preset": "mlp_small", "widths": list(widths)}).resolve(data.input_shape, data.n_classes)
    x, y = torch.from_numpy(data.x_train[:64]), torch.from_numpy(data.y_train[:64])
    info = DataInfo(input_shape=data.input_shape, n_classes=data.n_classes, n_train=64, batch_size=64,
                    steps_per_epoch=1, n_epochs=1)
    with preserved_random_state():
        state = learner.init(build(spec, seed), info, seed)
        perturbed = copy.deepcopy(state)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed + 1)
            for p in learner.block_parameters(perturbed)[-1]:
                t = torch.as_tensor(p)
                t.add_(0.5 * torch.randn(t.shape, generator=gen, dtype=t.dtype) * (t.std() + 1e-3))
        before = [_values(ps) for ps in learner.block_parameters(state)]
        before_p = _values(learner.block_parameters(perturbed)[0])
        state, _ = learner.update(state, (x, y))
        perturbed, _ = learner.update(perturbed, (x, y))
    after = [_values(ps) for ps in learner.block_parameters(state)]
    changed = [float(np.mean(np.concatenate(a) != np.concatenate(b))) for a, b in zip(after, before)]
    step = np.concatenate(after[0]) - np.concatenate(before[0])
    step_p = np.concatenate(_values(learner.block_parameters(perturbed)[0])) - np.concatenate(before_p)
    listens = bool(not np.allclose(step, step_p, rtol=1e-6, atol=1e-9))
    return {"changed": changed, "block0_listens_to_last_block": listens,
            "locality": cls.tags.locality, "crosses_blocks": cls.tags.crosses_blocks}


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from experiments.datasets import load_dataset
    torch.set_num_threads(1)
    data = load_dataset("blobs", seed=seed, n_train=200, n_test=50, val_size=0)
    results, failed = {}, {}
    for name in classification_learners():
        try:
            results[name] = probe(name, data, seed=seed)
        except Exception as err:            # an unfinished learner is shown as such, not hidden
            failed[name] = f"{type(err).__name__}: {err}"
    names = list(results)
    n_blocks = max(len(r["changed"]) for r in results.values())
    grid = np.full((len(names), n_blocks), np.nan)
    for i, name in enumerate(names):
        grid[i, :len(results[name]["changed"])] = results[name]["changed"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    image = ax.imshow(100 * grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(names)):
        for j in range(n_blocks):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="w" if grid[i, j] < 0.6 else "k")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(n_blocks), [f"block {j}" for j in range(n_blocks)])
    ax.set_title("% of each block's parameters one update changes", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax = axes[1]
    for i, name in enumerate(names):
        r = results[name]
        listens = r["block0_listens_to_last_block"]
        ax.scatter(0, i, s=140, marker="o" if listens else "x", color="tab:red" if listens else "tab:green")
        ax.text(0.15, i, f"{'yes' if listens else 'no'}   (tags: {r['locality']}, crosses blocks: "
                f"{r['crosses_blocks']})", va="center", fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(-0.2, 2.2)
    ax.axis("off")
    ax.set_title("does block 0's update change when\nonly the last block's weights change?", fontsize=10)
    fig.suptitle("Locality of one update (3-block MLP, one batch of blobs)")
    fig.tight_layout()
    return finish(out_dir, "locality", fig, {"learners": results, "failed": failed})


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "locality", argv)


if __name__ == "__main__":
    sys.exit(main())
