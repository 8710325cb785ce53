"""Continual learning: task streams built from the datasets, and the continual run.

A stream is a list of `Task` records (train/val/test arrays plus the output
units the task uses). `run_stream` trains one learner through it: for each task
``begin_task``, the fit loop's epoch function for ``epochs_per_task`` epochs,
``end_task``, then an evaluation on every task of the stream (seen and not yet
seen). The result is the accuracy matrix ``task_accuracy(trained_task,
eval_task)`` (test split) with ACC, BWT and forgetting (formulas in
`experiments.continual_metrics`), beside the usual per-epoch variables.

Streams (``stream.name``):

- ``permuted_mnist`` (or ``permuted`` over any image/vector dataset): task t
  applies a fixed pixel permutation drawn from ``[stream.seed, t]``; task 0 is
  unpermuted unless ``permute_first``.
- ``split_mnist``, ``split_fashion_mnist`` (or ``split`` over any dataset):
  classes (0, 1), (2, 3), ... one pair per task (``classes_per_task``).

Settings (``stream.setting``):

- ``task``: task-incremental. Every task has its own output units (one head per
  task); the task id picks them at test time, and during training the other
  units are masked out of the network's head (their logits set to -1e9, which
  gives them zero gradient under softmax cross-entropy) for learners that score
  through ``state.network.head``.
- ``domain``: one shared head of ``classes_per_task`` units; labels are the
  position within the task (split: 0/1; permuted: the digit).
- ``class``: one shared head over all classes, no task id at test.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from experiments.continual_metrics import continual_metrics
from experiments.datasets import Dataset
from core.errors import ConfigError
from experiments.fit import (FitResult, LoopConfig, Phase, _network_name, as_spec, evaluate, run_phases, split_tensors,
                             train_subset)
from experiments.recording import results_dataset
from learners.base import Learner

STREAMS = {  # name: (kind, dataset it must be built from; None = any)
    "permuted_mnist": ("permuted", "mnist"),
    "split_mnist": ("split", "mnist"),
    "split_fashion_mnist": ("split", "fashion_mnist"),
    "permuted": ("permuted", None),
    "split": ("split", None),
}
SETTINGS = ("task", "domain", "class")
MASK_VALUE = -1e9


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """Which stream and how it is run (the root config key ``stream``)."""

    name: str = "permuted_mnist"
    n_tasks: int | None = None          # None: 10 for permuted, all classes / classes_per_task for split
    setting: str = "domain"             # task | domain | class
    permute_first: bool = False         # permuted: also permute task 0
    classes_per_task: int = 2           # split
    epochs_per_task: int | None = None  # None: loop.n_epochs
    max_train_per_task: int | None = None  # CPU budgets: a fixed seeded subset of each task's train split
    max_test_per_task: int | None = None   # ... and of its val/test splits
    seed: int | None = None             # permutations / subsets; None: the run's seed

    def __post_init__(self):
        if self.name not in STREAMS:
            raise ConfigError(f"stream.name={self.name!r} is not known; allowed: {', '.join(STREAMS)}")
        if self.setting not in SETTINGS:
            raise ConfigError(f"stream.setting={self.setting!r} is not known; allowed: {', '.join(SETTINGS)}")
        for key in ("n_tasks", "epochs_per_task", "max_train_per_task", "max_test_per_task"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise ConfigError(f"stream.{key}={value} must be >= 1 (or null)")
        if self.classes_per_task < 1:
            raise ConfigError(f"stream.classes_per_task={self.classes_per_task} must be >= 1")


@dataclass(kw_only=True)
class Task(Dataset):
    """One task of a stream: a `Dataset` (labels are output-unit indices, ``n_classes`` the stream's
    output units) with its place in the stream and the units it uses."""

    index: int
    classes: tuple[int, ...]
    setting: str = "domain"

    @property
    def task_id_at_test(self) -> bool:
        return self.setting == "task"


@dataclass
class Stream:
    name: str
    tasks: list[Task]
    n_outputs: int
    input_shape: tuple[int, ...]
    setting: str
    dataset: str

    def __len__(self):
        return len(self.tasks)


def build_stream(cfg: StreamConfig, data: Dataset, seed: int = 0) -> Stream:
    """The tasks of ``cfg`` built from ``data`` (a loaded `Dataset`)."""
    kind, needs = STREAMS[cfg.name]
    if needs is not None and data.name != needs:
        raise ConfigError(f"stream.name={cfg.name!r} is built from data={needs}, but data={data.name!r} is "
                          f"loaded; use data={needs}, or stream.name={kind!r} to build it from any dataset")
    if data.task != "classification":
        raise ConfigError(f"continual streams need a classification dataset; data={data.name!r} is {data.task}")
    seed = int(cfg.seed if cfg.seed is not None else seed)
    rng = np.random.default_rng([seed, 7])
    subsets = {split: _subset_index(len(getattr(data, f"x_{split}")),
                                    cfg.max_train_per_task if split == "train" else cfg.max_test_per_task,
                                    np.random.default_rng([seed, 8, i]))
               for i, split in enumerate(("train", "val", "test"))}
    tasks = []
    if kind == "permuted":
        n_tasks = cfg.n_tasks or 10
        n_pixels = int(np.prod(data.input_shape))
        k = data.n_classes
        for t in range(n_tasks):
            perm = np.arange(n_pixels) if (t == 0 and not cfg.permute_first) else rng.permutation(n_pixels)
            offset = t * k if cfg.setting == "task" else 0
            arrays = {}
            for split in ("train", "val", "test"):
                x, y = data.split(split)
                idx = subsets[split]
                x = x[idx].reshape(len(idx), n_pixels)[:, perm].reshape((len(idx),) + data.input_shape)
                arrays[split] = (np.ascontiguousarray(x), (y[idx] + offset).astype(np.int64))
            tasks.append(_task(t, f"permutation {t}", arrays, tuple(range(offset, offset + k)), cfg.setting))
        n_outputs = n_tasks * k if cfg.setting == "task" else k
    else:
        k = cfg.classes_per_task
        max_tasks = data.n_classes // k
        n_tasks = cfg.n_tasks or max_tasks
        if n_tasks > max_tasks:
            raise ConfigError(f"stream.n_tasks={n_tasks} needs {n_tasks * k} classes but data={data.name!r} has "
                              f"{data.n_classes} (stream.classes_per_task={k}); allowed: at most {max_tasks}")
        for t in range(n_tasks):
            group = np.arange(t * k, (t + 1) * k)
            arrays = {}
            for split in ("train", "val", "test"):
                x, y = data.split(split)
                keep = np.isin(y, group)
                x, y = x[keep], y[keep]
                idx = _subset_index(len(x), cfg.max_train_per_task if split == "train" else cfg.max_test_per_task,
                                    np.random.default_rng([seed, 9, t, len(split)]))
                x, y = x[idx], y[idx]
                # class-incremental and task-incremental keep the global label (its own unit);
                # domain-incremental shares units 0..k-1 across tasks.
                arrays[split] = (x, (y - t * k if cfg.setting == "domain" else y).astype(np.int64))
            units = tuple(range(k)) if cfg.setting == "domain" else tuple(int(c) for c in group)
            tasks.append(_task(t, "classes " + ",".join(str(c) for c in group), arrays, units, cfg.setting))
        n_outputs = k if cfg.setting == "domain" else n_tasks * k
    for task in tasks:
        task.n_classes = n_outputs
    return Stream(name=cfg.name, tasks=tasks, n_outputs=n_outputs, input_shape=data.input_shape,
                  setting=cfg.setting, dataset=data.name)


def _subset_index(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, int(limit), replace=False))


def _task(index, name, arrays, classes, setting) -> Task:
    return Task(index=index, name=name, x_train=arrays["train"][0], y_train=arrays["train"][1],
                x_val=arrays["val"][0], y_val=arrays["val"][1], x_test=arrays["test"][0],
                y_test=arrays["test"][1], classes=classes, setting=setting)


class HeadMask:
    """Forward hook on the network's head: logits of units outside ``units`` are set to a large negative.

    Task-incremental training with one head per task: softmax cross-entropy then
    gives the other tasks' units zero gradient. A picklable callable (not a closure).
    """

    def __init__(self, n_outputs: int):
        self.allowed = None
        self.n_outputs = n_outputs

    def set(self, units):
        if units is None:
            self.allowed = None
        else:
            mask = torch.zeros(self.n_outputs, dtype=torch.bool)
            mask[list(units)] = True
            self.allowed = mask

    def __call__(self, module, inputs, output):
        if self.allowed is None:
            return output
        return output.masked_fill(~self.allowed.to(output.device), MASK_VALUE)


@dataclass
class ContinualRecorder:
    """What a continual run has measured so far; turned into one xarray Dataset."""

    n_tasks: int
    records: list[dict] = field(default_factory=list)          # per epoch, as fit records them
    epoch_task_acc: list[list[float]] = field(default_factory=list)
    matrix: np.ndarray = None
    task_metrics: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    task_wall: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.matrix = np.full((self.n_tasks, self.n_tasks), np.nan)


def run_stream(learner: Learner, network, stream: Stream, *, loop: LoopConfig = LoopConfig(),
               epochs_per_task: int | None = None, seed: int = 0, callbacks=(), out_dir=None,
               coords: dict | None = None, attrs: dict | None = None, resume: bool = False) -> FitResult:
    """Train ``learner`` through ``stream``; results hold the accuracy matrix and ACC/BWT/forgetting.

    The engine is the fit loop's (`experiments.fit.run_phases`, one phase per task), so every loop
    feature works here too: observers (``loop.alignment``, ``loop.cka``, on the current task's
    data), per-block metrics (on the current task's validation split), early stopping (ends the
    current task's epochs), time and FLOPs budgets (end the stream).

    Per-epoch ``accuracy(epoch, split)``: ``train`` on the current task's
    training data (at most ``loop.eval_train_max`` samples), ``val``/``test``
    the mean over all tasks of the stream; at the last epoch the test value is
    ACC. ``task_accuracy(trained_task, eval_task)`` is the test accuracy on
    eval_task after training (and ``end_task`` of) trained_task.
    """
    if "classification" not in learner.tags.tasks:
        raise ConfigError(f"learner {learner.name!r} does not do classification; continual streams need it")
    if loop.augment is not None:
        raise ConfigError("loop.augment is for single image datasets; a continual stream's tasks (permuted "
                          "or split images) are not augmented: set loop.augment=null")
    epochs_per_task = int(epochs_per_task or loop.n_epochs)
    n_tasks = len(stream)
    spec = as_spec(network).resolve(stream.input_shape, stream.n_outputs)
    device = loop.device
    tensors = [split_tensors(t, device) for t in stream.tasks]
    phases = []
    for t, task in enumerate(stream.tasks):
        block = tensors[t]["val"] if len(task.x_val) else tensors[t]["test"]
        phases.append(Phase(data=task, epochs=epochs_per_task, train=tensors[t]["train"], block_eval=block,
                            task=task))
    head_mask = HeadMask(stream.n_outputs) if stream.setting == "task" else None
    rec = ContinualRecorder(n_tasks)
    started = {}

    def setup(run):
        if head_mask is not None and getattr(getattr(run.state, "network", None), "head", None) is not None:
            run.state.network.head.register_forward_hook(head_mask)

    @contextlib.contextmanager
    def training(phase):
        """Task-incremental: the other tasks' units are masked out of the head while this one trains."""
        if head_mask is not None:
            head_mask.set(phase.task.classes)
        try:
            yield
        finally:
            if head_mask is not None:
                head_mask.set(None)

    def eval_on(run, task, x, y):
        """Scores of ``task``'s data; with task ids at test, only its own units count."""
        if head_mask is not None:
            head_mask.set(task.classes)
        classes = task.classes if stream.setting == "task" else None
        try:
            return evaluate(learner, run.state, x, y, "classification", loop.eval_batch_size, classes=classes)
        finally:
            if head_mask is not None:
                head_mask.set(None)

    def test_accuracies(run):
        return [eval_on(run, other, *tensors[j]["test"])["accuracy"] for j, other in enumerate(stream.tasks)]

    def evaluate_epoch(run, phase, record):
        t = phase.task.index
        started.setdefault(t, time.perf_counter())
        record["trained_task"] = t
        per_task = {split: [eval_on(run, other, *tensors[j][split]) for j, other in enumerate(stream.tasks)]
                    for split in ("val", "test")}
        for split, results in per_task.items():
            if results and results[0]:
                for key in ("accuracy", "loss"):
                    record.setdefault(key, {})[split] = float(np.mean([r[key] for r in results]))
        for key, value in eval_on(run, phase.task, *train_subset(phase.train, loop.eval_train_max, seed)).items():
            record.setdefault(key, {})["train"] = value
        rec.epoch_task_acc.append([r["accuracy"] for r in per_task["test"]])

    def on_task_end(run, phase, evaluated):
        t = phase.task.index
        # early stopping ends a task after its evaluation: the matrix row then needs the state after end_task
        rec.matrix[t] = rec.epoch_task_acc[-1] if evaluated else test_accuracies(run)
        rec.task_wall.append(time.perf_counter() - started.get(t, time.perf_counter()))
        for name, values in learner.task_metrics(run.state).items():
            rec.task_metrics.setdefault(name, {})[t] = [float(v) for v in values]

    def restore(saved):
        nonlocal rec
        rec, old_started = saved
        started.update(old_started)

    def dataset(run, attrs):
        rec.records = run.records
        ds = continual_dataset(rec, coords=coords_, attrs=attrs)
        return ds.merge(continual_metrics(ds["task_accuracy"]))

    coords_ = {"learner": learner.name, "seed": seed, "dataset": stream.name, "network": _network_name(network),
               **(coords or {})}
    attrs = {"block_split": "val", "stream": stream.name, "setting": stream.setting, "n_tasks": n_tasks,
             "epochs_per_task": epochs_per_task, "task_names": [t.name for t in stream.tasks], **(attrs or {})}
    return run_phases(learner, spec, phases, loop=loop, seed=seed, task="classification", callbacks=callbacks,
                      evaluate_epoch=evaluate_epoch, make_dataset=dataset, out_dir=out_dir, attrs=attrs,
                      on_task_end=on_task_end, setup=setup, training=training, n_outputs=stream.n_outputs,
                      resume=resume, extra_state=(lambda: (rec, started), restore))


def continual_dataset(rec: ContinualRecorder, *, coords: dict, attrs: dict) -> xr.Dataset:
    """The per-epoch Dataset of `experiments.recording` plus the continual variables."""
    ds = results_dataset(rec.records, coords=coords, attrs=attrs) if rec.records else \
        xr.Dataset(coords=coords, attrs=attrs)
    tasks = np.arange(rec.n_tasks)
    ds = ds.assign_coords(trained_task=tasks, eval_task=tasks)
    ds["task_accuracy"] = (("trained_task", "eval_task"), rec.matrix.copy())
    ds["task_accuracy"].attrs["description"] = "test accuracy on eval_task after training trained_task"
    if rec.epoch_task_acc:
        ds["epoch_task_accuracy"] = (("epoch", "eval_task"), np.array(rec.epoch_task_acc))
    wall = np.full(rec.n_tasks, np.nan)
    wall[:len(rec.task_wall)] = rec.task_wall
    ds["task_wall_time"] = (("trained_task",), wall)
    if rec.task_metrics:
        n_layers = max(len(v) for per_task in rec.task_metrics.values() for v in per_task.values())
        ds = ds.assign_coords(layer=np.arange(n_layers))
        for name, per_task in rec.task_metrics.items():
            arr = np.full((rec.n_tasks, n_layers), np.nan)
            for t, values in per_task.items():
                arr[t, :len(values)] = values
            ds[f"task_{name}"] = (("trained_task", "layer"), arr)
    return ds


def stream_config(cfg_stream) -> StreamConfig:
    """A `StreamConfig` from the config's ``stream`` mapping, naming unknown keys."""
    params = dict(cfg_stream)
    known = {f.name for f in dataclasses.fields(StreamConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"stream has no key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return StreamConfig(**params)


def run_from_config(cfg, learner, data, network, loop, *, out_dir=None, coords=None, attrs=None,
                    resume: bool = False) -> FitResult:
    """Entry point of the app when the root config key ``stream`` is set."""
    from omegaconf import OmegaConf
    stream_cfg = stream_config(OmegaConf.to_container(cfg.stream, resolve=True))
    stream = build_stream(stream_cfg, data, seed=int(cfg.seed))
    return run_stream(learner, network, stream, loop=loop, epochs_per_task=stream_cfg.epochs_per_task,
                      seed=int(cfg.seed), out_dir=out_dir, coords=coords, attrs=attrs, resume=resume)
