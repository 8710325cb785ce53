"""Every YAML composes, and what it names instantiates (lightning-hydra-template's idea)."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from experiments.app import CONFIG_DIR, learner_config
from experiments.datasets import _LOADERS
from experiments.fit import LoopConfig, as_spec
from learners import available_learners, make_learner

# The experiment configs live in purpose folders, <purpose>/experiment/<name>.yaml, each a root on
# config.yaml's hydra.searchpath (pkg://experiments.configs.<purpose>).
SEARCHPATH = OmegaConf.load(CONFIG_DIR / "config.yaml").hydra.searchpath
EXPERIMENT_FILES = sorted(CONFIG_DIR.glob("*/experiment/*.yaml"))
GROUP_FILES = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))
               for g in ("learner", "network", "data", "loop", "sweep")}
GROUP_FILES["experiment"] = sorted(p.stem for p in EXPERIMENT_FILES)


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
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.hydra.runtime.choices.experiment == experiment
    _check(cfg)


def test_experiment_configs_are_found_in_their_purpose_folders():
    purposes = sorted({p.parent.parent.name for p in EXPERIMENT_FILES})
    assert len(EXPERIMENT_FILES) >= 40 and {"reproduce", "compare", "continual", "select", "benchmark"} <= set(purposes)
    assert not list((CONFIG_DIR / "experiment").glob("*.yaml")), "experiment configs go in a purpose folder"


def test_every_purpose_folder_is_on_the_search_path_and_holds_only_experiments():
    purposes = sorted({p.parent.parent.name for p in EXPERIMENT_FILES})
    assert sorted(SEARCHPATH) == sorted(f"pkg://experiments.configs.{p}" for p in purposes)
    for purpose in purposes:
        root = CONFIG_DIR / purpose
        assert (root / "__init__.py").is_file(), f"{root}: pkg:// needs a package"
        assert sorted(c.name for c in root.iterdir() if c.name != "__pycache__") == ["__init__.py", "experiment"], root


def test_every_experiment_name_is_unique_across_purpose_folders():
    """Hydra merges the experiment group over the search path: a second file of the same name would
    be shadowed silently by the first root that holds it."""
    seen = {}
    for path in EXPERIMENT_FILES:
        assert path.stem not in seen, f"experiment={path.stem} in both {seen[path.stem]} and {path}"
        seen[path.stem] = path


@pytest.mark.parametrize("sweep", GROUP_FILES["sweep"])
def test_every_sweep_composes(sweep):
    cfg = _compose([f"+sweep={sweep}"])
    assert OmegaConf.select(cfg, "hydra.sweeper.params")


def test_every_registered_learner_has_a_config_file():
    for name in available_learners():
        assert (CONFIG_DIR / "learner" / f"{name}.yaml").is_file(), name
        assert learner_config(name)["name"] == name


@pytest.mark.parametrize("name", available_learners())
def test_every_learner_yaml_lists_its_class_defaults(name):
    """learner/<name>.yaml is the class's defaults, every field and nothing else: ``altlearn
    learner=<name>`` and ``make_learner(name)`` train the same thing."""
    params = learner_config(name)
    params.pop("name")
    defaults = make_learner(name).hyperparameters()
    assert sorted(params) == sorted(defaults), "the YAML and the class list different hyperparameters"
    assert make_learner(name, **params).hyperparameters() == defaults


def test_the_default_runs_own_adjustments_name_real_learners_and_hyperparameters():
    """all_overrides (the no-argument run's adjustments) apply on top of the learner's own config and
    make a valid learner; a single-learner run ignores them."""
    cfg = _compose([])
    assert cfg.all_overrides, "the default run makes no adjustments: drop this test with the key"
    for name, extra in cfg.all_overrides.items():
        params = OmegaConf.to_container(OmegaConf.merge(learner_config(name, cfg), extra), resolve=True)
        params.pop("name")
        make_learner(name, **params)
    single = _compose(["learner=noprop_backprop"])
    params = learner_config("noprop_backprop", single)
    assert params["n_blocks"] != cfg.all_overrides.noprop_backprop.n_blocks
