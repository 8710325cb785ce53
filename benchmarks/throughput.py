"""Backprop training throughput on MNIST, mlp_2x1000, batch 128, in one run:

  (1) altlearn's fit loop with the backprop learner,
  (2) a minimal hand-written PyTorch loop on the same tensors, network and optimiser,
  (3) scikit-learn's MLPClassifier with the same layers, batch size and optimiser,

each with SGD momentum and with Adam (scikit-learn's default solver: a reference figure of
15.2 s/epoch = 0.35 of the matmul peak matches MLPClassifier's defaults on float32 input; with SGD it is
faster, so both are measured and each contender is compared with MLPClassifier on its own optimiser),

against the fp32 matrix-multiply peak measured in the same run.

    ALTLEARN_DATA=/path/to/data python -m benchmarks.throughput --threads 2 --epochs 3 --rounds 2

Writes benchmarks/results/throughput.md. The first epoch of each run is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import machine_description, matmul_peak_gflops, set_threads, write_table
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import make_learner
from networks import build, get_preset

BATCH = 128
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 1e-3}  # MLPClassifier's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8


def macs_per_sample(widths=(784, 1000, 1000, 10)) -> int:
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def fit_loop_seconds(data, epochs, optimizer) -> list[float]:
    result = fit(make_learner("backprop", optimizer=optimizer), "mlp_2x1000", data, seed=0,
                 loop=LoopConfig(n_epochs=epochs, batch_size=BATCH, progress=False, eval_train_max=1000))
    return [float(t) for t in result.results["wall_time"].values]


def minimal_loop_seconds(data, epochs, optimizer) -> list[float]:
    spec = get_preset("mlp_2x1000").resolve(data.input_shape, data.n_classes)
    net = build(spec, 0)
    if optimizer["name"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=SGD["lr"], momentum=SGD["momentum"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=ADAM["lr"])
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def sklearn_seconds(data, epochs, optimizer) -> list[float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    x = data.x_train.reshape(len(data.x_train), -1)  # float32: MLPClassifier keeps the dtype
    common = dict(hidden_layer_sizes=(1000, 1000), batch_size=BATCH, max_iter=1, warm_start=True,
                  shuffle=True, random_state=0, tol=0, alpha=0)
    if optimizer["name"] == "sgd":
        clf = MLPClassifier(solver="sgd", learning_rate_init=SGD["lr"], momentum=SGD["momentum"],
                            nesterovs_momentum=False, **common)
    else:
        clf = MLPClassifier(solver="adam", learning_rate_init=ADAM["lr"], **common)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(epochs):
            t0 = time.perf_counter()
            clf.fit(x, data.y_train)
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per contender; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all contenders")
    parser.add_argument("--out", default="benchmarks/results/throughput.md")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    data = load_dataset("mnist", seed=0, val_size=0)
    n = len(data.x_train)
    peak = matmul_peak_gflops()
    flops_epoch = 6 * macs_per_sample() * n  # forward 2, backward 4 flops per multiply-accumulate
    contenders = {"altlearn fit loop (backprop)": fit_loop_seconds,
                  "minimal PyTorch loop": minimal_loop_seconds,
                  "scikit-learn MLPClassifier": sklearn_seconds}
    # Shared machines drift: every contender runs in each of several rounds, and its fastest timed
    # epoch over all rounds counts (the least disturbed measurement of the same work).
    epoch_times = {}
    for round_ in range(args.rounds):
        for opt_name, optimizer in (("SGD momentum", SGD), ("Adam", ADAM)):
            for name, runner in contenders.items():
                times = runner(data, args.epochs, optimizer)
                epoch_times.setdefault((name, opt_name), []).extend(times[1:] if len(times) > 1 else times)
                print(f"round {round_}: {name}, {opt_name}: " + ", ".join(f"{t:.2f}" for t in times), flush=True)
    seconds = {key: float(np.min(times)) for key, times in epoch_times.items()}
    peak_after = matmul_peak_gflops()
    rows = []
    for (name, opt_name), s in seconds.items():
        gflops = flops_epoch / s / 1e9
        rows.append([name, opt_name, s, n / s, gflops, gflops / peak, s / seconds["minimal PyTorch loop", opt_name],
                     seconds["scikit-learn MLPClassifier", opt_name] / s])
    notes = (f"Measured in one run on {machine_description()}; matmul peak {peak:.1f} GFLOP/s "
             f"(re-measured after: {peak_after:.1f}). MNIST train {n} samples, batch {BATCH}, float32. "
             f"{args.rounds} rounds of {args.epochs} epochs each; the fastest epoch after the first of each "
             f"run counts. Command: `python -m benchmarks.throughput --threads {args.threads} "
             f"--epochs {args.epochs} --rounds {args.rounds}`.")
    text = write_table(args.out, "Backprop throughput: fit loop vs minimal PyTorch vs scikit-learn",
                       ["contender", "optimiser", "s / epoch", "samples / s", "GFLOP/s", "fraction of matmul peak",
                        "time vs minimal loop (same optimiser)", "speed-up vs MLPClassifier (same optimiser)"],
                       rows, notes)
    print(text)


if __name__ == "__main__":
    main()
