"""The classroom's controller, without any web import: what one page trains and how it is steered.

A `RuleRun` trains one rule through the one `fit` engine on a thread of its own, streaming to its
`Board` through a `LiveFeed`. A `Lesson` is one page's pair of them: one rule, or two side by side
on the same data, network and seed under one shared control. Each browser tab gets its own lesson,
so two tabs share nothing but the process.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

from core.errors import AltlearnError, ConfigError, TrainingDiverged
from experiments.classroom.board import PAUSED, STARTING, Board
from experiments.classroom.control import Control
from experiments.classroom.feed import LiveFeed
from experiments.classroom.pictures import Painter
from experiments.classroom.settings import Settings, learner_params

# how long a reset waits for the training thread to stop (it stops at its next step)
STOP_WAIT_S = 30.0
# how long saving waits for the training thread to hand over its results (it does so between steps)
SAVE_WAIT_S = 30.0


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    return text if isinstance(err, AltlearnError) else f"{type(err).__name__}: {text}"


def load_data(settings: Settings):
    from experiments.datasets import load_dataset
    return load_dataset(settings.dataset, seed=settings.seed)


class RuleRun:
    """One rule training on a page: start, pause, resume, reset, close, and save its results."""

    def __init__(self, label: str = "A"):
        self.label = label
        self.board = Board()
        self.settings: Settings | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._control: Control | None = None
        self._results = None          # the finished run's Dataset, once its thread has ended

    @property
    def status(self) -> str:
        return self.board.status

    @property
    def active(self) -> bool:
        """Training or paused (a thread is alive)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, settings: Settings, data=None) -> bool:
        """Start training; False (and nothing new starts) while a run is already going: a paused one
        resumes instead. ``data`` is shared with a compared rule; loaded from ``settings`` if None."""
        with self._lock:
            if self.active and self._control is not None:
                self._control.resume()
                return False
            if self.active:   # a reset's run still finishing its step: it stops before this one starts
                self._thread.join(STOP_WAIT_S)
            self.settings, self._results, self._control = settings, None, Control()
            self.board.clear(settings.learner, settings.dataset, STARTING)
            self._thread = threading.Thread(target=self._train, args=(settings, data, self._control),
                                            name=f"classroom-{self.label}-{settings.learner}", daemon=True)
            self._thread.start()
            return True

    def pause(self) -> None:
        if self.active:
            self._control.pause()

    def resume(self) -> None:
        if self.active:
            self._control.resume()

    def reset(self, wait: float = STOP_WAIT_S) -> None:
        """Stop the training (the engine ends it at its next step) and clear the board."""
        thread = self._stop(forget=True)
        if thread is not None:
            thread.join(wait)
        with self._lock:
            self._results = None
            self.board.clear()

    def close(self) -> None:
        """Stop the training without waiting (the page is gone)."""
        self._stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the training thread to end; True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.active

    def results(self, timeout: float = SAVE_WAIT_S):
        """The run's results so far as the engine writes them (an xarray Dataset)."""
        with self._lock:
            if self._results is not None:
                return self._results
            if not self.active or self._control is None:
                raise ConfigError("nothing to save yet: start a run first")
            # submitted under the lock: a thread that is ending answers it after publishing its results
            future = self._control.submit(_snapshot)
        return future.result(timeout)

    def save(self, path) -> Path:
        """Write the run so far to ``path`` with the writer every altlearn run uses."""
        from experiments.recording import write_results
        return write_results(self.results(), path)

    def file_name(self) -> str:
        s = self.settings
        return f"results_{s.learner}_{s.dataset}_seed{s.seed}.nc" if s else "results.nc"

    # ------------------------------------------------------------------ the training thread
    def _stop(self, forget: bool = False):
        with self._lock:
            if self._control is not None:
                self._control.stop()
            if forget:   # whatever the stopped thread reports from now on is no longer this board's
                self._control = None
            return self._thread

    def _train(self, settings: Settings, data, control: Control) -> None:
        from experiments.fit import LoopConfig, fit
        from learners import make_learner
        feed = None
        try:
            learner = make_learner(settings.learner, **learner_params(settings.learner, settings.knobs))
            data = load_data(settings) if data is None else data
            feed = LiveFeed(control, self.board, Painter(data), data, min_epoch_s=settings.min_epoch_s)
            loop = LoopConfig(n_epochs=settings.epochs, batch_size=settings.batch_size, progress=False)
            # what the page chose, in place of the command line's resolved config
            chosen = yaml.safe_dump({"classroom": dataclasses.asdict(settings)}, sort_keys=False)
            result = fit(learner, settings.network(), data, loop=loop, seed=settings.seed, callbacks=[feed],
                         attrs={"config": chosen})
        except TrainingDiverged as err:
            self._finish(control, feed, "diverged", one_line(err))
        except AltlearnError as err:
            self._finish(control, feed, "refused", one_line(err))
        except Exception as err:  # noqa: BLE001 - a rule that breaks must not take the page with it
            traceback.print_exception(err, file=sys.stderr)
            self._finish(control, feed, "failed", one_line(err))
        else:
            status = result.run.status
            self._finish(control, feed, status, result.results.attrs.get("status_reason"), result.results)

    def _finish(self, control: Control, feed, status: str, message: str | None, results=None) -> None:
        run = feed.run if feed is not None else None
        if results is None and run is not None and run.records:
            results = run.snapshot()
        with self._lock:
            if control is self._control:
                self._results = results
                if not control.stopped:
                    self.board.set_status(status, message)
        # a save asked for while the run was ending
        control.run_jobs(run)


