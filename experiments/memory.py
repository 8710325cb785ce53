"""Peak memory of the training process, sampled from a background thread."""
from __future__ import annotations

import os
import resource
import sys
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident set size in bytes (Linux /proc; elsewhere the lifetime peak as a fallback)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak resident memory above the level at start, while active.

    RSS counts the whole process (torch's CPU allocations included, which
    tracemalloc would miss). Freed heap that the allocator keeps is counted as
    still in use, so compare learners run in separate processes (as sweeps do).
    On CUDA the device's own peak allocation is reported instead.
    """

    def __init__(self, interval: float = 0.005, device: str = "cpu"):
        self.interval, self.device = interval, device
        self._peak = 0
        self._stop = threading.Event()
        self._thread = None
        self.baseline = current_rss()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, current_rss())

    def start(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._peak = current_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def peak_so_far(self) -> int:
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(self.device))
        self._peak = max(self._peak, current_rss())
        return max(self._peak - self.baseline, 0)

    def stop(self) -> int:
        """Stop sampling and return the peak in bytes above the baseline."""
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(self.device))
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, current_rss())
        return max(self._peak - self.baseline, 0)
