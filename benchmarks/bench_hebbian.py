"""HLOP's Oja subspace iterations: torch vs the numba kernel vs plain numpy, one thread.

    python benchmarks/bench_hebbian.py [--repeats 30]

Times one call of 5 iterations (one training batch of one layer) at the sizes of
the permuted-MNIST MLP (batch 64; fan-in 784 / 800; 70 new rows), of split MNIST
(fan-in 400, 40 rows) and of the `altlearn` default (digits, fan-in 64, 8 rows).
Best of ``--repeats`` after a warm-up (numba compiled first). Writes
benchmarks/results/hebbian.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import best_time, machine_description, set_threads, write_table

SIZES = [("PMNIST input layer", 64, 784, 70), ("PMNIST hidden layer", 64, 800, 70),
         ("split MNIST hidden", 64, 400, 40), ("digits mlp_small", 32, 64, 8)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    set_threads(1)
    from learners._kernels.hebbian import oja_subspace_iterations, oja_subspace_iterations_numpy
    from learners.hebbian_projection import oja_iterations
    rows = []
    for label, b, n, k in SIZES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((b, n)).astype(np.float32)
        h0 = (rng.standard_normal((k, n)) / np.sqrt(n)).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_torch():
            h, m = torch.from_numpy(h0.copy()), torch.zeros(k, n)
            oja_iterations(xt, xt, h, m, 0.01, 0.9, 10.0, 5)

        def run_numba():
            oja_subspace_iterations(x, x, h0.copy(), np.zeros((k, n), np.float32), 0.01, 0.9, 10.0, 5)

        def run_numpy():
            oja_subspace_iterations_numpy(x, x, h0.copy(), np.zeros((k, n), np.float32), 0.01, 0.9, 10.0, 5)

        times = {name: 1e3 * best_time(fn, args.repeats) for name, fn in
                 (("torch", run_torch), ("numba", run_numba), ("numpy", run_numpy))}
        faster = min(times, key=times.get)
        rows.append([label, f"{b}x{n}, {k} rows", times["torch"], times["numba"], times["numpy"], faster])
        print(rows[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "hebbian.md"
    text = write_table(out, "HLOP Oja iterations: torch vs numba vs numpy (ms per call of 5 iterations)",
                       ["layer", "batch x fan-in, new rows", "torch (ms)", "numba (ms)", "numpy (ms)", "fastest"],
                       rows, notes=f"`python benchmarks/bench_hebbian.py --repeats {args.repeats}`; best of "
                                   f"{args.repeats} after warm-up, one thread; {machine_description()}. "
                                   "The machine was shared with other jobs (load far above its 2 cores), so "
                                   "absolute times are noisy; compare within a row.")
    print(text)


if __name__ == "__main__":
    main()
