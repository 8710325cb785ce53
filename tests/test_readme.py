"""The README's Python examples run as written, and its example learner learns."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_write_your_own_learner_example_learns():
    block = next(b for b in python_blocks() if "class SignDescent" in b)
    assert len(block.strip().splitlines()) <= 45
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    assert float(out.getvalue().split()[-1]) > 0.8     # digits: well above the 10% of chance
