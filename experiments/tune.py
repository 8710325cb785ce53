"""``altlearn tune [overrides]``: tune every learner with the same budget, then run its final seeds.

For each learner (``tuning.learners``: ``all`` takes every registered learner that does the data's
task and takes the network):

1. an optuna study (``tuning.sampler``, seeded with ``tuning.seed``) runs ``tuning.budget`` trials
   over the learner's declared ``search_space`` (learners.search). Each trial is a run composed by
   hydra from the same overrides plus the trial's values, trained with ``loop.eval_test=false``:
   the objective is the validation accuracy at the reported epoch, and the test split is never
   evaluated while tuning;
2. the best trial's setting is run for each of ``tuning.final_seeds``, test split included, with
   the chosen setting and the budget recorded in the run's config (``tuning.chosen``).

Everything lands in ``tuning.dir``: ``tuning.db`` (optuna's SQLite storage: running the same command
again resumes the studies, and a larger budget extends them), ``trials/<learner>/<n>/``,
``final/<learner>/seed=<s>/``, ``tuning.yaml`` (every trial's value, setting and cost) and the
report (``summary.md``, with the tuning table and ``tuning.png``, best-so-far against trial).

optuna is driven directly rather than through hydra's optuna sweeper, whose releases pin optuna < 3;
runs are still composed by hydra from the same config tree as ``altlearn``.
"""
from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.app import CONFIG_DIR, load_data, objective, run_one, selected_learner_params
from core.errors import AltlearnError, ConfigError, TrainingDiverged
from experiments.recording import read_results, write_text_atomic
from experiments.run_status import failure_status, write_status

SAMPLERS = ("tpe", "random")


def compose(overrides: list[str]) -> DictConfig:
    """The run config hydra composes for ``altlearn OVERRIDES``, with hydra's runtime set so that its
    resolvers (``${hydra:...}``) work outside the app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(" ".join(str(err).split())) from err
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def learners_to_tune(cfg: DictConfig, data) -> list[str]:
    from experiments.fit import as_spec
    from learners import available_learners
    from learners.base import get_learner_class
    chosen = cfg.tuning.learners
    names = available_learners() if chosen == "all" else list(chosen)
    conv = as_spec(OmegaConf.to_container(cfg.network, resolve=True)).kind == "convnet"
    out = []
    for name in names:
        cls = get_learner_class(name)
        if data.task not in cls.tags.tasks or (conv and not cls.tags.supports_conv):
            if chosen != "all":
                raise ConfigError(f"tuning.learners names {name!r}, which does not take this data and network")
            continue
        if not cls.search_space:
            raise ConfigError(f"learner {name!r} declares no search_space; add one beside its defaults "
                              "(learners/search.py) to tune it")
        out.append(name)
    late = [n for n in out if n in equal_time_learners(cfg)]
    return [n for n in out if n not in late] + late


def equal_time_learners(cfg: DictConfig) -> list[str]:
    return list(cfg.tuning.get("equal_time") or [])


def equal_time_budget(summary: dict, cfg: DictConfig) -> dict | None:
    """For the learners whose cost is of another order (``tuning.equal_time``): the training time of
    the slowest other learner, per trial and per final run (its mean), as their time budget."""
    others = {n: s for n, s in summary["learners"].items() if n not in equal_time_learners(cfg)}
    if not others:
        return None
    def mean_trial(study):
        times = [t["train_time"] for t in study["trials"] if t.get("train_time")]
        return sum(times) / len(times) if times else 0.0
    trial_name = max(others, key=lambda n: mean_trial(others[n]))
    final_name = max(others, key=lambda n: others[n]["final_train_time"] / max(len(cfg.tuning.final_seeds), 1))
    return {"trial_s": round(mean_trial(others[trial_name]), 1), "trial_from": trial_name,
            "final_s": round(others[final_name]["final_train_time"] / max(len(cfg.tuning.final_seeds), 1), 1),
            "final_from": final_name}


def suggest(trial, space: dict) -> dict:
    """One value per key of a learner's search space, from the optuna ``trial``."""
    from learners.search import Choice, IntRange, Uniform
    values = {}
    for key, spec in space.items():
        if isinstance(spec, Uniform):
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntRange):
            values[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, Choice):
            values[key] = trial.suggest_categorical(key, list(spec.options))
    return values


