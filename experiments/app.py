"""The `altlearn` command: hydra composes the config, this runs it.

``altlearn``                     every registered learner on digits (the embedded default)
``altlearn learner=backprop data=mnist network=mlp_2x1000 loop.n_epochs=10 seed=1``
``altlearn -m experiment=mnist_backprop``   a committed experiment (a sweep over seeds)
``altlearn demo NAME``           a classroom demo (see experiments/demos)
``altlearn tune [overrides]``    tune every learner with the same budget, then its final seeds (experiments/tune.py)
"""
from __future__ import annotations

import multiprocessing
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import experiments.configs  # noqa: F401 - registers the config groups' typed schemas
from core.errors import AltlearnError, ConfigError
from experiments.run_status import failure_status, sweep_failures, write_status

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def learner_config(name: str, cfg: DictConfig | None = None) -> dict:
    """learner/<name>.yaml, plus ``learner_overrides[name]`` from ``cfg`` when given."""
    path = CONFIG_DIR / "learner" / f"{name}.yaml"
    if not path.is_file():
        from learners import available_learners
        raise ConfigError(f"no config file {path} for learner {name!r}; known learners: "
                          f"{', '.join(available_learners())}")
    params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if cfg is not None and cfg.get("learner_overrides") and name in cfg.learner_overrides:
        params = OmegaConf.to_container(OmegaConf.merge(params, cfg.learner_overrides[name]), resolve=True)
    return params


def selected_learner_params(cfg: DictConfig) -> dict:
    """The ``learner`` group's hyperparameters, with ``learner_overrides[name]`` on top."""
    params = OmegaConf.to_container(cfg.learner, resolve=True)
    if cfg.get("learner_overrides") and cfg.learner.name in cfg.learner_overrides:
        params = OmegaConf.to_container(OmegaConf.merge(params, cfg.learner_overrides[cfg.learner.name]),
                                        resolve=True)
    return params


def load_data(cfg: DictConfig):
    from experiments.datasets import load_dataset
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    return load_dataset(data_cfg["name"], seed=int(cfg.seed), val_size=data_cfg.get("val_size"),
                        normalize_=data_cfg.get("normalize"), **(data_cfg.get("options") or {}))


def run_one(cfg: DictConfig, learner_params: dict, out_dir: Path, coords: dict | None = None, data=None):
    """Train one learner as ``cfg`` says and write ``out_dir/results.nc``; in a forked child
    process when ``cfg.isolate`` (where the platform can fork), so that the recorded peak memory
    belongs to this run alone. Returns an object whose ``results`` is the run's Dataset."""
    if cfg.get("isolate", False) and "fork" in multiprocessing.get_all_start_methods():
        return _run_in_child(cfg, learner_params, out_dir, coords, data)
    return _train(cfg, learner_params, out_dir, coords, data)


def _run_in_child(cfg, learner_params, out_dir, coords, data):
    """`_train` in a fork of this process: the child inherits the loaded data without copying or
    pickling it, and sends back only an error, if any, which is raised here unchanged."""
    from types import SimpleNamespace

    from experiments.recording import read_results
    threads = _single_threaded_parent()
    _warm_up_torch()
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child():
        import torch
        torch.set_num_threads(threads)   # the thread count the run would have had without the fork
        error = None
        try:
            _train(cfg, learner_params, out_dir, coords, data)
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
            error = err
        try:
            send.send(error)
        except Exception:  # an unpicklable error: its text is enough
            send.send(AltlearnError(f"{type(error).__name__}: {error}"))

    process = ctx.Process(target=child, daemon=False)
    process.start()
    send.close()
    try:
        error = receive.recv()
    except EOFError:
        error = AltlearnError(f"the process training {learner_params.get('name')!r} died without a word "
                              f"(exit code {process.exitcode}; out of memory?); its folder is {out_dir}")
    process.join()
    if error is not None:
        raise error
    return SimpleNamespace(results=read_results(Path(out_dir) / "results.nc"))


_WARM = []
_PARENT_THREADS = []


def _single_threaded_parent() -> int:
    """Keep the forking parent on one torch thread and return the count its children should use.

    GNU OpenMP is not fork-safe: a child forked after the parent has run a parallel region with
    worker threads hangs in its own first parallel region (seen: a 2-thread run that never ended).
    A parent that never runs torch with more than one thread has no worker pool to inherit; each
    child builds its own. (The parent trains nothing; its data loading is numpy only.)
    """
    import torch
    if not _PARENT_THREADS:
        _PARENT_THREADS.append(torch.get_num_threads())
        torch.set_num_threads(1)
    return _PARENT_THREADS[0]


