import numpy as np
import pytest

from analysis import collect
from analysis.report import write_report
from analysis.stats import mean_and_interval
from experiments.datasets import load_dataset
from core.errors import DataError
from experiments.fit import LoopConfig, fit
from experiments.recording import write_results
from learners import make_learner


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = load_dataset("blobs", seed=0, n_train=200, n_test=100)
    for seed in (0, 1, 2):
        for lr in (0.01, 0.001):
            fit(make_learner("backprop", optimizer={"lr": lr}), "mlp_small", data, seed=seed,
                loop=LoopConfig(n_epochs=2, progress=False), out_dir=root / f"lr={lr}" / f"seed={seed}",
                coords={"learner.optimizer.lr": lr})
    return root


def test_collect_stacks_runs_into_labelled_dims(sweep):
    ds = collect(sweep)
    assert ds["accuracy"].dims == ("seed", "learner.optimizer.lr", "epoch", "split")
    assert list(ds["seed"].values) == [0, 1, 2]
    assert ds["learner"].item() == "backprop"
    assert ds.attrs["n_runs"] == 6 and ds.attrs["failed_runs"] == ""
    assert np.isfinite(ds["accuracy"].values).all()


def test_collect_reports_failed_and_partial_runs(sweep, tmp_path):
    import shutil
    shutil.copytree(sweep, tmp_path / "s")
    (tmp_path / "s" / "crashed" / ".hydra").mkdir(parents=True)
    path = next((tmp_path / "s").rglob("results.nc"))
    from experiments.recording import read_results
    ds = read_results(path)
    ds.attrs["status"] = "diverged"
    write_results(ds, path)
    out = collect(tmp_path / "s")
    assert "crashed" in out.attrs["failed_runs"]
    assert "diverged" in out.attrs["incomplete_runs"]
    assert collect(tmp_path / "s", complete_only=True).attrs["n_runs"] == 5


def test_corrupt_results_file_is_named(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.nc").write_bytes(b"not netcdf")
    with pytest.raises(DataError, match="results.nc is not a readable results file"):
        collect(tmp_path)


def test_interval_by_hand():
    import xarray as xr
    da = xr.DataArray([1.0, 2.0, 3.0], dims="seed")
    mean, lo, hi = mean_and_interval(da)
    # t(0.975, 2) = 4.3027; sem = 1/sqrt(3)
    assert float(mean) == 2.0
    assert float(hi - mean) == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)


def test_report_writes_figure_and_table(tmp_path):
    data = load_dataset("blobs", seed=0, n_train=200, n_test=100)
    for seed in (0, 1):
        fit(make_learner("backprop"), "mlp_small", data, seed=seed, loop=LoopConfig(n_epochs=2, progress=False),
            out_dir=tmp_path / f"seed={seed}")
    table = write_report(tmp_path)
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert "| backprop |" in table and "±" in table
    assert "summary" not in table and (tmp_path / "summary.md").read_text().count("| backprop |") == 1
