"""benchmarks/ccl_reference_code.py --reuse: the authors' rows kept, altlearn's read again."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from benchmarks.ccl_reference_code import main, reference_from_table


def _run(folder, seed, val_loss, test_acc):
    """A results.nc with the two variables the table reads."""
    path = folder / "counter_current" / f"seed={seed}"
    path.mkdir(parents=True)
    n = len(val_loss)
    loss = np.full((n, 3), np.nan)
    acc = np.full((n, 3), np.nan)
    loss[:, 1], acc[:, 2] = val_loss, test_acc
    coords = {"epoch": np.arange(1, n + 1), "split": ["train", "val", "test"]}
    xr.Dataset({"loss": (("epoch", "split"), loss), "accuracy": (("epoch", "split"), acc)},
               coords=coords).to_netcdf(path / "results.nc")


def test_reuse_keeps_the_authors_rows_and_reads_the_new_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("ALTLEARN_DATA", raising=False)       # the authors' code is not run: no data needed
    out = tmp_path / "table.md"
    out.write_text("# t\n\n| code | seed | test accuracy (%) | epoch reported |\n|---|---|---|---|\n"
                   "| the authors' code (./yaml/mlp/fmnist_ccl.yaml) | 0 | 88.11 | 97 |\n"
                   "| the authors' code (./yaml/mlp/fmnist_ccl.yaml) | 1 | 88.45 | 88 |\n"
                   "| altlearn (old) | 0 | 80.00 | 3 |\n")
    assert reference_from_table(out)[1] == {"test": 88.45, "best_epoch": 88, "yaml": "./yaml/mlp/fmnist_ccl.yaml"}
    ours = tmp_path / "runs"
    _run(ours, 0, [0.5, 0.3, 0.4], [0.85, 0.881, 0.9])          # lowest validation loss at epoch 2
    _run(ours, 1, [0.5, 0.4, 0.2], [0.85, 0.86, 0.8875])
    main(["--reuse", "--yaml", "./yaml/mlp/fmnist_ccl.yaml", "--seeds", "0", "1", "--ours", str(ours),
          "--out", str(out)])
    text = out.read_text()
    assert "| the authors' code (./yaml/mlp/fmnist_ccl.yaml) | 0 | 88.11 | 97 |" in text
    assert "| altlearn (runs) | 0 | 88.10 | 2 |" in text and "| altlearn (runs) | 1 | 88.75 | 3 |" in text
    assert "altlearn (old)" not in text and "the authors' code: 88.28 over seeds 0, 1" in text
    with pytest.raises(SystemExit):                               # a table of the other data set's yaml
        main(["--reuse", "--yaml", "./yaml/mlp/mnist_ccl.yaml", "--seeds", "0", "--ours", str(ours),
              "--out", str(out)])