def _warm_up_torch() -> None:
    """Once per app process, before the first fork: one tiny training step (dense and conv layers,
    autograd, Adam, the FLOP counter), so that torch's one-off allocations at first use (~70 MiB of
    heap) are made here and inherited, not charged to the first learner of every child."""
    if _WARM:
        return
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.Adam(net.parameters())
    with FlopCounterMode(display=False):
        loss = torch.nn.functional.cross_entropy(net(torch.randn(5, 1, 8, 8)), torch.tensor([0, 1, 2, 0, 1]))
        loss.backward()
    opt.step()
    _WARM.append(True)


def _train(cfg: DictConfig, learner_params: dict, out_dir: Path, coords: dict | None = None, data=None):
    from experiments.fit import LoopConfig, fit
    from learners import make_learner

    params = dict(learner_params)
    name = params.pop("name")
    learner = make_learner(name, **params)
    data = load_data(cfg) if data is None else data
    loop = LoopConfig(**OmegaConf.to_container(cfg.loop, resolve=True))
    network = OmegaConf.to_container(cfg.network, resolve=True)
    attrs = {"config": OmegaConf.to_yaml(cfg, resolve=True)}
    resume = bool(cfg.get("resume", False))
    if cfg.get("stream"):
        from experiments.continual import run_from_config
        return run_from_config(cfg, learner, data, network, loop, out_dir=out_dir, coords=coords or {},
                               attrs=attrs, resume=resume)
    return fit(learner, network, data, loop=loop, seed=int(cfg.seed), out_dir=out_dir,
               coords=coords or {}, attrs=attrs, resume=resume)


# overrides that change how a run is executed or shown, not what it learns
_NOT_HYPERPARAMETERS = ("hydra", "loop.progress", "loop.threads", "loop.device", "loop.alignment", "loop.cka",
                        "report", "name", "isolate", "resume")


def swept_coords(cfg: DictConfig) -> dict:
    """Hyperparameters a multirun sweeps, as scalar coordinates named by their config keys."""
    try:
        from hydra.core.hydra_config import HydraConfig
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return {}
    coords = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in ("seed", "learner", "experiment", "data", "network") or key.startswith(_NOT_HYPERPARAMETERS):
            continue
        coords[key] = _parse_scalar(value)
    return coords


def _parse_scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, AltlearnError) else f"{type(err).__name__}: {err}"


def _record_failure(err: BaseException, out_dir: Path, learner: str, overrides: list[str]) -> str:
    """Write the failure into the run's folder and say it on stderr (with the traceback where it is
    not one of altlearn's own errors, which name their fix). Returns the status."""
    status = failure_status(err)
    write_status(out_dir, status, learner=learner, overrides=overrides, error=_describe(err))
    if not isinstance(err, AltlearnError):
        traceback.print_exception(err, file=sys.stderr)
    print(f"altlearn: {status}: learner {learner!r} [{' '.join(overrides)}]: {_describe(err)}",
          file=sys.stderr, flush=True)
    return status


def objective(results) -> float | None:
    """What tuning maximises: validation accuracy (R^2 for regression) at the epoch the run reports
    (its best epoch under early stopping, else its last)."""
    metric = "accuracy" if "accuracy" in results else "r2" if "r2" in results else None
    if metric is None or "val" not in results["split"].values:
        return None
    values = results[metric].sel(split="val").values
    best = results.attrs.get("best_epoch")
    value = float(values[int(best) - 1] if best else values[-1])
    return value if value == value else None


def task(cfg: DictConfig) -> float | None:
    """Run what ``cfg`` says; return the objective (`objective`) of a single run.

    In a multirun a job that is refused, raises or diverges is recorded in its folder
    (`experiments.run_status`) and the sweep goes on; `SweepEnd` reports it and the exit code says so.
    """
    from hydra.core.hydra_config import HydraConfig
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.learner.name == "all":
        return _run_all(cfg, out_dir)
    overrides = _job_overrides()
    params = selected_learner_params(cfg)
    try:
        result = run_one(cfg, params, out_dir, swept_coords(cfg))
    except Exception as err:  # noqa: BLE001 - a sweep records every failure and goes on
        if not _in_multirun():
            write_status(out_dir, failure_status(err), learner=cfg.learner.name, overrides=overrides,
                         error=_describe(err))
            raise
        _record_failure(err, out_dir, cfg.learner.name, overrides)
        return None
    res = result.results
    value = objective(res)
    write_status(out_dir, res.attrs.get("status", "complete"), learner=cfg.learner.name, overrides=overrides,
                 objective=value, error=res.attrs.get("status_reason"))
    metric = "accuracy" if "accuracy" in res else "r2" if "r2" in res else None
    if metric is None:
        print(f"{cfg.learner.name}: done ({out_dir / 'results.nc'})", flush=True)
        return None
    test = float(res[metric].sel(split="test").values[-1]) if "test" in res["split"].values else float("nan")
    flag = f" [{res.attrs['status']}]" if res.attrs.get("status") != "complete" else ""
    print(f"{cfg.learner.name}: test {metric} {test:.4f}{flag} ({out_dir / 'results.nc'})", flush=True)
    return value if value is not None else test


