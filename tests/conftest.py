import os
from pathlib import Path

import pytest
import torch

# One thread: the test networks are tiny, and idle extra threads only spin on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root():
    """The folder with mnist/ and fashion-mnist/ IDX files, or skip."""
    root = os.environ.get("ALTLEARN_DATA")
    if not root or not (Path(root) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST files not found: set ALTLEARN_DATA to a folder holding mnist/")
    return Path(root)
