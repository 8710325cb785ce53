"""A sweep survives its failures: a refused, raising or diverging job is recorded and the rest run."""
import numpy as np
import pytest
import yaml

from analysis import collect
from analysis.report import write_report
from tests.test_cli import altlearn

FAST = ["loop.progress=false", "loop.n_epochs=1", "data=blobs", "data.options.n_train=120", "data.options.n_test=60"]


def test_a_refused_job_does_not_end_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    out = altlearn("-m", "learner=particle_swarm,backprop", "network=smallconv", "data=digits", "loop.n_epochs=1",
                   "loop.progress=false", "report=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr            # something failed, and the exit code says so
    refused = yaml.safe_load((sweep / "0" / "status.yaml").read_text())
    assert refused["status"] == "refused" and "does not support convolutional networks" in refused["error"]
    assert "learner=particle_swarm" in refused["overrides"]
    ds = collect(sweep)                                # the backprop job after it ran
    assert ds.attrs["n_runs"] == 1 and str(ds["learner"].values) == "backprop"
    assert "learner=particle_swarm" in ds.attrs["failed_runs"] and "refused" in ds.attrs["failed_runs"]
    summary = (sweep / "summary.md").read_text()       # the report lists the failure by its overrides
    assert "refused: learner 'particle_swarm' does not support" in summary
    assert "learner=particle_swarm network=smallconv" in summary
    assert "1 job(s) of the sweep failed" in out.stderr


def test_a_diverging_job_is_recorded_and_the_next_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    out = altlearn("-m", "learner=backprop", "learner.optimizer.name=sgd", "learner.optimizer.lr=1e30,0.01",
                   *FAST, "report=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1
    status = yaml.safe_load((sweep / "0" / "status.yaml").read_text())
    assert status["status"] == "diverged" and "learner.optimizer.lr=1e+30" in status["overrides"]
    assert yaml.safe_load((sweep / "1" / "status.yaml").read_text())["status"] in ("complete", "chance")
    assert (sweep / "1" / "results.nc").is_file()


def test_a_sweep_with_no_failure_exits_zero_and_writes_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    out = altlearn("-m", "learner=backprop", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "| backprop |" in (sweep / "summary.md").read_text()
    assert {yaml.safe_load((sweep / i / "status.yaml").read_text())["status"] for i in "01"} <= {"complete", "chance"}


def test_a_single_failing_run_exits_two_and_records_its_status(tmp_path):
    out = altlearn("learner=particle_swarm", "network=smallconv", "data=digits", "loop.progress=false",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2 and "does not support convolutional networks" in out.stderr
    assert yaml.safe_load((tmp_path / "run" / "status.yaml").read_text())["status"] == "refused"


def test_report_lists_flagged_runs(tmp_path):
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    from learners import make_learner
    from tests.test_budgets import Constant
    data = load_dataset("blobs", n_train=120, n_test=60, val_size=40)
    fit(Constant(), "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=1, progress=False),
        out_dir=tmp_path / "frozen")
    fit(make_learner("backprop"), "mlp_small", data, seed=1, loop=LoopConfig(n_epochs=1, progress=False),
        out_dir=tmp_path / "learns")
    write_report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    ds = collect(tmp_path)
    assert "frozen" in ds.attrs["flagged_runs"] and "chance" in ds.attrs["flagged_runs"]
    assert "**Flagged runs**" in text and "frozen" in text
    assert np.isfinite(ds["accuracy"].sel(split="test").values).sum() == 2   # flagged runs stay in the table


@pytest.mark.slow
def test_a_refused_job_does_not_end_a_joblib_sweep(tmp_path):
    from tests.test_sweeps import _has
    if not _has("hydra_plugins.hydra_joblib_launcher"):
        pytest.skip("hydra-joblib-launcher is not installed (pip install 'altlearn[sweep]')")
    sweep = tmp_path / "sweep"
    out = altlearn("-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "learner=particle_swarm,backprop",
                   "network=smallconv", "data=digits", "loop.n_epochs=1", "loop.progress=false", "loop.threads=1",
                   "report=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert yaml.safe_load((sweep / "0" / "status.yaml").read_text())["status"] == "refused"
    assert str(collect(sweep)["learner"].values) == "backprop"
    assert "learner=particle_swarm" in (sweep / "summary.md").read_text()