def _run_all(cfg: DictConfig, out_dir: Path) -> None:
    """Every registered learner that does the data's task, one after another into ``out_dir/<name>``."""
    from learners import available_learners
    from learners.base import get_learner_class
    data = load_data(cfg)
    names = [n for n in available_learners() if data.task in get_learner_class(n).tags.tasks]
    overrides = _job_overrides()
    failures = []
    for i, name in enumerate(names):
        print(f"== [{i + 1}/{len(names)}] {name}", file=sys.stderr, flush=True)
        params = learner_config(name, cfg)
        if cfg.get("all_overrides") and name in cfg.all_overrides:
            params = OmegaConf.to_container(OmegaConf.merge(params, cfg.all_overrides[name]), resolve=True)
        try:
            run_one(cfg, params, out_dir / name, swept_coords(cfg), data=data)
        except Exception as err:  # noqa: BLE001 - one failing rule must not cost the others' results
            _record_failure(err, out_dir / name, name, overrides)
            failures.append(name)
    if cfg.report:
        from analysis.report import write_report
        print(write_report(out_dir, out_dir, title=_report_title(cfg)), flush=True)
        print(f"figure and table: {out_dir / 'comparison.png'}, {out_dir / 'summary.md'}", flush=True)
    if failures and not _in_multirun():   # in a sweep, SweepEnd lists them from their status.yaml
        raise AltlearnError(f"{len(failures)} learner(s) failed: {', '.join(failures)} (see above)")


def _report_title(cfg) -> str:
    """``dataset, network, budget``: what a figure shows, rather than the folder's timestamp."""
    from experiments.fit import LoopConfig, budget_description
    network = cfg.network.get("preset") or "x".join(str(w) for w in cfg.network.get("widths") or []) or "network"
    try:
        budget = budget_description(LoopConfig(**OmegaConf.to_container(cfg.loop, resolve=True)))
    except (TypeError, AltlearnError):
        budget = f"{cfg.loop.n_epochs} epochs"
    return f"{cfg.data.name}, {network}, {budget}"


_SWEEP_FAILURES: list[dict] = []


class SweepEnd(Callback):
    """A hydra callback: after the last job of a multirun (whatever the launcher), the report of the
    sweep folder (``report: true``) and the list of failed jobs by their overrides."""

    def on_multirun_start(self, config, **kwargs) -> None:
        _SWEEP_FAILURES.clear()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        failures = sweep_failures(sweep_dir)
        _SWEEP_FAILURES.extend(failures)
        if config.get("report") and any(sweep_dir.rglob("results.nc")):
            from analysis.report import write_report
            try:
                print(write_report(sweep_dir, sweep_dir, title=_report_title(config)), flush=True)
                print(f"report: {sweep_dir / 'summary.md'}", flush=True)
            except AltlearnError as err:
                print(f"altlearn: no report for {sweep_dir}: {err}", file=sys.stderr, flush=True)
        for f in failures:
            print(f"altlearn: {f['status']}: [{' '.join(f.get('overrides') or [])}] {f.get('error', '')} "
                  f"({f['folder']})", file=sys.stderr, flush=True)


def _hydra_main():
    import hydra

    @hydra.main(version_base="1.3", config_path="configs", config_name="config")
    def entry(cfg: DictConfig):
        try:
            return task(cfg)
        except AltlearnError as err:
            print(f"altlearn: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    _SWEEP_FAILURES.clear()
    entry()
    if _SWEEP_FAILURES:
        print(f"altlearn: {len(_SWEEP_FAILURES)} job(s) of the sweep failed (listed above; each folder holds "
              "its status.yaml)", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "demo":
        from experiments.demos import main as demo_main
        sys.exit(demo_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "classroom":
        from experiments.classroom import main as classroom_main
        sys.exit(classroom_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "tune":
        from experiments.tune import main as tune_main
        sys.exit(tune_main(sys.argv[2:]))
    _hydra_main()


if __name__ == "__main__":
    main()
