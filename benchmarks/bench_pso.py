"""Whole-network PSO against pyswarms, neuron-wise PSO's sweep, and numba against plain numpy kernels.

``python benchmarks/bench_pso.py [--iters 20]`` writes benchmarks/results/pso.md:

1. pyswarms 1.3 trained the way its neural-network example does (``GlobalBestPSO``, one Python
   forward pass per particle, c1=0.5, c2=0.3, w=0.9), against altlearn's ``particle_swarm``
   with ``mode=global`` (all particles in one batched pass): 100 particles, a 64-32-10 tanh network,
   the digits training rows as one batch; CPU time per iteration, and altlearn's time against the
   iteration's matrix-multiply bound (its GEMM flops at this machine's measured fp32 GEMM rate);
   and with ``fitness_dtype=bfloat16`` (first layer's product in bf16; its bound takes that product
   at the measured bf16 rate), where the CPU has native bf16 products. A second table splits that
   iteration by stage (the fitness pass's own process-time clock, ``stage_times``), beside each
   matrix product's bound, to show what stands between the iteration and its bound.
2. Neuron-wise PSO: CPU time of one full sweep over the 42 neurons (k particles each) of
   64-32-10 on a batch, fused numba kernel against the plain numpy path.
3. The swarm move kernel, numba against numpy.

``python benchmarks/bench_pso.py --summarise`` tabulates the committed pso_toy, pso_toy_global,
pso_toy_global_equal_time, pso_digits, pso_digits_global and pso_digits_global_equal_time runs
(final test accuracy per seed, training time, and test accuracy reached within training-time
budgets) into benchmarks/results/pso_experiments.md.

One thread everywhere; ``pip install pyswarms`` for the peer (benchmark only).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description, markdown_table, set_threads, write_table  # noqa: E402
from experiments.heap import retain_freed_memory  # noqa: E402

set_threads(1)
retain_freed_memory()   # as every fit does (experiments/heap.py); pyswarms, timed in this process, gets it too

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.datasets import load_dataset  # noqa: E402
from learners import make_learner  # noqa: E402
from learners._kernels import swarm as K  # noqa: E402
from learners.particle_swarm import _batched_cross_entropy, native_bf16_products  # noqa: E402
from learners.base import DataInfo  # noqa: E402
from networks import NetworkSpec, build  # noqa: E402

SHAPE = (64, 32, 10)


def gemm_gflops_cpu(n=1024, repeats=20, dtype=torch.float32):
    """Best GEMM rate in GFLOP/s of CPU time (process time, like every timing here, so that
    other load on a shared machine does not inflate the bound)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        a @ b
        best = min(best, max(time.process_time() - t0, 1e-9))
    return 2 * n ** 3 / best / 1e9


def cpu_time(fn, repeats):
    fn()                                              # warm-up (jit, caches)
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats


def pyswarms_iteration(X, y, n_particles, iters):
    """Seconds per iteration of pyswarms' GlobalBestPSO with a per-particle forward pass."""
    import pyswarms as ps
    d, h, c = SHAPE
    n_dims = d * h + h + h * c + c

    def loss_of(p):
        W1 = p[:d * h].reshape(d, h)
        b1 = p[d * h:d * h + h]
        W2 = p[d * h + h:d * h + h + h * c].reshape(h, c)
        b2 = p[d * h + h + h * c:]
        logits = np.tanh(X @ W1 + b1) @ W2 + b2
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -logp[np.arange(len(y)), y].mean()

    def f(swarm):
        return np.array([loss_of(swarm[i]) for i in range(len(swarm))])

    opt = ps.single.GlobalBestPSO(n_particles=n_particles, dimensions=n_dims,
                                  options={"c1": 0.5, "c2": 0.3, "w": 0.9})
    import logging
    logging.getLogger("pyswarms").setLevel(logging.ERROR)
    opt.optimize(f, iters=1, verbose=False)
    t0 = time.process_time()
    opt.optimize(f, iters=iters, verbose=False)
    return (time.process_time() - t0) / iters


def altlearn_state(mode, n_particles, n_in, activation, **params):
    spec = NetworkSpec(widths=(SHAPE[1],), activation=activation).resolve((n_in,), SHAPE[2])
    learner = make_learner("particle_swarm", mode=mode, n_particles=n_particles, **params)
    state = learner.init(build(spec, 0), DataInfo(input_shape=(n_in,), n_classes=SHAPE[2], n_train=1), 0)
    return learner, state


