"""The rule's current answer as a picture: its decision over the plane, or a confusion matrix."""
from __future__ import annotations

import numpy as np
import torch

from experiments.classroom.board import Picture

# grid cells per side of a decision-boundary picture
RESOLUTION = 64
MARGIN = 0.5


class Painter:
    """Knows the grid (or the validation images) of one data set and paints a learner's state."""

    def __init__(self, data, resolution: int = RESOLUTION):
        self.plane = len(data.input_shape) == 1 and data.input_shape[0] == 2
        self.n_classes = data.n_classes
        if self.plane:
            x = np.concatenate([data.x_train, data.x_val])
            lo, hi = x.min(0) - MARGIN, x.max(0) + MARGIN
            self.x_range, self.y_range = (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))
            xs = np.linspace(lo[0], hi[0], resolution, dtype=np.float32)
            ys = np.linspace(lo[1], hi[1], resolution, dtype=np.float32)
            self.grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
            self.shape = (resolution, resolution)
        else:
            self.x_val = torch.from_numpy(np.ascontiguousarray(data.x_val))
            self.y_val = np.asarray(data.y_val, dtype=np.int64)

    def points(self, data, limit: int = 600):
        """Training points to draw under the plane (a seeded subset of at most ``limit``)."""
        if not self.plane:
            return None
        keep = np.random.default_rng(0).permutation(len(data.x_train))[:limit]
        return data.x_train[keep], np.asarray(data.y_train)[keep]

    def paint(self, learner, state, epoch: int) -> Picture:
        with torch.no_grad():
            if self.plane:
                probs = torch.softmax(learner.predict(state, self.grid).detach().float(), 1).numpy()
                return Picture(kind="plane", epoch=epoch, classes=probs.argmax(1).reshape(self.shape),
                               confidence=probs.max(1).reshape(self.shape),
                               x_range=self.x_range, y_range=self.y_range)
            predicted = learner.predict(state, self.x_val).detach().argmax(1).numpy()
        confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        np.add.at(confusion, (self.y_val, predicted), 1)
        return Picture(kind="confusion", epoch=epoch, confusion=confusion)
