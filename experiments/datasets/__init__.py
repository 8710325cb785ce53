"""Datasets by name. Every module in this package registers its loaders on import.

A loader takes ``seed`` and its own keyword options and returns a `RawData`
(train and test arrays); `load_dataset` then carves the validation split and
normalises, the same way for every dataset.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from experiments.datasets.base import Dataset, carve_validation, normalize
from experiments.datasets.idx import data_root
from core.errors import ConfigError, unknown_name


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "classification"
    class_names: list[str] | None = None
    default_normalize: str = "standard"
    default_val_size: float = 0.1


_LOADERS: dict[str, Callable[..., RawData]] = {}


def register_dataset(name: str):
    def wrap(fn):
        _LOADERS[name] = fn
        return fn
    return wrap


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, *, seed: int = 0, val_size: float | None = None, normalize_: str | None = None,
                 **options) -> Dataset:
    """Load ``name``; ``val_size`` (count or fraction of train) and ``normalize_`` default per dataset."""
    if name not in _LOADERS:
        raise unknown_name("dataset", name, _LOADERS)
    loader = _LOADERS[name]
    # max_train (any dataset): train on a seeded random subset of this many training samples,
    # carved after the validation split; for reduced CPU budgets.
    max_train = options.pop("max_train", None)
    if max_train is not None and int(max_train) < 1:
        raise ConfigError(f"data option max_train={max_train} must be a positive count (or null for all)")
    allowed = set(inspect.signature(loader).parameters) - {"seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(allowed)) or 'none'}")
    raw = loader(seed=seed, **options)
    val_size = raw.default_val_size if val_size is None else val_size
    x_tr, y_tr, x_val, y_val = carve_validation(raw.x_train, raw.y_train, val_size, seed,
                                                stratify=raw.task == "classification")
    if max_train is not None and len(x_tr) > int(max_train):
        keep = np.sort(np.random.default_rng([seed, 3]).choice(len(x_tr), int(max_train), replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        options["max_train"] = int(max_train)
    if raw.task == "classification":
        n_classes = int(max(raw.y_train.max(), raw.y_test.max()) + 1)
        cast = lambda y: np.asarray(y, dtype=np.int64)
    else:
        n_classes = 1 if raw.y_train.ndim == 1 else raw.y_train.shape[1]
        cast = lambda y: np.asarray(y, dtype=np.float32)
    ds = Dataset(name=name, x_train=x_tr.astype(np.float32), y_train=cast(y_tr),
                 x_val=x_val.astype(np.float32), y_val=cast(y_val),
                 x_test=raw.x_test.astype(np.float32), y_test=cast(raw.y_test),
                 task=raw.task, n_classes=n_classes, class_names=raw.class_names,
                 meta={"seed": seed, "val_size": val_size, **options})
    return normalize(ds, raw.default_normalize if normalize_ is None else normalize_)


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "idx") and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Dataset", "RawData", "available_datasets", "data_root", "load_dataset", "register_dataset"]
