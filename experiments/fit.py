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
from experiments.callbacks import Callback, ProgressBar
from experiments.datasets import Dataset
from experiments.errors import ConfigError, TrainingDiverged
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
        attrs: dict | None = None) -> FitResult:
    """Train ``learner`` on ``data`` for ``loop.n_epochs``, recording per-epoch results.

    ``network`` is a `NetworkSpec`, a preset name or a spec dict; it is resolved
    against the data's shape and built from ``seed``. With ``out_dir`` the
    results are (re)written to ``out_dir/results.nc`` after every epoch, so a
    run that fails keeps what it had recorded.
    """
    if data.task not in learner.tags.tasks:
        raise ConfigError(f"learner {learner.name!r} does not do {data.task} (it does "
                          f"{', '.join(learner.tags.tasks)}); choose a {learner.tags.tasks[0]} dataset")
    spec = as_spec(network).resolve(data.input_shape, data.n_classes)
    if spec.kind == "convnet" and not learner.tags.supports_conv:
        raise ConfigError(f"learner {learner.name!r} does not support convolutional networks; use an MLP")
    if loop.augment is not None:
        loop.augment.check(data.input_shape)
    if loop.threads:
        torch.set_num_threads(int(loop.threads))
    if loop.retain_freed_memory:
        retain_freed_memory()
    device = loop.device
    n_train = len(data.x_train)
    batch_size = n_train if learner.tags.full_batch else min(loop.batch_size, n_train)
    steps = n_train // batch_size if loop.drop_last else math.ceil(n_train / batch_size)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=n_train, task=data.task,
                    batch_size=batch_size, steps_per_epoch=steps, n_epochs=loop.n_epochs, device=device)
    x_train, y_train = to_tensor(data.x_train, device), to_tensor(data.y_train, device)
    evals = {"train": (x_train, y_train), "val": (to_tensor(data.x_val, device), to_tensor(data.y_val, device))}
    if loop.eval_test:
        evals["test"] = (to_tensor(data.x_test, device), to_tensor(data.y_test, device))
    if loop.eval_train_max and n_train > loop.eval_train_max:
        pick = torch.from_numpy(np.random.default_rng([seed, 2]).choice(n_train, loop.eval_train_max,
                                                                         replace=False))
        evals["train"] = (x_train[pick], y_train[pick])
    block_split = "val" if len(data.x_val) or not loop.eval_test else "test"

    memory = PeakMemory(device=device)
    network_module = build(spec, seed)
    run = Run(learner=learner, network=network_module, data=data, loop=loop, seed=seed, info=info,
              augment_rng=np.random.default_rng([seed, 3]), pad_value=data.meta.get("pad_value", 0.0))
    run.state = learner.init(network_module, info, seed)
    callbacks = list(callbacks) + ([ProgressBar()] if loop.progress else [])
    if loop.alignment:
        from experiments.alignment import Alignment
        callbacks.append(Alignment())
    if loop.cka:
        from experiments.cka import CKAToBackprop
        callbacks.append(CKAToBackprop())
    order_rng = np.random.default_rng([seed, 1]) if loop.shuffle else None
    coords = {"learner": learner.name, "seed": seed, "dataset": data.name,
              "network": _network_name(network), **(coords or {})}
    attrs = {**provenance(), "learner_hyperparameters": learner.hyperparameters(), "network_spec": spec.to_dict(),
             "n_parameters": _count_parameters(run.state, network_module), "block_split": block_split,
             "n_train": n_train,
             **(attrs or {})}
    out_path = Path(out_dir) / "results.nc" if out_dir is not None else None

    attrs["budget"] = budget_description(loop)

    def save():
        ds = results_dataset(run.records, coords=coords, attrs={**attrs, "status": run.status})
        if out_path is not None:
            write_results(ds, out_path)
        return ds

    best, since_best = None, 0
    with guarded(run, memory, callbacks, attrs, save, chance=chance_level(data), trend=True):
        for epoch in range(loop.n_epochs):
            run.epoch = epoch
            record = _train_epoch(run, x_train, y_train, batch_size, order_rng, callbacks)
            record["peak_memory"] = memory.peak_so_far()
            for split, (x, y) in evals.items():
                for key, value in evaluate(learner, run.state, x, y, data.task, loop.eval_batch_size).items():
                    record.setdefault(key, {})[split] = value
            for key, values in learner.block_metrics(run.state, *evals[block_split]).items():
                record.setdefault("block", {})[key] = [float(v) for v in values]
            run.records.append(record)
            for cb in callbacks:
                cb.on_epoch_end(run, record)
            es = loop.early_stopping
            if es is not None:
                value = record.get(es.metric, {}).get(es.split)
                if value is None:
                    raise ConfigError(f"loop.early_stopping watches {es.metric} on {es.split}, which is not "
                                      "recorded; give data.val_size > 0 or watch another split")
                better = best is None or (value > best + es.min_delta if es.mode == "max"
                                          else value < best - es.min_delta)
                best, since_best = (value, 0) if better else (best, since_best + 1)
                if better:
                    # the evaluation a report shows for this run: the best epoch's, not the last's
                    attrs["best_epoch"] = epoch + 1
                if since_best >= es.patience:
                    attrs["stopped_early_at_epoch"] = epoch + 1
            if run.stopped_by:
                attrs["stopped_by"] = run.stopped_by
                attrs["stopped_at_epoch"] = epoch + 1
            save()
            if run.stopped_by or "stopped_early_at_epoch" in attrs:
                break
    return FitResult(state=run.state, results=save(), run=run)


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
    saves what was recorded before re-raising; always stops the sampler (into
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
    finally:
        attrs["peak_memory_total"] = memory.stop()
        attrs["peak_memory_measure"] = memory.measure
        for cb in callbacks:
            cb.on_fit_end(run)
    status, reason = health_check(run.records, chance=chance, best_epoch=attrs.get("best_epoch"), trend=trend)
    run.status = status
    if reason:
        attrs["status_reason"] = reason
        warnings.warn(f"learner {run.learner.name!r}: {reason}", RunHealthWarning, stacklevel=3)


def _train_epoch(run: Run, x_train, y_train, batch_size, order_rng, callbacks) -> dict:
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


def _count_parameters(state, network) -> int:
    """Trainable parameters of the network plus any the learner adds (e.g. per-block projections)."""
    extra = getattr(state, "extra", None)
    # a learner may train its own module built from the spec (NoProp's denoising blocks) as state.network
    own = getattr(state, "network", None)
    modules = [own if isinstance(own, torch.nn.Module) else network]
    modules += [v for v in (extra or {}).values() if isinstance(v, torch.nn.Module)]
    seen = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