def _snapshot(run):
    if run is None or not run.records:
        raise ConfigError("nothing to save yet: wait for the first epoch to finish")
    return run.snapshot()


class Lesson:
    """One page's training: rule A alone, or A and B on the same data, network and seed, steered
    together (start, pause, resume, reset apply to both)."""

    def __init__(self):
        self.runs = {"A": RuleRun("A"), "B": RuleRun("B")}
        self.compare = False

    @property
    def active_runs(self) -> list[RuleRun]:
        return [self.runs["A"], self.runs["B"]] if self.compare else [self.runs["A"]]

    @property
    def running(self) -> bool:
        return any(r.active for r in self.runs.values())

    @property
    def paused(self) -> bool:
        return any(r.status == PAUSED for r in self.active_runs)

    def start(self, settings: Settings, rival: str | None = None, rival_knobs: dict | None = None) -> bool:
        """Train ``settings`` (and, given ``rival``, that rule with ``rival_knobs`` on the very same
        data and seed). False while a run is going: pressing start twice starts nothing new (a
        paused lesson resumes)."""
        if self.running:
            self.resume()
            return False
        self.compare = rival is not None
        for run in self.runs.values():
            run.reset()
        second = dataclasses.replace(settings, learner=rival, knobs=dict(rival_knobs or {})) if rival else None
        try:
            data = load_data(settings)
        except AltlearnError as err:
            for run, s in zip(self.active_runs, (settings, second)):
                run.settings = s
                run.board.clear(s.learner, s.dataset)
                run.board.set_status("refused", one_line(err))
            return True
        self.runs["A"].start(settings, data)
        if second is not None:
            self.runs["B"].start(second, data)
        return True

    def pause(self) -> None:
        for run in self.active_runs:
            run.pause()

    def resume(self) -> None:
        for run in self.active_runs:
            run.resume()

    def reset(self) -> None:
        for run in self.runs.values():   # both stop at once, then each is waited for
            run.close()
        for run in self.runs.values():
            run.reset()

    def close(self) -> None:
        for run in self.runs.values():
            run.close()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        return all(r.wait(None if end is None else max(0.0, end - time.monotonic())) for r in self.runs.values())
