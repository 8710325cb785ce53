"""``status.yaml``: how each job of a sweep ended, written into its run folder.

A job that trains to its end has ``results.nc`` with its status in the attributes; a job that was
refused (a learner that does not take the network), raised, or diverged also leaves this file, so a
sweep can go on to its last job and its report can list every failure by its overrides.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from core.errors import ConfigError, TrainingDiverged
from experiments.recording import write_text_atomic

FILE = "status.yaml"


def failure_status(error: BaseException) -> str:
    """``refused`` (the configuration is not allowed), ``diverged`` or ``failed`` (anything else)."""
    if isinstance(error, TrainingDiverged):
        return "diverged"
    if isinstance(error, ConfigError):
        return "refused"
    return "failed"


def write_status(folder: str | Path, status: str, *, learner: str, overrides: list[str] = (),
                 error: str | None = None, objective: float | None = None) -> Path:
    record = {"status": status, "learner": learner, "overrides": list(overrides)}
    if error is not None:
        record["error"] = error
    if objective is not None:
        record["objective"] = float(objective)
    return write_text_atomic(Path(folder) / FILE, yaml.safe_dump(record, sort_keys=False))


def read_status(folder: str | Path) -> dict | None:
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or None


def sweep_failures(folder: str | Path) -> list[dict]:
    """The recorded failures under a sweep folder, each with its ``folder``, in folder order."""
    out = []
    for path in sorted(Path(folder).rglob(FILE)):
        record = yaml.safe_load(path.read_text()) or {}
        if record.get("status") in ("refused", "diverged", "failed"):
            out.append({**record, "folder": str(path.parent)})
    return out
