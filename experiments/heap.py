"""Keep freed tensor memory in the process heap for reuse, instead of handing it back to the OS.

A training step allocates and frees the same few large tensors every time (a smallconv block's
activations at batch 128 are 12.8 MB). glibc's malloc serves blocks above its mmap threshold
(128 KiB, raised dynamically only up to the size of blocks already freed) with fresh mmaps, and
trims freed memory at the top of the heap beyond its trim threshold back to the OS; either way the
next step touches new pages and pays a page fault for every 4 KiB. On this project's CPU machine
that was 9,000-12,000 minor faults and 15-25 ms of system time per ~75 ms LLS step on smallconv,
against ~300 faults and under 1 ms with the thresholds raised (``benchmarks/bench_lls.py --heap
default|retain`` times either). PyTorch's CPU performance guide recommends the same cure through jemalloc or
tcmalloc; mallopt does it with the allocator already loaded. The setting holds for the rest of the
process: ``loop.retain_freed_memory: false`` only keeps a fit from making it.

The price is resident memory: freed blocks stay mapped (up to the process's own peak of live
memory plus fragmentation). ``peak_memory`` counts malloc's bytes in use (experiments/memory.py), so
what glibc keeps is not charged to a learner.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

# Largest block served from the heap; larger ones are still mmapped and returned on free.
MMAP_THRESHOLD = 1 << 30
# Free memory at the top of the heap kept before trimming (int, mallopt's argument type).
TRIM_THRESHOLD = (1 << 31) - 1

_applied: list[bool] = []


def glibc_function(name: str, argtypes: tuple, restype):
    """The C library's function ``name`` with its signature set, or None off Linux or where the
    library lacks it (musl, glibc older than the function)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). True when they were set;
    False where the C library is not glibc (macOS, Windows, musl), which is then left as it is."""
    if _applied:
        return _applied[0]
    mallopt = glibc_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    # both, and in this order: setting either one switches off glibc's dynamic threshold,
    # and a trim threshold alone leaves every block above 128 KiB mmapped (2x slower here)
    ok = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _applied.append(ok)
    return ok
