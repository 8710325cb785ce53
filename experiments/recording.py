"""Per-epoch records to one xarray Dataset, written atomically as ``results.nc``."""
from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from core.errors import DataError

SPLITS = ("train", "val", "test")
PER_SPLIT = ("accuracy", "loss", "r2", "rmse")
ENGINE = "netcdf4"


def results_dataset(records: list[dict], *, coords: dict, attrs: dict) -> xr.Dataset:
    """Stack epoch records into variables over ``epoch``, ``split`` and ``block``.

    Per-split metrics become ``name(epoch, split)``; per-block training metrics
    reported as ``"name/i"`` become ``block_name(epoch, block)``; per-block
    evaluation metrics from ``learner.block_metrics`` likewise; everything else
    that is a number becomes ``name(epoch)``.
    """
    epochs = np.array([r["epoch"] for r in records], dtype=np.int64)
    n = len(records)
    data_vars: dict = {}
    for name in PER_SPLIT:
        if any(name in r for r in records):
            arr = np.full((n, len(SPLITS)), np.nan)
            for i, r in enumerate(records):
                for j, split in enumerate(SPLITS):
                    arr[i, j] = r.get(name, {}).get(split, np.nan)
            data_vars[name] = (("epoch", "split"), arr)
    scalar_keys = sorted({k for r in records for k, v in r.items()
                          if k not in PER_SPLIT and k != "epoch" and isinstance(v, (int, float, np.number))
                          or (k not in PER_SPLIT and v is None)})
    for key in scalar_keys:
        data_vars[key] = (("epoch",), np.array([np.nan if r.get(key) is None else r[key] for r in records],
                                               dtype=np.float64))
    block_vars: dict[str, dict[int, dict[int, float]]] = {}
    for i, r in enumerate(records):
        for name, per_block in r.get("block_train", {}).items():
            for b, v in per_block.items():
                block_vars.setdefault(f"block_{name}", {}).setdefault(i, {})[b] = v
        for name, values in r.get("block", {}).items():
            var = f"block_{name}"
            if var in block_vars and i in block_vars[var] and name in r.get("block_train", {}):
                var += "_eval"
            for b, v in enumerate(values):
                block_vars.setdefault(var, {}).setdefault(i, {})[b] = v
    if block_vars:
        n_blocks = 1 + max(b for per_epoch in block_vars.values() for d in per_epoch.values() for b in d)
        for var, per_epoch in block_vars.items():
            arr = np.full((n, n_blocks), np.nan)
            for i, d in per_epoch.items():
                for b, v in d.items():
                    arr[i, b] = v
            data_vars[var] = (("epoch", "block"), arr)
    all_coords = {"epoch": epochs, "split": list(SPLITS)}
    if block_vars:
        all_coords["block"] = np.arange(n_blocks)
    all_coords.update({k: v for k, v in coords.items()})
    return xr.Dataset(data_vars, coords=all_coords, attrs=flat_attrs(attrs))


def flat_attrs(attrs: dict) -> dict:
    """netCDF attributes must be strings or numbers: nested values become YAML text."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, str, np.number)):
            out[key] = value
        elif value is None:
            out[key] = "null"
        else:
            out[key] = yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip()
    return out


def _write_atomic(path: str | Path, write) -> Path:
    """``write(tmp)`` to a temp file in ``path``'s folder, then rename it over ``path``: a reader
    never sees a half-written file, and a failed write leaves the old one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_results(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` atomically."""
    return _write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine=ENGINE))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return _write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_results(path: str | Path) -> xr.Dataset:
    """Load one ``results.nc`` fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no results file at {path}")
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            return ds.load()
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable results file ({err}); rerun the experiment that wrote it") \
            from err


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Package versions and the git revision of the working tree, for the results' attrs."""
    versions = {}
    for pkg in ("altlearn", "torch", "numpy", "numba", "xarray", "hydra-core", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).resolve().parent)
        rev = head.stdout.strip() if head.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        if dirty and rev != "unknown":
            rev += "+dirty"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"versions": versions, "git_revision": rev}
