"""The page's hold on a training thread: pause, resume, stop, and jobs run on that thread.

A job (saving the run so far) runs on the training thread between two steps, so it never reads
a learner's state while an update is changing it.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from experiments.callbacks import StopTraining

# how often a paused thread looks for jobs and for the stop
POLL_S = 0.05


class Control:
    def __init__(self):
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def pause(self) -> None:
        if not self._stop.is_set():
            self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()   # a paused thread wakes up to see the stop

    def submit(self, job) -> Future:
        """Run ``job(run)`` on the training thread at its next checkpoint; its future holds the answer."""
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def checkpoint(self, run, on_pause=None, on_resume=None) -> None:
        """Between two steps, on the training thread: run the waiting jobs, wait while paused, and
        raise `StopTraining` once stopped."""
        self.run_jobs(run)
        if not self._go.is_set():
            if on_pause is not None:
                on_pause()
            while not self._go.wait(POLL_S):
                self.run_jobs(run)
            if on_resume is not None and not self._stop.is_set():
                on_resume()
        self.run_jobs(run)
        if self._stop.is_set():
            raise StopTraining("stopped from the classroom page")

    def sleep(self, seconds: float, run) -> None:
        """Wait ``seconds`` (slow motion), still answering jobs and a stop."""
        end = threading.Event()
        remaining = seconds
        while remaining > 0 and not self._stop.is_set():
            step = min(POLL_S, remaining)
            end.wait(step)
            remaining -= step
            self.run_jobs(run)

    def run_jobs(self, run) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job(run))
            except Exception as err:  # noqa: BLE001 - the asker gets the error, the training goes on
                future.set_exception(err)