def stage_breakdown(X, y, k, iters, dtypes, peaks):
    """Rows of ms per iteration by stage of the whole-network fitness pass, per fitness dtype; the
    move, the personal/global bests and the call overhead are the full update less the pass."""
    d, h, c = SHAPE
    rows = []
    for dtype in dtypes:
        learner, state = altlearn_state("global", k, X.shape[1], "tanh", reevaluate=False, fitness_dtype=dtype)
        first_dtype = getattr(torch, dtype)

        def staged_round(totals):
            """One update, then a staged pass over the particles it left: the two clocks see the same
            load on a shared machine, and their difference is the rest of the update."""
            t0 = time.process_time()
            learner.update(state, (X, y))
            spent = time.process_time() - t0
            with torch.inference_mode():
                _batched_cross_entropy(state, torch.from_numpy(state.P), X, y, first_dtype, totals)
            return spent

        staged_round({})                                # warm-up
        totals = {}
        t_update = sum(staged_round(totals) for _ in range(iters)) / iters
        first_peak = peaks[dtype]
        bounds = {"first-layer product": 2.0 * k * len(X) * d * h / (first_peak * 1e9),
                  "later layers": 2.0 * k * len(X) * h * c / (peaks["float32"] * 1e9)}
        for stage, total in totals.items():
            ms = 1e3 * total / iters
            bound = bounds.get(stage)
            rows.append([dtype, stage, f"{ms:.2f}", f"{1e3 * bound:.2f}" if bound else "",
                         f"{ms / (1e3 * bound):.2f}x" if bound else ""])
        rest = 1e3 * (t_update - sum(totals.values()) / iters)
        rows.append([dtype, "move, bests, rest of the update", f"{rest:.2f}", "", ""])
        rows.append([dtype, "**iteration**", f"{1e3 * t_update:.2f}", f"{1e3 * sum(bounds.values()):.2f}",
                     f"{t_update / sum(bounds.values()):.2f}x"])
    return rows


