"""Every YAML composes, and what it names instantiates (lightning-hydra-template's idea)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from experiments.app import CONFIG_DIR, learner_config
from experiments.datasets import _LOADERS
from experiments.fit import LoopConfig, as_spec
from learners import available_learners, make_learner

GROUP_FILES = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))
               for g in ("learner", "network", "data", "loop", "experiment", "sweep")}


def _compose(overrides):
    with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _check(cfg):
    names = available_learners() if cfg.learner.name == "all" else [cfg.learner.name]
    sweep = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    if "learner" in sweep:
        names = [n.strip() for n in str(sweep["learner"]).split(",")]
    for name in names:
        params = learner_config(name, cfg)
        if cfg.learner.name == name:
            params = OmegaConf.to_container(OmegaConf.merge(params, cfg.learner), resolve=True)
        params.pop("name")
        make_learner(name, **params)
    for name in (cfg.get("learner_overrides") or {}):
        assert name in available_learners(), f"learner_overrides names unknown learner {name}"
    as_spec(OmegaConf.to_container(cfg.network, resolve=True))
    assert cfg.data.name in _LOADERS
    LoopConfig(**OmegaConf.to_container(cfg.loop, resolve=True))


def test_default_config_composes():
    cfg = _compose([])
    assert cfg.learner.name == "all" and cfg.data.name == "digits" and cfg.network.preset == "mlp_small"
    _check(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_FILES.items() if g not in ("experiment", "sweep")
                                          for o in opts])
def test_every_group_option_composes_and_instantiates(group, option):
    _check(_compose([f"{group}={option}"]))


@pytest.mark.parametrize("experiment", GROUP_FILES["experiment"])
def test_every_experiment_composes_and_instantiates(experiment):
    _check(_compose([f"experiment={experiment}"]))


@pytest.mark.parametrize("sweep", GROUP_FILES["sweep"])
def test_every_sweep_composes(sweep):
    cfg = _compose([f"+sweep={sweep}"])
    assert OmegaConf.select(cfg, "hydra.sweeper.params")


def test_every_registered_learner_has_a_config_file():
    for name in available_learners():
        assert (CONFIG_DIR / "learner" / f"{name}.yaml").is_file(), name
        assert learner_config(name)["name"] == name


def test_the_default_runs_own_adjustments_name_real_learners_and_hyperparameters():
    """all_overrides (the no-argument run's adjustments) apply on top of the learner's own config and
    make a valid learner; a single-learner run ignores them."""
    cfg = _compose([])
    assert cfg.all_overrides, "the default run makes no adjustments: drop this test with the key"
    for name, extra in cfg.all_overrides.items():
        params = OmegaConf.to_container(OmegaConf.merge(learner_config(name, cfg), extra), resolve=True)
        params.pop("name")
        make_learner(name, **params)
    single = _compose(["learner=noprop_dt"])
    params = learner_config("noprop_dt", single)
    assert params["block_schedule"] != cfg.all_overrides.noprop_dt.block_schedule
