"""Feedback alignment's modes against backprop and against biotorch: step time, peak memory, accuracy.

    ALTLEARN_DATA=/path/to/data python -m benchmarks.bench_fa              # ~8 CPU minutes, one thread
    ALTLEARN_DATA=/path/to/data python -m benchmarks.bench_fa --quick      # smoke run, a few seconds

biotorch (Sanfiz & Akrout 2021) is the peer library: ``pip install --no-deps biotorch==0.0.16``
(its layers, autograd functions and ``BioModule`` import nothing beyond torch; its declared
dependencies, torchvision, tensorboard, jupyter and more, serve its datasets and trainer, which are
not used). Without it the biotorch parts are skipped with a note. Four parts, one process, one
thread (``--threads``):

1. Speed against backprop. On each MLP (784-1000-1000-10 and 784-256-256-10, ReLU, xavier init,
   batch 128 of MNIST images, Adam lr 1e-3 for everyone) every contender (backprop,
   ``feedback_alignment`` in each mode, biotorch's five modes) trains ``--steps`` steps per block,
   timed in process CPU time. A round runs every mode's group (ours and biotorch's side by side)
   between two blocks of backprop, the groups in an order rotated every round; ``--rounds`` rounds.
   A contender's ratio is the median over rounds of its block time over the mean of its two
   neighbouring backprop blocks, and ours against biotorch's the ratio of the two blocks side by
   side: drift of a shared machine hits both sides of a ratio alike. Where one of
   ours misses its target, torch's profiler says which ops take the extra time. glibc keeps freed
   memory for reuse, as the training loop has it (``experiments.heap``).
2. Peak memory of one training step: the largest sum of live tensor bytes allocated during a step
   above the level held before it (weights, optimiser state; gradients already cleared), from every
   allocation and free torch's CPU allocator reports to its profiler (exact, not sampled).
3. Gradient agreement with biotorch: with the same forward weights and the same feedback matrices
   (ours copied into biotorch's ``weight_backward``), the parameter gradients of one batch, per mode
   (brsf draws fresh magnitudes every batch and is left out).
4. Accuracy: ``--epochs`` epochs of MNIST (55k training images, the same shuffled batches for both
   libraries) on 784-256-256-10 ReLU for each biotorch mode in both libraries and for backprop,
   ``--seeds`` seeds (a seed fixes the initial weights, copied into biotorch's layers, and the batch
   order; the feedback draws are each library's own), test accuracy at the end, CPU time per epoch;
   the two libraries alternate epoch by epoch.

Writes benchmarks/results/fa.md (``--out``), whole or not at all.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import time
import warnings
from pathlib import Path

from benchmarks.common import machine_description, markdown_table, set_threads, write_table

RESULTS = Path(__file__).resolve().parent / "results" / "fa.md"
OUR_MODES = ("fa", "usf", "brsf", "frsf", "dfa", "sdfa", "drtp")
BIO_MODES = ("fa", "usf", "brsf", "frsf", "dfa")
TARGETS = {"fa": 1.15, "usf": 1.15, "brsf": 1.15, "frsf": 1.15, "dfa": 1.0}
LR = 1e-3
BATCH = 128


def import_biotorch():
    """biotorch's BioModule, or None where biotorch is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from biotorch.module.biomodule import BioModule
    except ImportError:
        return None
    return BioModule


# ------------------------------------------------------------------ contenders

class Ours:
    """A learner of this project: backprop or feedback_alignment in one mode."""

    def __init__(self, mode, spec, info, seed):
        from learners import make_learner
        from networks import build
        self.label = "backprop" if mode == "backprop" else f"ours {mode}"
        self.mode = mode
        optimizer = {"name": "adam", "lr": LR}
        self.learner = make_learner("backprop", optimizer=optimizer) if mode == "backprop" else \
            make_learner("feedback_alignment", mode=mode, optimizer=optimizer)
        self.state = self.learner.init(build(spec, seed), info, seed)
        self.optimizer = self.state.optimizer

    def step(self, x, y):
        self.learner.update(self.state, (x, y))

    def predict(self, x):
        return self.learner.predict(self.state, x)


