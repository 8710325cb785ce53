"""Training throughput, effective FLOP/s and peak memory of forward-forward and mono-forward beside backprop.

    ALTLEARN_DATA=/path/to/data python -m benchmarks.bench_ff_mf --threads 1 --steps 60

For each learner: ``--steps`` timed training steps (after ``--warmup`` untimed ones) on MNIST batches,
one learner per subprocess so that peak memory (malloc's bytes in use above the level after data and network are
loaded) is not shared. FLOPs per step are counted once with torch's FlopCounterMode (matmuls: for
forward-forward that is its positive, negative and neutral-label passes and the local backward);
effective FLOP/s divided by the fp32 matmul peak measured in the same run with the same threads
gives the fraction of peak; rates are per CPU second of the single thread (see the notes written
with the table). The forward-forward row in the loeweX setting (3x1000, batch 100) also
projects the seconds per 50k-image epoch, to compare with the 41.9 s/epoch measured for the loeweX
code on this machine (2 threads). Writes benchmarks/results/ff_mf.md.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from benchmarks.common import machine_description, matmul_peak_gflops, set_threads, write_table

RESULTS = Path(__file__).resolve().parent / "results" / "ff_mf.md"
LOEWEX_S_PER_EPOCH = 41.9   # loeweX/Forward-Forward, 3x1000, batch 100, 2 threads, this machine (issue #3)

# (row label, learner, hyperparameters, network preset, batch size, data normalisation)
CASES = [
    # Adam is torch's fused kernel by default (optimizer.fused: null); the "(fused: false)" rows
    # are torch's per-tensor Adam, for comparison.
    ("backprop", "backprop", {"optimizer": {"name": "adam", "lr": 1e-3}}, "mlp_2x1000", 128, "global"),
    ("mono_forward", "mono_forward", {"optimizer": {"name": "adam", "lr": 1.5e-3}}, "mlp_2x1000", 128, "global"),
    ("backprop (fused: false)", "backprop", {"optimizer": {"name": "adam", "lr": 1e-3, "fused": False}},
     "mlp_2x1000", 128, "global"),
    ("mono_forward (fused: false)", "mono_forward", {"optimizer": {"name": "adam", "lr": 1.5e-3, "fused": False}},
     "mlp_2x1000", 128, "global"),
    ("forward_forward", "forward_forward", {}, "mlp_2x1000", 100, "none"),
    ("backprop (3x1000, batch 100)", "backprop", {"optimizer": {"name": "sgd", "lr": 1e-3}}, "mlp_3x1000", 100,
     "none"),
    ("forward_forward (loeweX setting)", "forward_forward", {}, "mlp_3x1000", 100, "none"),
]


def _ff_params():
    """The learner settings of experiment=reproduce_ff_mnist (read from the committed config)."""
    from omegaconf import OmegaConf
    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    cfg = OmegaConf.load(configs / "reproduce" / "experiment" / "reproduce_ff_mnist.yaml")
    return OmegaConf.to_container(cfg.learner, resolve=True)


def measure(case, threads: int, steps: int, warmup: int, queue):
    set_threads(threads)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from experiments.datasets import load_dataset
    from experiments.memory import PeakMemory
    from learners import make_learner
    from learners.base import DataInfo
    from networks import build, get_preset

    label, name, params, preset, batch, normalize = case
    if name == "forward_forward":
        params = {**_ff_params(), **params}
    data = load_dataset("mnist", seed=0, normalize_=normalize)
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    spec = get_preset(preset).resolve(data.input_shape, data.n_classes)
    learner = make_learner(name, **params)
    n_train = len(x_all)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=n_train, batch_size=batch,
                    steps_per_epoch=n_train // batch, n_epochs=100)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, n_train, (batch,), generator=gen) for _ in range(warmup + steps + 1)]
    memory = PeakMemory()
    state = learner.init(build(spec, 0), info, 0)
    memory.start()
    with FlopCounterMode(display=False) as counter:
        state, _ = learner.update(state, (x_all[batches[0]], y_all[batches[0]]))
    flops_per_step = counter.get_total_flops()
    for idx in batches[1:warmup + 1]:
        state, _ = learner.update(state, (x_all[idx], y_all[idx]))
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in batches[warmup + 1:]:
        state, _ = learner.update(state, (x_all[idx], y_all[idx]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = memory.stop()
    # the memory sampler thread's own CPU is negligible (it wakes every 5 ms to read /proc)
    queue.put({"label": label, "network": preset, "batch": batch, "samples_per_s": steps * batch / cpu,
               "samples_per_s_wall": steps * batch / wall, "gflops": flops_per_step * steps / cpu / 1e9,
               "flops_per_sample": flops_per_step / batch, "s_per_epoch_50k": 50000 / (steps * batch / cpu),
               "peak_mib": peak / 2**20})


def cpu_matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    """`matmul_peak_gflops` timed in process CPU time: with one thread on a shared machine this is the
    rate the core delivers while the process runs, not diluted by the time other jobs hold it."""
    return matmul_peak_gflops(n, repeats, clock=time.process_time)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    wall_peak_before, peak_before = matmul_peak_gflops(), cpu_matmul_peak_gflops()
    ctx = mp.get_context("spawn")
    rows = []
    for case in CASES:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(case, args.threads, args.steps, args.warmup, queue))
        proc.start()
        result = queue.get()
        proc.join()
        rows.append(result)
        print(result, flush=True)
    wall_peak = max(wall_peak_before, matmul_peak_gflops())
    peak = max(peak_before, cpu_matmul_peak_gflops())
    table = [[r["label"], r["network"], r["batch"], round(r["samples_per_s"]), round(r["samples_per_s_wall"]),
              r["flops_per_sample"] / 1e6, r["gflops"], f"{100 * r['gflops'] / peak:.0f}%", r["s_per_epoch_50k"],
              r["peak_mib"]] for r in rows]
    ff_loewex = next(r for r in rows if r["label"].startswith("forward_forward (loeweX"))
    notes = (f"Machine: {machine_description()}. fp32 matmul peak (1024x1024, best of 20, same threads, "
             f"measured before and after, the larger kept): {peak:.1f} GFLOP/s in process CPU time (`cpu_matmul_peak_gflops`; "
             f"`benchmarks.common.matmul_peak_gflops`, wall clock: {wall_peak:.1f} GFLOP/s). Rates, the "
             f"fraction of peak and the seconds per epoch are per CPU second of the one thread (what a quiet "
             f"machine would give as wall time); `samples/s wall` is what the shared machine gave. "
             f"{args.steps} timed steps after "
             f"{args.warmup} warm-up steps, one learner per process. Command: "
             f"`python -m benchmarks.bench_ff_mf --threads {args.threads} --steps {args.steps}`.\n\n"
             f"forward_forward in the loeweX setting: {ff_loewex['s_per_epoch_50k']:.1f} s per 50k-image epoch "
             f"(training only) against {LOEWEX_S_PER_EPOCH} s for the loeweX code on this machine with 2 threads "
             f"(speed-up {LOEWEX_S_PER_EPOCH / ff_loewex['s_per_epoch_50k']:.2f}x, one thread against two).")
    text = write_table(args.out, "Forward-forward and mono-forward: throughput, FLOP/s, memory",
                       ["run", "network", "batch", "samples/s", "samples/s wall", "MFLOP/sample", "GFLOP/s", "of peak",
                        "s / 50k epoch", "peak MiB"], table, notes)
    print(text)


if __name__ == "__main__":
    main()
