"""Peak memory of the training process, sampled from a background thread."""
from __future__ import annotations

import ctypes
import os
import resource
import sys
import threading

import torch

from experiments.heap import glibc_function

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident anonymous memory in bytes: the heap, where tensors and arrays live (Linux: RssAnon of
    /proc/self/status). Pages of shared libraries are left out: torch's and numba's code is paged in
    on first use, ~100 MiB that would otherwise be charged to whichever run touches it first.
    Elsewhere: the lifetime peak RSS, as a fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


_MALLINFO2 = glibc_function("mallinfo2", (), _MallInfo2)   # glibc >= 2.33
MEASURE = "malloc_in_use" if _MALLINFO2 is not None else "rss_anon"


def heap_in_use() -> int:
    """Bytes malloc has handed out and not taken back: glibc's chunks in use in every arena plus its
    mmapped blocks (mallinfo2). Unlike resident memory it does not count freed memory the allocator
    keeps, so it does not depend on glibc's thresholds (experiments/heap.py raises them) nor on
    heap a forking parent freed. Without glibc: ``current_rss()``."""
    if _MALLINFO2 is None:
        return current_rss()
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


class PeakMemory:
    """Peak heap memory in use above the level at start, while active (``heap_in_use``).

    malloc's count covers torch's CPU allocations (which tracemalloc would miss), numpy's and
    numba's. Sampled every ``interval`` seconds, so a spike shorter than that can be missed; where
    the count falls back to resident memory, freed heap the allocator keeps counts as in use, which
    is one reason the app trains each run in its own forked process (``isolate: true``).
    On CUDA the device's own peak allocation is reported instead.
    """

    def __init__(self, interval: float = 0.005, device: str = "cpu"):
        self.interval, self.device = interval, device
        self._peak = 0
        self._stop = threading.Event()
        self._thread = None
        self.measure = "cuda_max_allocated" if device.startswith("cuda") else MEASURE
        self.baseline = heap_in_use()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, heap_in_use())

    def start(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._peak = heap_in_use()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def peak_so_far(self) -> int:
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(self.device))
        self._peak = max(self._peak, heap_in_use())
        return max(self._peak - self.baseline, 0)

    def stop(self) -> int:
        """Stop sampling and return the peak in bytes above the baseline."""
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(self.device))
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, heap_in_use())
        return max(self._peak - self.baseline, 0)