class Bio:
    """biotorch's ``BioModule`` in one mode around a copy of the same network, the same optimiser."""

    def __init__(self, mode, spec, info, seed, bio_module):
        import torch
        import torch.nn.functional as F

        from learners._optim import OptimizerConfig, make_optimizer
        from networks import build
        self.label, self.mode, self.F = f"biotorch {mode}", mode, F
        net = build(spec, seed)          # the same initial weights as ours; biotorch copies them
        torch.manual_seed(10_000 + seed)  # biotorch draws its feedback from torch's global generator
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = bio_module(net, mode=mode, copy_weights=True,
                                    output_dim=spec.n_classes if mode == "dfa" else None)
        self.optimizer = make_optimizer([p for p in self.model.parameters() if p.requires_grad],
                                        OptimizerConfig(name="adam", lr=LR))

    def linears(self):
        import torch.nn as nn
        return [m for m in self.model.module.modules() if isinstance(m, nn.Linear)]

    def loss(self, x, y):
        if self.mode == "dfa":
            out = self.model(x, targets=y, loss_function=self.F.cross_entropy)
        else:
            out = self.model(x)
        return self.F.cross_entropy(out, y)

    def step(self, x, y):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        loss.item()                      # as the learners do: the same synchronisation point

    def predict(self, x):
        import torch
        self.model.eval()
        with torch.no_grad():
            return self.model(x)


def make_contender(name, spec, info, seed, bio_module):
    lib, _, mode = name.partition(" ")
    if lib == "biotorch":
        return Bio(mode, spec, info, seed, bio_module)
    return Ours(mode or lib, spec, info, seed)


# ------------------------------------------------------------------ measurements

def step_peak_bytes(contender, x, y) -> int:
    """Peak live tensor bytes of one training step above the level before it (gradients cleared):
    the running sum of the allocations and frees torch's CPU allocator reports to its profiler.
    Two steps are profiled (the first frees what earlier steps left, e.g. last batch's feedback)
    and the second is counted, from a marker allocation between them."""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    marker_bytes = 1_234_567
    contender.optimizer.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        contender.step(x, y)
        contender.optimizer.zero_grad(set_to_none=True)
        marker = torch.empty(marker_bytes, dtype=torch.uint8)
        del marker
        contender.step(x, y)
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, len(events), node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    start = next(i for i, e in enumerate(events) if e[2] == marker_bytes)
    live = peak = 0
    for _, _, size in events[start + 2:]:   # after the marker's allocation and free
        live += size
        peak = max(peak, live)
    return peak


class Stream:
    """Training batches as views of one shuffled copy of the training set; every contender walks it
    with a cursor of its own, epoch after epoch, as training would. (Repeating a few batches instead
    lets a fast learner overfit them until its gradients and Adam's second moments turn subnormal,
    and subnormal arithmetic slows a CPU step several-fold.)"""

    def __init__(self, x, y, seed=1):
        import torch
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        self.x, self.y = x[order].contiguous(), y[order].contiguous()
        self.n_batches = len(x) // BATCH

    def batch(self, i):
        i = (i % self.n_batches) * BATCH
        return self.x[i:i + BATCH], self.y[i:i + BATCH]

    def run(self, contender, steps):
        start = getattr(contender, "cursor", 0)
        for i in range(start, start + steps):
            contender.step(*self.batch(i))
        contender.cursor = start + steps