def setting_overrides(name: str, values: dict) -> list[str]:
    return [f"learner={name}"] + [f"++learner.{key}={_override_value(v)}" for key, v in values.items()]


def _override_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _sampler(tuning, n_done: int):
    """The seeded sampler; a resumed study's seed also names the trials already done, so that it does
    not propose the first trials' settings again."""
    import numpy as np
    import optuna
    if tuning.sampler not in SAMPLERS:
        raise ConfigError(f"tuning.sampler={tuning.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    seed = int(np.random.SeedSequence([int(tuning.seed), n_done]).generate_state(1)[0])
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def run_trial(trial, name: str, base: list[str], out: Path, data) -> float:
    """One trial: a run at the trial's setting, evaluated on validation only; its objective."""
    from learners.base import get_learner_class
    values = suggest(trial, get_learner_class(name).search_space)
    overrides = base + setting_overrides(name, values) + ["loop.eval_test=false"]
    cfg = compose(overrides)
    folder = out / "trials" / name / str(trial.number)
    start = time.perf_counter()
    try:
        result = run_one(cfg, selected_learner_params(cfg), folder, {"trial": trial.number}, data=data)
    except TrainingDiverged as err:
        # a setting that blows up is the worst setting, not a missing one: the sampler learns from it
        write_status(folder, "diverged", learner=name, overrides=overrides, error=str(err), objective=0.0)
        trial.set_user_attr("status", "diverged")
        trial.set_user_attr("train_time", time.perf_counter() - start)
        return 0.0
    except AltlearnError as err:
        write_status(folder, failure_status(err), learner=name, overrides=overrides, error=str(err))
        trial.set_user_attr("status", failure_status(err))
        raise
    res = result.results
    value = objective(res)
    if value is None:
        raise ConfigError("tuning needs a validation split: set data.val_size (e.g. data.val_size=5000)")
    trial.set_user_attr("status", res.attrs.get("status", "complete"))
    trial.set_user_attr("train_time", float(res["wall_time"].sum()))
    write_status(folder, res.attrs.get("status", "complete"), learner=name, overrides=overrides, objective=value)
    return value


def tune_learner(name: str, cfg: DictConfig, base: list[str], out: Path, data, time_budget: dict | None = None) -> dict:
    """Run the trials the study still lacks (resuming from the storage), then the final seeds.
    ``time_budget`` (an equal-time learner): the training seconds its trials and finals may take."""
    trial_base = base + ([f"loop.time_budget_s={time_budget['trial_s']}"] if time_budget else [])
    final_base = base + ([f"loop.time_budget_s={time_budget['final_s']}"] if time_budget else [])
    import optuna
    tuning = cfg.tuning
    storage = f"sqlite:///{(out / 'tuning.db').resolve()}"
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # left running by a killed process: it will never report; closed without a status, so that
        # it does not count against the budget
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        folder = out / "trials" / name / str(trial.number)
        if folder.is_dir():
            write_status(folder, "interrupted", learner=name, error="the tuning process was stopped during this "
                         "trial; it does not count against the budget")

    def counted():   # trials that ran to an answer: a value, or a failure of their own
        return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
                or (t.state == optuna.trial.TrialState.FAIL and "status" in t.user_attrs)]

    study.sampler = _sampler(tuning, len(study.get_trials(deepcopy=False)))
    budget = int(tuning.budget)
    while len(counted()) < budget:
        number = len(counted()) + 1
        study.optimize(lambda t: run_trial(t, name, trial_base, out, data), n_trials=1, catch=(AltlearnError,))
        last = study.trials[-1]
        best = study.best_value if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else None
        shown = "failed" if last.value is None else f"{last.value:.4f}"
        print(f"[tune {name}] trial {number}/{budget}: val {shown}"
              + (f" (best {best:.4f})" if best is not None else "") + f" {last.params}", file=sys.stderr, flush=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise AltlearnError(f"no trial of {name!r} finished; see {out / 'trials' / name}/*/status.yaml")
    best = study.best_trial
    finals = run_finals(name, cfg, final_base, out, best.params, best.value)
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
               "status": t.user_attrs.get("status"), "train_time": t.user_attrs.get("train_time")}
              for t in counted()]
    record = {"budget": budget, "n_trials": len(trials), "best_trial": best.number, "best_value": best.value,
              "chosen": best.params, "trials": trials, "final_train_time": finals}
    if time_budget:
        record["equal_time"] = time_budget
    return record


