"""Every run of a hydra sweep as one Ray task, on a local Ray or on a running Ray cluster.

hydra's own plugin, hydra-ray-launcher 1.2.2, requires cloudpickle<3, which today's joblib (>=1.6,
installed with scikit-learn) rules out, and it always passes ``object_store_memory`` to ``ray.init``,
which Ray refuses when joining a running cluster. This launcher needs only Ray. Like hydra's own
launchers it composes each job with ``load_sweep_config`` and runs it with ``run_job`` (in the Ray
worker), so run folders, ``.hydra/`` and ``multirun.yaml`` are the same whatever the launcher.

Config (``hydra/launcher=ray``): ``ray.init`` holds keyword arguments of ``ray.init`` (nulls are left
out: ``address: null`` starts a Ray for this sweep alone), ``ray.remote`` the resources each run asks
for (``num_cpus``, ``num_gpus``: options of ``ray.remote``). Every node needs altlearn installed, and
``hydra.sweep.dir`` should be on storage the nodes share.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _run_job(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
             singleton_state: dict) -> JobReturn:
    """One run, in a Ray worker: hydra's global state as the driver has it, then hydra's run_job."""
    import ray
    setup_globals()
    Singleton.set_state(singleton_state)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = ray.get_runtime_context().get_task_id()
    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except SystemExit as exit_:
        # run_job records an Exception as a failed job; an exit would end the Ray worker, and Ray would
        # run the job again (3 retries by default), so the exit is recorded the same way instead
        return JobReturn(overrides=list(sweep_config.hydra.overrides.task), status=JobStatus.FAILED,
                         _return_value=exit_)


class RayLauncher(Launcher):
    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        # absolute here: a worker resolves a relative folder against its own working directory
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        init = {k: v for k, v in _container(self.ray_cfg.get("init")).items() if v is not None}
        own_ray = not ray.is_initialized()
        if own_ray:
            ray.init(**init)
        remote = ray.remote(**_container(self.ray_cfg.get("remote")))(_run_job)
        log.info(f"Ray launcher: {len(job_overrides)} jobs, sweep output dir {sweep_dir}")
        try:
            refs = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.num = idx
                    sweep_config.hydra.sweep.dir = str(sweep_dir)
                refs.append(remote.remote(self.hydra_context, sweep_config, self.task_function,
                                          Singleton.get_state()))
            return [_result(ray, ref, overrides) for ref, overrides in zip(refs, job_overrides)]
        finally:
            if own_ray:
                ray.shutdown()


def _result(ray: Any, ref: Any, overrides: Sequence[str]) -> JobReturn:
    """The run's JobReturn, or a failed one where Ray lost the task (its worker died): the runs are
    awaited one by one so that one lost run does not end this driver, which would cancel the rest."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=err)


def _container(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}
