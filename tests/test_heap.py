"""experiments/heap.py: with the thresholds raised, freed tensor memory is reused without page faults."""
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are glibc's")

# A fresh process allocates, fills and frees a 40 MB tensor (above glibc's largest dynamic mmap
# threshold, 32 MiB) again and again and prints the minor page faults per round in the steady state.
CHILD = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    import torch
    if {retain}:
        from experiments.heap import retain_freed_memory
        assert retain_freed_memory()
    for rounds in (20, 20):       # the first twenty rounds grow the heap; the second twenty are counted
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            a = torch.ones(10 * 2 ** 20)
            del a
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds)
""")


def _faults_per_round(retain: bool) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), retain=retain)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_retained_heap_reuses_freed_blocks_without_page_faults():
    # With glibc's own thresholds each round maps the tensor afresh, so it faults at least once per
    # page the kernel hands out: 10240 small pages, but as few as 20 where the kernel backs anonymous
    # memory with larger folios (transparent huge pages, multi-size THP), as a CI machine did (2627).
    tensor_bytes = 40 * 2 ** 20                         # CHILD's tensor: 10 * 2**20 float32
    fresh = _faults_per_round(retain=False)
    assert fresh >= tensor_bytes // (2 * 2 ** 20)       # one fault per 2 MiB huge page at the least
    retained = _faults_per_round(retain=True)           # the same pages again: next to no faults
    assert retained < min(fresh / 20, tensor_bytes // 4096 / 100)


def test_retain_freed_memory_is_applied_once_and_reports_it(monkeypatch):
    from experiments import heap
    monkeypatch.setattr(heap, "_applied", [])
    first = heap.retain_freed_memory()
    assert heap.retain_freed_memory() is first and heap._applied == [first]
    assert first == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("retain", [True, False])
def test_fit_sets_the_heap_thresholds_unless_told_not_to(monkeypatch, retain):
    import experiments.fit as fit_module
    from experiments.datasets import load_dataset
    from learners import make_learner
    calls = []
    monkeypatch.setattr(fit_module, "retain_freed_memory", lambda: calls.append(1) or True)
    data = load_dataset("blobs", seed=0, n_train=64, n_test=32)
    fit_module.fit(make_learner("backprop"), "mlp_2x1000", data, seed=0,
                   loop=fit_module.LoopConfig(n_epochs=1, batch_size=32, progress=False, count_flops=False,
                                              retain_freed_memory=retain))
    assert calls == ([1] if retain else [])


@pytest.mark.parametrize("flush", [True, False])
def test_fit_flushes_subnormal_floats_to_zero_unless_told_not_to(flush):
    import torch
    import experiments.fit as fit_module
    from experiments.datasets import load_dataset
    from learners import make_learner
    data = load_dataset("blobs", seed=0, n_train=64, n_test=32)
    torch.set_flush_denormal(False)
    try:
        fit_module.fit(make_learner("backprop"), "mlp_small", data, seed=0,
                       loop=fit_module.LoopConfig(n_epochs=1, batch_size=32, progress=False, count_flops=False,
                                                  flush_denormal=flush))
        subnormal = torch.tensor([1e-40]) * 1.0          # below float32's smallest normal, 1.18e-38
        assert (subnormal.item() == 0.0) == flush
    finally:
        torch.set_flush_denormal(True)
