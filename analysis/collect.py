"""Stack many runs' ``results.nc`` into one labelled Dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from core.errors import DataError
from experiments.health import FINISHED, FLAGGED
from experiments.recording import read_results
from experiments.run_status import read_status

KEY_COORDS = ("learner", "dataset", "network", "seed")
# the value of a swept key in a run that did not set it (backprop beside an LLS variant sweep);
# analysis.report leaves such keys out of the run's label
UNSET = "unset"


def find_runs(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(result files, run folders that started (a hydra job or a recorded status) but left no
    results file)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"no such folder: {folder}")
    results = sorted(folder.rglob("results.nc"))
    started = {p.parent for p in folder.rglob(".hydra")} | {p.parent for p in folder.rglob("status.yaml")}
    have = {p.parent for p in results}
    failed = sorted(d for d in started if d not in have and not any(h.is_relative_to(d) for h in have))
    return results, failed


def collect(folder: str | Path, *, complete_only: bool = False) -> xr.Dataset:
    """One Dataset with dims (learner, seed, [swept...], epoch, split[, block]).

    Runs are keyed by their scalar coordinates (learner, dataset, network,
    seed and swept hyperparameters); keys that do not vary are kept as scalar
    coordinates. Runs that stopped before their end (killed, diverged), runs that
    finished flagged (at chance, loss rising) and run folders without results (a
    job that raised or was refused) are listed in the attrs ``incomplete_runs``,
    ``flagged_runs`` and ``failed_runs`` with their reasons (the incomplete ones
    dropped with ``complete_only``), never silently. Runs that kept their best
    epoch (early stopping) carry it in the ``best_epoch`` coordinate.
    """
    paths, failed = find_runs(folder)
    if not paths:
        raise DataError(f"no results.nc under {folder}; run an experiment first (e.g. altlearn -m "
                        "experiment=mnist_backprop)")
    runs, run_attrs, incomplete, flagged = [], [], [], []
    for path in paths:
        ds = read_results(path)
        status = ds.attrs.get("status")
        if status in FLAGGED:
            flagged.append(f"{path.parent} ({status}: {ds.attrs.get('status_reason', '')})")
        elif status not in FINISHED:
            incomplete.append(f"{path} ({status})")
            if complete_only:
                continue
        scalar = {k: ds.coords[k].item() for k in ds.coords if ds.coords[k].ndim == 0}
        runs.append((path, ds.drop_vars(list(scalar)), scalar))
        run_attrs.append(ds.attrs)
    # the run keys first, then swept keys by name (a set alone would order them differently per process)
    keys = sorted({k for _, _, s in runs for k in s}, key=lambda k: ((KEY_COORDS + (k,)).index(k), k))
    varying = [k for k in keys if len({_hashable(s.get(k)) for _, _, s in runs}) > 1]
    if not varying:
        varying = ["learner"]
    # a key some runs lack: all its values as text, so that one coordinate holds them and "unset"
    # without mixing types (pandas cannot sort floats with None or strings)
    partial = {k for k in varying if any(k not in s for _, _, s in runs)}
    for _, _, s in runs:
        for k in partial:
            s[k] = str(_hashable(s[k])) if k in s else UNSET
    index = [tuple(s.get(k) for k in varying) for _, _, s in runs]
    if len(set(index)) != len(index):
        dup = [p for (p, _, _), i in zip(runs, index) if index.count(i) > 1]
        raise DataError(f"runs share the same {', '.join(varying)}: {', '.join(map(str, dup[:4]))}; "
                        "collect them from separate folders")
    stacked = xr.concat([ds for _, ds, _ in runs], dim="run", join="outer", combine_attrs="drop",
                        data_vars="all", coords="minimal", compat="override")
    for k in varying:
        stacked = stacked.assign_coords({k: ("run", [s.get(k) for _, _, s in runs])})
    stacked = _unstack(stacked, varying) if len(runs) > 1 else \
        stacked.squeeze("run", drop=True).assign_coords({k: index[0][i] for i, k in enumerate(varying)})
    for k in keys:
        if k not in varying:
            stacked = stacked.assign_coords({k: runs[0][2].get(k)})
    stacked.attrs = {"source": str(folder), "n_runs": len(runs),
                     "incomplete_runs": "\n".join(incomplete), "flagged_runs": "\n".join(flagged),
                     "failed_runs": "\n".join(_failure_line(d) for d in failed)}
    # per-run scalar attrs worth comparing
    if any("best_epoch" in a for a in run_attrs):
        best = [float(a["best_epoch"]) if "best_epoch" in a else np.nan for a in run_attrs]
        var = xr.DataArray(best, dims="run", coords={k: ("run", [i[j] for i in index])
                                                     for j, k in enumerate(varying)})
        var = _unstack(var, varying) if len(runs) > 1 else var.squeeze()
        stacked = stacked.assign_coords(best_epoch=var.drop_vars([c for c in var.coords if c not in var.dims]))
    for attr in ("n_parameters", "peak_memory_total", "n_train"):
        values = [float(a[attr]) if attr in a else np.nan for a in run_attrs]
        var = xr.DataArray(values, dims="run", coords={k: ("run", [i[j] for i in index])
                                                       for j, k in enumerate(varying)})
        stacked[attr] = _unstack(var, varying) if len(runs) > 1 else var.squeeze()
    return stacked


def _failure_line(folder: Path) -> str:
    """``folder (status: error) [overrides]`` from the status a failed job recorded, if it did."""
    status = read_status(folder)
    if not status:
        return str(folder)
    overrides = " ".join(status.get("overrides") or [])
    return f"{folder} ({status.get('status')}: {status.get('error', '')})" + (f" [{overrides}]" if overrides else "")


def _unstack(obj, keys):
    """Turn the ``run`` dim into one dim per key (a single key needs no multi-index)."""
    if len(keys) == 1:
        out = obj.swap_dims(run=keys[0]).sortby(keys[0])
    else:
        out = obj.set_index(run=keys).unstack("run")
    return out.transpose(*keys, ...)


def _hashable(v):
    return v if isinstance(v, (str, int, float, type(None))) else str(v)
