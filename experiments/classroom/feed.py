"""The training callback of the classroom: streams each epoch of the one `fit` engine to a `Board`
and takes the page's pause, resume and stop between steps (through a `Control`).

It observes only: pausing waits between two steps and slow motion waits after an epoch, so the
numbers a run reaches are those of the same run on the command line.
"""
from __future__ import annotations

import time

from experiments.callbacks import Callback
from experiments.classroom.board import PAUSED, RUNNING, Board
from experiments.classroom.control import Control
from experiments.classroom.pictures import Painter

# the picture is repainted at most this often while epochs fly by (and always at the last epoch)
PAINT_EVERY_S = 0.2


class LiveFeed(Callback):
    def __init__(self, control: Control, board: Board, painter: Painter, data, *, min_epoch_s: float = 0.0):
        self.control, self.board, self.painter, self.data = control, board, painter, data
        self.min_epoch_s = min_epoch_s
        self.run = None
        self.started = None
        self.painted_at = None
        self.epoch_started = None

    def on_fit_start(self, run):
        self.run = run
        self.started = self.epoch_started = time.perf_counter()
        self.board.begin(run.n_epochs, self.painter.n_classes, self.painter.points(self.data))
        self._paint(run, epoch=0)

    def on_batch_end(self, run, metrics):
        self.board.set_step(run.step)
        self._checkpoint(run)

    def on_epoch_end(self, run, record):
        now = time.perf_counter()
        self.board.add_epoch(record, now - self.started)
        last = record["epoch"] >= run.n_epochs or run.stopped_by is not None
        if last or self.control.paused or now - self.painted_at >= PAINT_EVERY_S:
            self._paint(run, record["epoch"])
        if self.min_epoch_s > 0:
            self.control.sleep(self.min_epoch_s - (time.perf_counter() - self.epoch_started), run)
        self._checkpoint(run)
        self.epoch_started = time.perf_counter()

    def _paint(self, run, epoch: int):
        self.board.set_picture(self.painter.paint(run.learner, run.state, epoch))
        self.painted_at = time.perf_counter()

    def _checkpoint(self, run):
        def paused():
            # the picture of the state the class is looking at, not of the last epoch's end
            self._paint(run, self.board.epoch)
            self.board.set_status(PAUSED)

        self.control.checkpoint(run, on_pause=paused, on_resume=lambda: self.board.set_status(RUNNING))
