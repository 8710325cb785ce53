"""The layer contract (pyproject.toml, [tool.importlinter]): core < networks < learners <
experiments < analysis, each importing only the layers below it; the numba kernels import nothing
of the project. It holds for the tree, and it fails when a violation is added."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "networks", "learners", "experiments", "analysis")


def lint(folder: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_tree_keeps_the_layer_contract():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in out.stdout


@pytest.mark.parametrize("module,line,broken", [
    ("learners/base.py", "import experiments.recording", "learners is not allowed to import experiments"),
    ("core/errors.py", "import networks", "core is not allowed to import networks"),
    ("learners/_kernels/swarm.py", "import core.errors", "Numba kernels import nothing of the project BROKEN"),
])
def test_an_added_violation_breaks_the_contract(tmp_path, module, line, broken):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}\n")
    out = lint(tmp_path)
    assert out.returncode != 0 and broken in out.stdout, out.stdout[-3000:]
