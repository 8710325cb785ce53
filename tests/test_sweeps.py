"""Sweeps at scale: a 2-worker joblib sweep collected into one Dataset; launcher and tuning configs."""
import contextlib
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_module

from analysis import collect

FAST = ("data=blobs", "data.options.n_train=100", "data.options.n_test=50", "loop.n_epochs=1",
        "loop.progress=false", "loop.threads=1", "report=false")


def altlearn(*args, cwd):
    """`altlearn ARGS` in this process (the joblib workers are processes of their own)."""
    from hydra.core.global_hydra import GlobalHydra

    from experiments.app import main
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["altlearn", *args]
    os.chdir(cwd)
    code, err = 0, io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv, _ = old_argv, os.chdir(old_cwd)
        GlobalHydra.instance().clear()
    return code, err.getvalue()


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (hydra_plugins) is not installed at all
        return False


@pytest.mark.slow
def test_two_worker_joblib_sweep_collects_into_one_dataset(tmp_path):
    if not _has("hydra_plugins.hydra_joblib_launcher"):
        pytest.skip("hydra-joblib-launcher is not installed (pip install 'altlearn[sweep]')")
    sweep = tmp_path / "sweep"
    code, err = altlearn("-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                         "learner=backprop,mono_forward", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep}",
                         "hydra.sweep.subdir='${learner.name}/seed=${seed}'", cwd=tmp_path)
    assert code == 0, err[-2000:]
    launcher = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    ds = collect(sweep)
    assert ds.attrs["n_runs"] == 4 and ds.attrs["failed_runs"] == ""
    assert ds["accuracy"].dims[:2] == ("learner", "seed")
    assert list(ds["learner"].values) == ["backprop", "mono_forward"] and list(ds["seed"].values) == [0, 1]
    assert np.isfinite(ds["accuracy"].sel(split="test").values).all()


def _compose(overrides):
    with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("option,plugin", [("local_parallel", "hydra_plugins.hydra_joblib_launcher"),
                                           ("slurm", "hydra_plugins.hydra_submitit_launcher"),
                                           ("ray", "hydra_plugins.altlearn_launchers")])
def test_launcher_configs_compose(option, plugin):
    if not _has(plugin):
        pytest.skip(f"{plugin} is not installed: hydra/launcher={option} is documented, not composed here")
    cfg = _compose([f"hydra/launcher={option}", "learner=backprop"])
    assert "Launcher" in cfg.hydra.launcher._target_


def test_report_shows_the_recorded_tuning_of_tuned_runs(tmp_path):
    from analysis.report import write_report
    from experiments.datasets import load_dataset
    from experiments.fit import LoopConfig, fit
    from learners import make_learner
    config = yaml.safe_dump({"tuning": {"budget": 7, "sampler": "tpe", "seed": 0, "chosen": {"optimizer": {"lr": 0.01}}}})
    fit(make_learner("backprop"), "mlp_small", load_dataset("blobs", n_train=60, n_test=30), seed=0,
        loop=LoopConfig(n_epochs=1, progress=False), out_dir=tmp_path / "run", attrs={"config": config})
    write_report(tmp_path)
    assert "Tuned: 7 trials per learner (tpe sampler, seed 0), the setting chosen on validation." in \
        (tmp_path / "summary.md").read_text()


def test_sweep_over_every_learner_is_a_glob():
    cfg = _compose(["+sweep=learners"])
    assert cfg.hydra.sweeper.params.learner == "glob(*,exclude=all)"
