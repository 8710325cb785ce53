"""Predictive coding's relaxation loop: analytic node gradients against autograd, and an epoch of PC
against an epoch of backprop on the same network, measured in one run.

    ALTLEARN_DATA=/path/to/data python -m benchmarks.bench_pc --threads 1

Cases: the default run's setting (digits, mlp_small 64-64, batch 32, T = 8) and a wide one
(MNIST-sized input, 784-1000-1000-10, batch 128, T = 8, random data: the cost does not depend on the
values). For each, in process CPU time of the one thread (best of ``--repeats``):

- the relaxation loop alone (feed-forward initialisation, clamp, T inference steps), with the node
  gradients written out (`PredictiveCoding.node_gradients`, what training uses) and with
  ``torch.autograd.grad`` of the same energy (`PredictiveCoding.layer_energies`), both computing the
  first layer's prediction once (the input node is clamped and the weights held);
- one epoch of updates of backprop, standard PC and incremental PC (learner defaults otherwise),
  and their ratio to backprop's epoch; also the relaxation loops of one epoch (steps x one batch's)
  against backprop's epoch.

Writes benchmarks/results/pc.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import best_time, machine_description, set_threads, write_table

RESULTS = Path(__file__).resolve().parent / "results" / "pc.md"


def relax_autograd(learner, layers, x, target, steps):
    """The relaxation loop of `PredictiveCoding._relax` (momentum 0) with autograd node gradients; like
    it, the first layer's prediction (the input is clamped) is computed once."""
    import torch
    from learners.predictive_coding import _apply
    with torch.no_grad():
        nodes = learner.feedforward(layers, x)
        nodes[-1] = target
        first = _apply(layers[0].post, torch.nn.functional.linear(_apply(layers[0].pre, nodes[0]),
                                                                  layers[0].linear.weight, layers[0].linear.bias))
    hidden = nodes[1:-1]
    for _ in range(steps):
        hidden = [h.detach().requires_grad_(True) for h in hidden]
        energy = 0.5 * ((hidden[0] - first) ** 2).sum(1).mean() + \
            learner.layer_energies(layers[1:], [*hidden, nodes[-1]]).sum()
        grads = torch.autograd.grad(energy, hidden)
        with torch.no_grad():
            # per sample, as the analytic loop: the batch mean's gradient times the batch size
            hidden = [h - learner.inference_lr * len(x) * g for h, g in zip(hidden, grads)]
    return hidden


def relax_analytic(learner, state, layers, x, y, steps):
    import torch
    with torch.no_grad():
        return learner._relax(state, layers, x, y, steps, learn=False, record=False)[0]


def measure(label, data, widths, batch, repeats):
    import torch

    from learners import make_learner
    from learners.base import DataInfo
    from networks import NetworkSpec, build

    x_all, y_all, input_shape = data
    spec = NetworkSpec(kind="mlp", widths=widths).resolve(input_shape, 10)
    steps_per_epoch = len(x_all) // batch
    info = DataInfo(input_shape=input_shape, n_classes=10, n_train=len(x_all), batch_size=batch,
                    steps_per_epoch=steps_per_epoch, n_epochs=1)
    pc = make_learner("predictive_coding")
    state = pc.init(build(spec, 0), info, 0)
    layers = pc.layers(state.network)
    x, y = x_all[:batch], y_all[:batch]
    with torch.no_grad():
        target = pc.clamp(pc.feedforward(layers, x)[-1], y, 10)
    # both loops land on the same nodes (up to rounding): the comparison is like for like
    a = relax_analytic(pc, state, layers, x, y, pc.n_inference_steps)[1:-1]
    b = relax_autograd(pc, layers, x, target, pc.n_inference_steps)
    assert all(torch.allclose(p, q, atol=1e-4) for p, q in zip(a, b))
    t_analytic = best_time(lambda: relax_analytic(pc, state, layers, x, y, pc.n_inference_steps), repeats, time.process_time)
    t_autograd = best_time(lambda: relax_autograd(pc, layers, x, target, pc.n_inference_steps), repeats, time.process_time)

    def epoch(name, **params):
        learner = make_learner(name, **params)
        st = learner.init(build(spec, 0), info, 0)

        def run():
            for i in range(steps_per_epoch):
                learner.update(st, (x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]))
        return best_time(run, repeats, time.process_time)

    t_bp = epoch("backprop")
    t_pc = epoch("predictive_coding")
    t_ipc = epoch("predictive_coding", mode="incremental")
    return {
        "label": label, "batch": batch, "steps": steps_per_epoch, "relax_analytic_ms": 1e3 * t_analytic,
        "relax_autograd_ms": 1e3 * t_autograd, "bp_epoch_s": t_bp, "pc_epoch_s": t_pc, "ipc_epoch_s": t_ipc}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import torch

    from experiments.datasets import load_dataset

    digits = load_dataset("digits", seed=0)
    cases = [("digits, 64-64 (default run)", (torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train),
                                              digits.input_shape), (64, 64), 32)]
    gen = torch.Generator().manual_seed(0)
    wide = (torch.rand(128 * 20, 1, 28, 28, generator=gen), torch.randint(0, 10, (128 * 20,), generator=gen),
            (1, 28, 28))
    cases.append(("784-1000-1000-10, 20 batches", wide, (1000, 1000), 128))
    rows = []
    for label, data, widths, batch in cases:
        r = measure(label, data, widths, batch, args.repeats)
        print(r, flush=True)
        relax_epoch = r["relax_analytic_ms"] * r["steps"] / 1e3
        rows.append([r["label"], r["batch"], r["relax_analytic_ms"], r["relax_autograd_ms"],
                     r["relax_autograd_ms"] / r["relax_analytic_ms"], r["steps"], r["bp_epoch_s"],
                     relax_epoch / r["bp_epoch_s"], r["pc_epoch_s"], r["pc_epoch_s"] / r["bp_epoch_s"],
                     r["ipc_epoch_s"], r["ipc_epoch_s"] / r["bp_epoch_s"]])
    notes = (f"Machine: {machine_description()}. Process CPU time of one thread, best of {args.repeats} after a "
             "warm-up. Relaxation: feed-forward initialisation, clamp and T = 8 inference steps on one batch, "
             "node gradients written out (training's) or by `torch.autograd.grad` of the same energy. Epochs: "
             "every update of one pass (learner defaults: T = 8, Adam), data already in memory, no evaluation.")
    header = ["case", "batch", "relax analytic ms", "relax autograd ms", "autograd / analytic", "steps/epoch",
              "backprop epoch s", "relaxations of an epoch / backprop epoch", "PC epoch s", "PC / backprop",
              "iPC epoch s", "iPC / backprop"]
    print(write_table(args.out, "Predictive coding: relaxation loop and epoch time", header, rows, notes))


if __name__ == "__main__":
    main()