def _finished_at(results: Path, params: dict) -> bool:
    """Whether ``results`` is a finished final run at the setting ``params`` (resume keeps it)."""
    from experiments.health import FINISHED
    if not results.is_file():
        return False
    ds = read_results(results)
    config = yaml.safe_load(ds.attrs.get("config", "") or "{}") or {}
    chosen = _flatten((config.get("tuning") or {}).get("chosen") or {})
    return ds.attrs.get("status") in FINISHED and chosen == params


def _flatten(tree: dict, prefix: str = "") -> dict:
    """``{"optimizer": {"lr": 1}}`` -> ``{"optimizer.lr": 1}``: dotted overrides nest, search spaces do not."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_finals(name: str, cfg: DictConfig, base: list[str], out: Path, params: dict, best_value: float) -> float:
    """The final seeds at the chosen setting (a seed already run at that setting is kept: resume);
    their total training time."""
    tuning = cfg.tuning
    total = 0.0
    for seed in tuning.final_seeds:
        folder = out / "final" / name / f"seed={seed}"
        results = folder / "results.nc"
        if not _finished_at(results, params):
            overrides = base + setting_overrides(name, params) + [
                f"seed={seed}", "loop.eval_test=true", f"++tuning.best_value={best_value!r}",
                f"++tuning.best_trial_of={int(tuning.budget)}"]
            overrides += [f"++tuning.chosen.{key}={_override_value(v)}" for key, v in params.items()]
            final_cfg = compose(overrides)
            print(f"[tune {name}] final seed {seed} at {params}", file=sys.stderr, flush=True)
            try:
                run_one(final_cfg, selected_learner_params(final_cfg), folder, {})
            except AltlearnError as err:
                write_status(folder, failure_status(err), learner=name, overrides=overrides, error=str(err))
                print(f"altlearn: final seed {seed} of {name!r} failed: {err}", file=sys.stderr, flush=True)
                continue
        total += float(read_results(results)["wall_time"].sum())
    return total


def tune(overrides: list[str]) -> Path:
    """Tune every learner ``tuning.learners`` names and write the report; returns the tuning folder."""
    try:
        import optuna
    except ImportError as err:
        raise ConfigError("altlearn tune needs optuna: pip install 'altlearn[tune]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if any(o.lstrip("+~").startswith("learner=") for o in overrides):
        raise ConfigError("altlearn tune picks its learners with tuning.learners (all, or e.g. "
                          "'tuning.learners=[backprop,lls]'), not with learner=")
    cfg = compose(overrides)
    out = Path(cfg.tuning.dir or Path("tuning") / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg)
    if len(data.x_val) == 0:
        raise ConfigError("tuning chooses on the validation split, and this data has none: set data.val_size "
                          "(e.g. data.val_size=5000)")
    base = list(overrides)
    summary = {"settings": {k: v for k, v in OmegaConf.to_container(cfg.tuning, resolve=True).items()
                            if k != "dir"},
               "overrides": base, "learners": {}}
    summary_path = out / "tuning.yaml"
    if summary_path.is_file():
        # a folder grows over several invocations (e.g. one learner added later): what each learner was
        # tuned with stays in its own entry, and the folder's learners are all those it holds
        previous = yaml.safe_load(summary_path.read_text()) or {}
        summary["learners"] = previous.get("learners", {})
        summary["overrides"] = previous.get("overrides", base)
    for name in learners_to_tune(cfg, data):
        budget = None
        if name in equal_time_learners(cfg):
            budget = equal_time_budget(summary, cfg)
            if budget is None:
                raise ConfigError(f"{name!r} is in tuning.equal_time, which takes its time budget from the other "
                                  "learners' runs; tune at least one other learner with it")
        summary["learners"][name] = {**tune_learner(name, cfg, base, out, data, budget), "overrides": base}
        summary["settings"]["learners"] = list(summary["learners"])
        write_text_atomic(summary_path, yaml.safe_dump(summary, sort_keys=False))
    if cfg.report:
        from analysis.report import write_report
        from experiments.app import _report_title
        print(write_report(out / "final", out, title=_report_title(cfg)), flush=True)
        print(f"report: {out / 'summary.md'}", flush=True)
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        tune(argv)
    except AltlearnError as err:
        print(f"altlearn: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