def summarise(out):
    import xarray as xr
    reference = ROOT / "benchmarks" / "reference"
    groups = {}
    suffix = {"pso_toy_global_equal_time": " (500 epochs)", "pso_digits_global_equal_time": " (200 epochs)"}
    for experiment in ("pso_toy", "pso_toy_global", "pso_toy_global_equal_time", "pso_digits", "pso_digits_global",
                       "pso_digits_global_equal_time"):
        for path in sorted((reference / experiment).rglob("results.nc")):
            with xr.open_dataset(path) as ds:
                # particle_swarm, particle_swarm_global, backprop
                label = path.parent.parent.name + suffix.get(experiment, "")
                acc = ds["accuracy"].sel(split="test").values
                # steady-state time: the median epoch's training time, so that a first epoch that
                # includes numba compilation (or a burst of other load) does not dominate
                per_epoch = ds["wall_time"].values
                wall = np.median(per_epoch) * np.arange(1, len(per_epoch) + 1)
                groups.setdefault((str(ds["dataset"].values), label), []).append(
                    (int(ds["seed"].values), acc, wall))
    budgets = (2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
    rows = []
    for (dataset, label), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r[0])
        final = np.array([acc[-1] for _, acc, _ in runs])
        at = []
        for b in budgets:
            # accuracy of the last epoch finished within the budget (nan: none finished)
            vals = [acc[np.searchsorted(wall, b, side="right") - 1] if wall[0] <= b else np.nan
                    for _, acc, wall in runs]
            at.append(f"{100 * np.nanmean(vals):.1f}" if not np.all(np.isnan(vals)) else "-")
        rows.append([dataset, label, f"{100 * final.mean():.2f}", f"{100 * final.min():.2f}",
                     " ".join(f"{100 * v:.2f}" for v in final), f"{np.mean([w[-1] for *_, w in runs]):.1f}", *at])
    notes = ("Final-epoch test accuracy (%) over seeds, training time (s: median recorded epoch time x epochs, "
             "wall clock on a shared 2-core machine with two other single-thread jobs running, all runs made "
             "together, so their times compare), and the mean test accuracy of the last epoch "
             "finished within each training-time budget on that clock (a run that finished earlier keeps "
             "its final value). Sources: "
             "benchmarks/reference/pso_*/**/results.nc.")
    return write_table(out, "PSO experiments: accuracy against training time",
                       ["dataset", "learner", "mean acc", "worst seed", "per seed", "train s",
                        *[f"acc @ {b:g} s" for b in budgets]], rows, notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pso.md"))
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(ROOT / "benchmarks" / "results" / "pso_experiments.md"))
        return
    data = load_dataset("digits", seed=0)
    X = data.x_train.reshape(len(data.x_train), -1).astype(np.float64)
    y = data.y_train.astype(np.int64)
    xt, yt = torch.from_numpy(X).float(), torch.from_numpy(y)
    rows = []
    peak = gemm_gflops_cpu()

    # 1. whole-network PSO, 100 particles, full training set
    k = 100
    t_peer = pyswarms_iteration(X, y, k, args.iters)
    learner, state = altlearn_state("global", k, X.shape[1], "tanh", reevaluate=False)
    t_ours = cpu_time(lambda: learner.update(state, (xt, yt)), args.iters)
    gemm_flops = 2.0 * k * len(X) * (SHAPE[0] * SHAPE[1] + SHAPE[1] * SHAPE[2])
    bound = gemm_flops / (peak * 1e9)
    rows.append(["whole-network PSO, 100 particles, one iteration", "pyswarms 1.3 (per-particle loop)",
                 1e3 * t_peer, ""])
    rows.append(["whole-network PSO, 100 particles, one iteration", "altlearn particle_swarm mode=global",
                 1e3 * t_ours, f"{t_peer / t_ours:.1f}x faster; {t_ours / bound:.2f}x the GEMM bound "
                               f"({1e3 * bound:.1f} ms)"])
    peak_bf16 = None
    if native_bf16_products():
        peak_bf16 = gemm_gflops_cpu(dtype=torch.bfloat16)
        learner, state = altlearn_state("global", k, X.shape[1], "tanh", reevaluate=False, fitness_dtype="bfloat16")
        t_bf16 = cpu_time(lambda: learner.update(state, (xt, yt)), args.iters)
        first = 2.0 * k * len(X) * SHAPE[0] * SHAPE[1]
        bound_bf16 = first / (peak_bf16 * 1e9) + (gemm_flops - first) / (peak * 1e9)
        rows.append(["whole-network PSO, 100 particles, one iteration",
                     "altlearn particle_swarm mode=global fitness_dtype=bfloat16", 1e3 * t_bf16,
                     f"{t_peer / t_bf16:.1f}x faster; {t_bf16 / bound:.2f}x the fp32 GEMM bound, "
                     f"{t_bf16 / bound_bf16:.2f}x its own ({1e3 * bound_bf16:.1f} ms)"])

    # 2. neuron-wise sweep (the pso_digits settings: relu, 20 particles, batch 128)
    Xb, yb = xt[:128], yt[:128]
    for kernel in ("numba", "numpy"):
        learner, state = altlearn_state("neuron", 20, X.shape[1], "relu", velocity_clamp=0.05, init_scale=0.2,
                                        kernel=kernel)
        t = cpu_time(lambda: learner.update(state, (Xb, yb)), max(2, args.iters // 4))
        rows.append(["neuron-wise PSO, one sweep over 42 neurons x 20 particles, batch 128",
                     f"altlearn ({kernel} kernel)", 1e3 * t, ""])
    rows[-1][3] = f"numba {rows[-1][2] / rows[-2][2]:.1f}x faster"

    # 3. the swarm move alone (one neuron: 20 particles x 65 weights; and 100 x 2410)
    rng = np.random.default_rng(0)
    for shape in ((20, 65), (100, 2410)):
        P, V, PB = rng.normal(size=shape), np.zeros(shape), rng.normal(size=shape)
        g, r1, r2 = rng.normal(size=shape[1]), rng.random(shape), rng.random(shape)
        times = [cpu_time(lambda: fn(P, V, PB, g, r1, r2, 0.7298, 1.49618, 1.49618, 0.5), 2000 if shape[0] == 20
                          else 200) for fn in (K.pso_move, K.pso_move_numpy)]
        rows.append([f"swarm move, {shape[0]} x {shape[1]}", "numba / numpy", f"{1e6 * times[0]:.1f} us / "
                     f"{1e6 * times[1]:.1f} us", f"numba {times[1] / times[0]:.1f}x faster"])
    dtypes = ["float32"] + (["bfloat16"] if peak_bf16 else [])
    stages = stage_breakdown(xt, yt, k, args.iters, dtypes, {"float32": peak, "bfloat16": peak_bf16})
    stage_table = ("\n## The whole-network iteration by stage\n\n"
                   "100 particles, digits training rows; ms of CPU time per iteration (the fitness pass's own "
                   "clock, `stage_times` of `_batched_cross_entropy`, over the same iterations), and each matrix "
                   "product's bound at the measured GEMM peak of its dtype (the weights' flops, as in the table above). "
                   "The activation, the widening and the cross-entropy have no matrix-multiply bound: they are "
                   "what separates the iteration from its bound.\n\n"
                   + markdown_table(["fitness dtype", "stage", "ms", "GEMM bound ms", "x bound"], stages))
    bf16_note = (f"bf16 GEMM peak {peak_bf16:.1f} GFLOP/s" if peak_bf16 else
                 "no native bf16 products on this CPU, so no bf16 row")
    notes = (f"Machine: {machine_description()}; one thread; fp32 GEMM peak measured {peak:.1f} GFLOP/s, "
             f"{bf16_note}. "
             f"Data: digits training rows ({len(X)} x 64). CPU seconds (process time), {args.iters} iterations "
             "after a warm-up. Command: `python benchmarks/bench_pso.py`.")
    print(write_table(args.out, "Particle swarm: altlearn vs pyswarms, numba vs numpy",
                      ["what", "implementation", "ms", "note"], rows, notes, tail=stage_table))


if __name__ == "__main__":
    main()