def timing_rounds(contenders, flanks, stream, steps, rounds, warmup=3):
    """Process CPU seconds of blocks of ``steps`` steps. The contenders come in groups (ours and
    biotorch's of one mode side by side), each group between two blocks of backprop:
    bp_0, g1, bp_1, g2, ..., bp_G, with one backprop learner per place (``flanks``) so that each
    trains as many steps as every contender; the groups' order rotates every round and the order
    within a group flips. Returns per label the block times (all backprop blocks under "backprop"),
    and under ``("vs bp", label)`` each block's time over the mean of its two backprop neighbours."""
    by_label = {c.label: c for c in contenders}
    for c in [*contenders, *flanks]:
        stream.run(c, warmup)
    groups = {}
    for c in contenders:
        groups.setdefault(c.mode, []).append(c.label)
    groups = list(groups.values())
    assert len(flanks) == len(groups) + 1
    times = {"backprop": [], **{label: [] for label in by_label}, **{("vs bp", label): [] for label in by_label}}

    def block(contender, label):
        t0 = time.process_time()
        stream.run(contender, steps)
        dt = time.process_time() - t0
        times[label].append(dt)
        return dt
    for r in range(rounds):
        before = block(flanks[0], "backprop")
        for k, group in enumerate(groups[r % len(groups):] + groups[:r % len(groups)]):
            got = {label: block(by_label[label], label) for label in (group if r % 2 == 0 else group[::-1])}
            after = block(flanks[k + 1], "backprop")
            for label, dt in got.items():
                times[("vs bp", label)].append(dt / (0.5 * (before + after)))
            before = after
    return times


def paired_ratio(times, label, base="backprop"):
    """Median over rounds of the block time of ``label`` over ``base``'s (backprop: its neighbouring
    blocks; otherwise the block beside it in the same group), with the range."""
    if base == "backprop":
        ratios = times[("vs bp", label)]
    else:
        ratios = [a / b for a, b in zip(times[label], times[base])]
    return statistics.median(ratios), min(ratios), max(ratios)


def excess_ops(contender, baseline, stream, steps, repeats=3, top=4):
    """Where a contender's step time goes beyond backprop's: torch's profiler over ``steps`` steps of
    both, alternately ``repeats`` times, the median self CPU time per step of each op; the ops that
    exceed backprop's most (profiled times run above plain ones: compare them with each other)."""
    from torch.profiler import ProfilerActivity, profile

    def per_op(c):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            stream.run(c, steps)
        return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    runs = {"c": [], "b": []}
    for _ in range(repeats):
        runs["c"].append(per_op(contender))
        runs["b"].append(per_op(baseline))
    med = {k: {op: statistics.median(r.get(op, 0.0) for r in v) for op in set().union(*v)} for k, v in runs.items()}
    diffs = sorted(((ms - med["b"].get(op, 0.0), op) for op, ms in med["c"].items()), reverse=True)[:top]
    totals = {k: statistics.median(sum(r.values()) for r in v) for k, v in runs.items()}
    return totals["c"] - totals["b"], [(op, d) for d, op in diffs if d > 0]


def grad_agreement(mode, spec, info, x, y, bio_module) -> float:
    """Largest |g_ours − g_biotorch| / max|g_biotorch| over the parameter tensors of one batch, with
    the same weights and (copied) feedback."""
    import torch
    ours = Ours(mode, spec, info, 0)
    bio = Bio(mode, spec, info, 0, bio_module)
    layers = bio.linears()
    with torch.no_grad():
        for k, fb in enumerate(ours.state.feedback):
            if mode != "usf":            # usf: s · sign(W), s the same (xavier's std) in both
                layers[k + 1].weight_backward.copy_(fb)
    ours.optimizer.zero_grad(set_to_none=True)
    ours.learner.backward(ours.state, x, y)
    bio.model.train()
    bio.optimizer.zero_grad(set_to_none=True)
    bio.loss(x, y).backward()
    ours_params = [p for p in ours.state.network.parameters()]
    bio_params = [p for p in bio.model.parameters() if p.requires_grad]
    assert len(ours_params) == len(bio_params)
    worst = 0.0
    for a, b in zip(ours_params, bio_params):
        worst = max(worst, float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-30)))
    return worst


