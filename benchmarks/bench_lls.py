"""LLS vs backprop on the same ConvNet: time per epoch, memory, multiply-accumulates per sample.

    python benchmarks/bench_lls.py                       # smallconv, MNIST-shaped input, batch 128
    python benchmarks/bench_lls.py --steps 30 --network smallconv --out benchmarks/results/lls.md
    python benchmarks/bench_lls.py summarize benchmarks/reference/reproduce_lls_mnist   # results table

Per learner and thread count: ``--steps`` timed training steps after 3 warm-up steps on one
fixed batch (data loading is not timed), taken in interleaved rounds of 2 steps per case, scaled
to a 60000-image MNIST epoch (469 steps of 128, the epoch of LLS-DNN's main.py). Both the wall
time and the process CPU time are given: on a shared machine the CPU time is the steadier figure.
Memory: (a) the peak of the tensors autograd keeps for the backward pass (measured with saved-tensor
hooks, machine-independent; parameters excluded), (b) the peak heap in use (malloc's count) of a fresh process
over the timed steps.
MACs per sample: torch's FlopCounterMode over one training step / 2 / batch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description, markdown_table, matmul_peak_gflops, set_threads, write_table  # noqa: E402
from experiments.heap import retain_freed_memory  # noqa: E402

EPOCH_IMAGES = 60000
CASES = {
    # name: (learner, hyperparameters, channels_last input for the benchmark's own backprop copy)
    "backprop": ("backprop", {"optimizer": {"name": "adam", "lr": 1e-3}}, False),
    "backprop (channels-last)": ("backprop", {"optimizer": {"name": "adam", "lr": 1e-3}}, True),
    "lls": ("lls", {}, False),
    "lls (contiguous layout)": ("lls", {"channels_last": False}, False),
    "lls_mxm": ("lls", {"variant": "lls_mxm"}, False),
    "reference-style lls": ("reference", {}, False),
}


class ReferenceStyleLLS:
    """LLS computed the way LLS-DNN's LLS_layer does it (from the spec, not its code), as the baseline
    for the speed claim: contiguous NCHW maps, torch's adaptive_avg_pool2d, the basis rebuilt at
    every call, one schedule-free AdamW per block and one for the head."""

    def init(self, net, sizes, seed=0):
        from learners._optim import OptimizerConfig, make_optimizer
        from learners.lls import _pool_split
        cfg = OptimizerConfig(name="adamw_schedulefree", lr=5e-3)
        self.net, self.sizes = net, sizes
        self.splits = [_pool_split(b) for b in net.blocks]
        self.opts = [make_optimizer(b.parameters(), cfg) for b in net.blocks] + \
            [make_optimizer(net.head.parameters(), cfg)]
        return self

    def update(self, state, data):
        import torch.nn.functional as F
        from learners._lls_basis import _cached
        x, y = data
        h = x
        for block, k, s, opt in zip(self.net.blocks, self.splits, self.sizes, self.opts):
            a = block[:k](h.detach())
            u = F.adaptive_avg_pool2d(a, s).flatten(1) if a.dim() == 4 else a
            basis = torch.sign(_cached.__wrapped__(10, u.shape[1], "sin", 50.0, 512.0))
            loss = F.cross_entropy(F.normalize(u, dim=1) @ basis.T / 0.5, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            h = block[k:](a).detach()
        loss = F.cross_entropy(self.net.head(h), y)
        self.opts[-1].zero_grad()
        loss.backward()
        self.opts[-1].step()
        return state, {}


def _setup(case: str, network: str, batch: int, seed: int = 0):
    import networks
    from learners import make_learner
    from learners.base import DataInfo
    name, params, channels_last = CASES[case]
    spec = networks.get_preset(network).resolve((1, 28, 28), 10)
    net = networks.build(spec, seed)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    info = DataInfo(input_shape=(1, 28, 28), n_classes=10, n_train=EPOCH_IMAGES, batch_size=batch,
                    steps_per_epoch=math.ceil(EPOCH_IMAGES / batch), n_epochs=1)
    if name == "reference":
        learner = ReferenceStyleLLS()
        state = learner.init(net, make_learner("lls").pool_sizes(net))
    else:
        learner = make_learner(name, **params)
        state = learner.init(net, info, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return learner, state, (x, y)


def time_steps(cases: list[str], network: str, batch: int, steps: int, threads: int) -> dict[str, dict]:
    """Seconds per epoch of each case, timed in interleaved rounds of 2 steps so that a change in the
    machine's load during the measurement hits every case alike."""
    set_threads(threads)
    setups = {case: _setup(case, network, batch) for case in cases}
    for learner, state, data in setups.values():
        for _ in range(3):
            learner.update(state, data)
    wall = {case: 0.0 for case in cases}
    cpu = {case: 0.0 for case in cases}
    for _ in range(max(1, steps // 2)):
        for case, (learner, state, data) in setups.items():
            w0, c0 = time.perf_counter(), time.process_time()
            learner.update(state, data)
            learner.update(state, data)
            wall[case] += time.perf_counter() - w0
            cpu[case] += time.process_time() - c0
    n = 2 * max(1, steps // 2)
    n_steps = math.ceil(EPOCH_IMAGES / batch)
    return {case: {"wall_s_per_epoch": wall[case] / n * n_steps, "cpu_s_per_epoch": cpu[case] / n * n_steps}
            for case in cases}


def macs_per_sample(case: str, network: str, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    learner, state, data = _setup(case, network, batch)
    learner.update(state, data)
    with FlopCounterMode(display=False) as counter:
        learner.update(state, data)
    return counter.get_total_flops() / 2 / batch


class SavedTensorPeak:
    """Peak bytes of the tensors autograd holds for backward (parameters excluded), counted per storage."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.live, self.bytes, self.peak = exclude, {}, 0, 0

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude:
            return t
        if key not in self.live:
            self.bytes += storage.nbytes()
            self.peak = max(self.peak, self.bytes)
            self.live[key] = [0, storage.nbytes()]
        self.live[key][0] += 1
        holder = _Held(t)
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key):
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.bytes -= entry[1]
            del self.live[key]


class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_activation_peak(case: str, network: str, batch: int) -> int:
    learner, state, data = _setup(case, network, batch)
    learner.update(state, data)
    network = state.net if isinstance(state, ReferenceStyleLLS) else state.network
    params = {p.untyped_storage().data_ptr() for p in network.parameters()}
    for module in getattr(state, "extra", {}).values():
        if isinstance(module, torch.nn.Module):
            params |= {p.untyped_storage().data_ptr() for p in module.parameters()}
            params |= {b.untyped_storage().data_ptr() for b in module.buffers()}
    tracker = SavedTensorPeak(params)
    with torch.autograd.graph.saved_tensors_hooks(tracker.pack, tracker.unpack):
        learner.update(state, data)
    return tracker.peak


def peak_heap_subprocess(case: str, network: str, batch: int, steps: int, heap: str = "retain") -> int:
    out = subprocess.run([sys.executable, __file__, "_heap", case, network, str(batch), str(steps), heap],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_heap"])


def _heap_child(case: str, network: str, batch: int, steps: int, heap: str = "retain") -> None:
    from experiments.memory import PeakMemory
    set_threads(1)
    if heap == "retain":
        retain_freed_memory()
    learner, state, data = _setup(case, network, batch)
    memory = PeakMemory()
    memory.start()
    for _ in range(steps):
        learner.update(state, data)
    print(json.dumps({"peak_heap": memory.stop()}))


REFERENCE_TIME = re.compile(r"Time\s+\S+\s+\(\s*(\S+)\)\s+Data\s+\S+\s+\(\s*(\S+)\)")


def time_reference_code(directory: str | Path, batches: int, heap: str, seed: int = 0) -> dict[str, float]:
    """Seconds per MNIST epoch of the authors' LLS code (LLS-DNN's main.py through the CPU launcher
    described in benchmarks/lls_reference_code.py, ``run_cpu.py`` in ``directory``): its own
    ``Time``/``Data`` meters (wall clock) averaged over the first ``batches`` training batches of
    ``--training-mode LLS --waveform square``, one thread. With ``heap='retain'`` glibc gets the
    thresholds experiments/heap.py sets in ours (through its environment variables), for a like-for-like
    figure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LLSREF_THREADS="1",
               LLSREF_MAX_TRAIN_BATCHES=str(batches), LLSREF_MAX_TEST_BATCHES="1", PYTHONUNBUFFERED="1")
    if heap == "retain":
        from experiments import heap as H
        env.update(MALLOC_MMAP_THRESHOLD_=str(H.MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(H.TRIM_THRESHOLD))
    with tempfile.TemporaryDirectory() as save:
        out = subprocess.run([sys.executable, "run_cpu.py", "--seed", str(seed), "--dataset", "MNIST",
                              "--model", "LLS_SmallConv", "--num-epochs", "1", "--lr", "5e-3", "--training-mode",
                              "LLS", "--waveform", "square", "--batch-size", "128", "--test-batch-size", "128",
                              "--optimizer", "AdamWSF", "--print-freq", str(batches - 1), "--save-path", save],
                             cwd=directory, env=env, capture_output=True, text=True)
    found = [REFERENCE_TIME.search(line) for line in (out.stdout + out.stderr).splitlines()]
    found = [m for m in found if m]
    if out.returncode != 0 or not found:
        raise RuntimeError(f"the reference code in {directory} did not report its batch time "
                           f"(exit {out.returncode}):\n{(out.stdout + out.stderr)[-2000:]}")
    per_batch, data = float(found[-1].group(1)), float(found[-1].group(2))
    n_steps = math.ceil(EPOCH_IMAGES / 128)
    return {"wall_s_per_epoch": per_batch * n_steps, "without_data": (per_batch - data) * n_steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="smallconv")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--heap", choices=("retain", "default"), default="retain",
                        help="retain: glibc keeps freed memory, as altlearn's fit does (experiments/heap.py); "
                             "default: glibc's own thresholds")
    parser.add_argument("--reference-code", default=None, metavar="DIR",
                        help="also time the authors' code through the launcher in DIR (see lls_reference_code.py), "
                             "before and after ours, under both heap settings")
    parser.add_argument("--reference-batches", type=int, default=150)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lls.md"))
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    cases = args.cases.split(",")
    set_threads(1)
    reference = []          # the authors' code timed before and after ours, under both heap settings

    def time_reference():
        if args.reference_code:
            reference.append({h: time_reference_code(args.reference_code, args.reference_batches, h)
                              for h in ("default", "retain")})

    time_reference()
    if args.heap == "retain":
        retain_freed_memory()
    gflops = matmul_peak_gflops(512, 10)
    header = ["case"] + [f"{k} ({t} thr)" for t in threads for k in ("s/epoch wall", "s/epoch CPU")] + \
        ["MACs/sample (train step)", "saved activations MiB", "peak heap MiB"]
    timings = {t: time_steps(cases, args.network, args.batch, args.steps, t) for t in threads}
    print(timings, file=sys.stderr, flush=True)
    time_reference()
    rows = []
    for case in cases:
        row = [case]
        for t in threads:
            row += [timings[t][case]["wall_s_per_epoch"], timings[t][case]["cpu_s_per_epoch"]]
        set_threads(1)
        row += [f"{macs_per_sample(case, args.network, args.batch) / 1e6:.2f} M",
                saved_activation_peak(case, args.network, args.batch) / 2 ** 20,
                peak_heap_subprocess(case, args.network, args.batch, max(5, args.steps // 2), args.heap) / 2 ** 20]
        rows.append(row)
    tail = ""
    if reference:
        ours = timings[1]["lls"]["wall_s_per_epoch"] if 1 in timings and "lls" in timings[1] else None
        ref_rows = []
        for h in ("default", "retain"):
            wall = sum(r[h]["wall_s_per_epoch"] for r in reference) / len(reference)
            bare = sum(r[h]["without_data"] for r in reference) / len(reference)
            ref_rows.append([f"authors' code, glibc heap {h}", " / ".join(f"{r[h]['wall_s_per_epoch']:.1f}"
                                                                        for r in reference),
                             wall, bare, f"{wall / ours:.2f}x" if ours else "-", f"{bare / ours:.2f}x" if ours else "-"])
        tail = ("## The authors' code, timed before and after ours (1 thread, wall clock, its own meters over "
                f"{args.reference_batches} batches)\n\n" + markdown_table(
                    ["run", "s/epoch (before / after)", "s/epoch mean", "without data loading",
                     f"mean / ours (lls, heap {args.heap})", "without data / ours"], ref_rows))
    notes = (f"`python benchmarks/bench_lls.py --network {args.network} --batch {args.batch} --steps {args.steps} "
             f"--threads {args.threads}`\n\nMachine: {machine_description()}; fp32 matmul peak at 1 thread "
             f"{gflops:.1f} GFLOP/s when measured (the machine is shared, so wall times vary; CPU times are "
             f"steadier). An epoch is {math.ceil(EPOCH_IMAGES / args.batch)} steps of {args.batch} "
             "(60000 MNIST images), extrapolated from the timed steps (interleaved rounds of 2 steps per case). "
             "reference-style lls: the reference's per-step computation re-implemented (NCHW, torch's adaptive "
             "pooling, basis rebuilt every step). MACs per sample count one training "
             "step (forward, local losses, backward). Saved activations: peak bytes autograd holds for "
             "backward during one step (parameters excluded). Peak heap: malloc's bytes in use (experiments/memory.py) "
             f"in a fresh process over the timed steps, above its level before training. glibc heap: {args.heap} (experiments/heap.py).")
    print(write_table(args.out, f"LLS vs backprop on {args.network}", header, rows, notes, tail=tail))
    return 0


def summarize(folder: str | Path) -> str:
    """``python benchmarks/bench_lls.py summarize FOLDER``: one row per sub-folder (lls, lls_m, lls_mxm,
    backprop) of an LLS experiment, from its results.nc files; written to FOLDER/summary_lls.md."""
    import numpy as np
    from scipy import stats
    from experiments.recording import read_results
    folder = Path(folder)
    rows = []
    for arm in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        runs = [read_results(f) for f in sorted((folder / arm).glob("seed=*/results.nc"))]
        runs = [r for r in runs if r.attrs.get("status") == "complete"]
        if not runs:
            continue
        acc = np.array([float(r["accuracy"].sel(split="test")[-1]) for r in runs]) * 100
        half = stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else 0.0
        block = runs[0].get("block_local_accuracy_eval")
        local = " / ".join(f"{100 * np.mean([float(r['block_local_accuracy_eval'][-1, b]) for r in runs]):.1f}"
                           for b in range(block.shape[1])) if block is not None else "-"
        rows.append([arm, f"{acc.mean():.2f} ± {half:.2f}", len(acc), ", ".join(f"{a:.2f}" for a in acc),
                     float(np.mean([float(r["wall_time"].sum()) for r in runs])),
                     float(np.mean([float(r["flops"][0]) / 2 / int(r.attrs["n_train"]) for r in runs])) / 1e6,
                     int(runs[0].attrs["n_parameters"]), local])
    header = ["arm", "test accuracy % (mean ± 95% CI)", "seeds", "per seed", "train s (total)",
              "MMACs / train sample", "parameters", "local val accuracy % per block"]
    notes = (f"`python benchmarks/bench_lls.py summarize {folder.as_posix()}` from the results.nc files: test "
             "accuracy at the last epoch; train s = training wall time summed over epochs (shared machine, "
             "1 thread); MACs from torch's FlopCounterMode over the first step; local accuracy = argmax of each "
             "block's local logits on the validation split at the last epoch (LLS arms only). Peak memory is "
             "left out: a multirun trains its seeds in one process, so only its first run's figure is meaningful "
             "(see benchmarks/results/lls.md).")
    return write_table(folder / "summary_lls.md", folder.name, header, rows, notes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        print(summarize(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_heap":
        _heap_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
