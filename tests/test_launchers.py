"""The same sweep on real distributed engines: a Ray cluster started here, and submitit's local executor.

Each sweep is backprop and mono_forward x 2 seeds on blobs (as the joblib test in test_sweeps.py) and
must collect into one (learner, seed, epoch, split) Dataset with no failed run.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_module

from analysis import collect
from tests.test_sweeps import FAST, _has, altlearn

SWEEP = ("learner=backprop,mono_forward", "seed=0,1", *FAST, "hydra.sweep.subdir='${learner.name}/seed=${seed}'")


def _collects_into_one_dataset(sweep: Path) -> None:
    ds = collect(sweep)
    assert ds.attrs["n_runs"] == 4 and ds.attrs["failed_runs"] == ""
    assert ds["accuracy"].dims[:2] == ("learner", "seed")
    assert list(ds["learner"].values) == ["backprop", "mono_forward"] and list(ds["seed"].values) == [0, 1]
    assert np.isfinite(ds["accuracy"].sel(split="test").values).all()


def _launcher(sweep: Path) -> dict:
    return yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster on 127.0.0.1 (2 CPUs) for this module's tests; yields (address, its
    temp dir). It is stopped by killing its own process group, not with `ray stop`, which would end
    every Ray process on the machine, including clusters that are not this test's."""
    if not _has("ray"):
        pytest.skip("ray is not installed (pip install 'altlearn[ray]')")
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's unix sockets live under it (108 bytes at most)
    with pytest.MonkeyPatch.context() as env, open(os.path.join(temp, "head.log"), "w") as log:
        # Ray swaps 127.0.0.1 for the machine's outward address unless it is told that this is not a
        # multi-machine cluster: the flag keeps the head, its workers and the sweep's driver on loopback
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # a token in ~/.ray would switch the head, but not the sweep's driver, to token authentication;
        # the cluster listens on loopback only
        env.setenv("RAY_AUTH_MODE", "disabled")
        head = subprocess.Popen([str(ray_cli if ray_cli.exists() else "ray"), "start", "--head",
                                 "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = head.wait(timeout=60)  # `ray start` returns once the node is up; its daemons stay
            if code != 0:
                pytest.fail(f"ray start exited {code}:\n{Path(temp, 'head.log').read_text()[-3000:]}")
            yield f"127.0.0.1:{port}", Path(temp)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # the group outlives `ray start` itself
            except ProcessLookupError:
                pass
            head.wait()
            shutil.rmtree(temp, ignore_errors=True)


def _worker_logs(ray_temp: Path, suffix: str) -> str:
    """What the cluster's workers wrote to stdout (.out) or stderr (.err)."""
    logs = (ray_temp / "session_latest" / "logs").glob(f"worker-*{suffix}")
    return "".join(p.read_text(errors="replace") for p in logs)


@pytest.mark.slow
def test_ray_sweep_on_a_local_cluster_collects_into_one_dataset(tmp_path, ray_head):
    address, ray_temp = ray_head
    sweep = tmp_path / "sweep"
    code, err = altlearn("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", *SWEEP,
                         f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err[-3000:]
    launcher = _launcher(sweep)
    assert launcher["_target_"].endswith("RayLauncher") and launcher["ray"]["init"]["address"] == address
    _collects_into_one_dataset(sweep)
    # the jobs ran in the cluster's workers: each has a Ray task id, and the head's worker logs hold
    # what the jobs printed (each names its run folder)
    job_ids = {yaml.safe_load((sweep / learner / f"seed={s}" / ".hydra" / "hydra.yaml").read_text())
               ["hydra"]["job"]["id"] for learner in ("backprop", "mono_forward") for s in (0, 1)}
    assert len(job_ids) == 4 and all(len(str(i)) > 16 for i in job_ids)
    worker_output = _worker_logs(ray_temp, ".out")
    assert all(str(sweep / learner / f"seed={s}") in worker_output for learner in ("backprop", "mono_forward")
               for s in (0, 1))


@pytest.mark.slow
def test_ray_job_that_exits_is_run_once_and_its_sibling_still_runs(tmp_path, ray_head):
    """A task function that exits would end its Ray worker, and Ray would run the job again; the
    launcher records the exit as the job's failure instead, after the other jobs have run."""
    address, ray_temp = ray_head
    sweep = tmp_path / "sweep"
    # with learner=all every learner refuses a convnet on 2-feature data; job 1 is its sibling
    code, err = altlearn("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}",
                         "learner=all,backprop", "network=smallconv", *FAST, f"hydra.sweep.dir={sweep}",
                         cwd=tmp_path)
    assert code == 1, err[-3000:]                                    # the sweep says that jobs failed
    assert (sweep / "1" / ".hydra" / "overrides.yaml").is_file()   # the sibling ran
    assert "refused: [learner=backprop network=smallconv" in err      # and the end of the sweep lists it
    assert _worker_logs(ray_temp, ".err").count("refused: learner 'mono_forward'") == 1   # run once


@pytest.mark.slow
def test_local_submitit_sweep_collects_into_one_dataset(tmp_path):
    if not _has("hydra_plugins.hydra_submitit_launcher"):
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'altlearn[submitit]')")
    sweep = tmp_path / "sweep"
    code, err = altlearn("-m", "hydra/launcher=local_submitit", *SWEEP, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert _launcher(sweep)["_target_"].endswith("submitit_launcher.LocalLauncher")
    _collects_into_one_dataset(sweep)
    # each run was a submitit job of its own: a job folder with its pickled result per run
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 4


@pytest.mark.parametrize("option,target", [
    ("ray", "hydra_plugins.altlearn_launchers.ray_launcher.RayLauncher"),
    ("local_submitit", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")])
def test_cluster_launcher_configs_compose(option, target):
    """Both configs compose, each naming the launcher class hydra will instantiate."""
    if option == "local_submitit" and not _has("hydra_plugins.hydra_submitit_launcher"):
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'altlearn[submitit]')")
    with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={option}", "learner=backprop"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if option == "ray":
        assert cfg.hydra.launcher.ray.init.address is None
        assert (cfg.hydra.launcher.ray.remote.num_cpus, cfg.hydra.launcher.ray.remote.num_gpus) == (1, 0)
