"""Callbacks observe a fit; they never change learning (anything that does is a learner hyperparameter)."""
from __future__ import annotations

import sys
import time


class StopTraining(Exception):
    """Raised by a callback to end the run now (a classroom page reset or closed): the engine keeps the
    epochs recorded so far and returns them with status ``stopped``, as a budget ends a run."""


class Callback:
    """Hooks around the loop. ``run`` is the `experiments.fit.Run` in progress (read it, do not change it)."""

    def on_fit_start(self, run) -> None: ...
    def on_batch_end(self, run, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, run, record: dict) -> None: ...
    def on_fit_end(self, run) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over all training steps with the epoch, the loss and the last validation accuracy."""

    def __init__(self, desc: str = "", leave: bool = False):
        self.desc, self.leave, self.bar = desc, leave, None

    def on_fit_start(self, run):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=run.total_steps, desc=self.desc or run.learner.name, leave=self.leave,
                        unit="step", mininterval=0.5, file=sys.stderr, dynamic_ncols=True)

    def on_batch_end(self, run, metrics):
        self.bar.update(1)

    def on_epoch_end(self, run, record):
        acc = record.get("accuracy", {})
        shown = {"epoch": f"{record['epoch']}/{run.n_epochs}"}
        if "val" in acc or "test" in acc:
            split = "val" if "val" in acc else "test"
            shown[f"{split}_acc"] = f"{acc[split]:.4f}"
        if "train_loss" in record:
            shown["loss"] = f"{record['train_loss']:.4f}"
        self.bar.set_postfix(shown, refresh=False)

    def on_fit_end(self, run):
        if self.bar is not None:
            self.bar.close()


class EpochLog(Callback):
    """One line per epoch, for logs where a bar is not wanted."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = None

    def on_fit_start(self, run):
        self.start = time.perf_counter()

    def on_epoch_end(self, run, record):
        acc = " ".join(f"{k}={v:.4f}" for k, v in record.get("accuracy", {}).items())
        print(f"[{run.learner.name}] epoch {record['epoch']}/{run.n_epochs} {acc} "
              f"({time.perf_counter() - self.start:.1f}s)", file=self.stream, flush=True)
