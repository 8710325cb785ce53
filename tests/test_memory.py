"""experiments/memory.py: peak memory counts what is allocated, not what the allocator keeps."""
import platform
import time

import pytest
import torch

from experiments.memory import MEASURE, PeakMemory, heap_in_use

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc's own count is glibc's mallinfo2")


@glibc
def test_heap_in_use_follows_a_tensor_in_and_out():
    assert MEASURE == "malloc_in_use"
    before = heap_in_use()
    a = torch.ones(10 * 2 ** 20)                    # 40 MiB
    held = heap_in_use() - before
    del a
    assert 39 * 2 ** 20 < held < 42 * 2 ** 20
    assert heap_in_use() - before < 2 ** 20


@glibc
def test_peak_counts_memory_the_allocator_reuses():
    # with glibc keeping freed blocks (experiments/heap.py) a new tensor reuses pages already resident,
    # so resident memory would not grow; the peak must still see the 40 MiB
    from experiments.heap import retain_freed_memory
    retain_freed_memory()
    big = torch.ones(20 * 2 ** 20)                   # 80 MiB allocated and freed: kept by the heap
    del big
    memory = PeakMemory(interval=0.001).start()
    a = torch.ones(10 * 2 ** 20)
    time.sleep(0.02)
    del a
    peak = memory.stop()
    assert memory.measure == "malloc_in_use"
    assert 39 * 2 ** 20 < peak < 44 * 2 ** 20
