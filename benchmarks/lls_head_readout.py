"""Is LLS's linear head what holds it back on a short budget? Readouts of one trained network compared.

``python benchmarks/lls_head_readout.py --variant lls --epochs 1`` trains smallconv with LLS on
Fashion-MNIST (validation 5,000, batch 128, seed 0, the reproduce_lls_fashion_mnist settings) and
scores on the validation split:

- the network's head at the schedule-free evaluation weights (what every LLS result reports);
- each block's own basis readout (argmax of its local logits) at the same weights;
- a head refitted to convergence on the same features (multinomial logistic regression, L-BFGS,
  on 20,000 training images): the best a linear readout of those features does;
- the network at the training weights (schedule-free y) instead of the averaged ones.

One row per call is appended to benchmarks/results/lls_head_readout.md. Diagnostic only: the
learner is not changed by it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from experiments.datasets import load_dataset  # noqa: E402
from experiments.fit import LoopConfig, fit  # noqa: E402
from learners import make_learner  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "lls_head_readout.md"
HEADER = ("| variant | epochs | head (eval weights) | refitted head | last block's basis readout | "
          "head (training weights) | basis readout per block |\n|---|---|---|---|---|---|---|\n")


def features(learner, state, x):
    net = state.network
    out = []
    with torch.no_grad():
        net.eval()
        for s in range(0, len(x), 1000):
            h = learner._layout(state, x[s:s + 1000])
            for block in net.blocks:
                h = block(h)
            out.append(h.flatten(1))
    return torch.cat(out)


def accuracy(scores, y):
    return (scores.argmax(1) == y).float().mean().item()


def refit(train_features, y, l2=1e-4):
    W = torch.zeros(train_features.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(W.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(train_features @ W + b, y) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="lls")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("fashion_mnist", seed=args.seed, val_size=5000)
    learner = make_learner("lls", variant=args.variant, waveform="square", temperature=0.5,
                           optimizer={"name": "adamw_schedulefree", "lr": 5e-3})
    state = fit(learner, "smallconv", data, seed=args.seed,
                loop=LoopConfig(n_epochs=args.epochs, batch_size=128, progress=False, eval_train_max=2000)).state
    xv, yv = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val).long()
    xt, yt = torch.from_numpy(data.x_train[:20000]), torch.from_numpy(data.y_train[:20000]).long()

    learner.prepare_eval(state)
    fv = features(learner, state, xv)
    with torch.no_grad():
        head = accuracy(state.network.head(fv), yv)
    local = learner.block_metrics(state, xv, yv)["local_accuracy"]
    W, b = refit(features(learner, state, xt), yt)
    refitted = accuracy(fv @ W + b, yv)

    # the training weights (y), batch norm refreshed on the same kept batches
    sf = state.schedule_free
    sf.to_train()                              # back to y, as before the next training step
    with torch.no_grad():
        state.network.train()
        for x in sf.recent:
            for block in state.network.blocks:
                x = block(x)
        at_train = accuracy(state.network.head(features(learner, state, xv)), yv)

    row = (f"| {args.variant} | {args.epochs} | {100 * head:.2f} | {100 * refitted:.2f} | {100 * local[-1]:.2f} | "
           f"{100 * at_train:.2f} | {' / '.join(f'{100 * a:.1f}' for a in local)} |\n")
    text = OUT.read_text() if OUT.exists() else (
        "# LLS: the head against other readouts of the same features\n\n"
        "`python benchmarks/lls_head_readout.py --variant V --epochs E` (one row per call): "
        "Fashion-MNIST validation accuracy (%) of smallconv trained with LLS (seed 0, batch 128, "
        "schedule-free AdamW 5e-3, square basis, tau 0.5).\n\n" + HEADER)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(text + row)
    os.replace(tmp, OUT)                       # atomic: a crash never leaves half a table
    print(row, end="")


if __name__ == "__main__":
    main()
