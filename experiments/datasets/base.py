"""The `Dataset` record, deterministic splits and normalisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import ConfigError

NORMALIZATIONS = ("none", "global", "channel", "standard", "minmax")


@dataclass
class Dataset:
    """Arrays of one dataset: float32 inputs, int64 labels (float32 targets for regression)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "classification"
    n_classes: int = 0               # classes, or output dimension for regression
    class_names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; splits: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def carve_validation(x, y, val_size, seed, stratify=True):
    """Split ``val_size`` (count, or fraction if < 1) off the training arrays, deterministically.

    Stratified by class for classification labels so that small sets keep
    every class in both parts.
    """
    n = len(x)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.number)):
        raise ConfigError(f"data.val_size={val_size!r}: give a count of samples (an integer) or a fraction "
                          "of the training split (a number between 0 and 1)")
    if isinstance(val_size, (float, np.floating)) and val_size >= 1:
        raise ConfigError(f"data.val_size={val_size} is ambiguous: give a count as a whole number "
                          f"(data.val_size={int(val_size)}) or a fraction below 1 (e.g. data.val_size=0.1)")
    n_val = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if n_val < 0 or n_val >= n:
        raise ConfigError(f"data.val_size={val_size} leaves no training data ({n} samples)")
    rng = np.random.default_rng(seed)
    if n_val == 0:
        return x, y, x[:0], y[:0]
    if stratify and y.dtype.kind in "iu":
        # Order each class randomly, then interleave classes by relative rank,
        # so any prefix of the order keeps the class proportions.
        order = rng.permutation(n)
        rel_rank = np.empty(n)
        for c in np.unique(y):
            members = order[y[order] == c]
            rel_rank[members] = (np.arange(len(members)) + 0.5) / len(members)
        tiebreak = np.empty(n)
        tiebreak[order] = np.arange(n)
        val_idx = np.lexsort((tiebreak, rel_rank))[:n_val]
    else:
        val_idx = rng.permutation(n)[:n_val]
    mask = np.zeros(n, dtype=bool)
    mask[val_idx] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def normalize(ds: Dataset, how: str) -> Dataset:
    """Normalise every split with statistics of the training split only.

    ``global``: one mean and std over all training pixels/features (MNIST's
    0.1307/0.3081 convention); ``channel``: a mean and std per colour channel of
    (N, C, H, W) images (torchvision's ``Normalize(mean, std)`` for CIFAR);
    ``standard``: per feature; ``minmax``: per feature to [0, 1]; ``none``: unchanged.
    """
    if how not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize={how!r} is not known; allowed: {', '.join(NORMALIZATIONS)}")
    if how == "none":
        ds.meta.setdefault("pad_value", 0.0)
        return ds
    x = ds.x_train
    if how == "channel" and x.ndim != 4:
        raise ConfigError(f"data.normalize='channel' needs images (N, C, H, W), but {ds.name} has inputs of shape "
                          f"{x.shape[1:]}; use 'global' or 'standard'")
    if how == "global":
        shift, scale = x.mean(), x.std()
    elif how == "channel":
        # float64 sums: 50,000 CIFAR images are 5e7 values per channel
        shift = x.mean(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
        scale = x.std(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
    elif how == "standard":
        shift, scale = x.mean(axis=0), x.std(axis=0)
    else:
        shift, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    scale = np.where(np.asarray(scale) > 1e-8, scale, 1.0)
    for split in ("train", "val", "test"):
        arr = getattr(ds, f"x_{split}")
        setattr(ds, f"x_{split}", ((arr - shift) / scale).astype(np.float32))
    ds.meta["normalize"] = how
    # a raw 0 (black) after normalisation: what image padding fills with (one value per channel)
    if how == "global":
        ds.meta["pad_value"] = float(-shift / scale)
    elif how == "channel":
        ds.meta["pad_value"] = tuple(float(v) for v in (-shift / scale).ravel())
    return ds
