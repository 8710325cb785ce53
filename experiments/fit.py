"""The one fit loop, used by every learner, the CLI, the demos and the tests."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from experiments.augment import Augment
from experiments.callbacks import Callback, ProgressBar, StopTraining
from experiments.checkpoint import load_checkpoint, save_checkpoint, set_global_random_state
from experiments.datasets import Dataset
from core.errors import ConfigError, TrainingDiverged
from experiments.health import RunHealthWarning, health_check
from experiments.heap import retain_freed_memory
from experiments.memory import PeakMemory
from experiments.recording import provenance, results_dataset, write_results
from learners.base import DataInfo, Learner
from networks import Network, NetworkSpec, build, get_preset


@dataclass(frozen=True, kw_only=True)
class EarlyStopping:
    """Stop when ``metric`` on ``split`` has not improved for ``patience`` epochs."""

    metric: str = "accuracy"
    split: str = "val"
    patience: int = 5
    mode: str = "max"
    min_delta: float = 0.0


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    n_epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 2048
    eval_train_max: int | None = 10000   # evaluate train accuracy on at most this many (fixed) samples
    early_stopping: EarlyStopping | None = None
    shuffle: bool = True
    drop_last: bool = False
    threads: int | None = None
    # glibc keeps freed tensor memory for reuse instead of returning it to the OS (experiments/heap.py:
    # page faults were 15-25% of a smallconv training step without it)
    retain_freed_memory: bool = True
    # subnormal floats flushed to zero on the CPU: weights pushed towards zero end up subnormal, and every
    # product with one is many times slower (a NoProp-FM step on MNIST: 43 ms instead of 5.8 ms after 18
    # epochs, with a fifth of its head's weights subnormal)
    flush_denormal: bool = True
    progress: bool = True
    count_flops: bool = True
    device: str = "cpu"
    # observers (callbacks; they never change learning): experiments.alignment.Alignment and
    # experiments.cka.CKAToBackprop, recording block_align_* per epoch and block_cka_backprop at the end
    alignment: bool = False
    cka: bool = False
    # training-batch augmentation of images (experiments/augment.py), e.g. {crop_padding: 4, hflip: true,
    # erase_prob: 0.2}
    augment: Augment | None = None
    # budgets: training stops (mid-epoch if need be, then evaluates) once its training time or its
    # training FLOPs pass these; n_epochs stays the upper bound and sets the learners' schedules
    time_budget_s: float | None = None
    flops_budget: float | None = None
    # false while tuning: the test split is never evaluated, so no choice can lean on it
    eval_test: bool = True

    def __post_init__(self):
        if isinstance(self.early_stopping, dict):
            object.__setattr__(self, "early_stopping", EarlyStopping(**self.early_stopping))
        if isinstance(self.augment, dict):
            try:
                object.__setattr__(self, "augment", Augment(**self.augment))
            except TypeError as err:
                raise ConfigError(f"loop.augment={self.augment!r}: {err}; "
                                  "keys: crop_padding, hflip, erase_prob") from err
        if self.augment is not None and not self.augment.active:
            object.__setattr__(self, "augment", None)
        for key in ("time_budget_s", "flops_budget"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"loop.{key}={value!r}: give a positive number, or null for no budget")
        if self.n_epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"loop.n_epochs and loop.batch_size must be >= 1, got {self.n_epochs}, "
                              f"{self.batch_size}")


@dataclass
class Run:
    """A fit in progress; callbacks read it."""

    learner: Learner
    network: Network
    data: Dataset
    loop: LoopConfig
    seed: int
    info: DataInfo
    state: object = None
    epoch: int = 0
    step: int = 0
    records: list[dict] = field(default_factory=list)
    status: str = "running"
    train_time: float = 0.0     # training seconds so far (updates only), for loop.time_budget_s
    train_flops: float = 0.0    # training FLOPs so far, for loop.flops_budget
    stopped_by: str | None = None   # the budget that ended training early, if any
    augment_rng: np.random.Generator | None = None   # loop.augment's draws
    pad_value: float | tuple = 0.0                   # what a raw 0 pixel is after normalisation (per channel)
    resumed_order_rng: np.random.Generator | None = None   # the shuffling stream a checkpoint held
    # the results so far as the engine writes them, for an observer that saves a run it shows mid-way
    snapshot: object = None

    @property
    def n_epochs(self) -> int:
        return self.loop.n_epochs

    @property
    def total_steps(self) -> int:
        return self.info.total_steps


@dataclass
class FitResult:
    state: object
    results: "xarray.Dataset"  # noqa: F821
    run: Run


def as_spec(network) -> NetworkSpec:
    if isinstance(network, NetworkSpec):
        return network
    if isinstance(network, str):
        return get_preset(network)
    if isinstance(network, dict):
        # a null field is one the config left unset (the network schema lists every field)
        network = {k: v for k, v in network.items() if v is not None}
        preset = network.pop("preset", None)
        return get_preset(preset, **network) if preset else NetworkSpec(**network)
    raise ConfigError(f"network must be a NetworkSpec, a preset name or a dict, got {type(network).__name__}")


def to_tensor(a: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def evaluate(learner: Learner, state, x: torch.Tensor, y: torch.Tensor, task: str,
             batch_size: int = 2048, classes=None) -> dict[str, float]:
    """Accuracy and cross-entropy of the scores taken as logits (MSE and R^2 for regression).

    ``classes`` (output units, optional) scores only those units, with ``y`` given as
    unit indices: task-incremental evaluation, where the task id picks its head.
    """
    if len(x) == 0:
        return {}
    scores = torch.cat([learner.predict(state, x[i:i + batch_size]).detach().float()
                        for i in range(0, len(x), batch_size)])
    if not torch.isfinite(scores).all():
        bad = scores[~torch.isfinite(scores)][0].item()
        raise TrainingDiverged(f"learner {learner.name!r} predicted a non-finite score ({bad})", value=bad)
    if classes is not None:
        units = torch.as_tensor(list(classes), dtype=torch.long, device=scores.device)
        lookup = torch.full((scores.shape[1],), -1, dtype=torch.long, device=scores.device)
        lookup[units] = torch.arange(len(units), device=scores.device)
        scores, y = scores[:, units], lookup[y]
    if task == "regression":
        target = y.reshape(scores.shape).float()
        mse = torch.mean((scores - target) ** 2).item()
        var = torch.mean((target - target.mean(0)) ** 2).item()
        return {"loss": mse, "rmse": math.sqrt(mse), "r2": 1 - mse / var if var > 0 else float("nan")}
    if scores.shape[1:] != (int(y.max().item()) + 1,) and scores.shape[1] <= int(y.max().item()):
        raise ConfigError(f"learner {learner.name!r} returned scores of shape {tuple(scores.shape)} for "
                          f"labels up to {int(y.max())}")
    return {"accuracy": (scores.argmax(1) == y).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(scores, y).item()}


def _check_finite(metrics: dict[str, float], run: Run):
    for key, value in metrics.items():
        if not math.isfinite(value):
            name, _, block = key.partition("/")
            where = f", block {block}" if block else ""
            raise TrainingDiverged(
                f"training diverged: {name}={value} at epoch {run.epoch + 1}, step {run.step}{where} "
                f"(learner {run.learner.name!r}); lower the learning rate or check the inputs. "
                "Epochs recorded so far are kept.",
                epoch=run.epoch + 1, step=run.step, block=int(block) if block else None, value=value)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None, drop_last: bool):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield torch.from_numpy(order[i:i + batch_size])


def fit(learner: Learner, network, data: Dataset, *, loop: LoopConfig = LoopConfig(), seed: int = 0,
        callbacks: list[Callback] = (), out_dir: str | Path | None = None, coords: dict | None = None,
        attrs: dict | None = None, resume: bool = False) -> FitResult:
    """Train ``learner`` on ``data`` for ``loop.n_epochs``, recording per-epoch results.

    ``network`` is a `NetworkSpec`, a preset name or a spec dict; it is resolved
    against the data's shape and built from ``seed``. With ``out_dir`` the
    results are (re)written to ``out_dir/results.nc`` after every epoch, so a
    run that fails keeps what it had recorded, and ``out_dir/checkpoint.pt`` from which
    ``resume=True`` goes on. A fit is a stream of one task: `run_phases` is the engine of both.
    """
    if data.task not in learner.tags.tasks:
        raise ConfigError(f"learner {learner.name!r} does not do {data.task} (it does "
                          f"{', '.join(learner.tags.tasks)}); choose a {learner.tags.tasks[0]} dataset")
    spec = as_spec(network).resolve(data.input_shape, data.n_classes)
    if loop.augment is not None:
        loop.augment.check(data.input_shape)
    device = loop.device
    evals = split_tensors(data, device, eval_test=loop.eval_test)
    if loop.eval_train_max and len(data.x_train) > loop.eval_train_max:
        evals["train"] = train_subset(evals["train"], loop.eval_train_max, seed)
    block_split = "val" if len(data.x_val) or not loop.eval_test else "test"
    phase = Phase(data=data, epochs=loop.n_epochs, train=split_tensors(data, device, splits=("train",))["train"],
                  block_eval=evals[block_split])

    def evaluate_epoch(run, phase, record):
        for split, (x, y) in evals.items():
            for key, value in evaluate(learner, run.state, x, y, data.task, loop.eval_batch_size).items():
                record.setdefault(key, {})[split] = value

    def dataset(run, attrs):
        return results_dataset(run.records, coords=coords_, attrs=attrs)

    coords_ = {"learner": learner.name, "seed": seed, "dataset": data.name, "network": _network_name(network),
               **(coords or {})}
    return run_phases(learner, spec, [phase], loop=loop, seed=seed, task=data.task, callbacks=callbacks,
                      evaluate_epoch=evaluate_epoch, make_dataset=dataset, out_dir=out_dir,
                      attrs={"block_split": block_split, **(attrs or {})}, chance=chance_level(data), trend=True,
                      pad_value=data.meta.get("pad_value", 0.0), resume=resume)


@dataclass
class Phase:
    """One task of a run: its data (``data``, for the observers), how many epochs it trains, its
    training tensors, the tensors per-block metrics are measured on, and the task record handed to
    ``begin_task`` / ``end_task`` (None in an ordinary fit)."""

    data: Dataset
    epochs: int
    train: tuple
    block_eval: tuple
    task: object = None


def split_tensors(data, device: str, *, splits=("train", "val", "test"), eval_test: bool = True) -> dict:
    return {split: (to_tensor(getattr(data, f"x_{split}"), device), to_tensor(getattr(data, f"y_{split}"), device))
            for split in splits if split != "test" or eval_test}


def train_subset(pair, limit: int | None, seed: int):
    """A fixed seeded subset of at most ``limit`` samples: the training data a run is evaluated on."""
    x, y = pair
    if limit and len(x) > limit:
        pick = torch.from_numpy(np.random.default_rng([seed, 2]).choice(len(x), limit, replace=False))
        return x[pick], y[pick]
    return x, y


class EarlyStopper:
    """``loop.early_stopping`` over the epochs of one task: whether to stop, and the best epoch."""

    def __init__(self, config: EarlyStopping | None):
        self.config, self.best, self.since_best, self.best_epoch = config, None, 0, None

    def update(self, record: dict) -> bool:
        es = self.config
        if es is None:
            return False
        value = record.get(es.metric, {}).get(es.split)
        if value is None:
            raise ConfigError(f"loop.early_stopping watches {es.metric} on {es.split}, which is not "
                              "recorded; give data.val_size > 0 or watch another split")
        better = self.best is None or (value > self.best + es.min_delta if es.mode == "max"
                                       else value < self.best - es.min_delta)
        if better:
            self.best, self.since_best, self.best_epoch = value, 0, record["epoch"]
        else:
            self.since_best += 1
        return self.since_best >= es.patience


def run_phases(learner: Learner, spec: NetworkSpec, phases: list[Phase], *, loop: LoopConfig, seed: int,
               task: str, callbacks, evaluate_epoch, make_dataset, out_dir=None, attrs: dict | None = None,
               chance: float | None = None, trend: bool = False, on_task_end=None, setup=None,
               training=None, n_outputs: int | None = None, pad_value=0.0, resume: bool = False,
               extra_state=None) -> FitResult:
    """The training engine: every fit and every continual stream runs through here.

    For each phase (a task): ``begin_task``, epochs of training (stopped early by
    ``loop.early_stopping`` on that task, or for good by a time or FLOPs budget), each followed by
    ``evaluate_epoch(run, phase, record)``, the learner's per-block metrics on
    ``phase.block_eval``, the observers and a save; ``end_task`` after the task's last epoch (before
    its evaluation), then ``on_task_end(run, phase, evaluated)`` where ``evaluated`` says whether
    that evaluation already saw the state after ``end_task``. ``make_dataset(run, attrs)`` turns
    the records into the Dataset written to ``out_dir/results.nc``. ``setup(run)`` runs once after
    ``init``; ``training(phase)``, a context manager, wraps each training epoch (a task's head mask).

    With ``out_dir`` each epoch ends with an atomic checkpoint (`experiments.checkpoint`); with
    ``resume`` a run whose folder holds one goes on from it. ``extra_state`` is a pair
    ``(get, set)`` for what the caller keeps between epochs (a stream's accuracy matrix).
    """
    if spec.kind == "convnet" and not learner.tags.supports_conv:
        raise ConfigError(f"learner {learner.name!r} does not support convolutional networks; use an MLP")
    if loop.threads:
        torch.set_num_threads(int(loop.threads))
    if loop.retain_freed_memory:
        retain_freed_memory()
    if loop.flush_denormal:
        torch.set_flush_denormal(True)
    device = loop.device
    n_train = len(phases[0].train[0])
    batch_size = n_train if learner.tags.full_batch else min(loop.batch_size, n_train)
    steps = n_train // batch_size if loop.drop_last else math.ceil(n_train / batch_size)
    # the learner's budget spans every phase, so its schedules run over the whole stream
    total_epochs = sum(p.epochs for p in phases)
    info = DataInfo(input_shape=spec.input_shape, n_classes=n_outputs or spec.n_classes, n_train=n_train,
                    task=task, batch_size=batch_size, steps_per_epoch=steps, n_epochs=total_epochs, device=device)
    run_loop = dataclasses.replace(loop, n_epochs=total_epochs) if total_epochs != loop.n_epochs else loop
    memory = PeakMemory(device=device)
    network_module = build(spec, seed)
    run = Run(learner=learner, network=network_module, data=phases[0].data, loop=run_loop, seed=seed, info=info,
              augment_rng=np.random.default_rng([seed, 3]), pad_value=pad_value)
    run.state = learner.init(network_module, info, seed)
    if setup is not None:
        setup(run)
    callbacks = observers(loop, callbacks)
    order_rng = np.random.default_rng([seed, 1]) if loop.shuffle else None
    attrs = {**provenance(), "learner_hyperparameters": learner.hyperparameters(), "network_spec": spec.to_dict(),
             "n_parameters": _count_parameters(learner, run.state, network_module), "n_train": n_train,
             "budget": budget_description(loop), **(attrs or {})}
    out_path = Path(out_dir) / "results.nc" if out_dir is not None else None

    def save():
        ds = make_dataset(run, {**attrs, "status": run.status})
        if out_path is not None:
            write_results(ds, out_path)
        return ds

    run.snapshot = lambda: make_dataset(run, {**attrs, "status": run.status})
    single = len(phases) == 1
    start_phase, start_epoch, stopper = 0, 0, None
    saved = load_checkpoint(out_dir) if resume and out_dir is not None else None
    if saved is not None:
        start_phase, start_epoch, stopper = _restore(run, saved, attrs, extra_state)
        if setup is not None:
            setup(run)   # on the restored state (hooks the caller drives)
        if start_phase < len(phases) and start_epoch >= phases[start_phase].epochs:
            start_phase, start_epoch, stopper = start_phase + 1, 0, None
        if run.stopped_by is not None:
            start_phase = len(phases)

    def checkpoint(p, e, stopper):
        if out_dir is not None:
            save_checkpoint(out_dir, {
                "state": run.state, "records": run.records, "epoch": run.epoch, "step": run.step,
                "train_time": run.train_time, "train_flops": run.train_flops, "stopped_by": run.stopped_by,
                "position": (p, e), "stopper": stopper, "attrs": {k: attrs[k] for k in _RUN_ATTRS if k in attrs},
                "order_rng": order_rng, "augment_rng": run.augment_rng,
                "extra": extra_state[0]() if extra_state is not None else None})

    if saved is not None:
        order_rng = run.resumed_order_rng
    with guarded(run, memory, callbacks, attrs, save, chance=chance, trend=trend):
        for p in range(start_phase, len(phases)):
            phase = phases[p]
            run.data = phase.data
            first = start_epoch if p == start_phase else 0
            if phase.task is not None and first == 0:
                run.state = learner.begin_task(run.state, phase.task)
            if stopper is None or first == 0:
                stopper = EarlyStopper(loop.early_stopping)
            for e in range(first, phase.epochs):
                with training(phase) if training is not None else contextlib.nullcontext():
                    record = train_epoch(run, *phase.train, batch_size, order_rng, callbacks)
                ends = e == phase.epochs - 1 or run.stopped_by is not None
                if ends and phase.task is not None:
                    run.state = learner.end_task(run.state, phase.task)
                record["peak_memory"] = memory.peak_so_far()
                evaluate_epoch(run, phase, record)
                for key, values in learner.block_metrics(run.state, *phase.block_eval).items():
                    record.setdefault("block", {})[key] = [float(v) for v in values]
                run.records.append(record)
                for cb in callbacks:
                    cb.on_epoch_end(run, record)
                stop = stopper.update(record)
                if single and stopper.best_epoch is not None:
                    # the evaluation a report shows for this run: the best epoch's, not the last's
                    attrs["best_epoch"] = stopper.best_epoch
                if stop:
                    attrs.setdefault("stopped_early_at_epoch", []).append(record["epoch"])
                if run.stopped_by:
                    attrs["stopped_by"], attrs["stopped_at_epoch"] = run.stopped_by, record["epoch"]
                if stop and not ends and phase.task is not None:
                    run.state = learner.end_task(run.state, phase.task)
                if (ends or stop) and on_task_end is not None:
                    on_task_end(run, phase, evaluated=ends)
                run.epoch += 1
                save()
                # a task that ended early is resumed at its end, as a finished one
                checkpoint(p, phase.epochs if stop else e + 1, stopper)
                if ends or stop:
                    break
            stopper = None
            if run.stopped_by:
                break
    if single and attrs.get("stopped_early_at_epoch"):
        attrs["stopped_early_at_epoch"] = attrs["stopped_early_at_epoch"][0]
    return FitResult(state=run.state, results=save(), run=run)


# what the attrs of a run learn while it trains, and a resumed run must remember
_RUN_ATTRS = ("best_epoch", "stopped_early_at_epoch", "stopped_by", "stopped_at_epoch")


def _restore(run: Run, saved: dict, attrs: dict, extra_state):
    """Put a checkpoint's content back into ``run`` (and the caller's state); returns where to go on."""
    run.state, run.records, run.epoch, run.step = saved["state"], saved["records"], saved["epoch"], saved["step"]
    run.train_time, run.train_flops, run.stopped_by = saved["train_time"], saved["train_flops"], saved["stopped_by"]
    run.augment_rng = saved["augment_rng"]
    attrs.update(saved["attrs"])
    attrs["resumed_at_epoch"] = run.epoch + 1
    if extra_state is not None and saved["extra"] is not None:
        extra_state[1](saved["extra"])
    set_global_random_state(saved["random"])
    run.resumed_order_rng = saved["order_rng"]
    phase, epoch = saved["position"]
    return phase, epoch, saved["stopper"]


def observers(loop: LoopConfig, callbacks) -> list[Callback]:
    """The callbacks of a run: the caller's, the progress bar and the observers ``loop`` asks for."""
    callbacks = list(callbacks) + ([ProgressBar()] if loop.progress else [])
    if loop.alignment:
        from experiments.alignment import Alignment
        callbacks.append(Alignment())
    if loop.cka:
        from experiments.cka import CKAToBackprop
        callbacks.append(CKAToBackprop())
    return callbacks


def budget_description(loop: LoopConfig) -> str:
    """The budget that bounds a run, in words, for its results and every report that shows it."""
    parts = [f"{loop.n_epochs} epochs of batch {loop.batch_size}"]
    if loop.time_budget_s:
        parts.append(f"{loop.time_budget_s:g} s of training")
    if loop.flops_budget:
        parts.append(f"{loop.flops_budget:.3g} training FLOPs")
    if loop.early_stopping is not None:
        es = loop.early_stopping
        parts.append(f"early stopping on {es.split} {es.metric} (patience {es.patience}, best epoch kept)")
    return ", ".join(parts[:1]) + (" at most; " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def chance_level(data: Dataset) -> float | None:
    """The accuracy of always answering the most frequent class of the split a run is judged on."""
    if data.task != "classification":
        return None
    y = data.y_val if len(data.y_val) else data.y_test
    if len(y) == 0:
        return None
    return float(np.bincount(np.asarray(y, dtype=np.int64)).max() / len(y))


@contextlib.contextmanager
def guarded(run: Run, memory: PeakMemory, callbacks, attrs: dict, save, chance: float | None = None,
            trend: bool = False):
    """The frame of every training run (fit and continual streams alike).

    Starts memory sampling and the callbacks; on divergence marks the run and
    saves what was recorded before re-raising; a callback's `StopTraining` ends the
    run as ``stopped`` (the caller saves and returns what was recorded); always stops the sampler (into
    ``attrs["peak_memory_total"]``) and closes the callbacks; marks the run
    complete when the body finishes, or flags it (`experiments.health`) when it
    ended at ``chance`` or (``trend``: one task, where the loss should fall) with its
    training loss rising.
    """
    memory.start()
    for cb in callbacks:
        cb.on_fit_start(run)
    try:
        yield
    except TrainingDiverged:
        run.status = "diverged"
        save()
        raise
    except StopTraining as stop:
        run.status = "stopped"
        attrs["stop_reason"] = str(stop) or "a callback stopped the run"
    finally:
        attrs["peak_memory_total"] = memory.stop()
        attrs["peak_memory_measure"] = memory.measure
        for cb in callbacks:
            cb.on_fit_end(run)
    if run.status == "stopped":
        return
    status, reason = health_check(run.records, chance=chance, best_epoch=attrs.get("best_epoch"), trend=trend)
    run.status = status
    if reason:
        attrs["status_reason"] = reason
        warnings.warn(f"learner {run.learner.name!r}: {reason}", RunHealthWarning, stacklevel=3)


def train_epoch(run: Run, x_train, y_train, batch_size, order_rng, callbacks) -> dict:
    """One pass over ``x_train`` in batches: ``learner.update`` each, the budgets checked after each
    step; returns the epoch's record (training metrics, wall time, FLOPs, steps)."""
    learner, loop = run.learner, run.loop
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    flops = 0.0
    wall = 0.0
    count_flops = loop.count_flops and learner.tags.backend == "torch"
    n_steps = 0
    for idx in _batches(len(x_train), batch_size, order_rng, loop.drop_last):
        batch = (x_train[idx], y_train[idx])
        if loop.augment is not None:
            batch = (loop.augment(batch[0], run.augment_rng, run.pad_value), batch[1])
        t0 = time.perf_counter()
        if count_flops and n_steps == 0:
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as counter:
                run.state, metrics = learner.update(run.state, batch)
            step_flops = counter.get_total_flops() / len(idx)
        else:
            run.state, metrics = learner.update(run.state, batch)
        step_time = time.perf_counter() - t0
        wall += step_time
        batch_flops = step_flops * len(idx) if count_flops else metrics.pop("flops", 0.0)
        flops += batch_flops
        run.train_time += step_time
        run.train_flops += batch_flops
        metrics.pop("flops", None)
        run.step += 1
        n_steps += 1
        _check_finite(metrics, run)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
        for cb in callbacks:
            cb.on_batch_end(run, metrics)
        if loop.time_budget_s and run.train_time >= loop.time_budget_s:
            run.stopped_by = "time_budget"
        elif loop.flops_budget and run.train_flops >= loop.flops_budget:
            run.stopped_by = "flops_budget"
        if run.stopped_by:
            break
    record: dict = {"epoch": run.epoch + 1, "wall_time": wall, "flops": flops, "steps": n_steps}
    for key, total in sums.items():
        mean = total / counts[key]
        name, _, block = key.partition("/")
        if block:
            record.setdefault("block_train", {}).setdefault(name, {})[int(block)] = mean
        else:
            record[f"train_{name}"] = mean
    return record


def _network_name(network) -> str:
    if isinstance(network, str):
        return network
    if isinstance(network, dict) and network.get("preset"):
        return str(network["preset"])
    spec = as_spec(network)
    return f"{spec.kind}_" + "x".join(str(w) for w in spec.channels + spec.widths)


def _count_parameters(learner: Learner, state, network) -> int:
    """Trainable parameters of the modules the rule trains (its network and what it adds)."""
    modules = learner.trainable_modules(state) or [network]
    seen = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
