"""Shared measuring helpers for the benchmark scripts (not tests: numbers vary by machine)."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def set_threads(n: int) -> None:
    """Fix torch's intra-op threads (and BLAS's, for numpy/numba work started after this)."""
    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    # numpy's BLAS read the variables above when it was loaded, which may already have happened.
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` after one warm-up call, by ``clock``
    (``time.process_time`` for the CPU time of this process, which other jobs on a shared machine
    do not dilute)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def matmul_peak_gflops(n: int = 1024, repeats: int = 20, dtype=torch.float32, clock=time.perf_counter) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of an n x n matrix multiply with the current thread count,
    timed by ``clock``."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats, clock) / 1e9


def cpu_model() -> str:
    """The CPU's model name where the OS tells it (Linux), else the architecture: the shared machine
    changes hardware between sessions, and timings only compare on the same model."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, title: str, header: list[str], rows: list[list], notes: str = "",
                tail: str = "") -> str:
    """A markdown table written to ``path`` (and returned); ``tail``: more markdown after it."""
    text = f"# {title}\n\n{notes}\n\n{markdown_table(header, rows)}" + (f"\n{tail.rstrip()}\n" if tail else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")    # written whole, then renamed: never half a table
    partial.write_text(text)
    partial.replace(path)
    return text
