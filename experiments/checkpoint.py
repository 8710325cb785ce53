"""``checkpoint.pt``: everything a run needs to go on from the end of its last epoch.

Written atomically into the run folder after every epoch: the learner's whole state (networks,
optimisers, schedulers, its own generators: pickled as one object, so the optimiser still holds the
network's very parameters), every random stream of the loop (shuffling, augmentation, and torch's,
numpy's and python's global ones), the epoch records, the position in the run (task and epoch), the
budgets spent and the early-stopping state. A run resumed from it reaches the numbers it would have
reached unkilled. cloudpickle writes it, since some states hold closures (learning-rate lambdas).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError
from experiments.recording import _write_atomic

FILE = "checkpoint.pt"
VERSION = 1


def global_random_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, content: dict) -> Path:
    import cloudpickle
    content = {"version": VERSION, "random": global_random_state(), **content}
    return _write_atomic(Path(folder) / FILE, lambda tmp: torch.save(content, tmp, pickle_module=cloudpickle))


def load_checkpoint(folder: str | Path) -> dict | None:
    """The checkpoint in ``folder``, or None where there is none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a damaged file is named, whatever the unpickler raised
        raise DataError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it to start the run "
                        "again from its first epoch") from err
    if content.get("version") != VERSION:
        raise DataError(f"{path} was written by another version of altlearn; delete it to start again")
    return content
