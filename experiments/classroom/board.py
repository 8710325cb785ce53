"""What a page shows of one run, written by the training thread and read by the page.

The training thread appends under a lock; the page takes a `View` (copies of the lists) a few
times a second and draws only what is new since the version it last drew.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

# what a run can be doing, as the page names it
IDLE, STARTING, RUNNING, PAUSED = "idle", "starting", "running", "paused"
# how it ended: ``complete`` and the health flags of experiments.health, or the engine's stops
ENDED = ("complete", "chance", "diverging", "stopped", "diverged", "refused", "failed")

CURVES = ("epoch", "time", "train_accuracy", "val_accuracy", "train_loss", "val_loss")


@dataclass
class Picture:
    """The rule's current answer: over the plane (``classes`` and ``confidence`` on a grid spanning
    ``x_range`` x ``y_range``) or, for images, the validation ``confusion`` matrix (true x predicted)."""

    kind: str                       # plane | confusion
    epoch: int
    classes: object = None          # (ny, nx) int array: predicted class per grid cell
    confidence: object = None       # (ny, nx) float array: probability of that class
    x_range: tuple = (0.0, 1.0)
    y_range: tuple = (0.0, 1.0)
    confusion: object = None        # (n_classes, n_classes) int array


@dataclass
class View:
    version: int
    status: str
    message: str | None
    learner: str | None
    dataset: str | None
    epoch: int
    n_epochs: int
    step: int
    curves: dict                    # CURVES -> list, one entry per epoch
    blocks: dict                    # metric label -> list (per epoch) of per-block values
    picture: Picture | None
    points: tuple | None            # (x, y) training points drawn under a plane picture
    n_classes: int


@dataclass
class Board:
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    version: int = 0
    status: str = IDLE
    message: str | None = None
    learner: str | None = None
    dataset: str | None = None
    epoch: int = 0
    n_epochs: int = 0
    step: int = 0
    curves: dict = field(default_factory=lambda: {k: [] for k in CURVES})
    blocks: dict = field(default_factory=dict)
    picture: Picture | None = None
    points: tuple | None = None
    n_classes: int = 0

    def clear(self, learner=None, dataset=None, status=IDLE) -> None:
        with self._lock:
            self.status, self.message, self.learner, self.dataset = status, None, learner, dataset
            self.epoch = self.n_epochs = self.step = self.n_classes = 0
            self.curves = {k: [] for k in CURVES}
            self.blocks, self.picture, self.points = {}, None, None
            self.version += 1

    def begin(self, n_epochs: int, n_classes: int, points=None) -> None:
        with self._lock:
            self.status, self.n_epochs, self.n_classes, self.points = RUNNING, n_epochs, n_classes, points
            self.version += 1

    def set_status(self, status: str, message: str | None = None) -> None:
        with self._lock:
            self.status = status
            if message is not None:
                self.message = message
            self.version += 1

    def set_step(self, step: int) -> None:
        with self._lock:   # no new version: a step alone changes nothing drawn
            self.step = step

    def add_epoch(self, record: dict, elapsed: float) -> None:
        accuracy, loss = record.get("accuracy", {}), record.get("loss", {})
        with self._lock:
            self.epoch = record["epoch"]
            row = {"epoch": record["epoch"], "time": elapsed,
                   "train_accuracy": accuracy.get("train"), "val_accuracy": accuracy.get("val"),
                   "train_loss": loss.get("train"), "val_loss": loss.get("val")}
            for key in CURVES:
                self.curves[key].append(row[key])
            n_before = len(self.curves["epoch"]) - 1
            for label, values in block_metrics(record).items():
                # a metric first reported late is padded, so every list has one entry per epoch
                series = self.blocks.setdefault(label, [None] * n_before)
                series.append(values)
            for series in self.blocks.values():
                if len(series) < n_before + 1:
                    series.append(None)
            self.version += 1

    def set_picture(self, picture: Picture) -> None:
        with self._lock:
            self.picture = picture
            self.version += 1

    def view(self) -> View:
        with self._lock:
            return View(version=self.version, status=self.status, message=self.message, learner=self.learner,
                        dataset=self.dataset, epoch=self.epoch, n_epochs=self.n_epochs, step=self.step,
                        curves={k: list(v) for k, v in self.curves.items()},
                        blocks={k: list(v) for k, v in self.blocks.items()},
                        picture=self.picture, points=self.points, n_classes=self.n_classes)


def block_metrics(record: dict) -> dict[str, list]:
    """An epoch record's per-block metrics by label: the rule's ``block_metrics`` on the validation
    split and the epoch means of its per-block update metrics."""
    out = {}
    for name, values in record.get("block", {}).items():
        out[f"{name} (validation)"] = [float(v) for v in values]
    for name, per_block in record.get("block_train", {}).items():
        n = 1 + max(per_block)
        out[f"{name} (training)"] = [float(per_block[b]) if b in per_block else None for b in range(n)]
    return out