def accuracy(contender, x, y, batch=2000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((contender.predict(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def train_pair(pair, data, epochs, seed):
    """Train the contenders of ``pair`` on the same batches, alternating epoch by epoch; returns
    per contender the test accuracy and the CPU seconds of each epoch."""
    import torch
    x_tr, y_tr, x_te, y_te = data
    n_steps = len(x_tr) // BATCH
    cpu = {c.label: [] for c in pair}
    for epoch in range(epochs):
        order = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(1000 * seed + epoch))
        for c in pair:
            t0 = time.process_time()
            for i in range(n_steps):
                idx = order[i * BATCH:(i + 1) * BATCH]
                c.step(x_tr[idx], y_tr[idx])
            cpu[c.label].append(time.process_time() - t0)
    return {c.label: (accuracy(c, x_te, y_te), cpu[c.label]) for c in pair}


# ------------------------------------------------------------------ data

def load_data(quick: bool, max_train: int | None):
    """MNIST (train, test) as tensors, or, for ``--quick`` without the MNIST files, random images
    of MNIST's shape (then the accuracies mean nothing; said in the notes)."""
    import torch

    from core.errors import AltlearnError
    from experiments.datasets import load_dataset
    try:
        options = {"max_train": max_train} if max_train else {}
        ds = load_dataset("mnist", seed=0, download=False, **options)
    except AltlearnError as err:
        if not quick:
            raise
        gen = torch.Generator().manual_seed(0)
        n = max_train or 1024
        x = torch.randn(n + 512, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (n + 512,), generator=gen)
        note = f"random MNIST-shaped data, so the accuracies mean nothing (MNIST not found: {err})"
        return (x[:n], y[:n], x[n:], y[n:]), note
    x_te, y_te = ds.x_test, ds.y_test
    return (torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), torch.from_numpy(x_te),
            torch.from_numpy(y_te)), f"MNIST ({len(ds.x_train)} training, {len(x_te)} test images)"


# ------------------------------------------------------------------ main

def _fmt_pm(values):
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds of every contender")
    parser.add_argument("--steps", type=int, nargs=2, default=(30, 100), metavar=("WIDE", "NARROW"),
                        help="steps per timed block on 784-1000-1000-10 and 784-256-256-10")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep-subnormals", action="store_true",
                        help="time with subnormal floats as they come (by default the speed part flushes them)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small network, 3 steps x 2 rounds, 1 seed, 1 epoch of 1024 images")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import torch

    from experiments.heap import retain_freed_memory
    from learners import DataInfo
    from networks import NetworkSpec

    t_start = time.process_time()
    # biotorch's DFA layers register torch's deprecated non-full backward hooks (it still works: the
    # gradient agreement below checks it); one warning per layer and step would bury the output
    warnings.filterwarnings("ignore", message="Using a non-full backward hook")
    retained = retain_freed_memory()       # as the training loop does (experiments/heap.py), for everyone
    bio_module = import_biotorch()
    bio_note = ("biotorch " + _bio_version() + " (imported as is: its layers, autograd functions and "
                "BioModule need nothing beyond torch, no compatibility shim)") if bio_module else \
        "biotorch is not installed (`pip install --no-deps biotorch==0.0.16`): its columns and parts are skipped"
    if args.quick:
        nets = [("784-64-64-10", (64, 64), 3)]
        rounds, epochs, seeds, max_train = 2, 1, 1, 1024
    else:
        nets = [("784-1000-1000-10", (1000, 1000), args.steps[0]), ("784-256-256-10", (256, 256), args.steps[1])]
        rounds, epochs, seeds, max_train = args.rounds, args.epochs, args.seeds, None
    data, data_note = load_data(args.quick, max_train)
    x_tr, y_tr = data[0], data[1]

    names = ["backprop", *[f"ours {m}" for m in OUR_MODES]]
    if bio_module:
        names += [f"biotorch {m}" for m in BIO_MODES]

    # ---- 1 & 2: speed and memory
    speed, memory, profiles = {}, {}, {}
    # Adam's first moment of a weight whose gradient is exactly zero (a dead ReLU unit) shrinks by
    # 0.9 a step and passes through the subnormal range some 750 steps after the unit died; subnormal
    # arithmetic slows the optimiser step of whichever learner has the most such weights at the time.
    # That is the trajectory's cost, not the implementation's: flushed here, for every contender.
    torch.set_flush_denormal(not args.keep_subnormals)
    stream = Stream(x_tr, y_tr)
    for net_label, widths, steps in nets:
        spec = NetworkSpec(kind="mlp", widths=widths, activation="relu", init="xavier").resolve((1, 28, 28), 10)
        info = DataInfo(input_shape=(1, 28, 28), n_classes=10, n_train=len(x_tr), batch_size=BATCH,
                        steps_per_epoch=len(x_tr) // BATCH, n_epochs=100)
        contenders = [make_contender(n, spec, info, 0, bio_module) for n in names[1:]]
        flanks = [make_contender("backprop", spec, info, 0, bio_module)
                  for _ in range(len({c.mode for c in contenders}) + 1)]
        memory[net_label] = {c.label: step_peak_bytes(c, *stream.batch(0)) for c in [flanks[0], *contenders]}
        speed[net_label] = timing_rounds(contenders, flanks, stream, steps, rounds)
        speed[net_label]["_steps"] = steps
        by_label = {c.label: c for c in contenders}
        for mode, target in TARGETS.items():
            if paired_ratio(speed[net_label], f"ours {mode}")[0] > target:
                profiles[(net_label, mode)] = excess_ops(by_label[f"ours {mode}"], flanks[0], stream, min(steps, 30))
        print(f"{net_label}: timed", flush=True)

    torch.set_flush_denormal(False)

    # ---- 3: gradient agreement
    grads = {}
    if bio_module:
        spec = NetworkSpec(kind="mlp", widths=nets[-1][1], activation="relu", init="xavier").resolve((1, 28, 28), 10)
        info = DataInfo(input_shape=(1, 28, 28), n_classes=10, n_train=len(x_tr), batch_size=BATCH)
        x, y = x_tr[:BATCH], y_tr[:BATCH]
        grads = {m: grad_agreement(m, spec, info, x, y, bio_module) for m in ("fa", "usf", "frsf", "dfa")}

    # ---- 4: accuracy
    spec = NetworkSpec(kind="mlp", widths=nets[-1][1], activation="relu", init="xavier").resolve((1, 28, 28), 10)
    info = DataInfo(input_shape=(1, 28, 28), n_classes=10, n_train=len(x_tr), batch_size=BATCH,
                    steps_per_epoch=len(x_tr) // BATCH, n_epochs=epochs)
    acc = {}                          # label -> list of (accuracy, [epoch cpu s])
    for seed in range(seeds):
        for mode in ("backprop", *BIO_MODES):
            pair = [Ours(mode, spec, info, seed)]
            if bio_module and mode != "backprop":
                pair.append(Bio(mode, spec, info, seed, bio_module))
            for label, result in train_pair(pair, data, epochs, seed).items():
                acc.setdefault(label, []).append(result)
        print(f"seed {seed}: trained", flush=True)

    total_cpu = time.process_time() - t_start
    bio_note += (". glibc keeps freed memory for reuse, as in training (`experiments.heap`)" if retained else "")
    text = write_report(args, nets, names, speed, memory, profiles, grads, acc, data_note, bio_note,
                        bio_module is not None, epochs, seeds, total_cpu)
    print(text)


def _bio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("biotorch")
    except PackageNotFoundError:
        return "(unpacked source)"


def write_report(args, nets, names, speed, memory, profiles, grads, acc, data_note, bio_note, have_bio, epochs,
                 seeds, total_cpu):
    command = "python -m benchmarks.bench_fa" + (" --quick" if args.quick else "")
    if args.threads != 1:
        command += f" --threads {args.threads}"
    if not args.quick and (args.rounds != 21 or tuple(args.steps) != (30, 100)):
        command += f" --rounds {args.rounds} --steps {args.steps[0]} {args.steps[1]}"
    if args.keep_subnormals:
        command += " --keep-subnormals"
    if not args.quick and (args.epochs != 3 or args.seeds != 3):
        command += f" --epochs {args.epochs} --seeds {args.seeds}"
    rounds = len(next(iter(speed.values()))[("vs bp", names[1])])
    subnormals = "subnormal floats as they come" if args.keep_subnormals else (
        "subnormal floats flushed to zero (`torch.set_flush_denormal`): Adam's moments of dead ReLU units "
        "decaying through the subnormal range would otherwise slow whichever learner has most of them at "
        "the moment (`--keep-subnormals` times them as they come)")
    steps_note = " and ".join(f"{speed[label]['_steps']} ({label})" for label, _, _ in nets)
    notes = (f"Command: `ALTLEARN_DATA=/path/to/data {command}`.\n\n"
             f"Machine: {machine_description()}; shared with other jobs while this ran, so every time is "
             f"process CPU time of the one thread and every ratio is taken within a round (see the script's "
             f"docstring). Data: {data_note}. {bio_note}. Whole run: {total_cpu / 60:.1f} CPU minutes.\n\n"
             f"Speed: MLPs with ReLU and xavier init, batch {BATCH}, Adam lr {LR:g} (torch's fused kernel, "
             f"the project's default) for every contender, biotorch included; {subnormals}. "
             f"Blocks of {steps_note} steps; a "
             f"round runs every mode's group (ours and biotorch's side by side) between two blocks of "
             f"backprop, the groups' order rotated every round; {rounds} rounds. `ms/step`: median over "
             f"blocks; `× backprop`: median over rounds of the contender's block time over the mean of its "
             f"two neighbouring backprop blocks [min–max over rounds]. Targets: fa and the sign modes "
             f"within 1.15x backprop, dfa at most 1.0x. `peak step KiB`: the largest sum of live tensor "
             f"bytes allocated during one "
             f"training step above the level before it (weights and optimiser state held, gradients "
             f"cleared), from the allocations and frees torch's CPU allocator reports to its profiler.")
    header = ["network", "contender", "ms/step", "× backprop [min–max]", "target", "peak step KiB",
              "memory × backprop"]
    rows = []
    for net_label, _, _ in nets:
        times, steps = speed[net_label], speed[net_label]["_steps"]
        mem = memory[net_label]
        for name in names:
            ms = 1e3 * statistics.median(times[name]) / steps
            med, lo, hi = (1.0, 1.0, 1.0) if name == "backprop" else paired_ratio(times, name)
            mode = name.split(" ")[-1]
            target = ""
            if name.startswith("ours") and mode in TARGETS:
                target = f"≤ {TARGETS[mode]:.2f} ({'met' if med <= TARGETS[mode] else 'missed'})"
            ratio = "1" if name == "backprop" else f"{med:.3f} [{lo:.2f}–{hi:.2f}]"
            rows.append([net_label, name, f"{ms:.2f}", ratio, target, f"{mem[name] / 1024:.1f}",
                         f"{mem[name] / mem['backprop']:.4f}"])

    tail = []
    if profiles:
        tail.append("## Where the missed targets' time goes\n\ntorch's profiler over the same steps (a block, at "
                    "most 30) of the contender and of backprop, alternately 3 times each (medians): the ops whose "
                    "self CPU time "
                    "per step exceeds backprop's most, and the whole excess (profiled times run above the plain "
                    "ones; compare them with each other).\n")
        prow = [[net_label, mode, f"{total:+.2f}", "; ".join(f"`{op}` {d:+.2f}" for op, d in ops)]
                for (net_label, mode), (total, ops) in profiles.items()]
        tail.append(markdown_table(["network", "mode", "excess ms/step", "largest excess ops (ms/step)"], prow))
    if have_bio:
        tail.append("## Ours against biotorch: step time\n\nSame rounds as above: `biotorch / ours` is the median "
                    "over rounds of biotorch's block time over ours beside it [min–max]; above 1 ours "
                    "is faster. `s/epoch` projects the median step time to an epoch of "
                    f"{55000 // BATCH} steps (MNIST's 55k training images, batch {BATCH}).\n")
        brows = []
        for net_label, _, _ in nets:
            times, steps = speed[net_label], speed[net_label]["_steps"]
            for mode in BIO_MODES:
                ours, bio = f"ours {mode}", f"biotorch {mode}"
                med, lo, hi = paired_ratio(times, bio, base=ours)
                per_epoch = (55000 // BATCH) / steps
                brows.append([net_label, mode, f"{statistics.median(times[ours]) * per_epoch:.2f}",
                              f"{statistics.median(times[bio]) * per_epoch:.2f}", f"{med:.3f} [{lo:.2f}–{hi:.2f}]",
                              "met" if med >= 1.5 else "missed",
                              f"{memory[net_label][ours] / 1024:.1f}", f"{memory[net_label][bio] / 1024:.1f}"])
        tail.append(markdown_table(["network", "mode", "ours s/epoch", "biotorch s/epoch", "biotorch / ours",
                                    "target ≥ 1.5", "ours peak step KiB", "biotorch peak step KiB"], brows))
        tail.append("\n## Gradient agreement with biotorch\n\nOne batch of 128 on 784-256-256-10, the same "
                    "weights, ours feedback copied into biotorch's `weight_backward` (usf: both use "
                    "s·sign(W) with s the xavier std); the largest |g_ours − g_biotorch| / max|g_biotorch| over "
                    "the parameter tensors.\n")
        tail.append(markdown_table(["mode", "max relative difference"], [[m, f"{v:.1e}"] for m, v in grads.items()]))

    tail.append(f"\n## Accuracy: {epochs} epoch(s) of MNIST, 784-256-256-10 ReLU, {seeds} seed(s)\n\n"
                f"Adam lr {LR:g}, batch {BATCH}, the same shuffled batches and initial forward weights in both "
                "libraries for a seed; feedback drawn by each library. Test accuracy (%): mean ± standard "
                "deviation over seeds [min–max]. `agree` when the difference of the means is within twice "
                "the standard error of that difference (√(sd₁²/n + sd₂²/n)), i.e. within seed noise. "
                "`CPU s/epoch`: median over epochs and seeds of the training epochs in these runs (numerics "
                "untouched: subnormals as they come).\n")
    arows = []
    for mode in ("backprop", *BIO_MODES):
        ours_label = "backprop" if mode == "backprop" else f"ours {mode}"
        a = [r[0] for r in acc[ours_label]]
        ours_epoch = statistics.median([t for r in acc[ours_label] for t in r[1]])
        m1, s1 = _fmt_pm(a)
        row = [mode, f"{m1:.2f} ± {s1:.2f} [{min(a):.2f}–{max(a):.2f}]", f"{ours_epoch:.2f}"]
        bio_label = f"biotorch {mode}"
        if have_bio and bio_label in acc:
            b = [r[0] for r in acc[bio_label]]
            m2, s2 = _fmt_pm(b)
            bio_epoch = statistics.median([t for r in acc[bio_label] for t in r[1]])
            se = math.sqrt((s1 ** 2 + s2 ** 2) / len(a))
            agree = "yes" if abs(m1 - m2) <= 2 * se else "no"
            row += [f"{m2:.2f} ± {s2:.2f} [{min(b):.2f}–{max(b):.2f}]", f"{bio_epoch:.2f}", f"{m1 - m2:+.2f}",
                    f"{agree} (2·se {2 * se:.2f})"]
        else:
            row += ["", "", "", ""]
        arows.append(row)
    tail.append(markdown_table(["mode", "ours accuracy", "ours CPU s/epoch", "biotorch accuracy",
                                "biotorch CPU s/epoch", "ours − biotorch", "agree"], arows))
    return write_table(args.out, "Feedback alignment: speed and memory against backprop, and against biotorch",
                       header, rows, notes, tail="\n".join(tail))


if __name__ == "__main__":
    main()
