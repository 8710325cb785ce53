"""The feedback-alignment benchmark's smoke run: it completes without biotorch and says so."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_without_biotorch_writes_its_table(tmp_path):
    out = tmp_path / "fa.md"
    # biotorch hidden even where it is installed: an import of a None entry in sys.modules fails
    code = ("import sys; sys.modules['biotorch'] = None; from benchmarks.bench_fa import main; "
            f"main(['--quick', '--out', {str(out)!r}])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "python -m benchmarks.bench_fa --quick" in text and "1 threads" in text
    assert "biotorch is not installed" in text
    for contender in ("backprop", "ours fa", "ours usf", "ours brsf", "ours frsf", "ours dfa", "ours drtp"):
        assert f"| {contender} |" in text
    assert "biotorch fa" not in text and "Gradient agreement" not in text
    assert "## Accuracy" in text
    assert not out.with_name("fa.md.part").exists()
