"""The project's Hydra plugins: its Optuna sweeper (`python train.py -m hydra/sweeper=optuna`) and
its SLURM launcher (`hydra/launcher=slurm`, `slurm_cpu`).

The sweeper's settings are the official hydra-optuna-sweeper's (its config schema and sampler
configs are reused as they are) plus a pruner, the winner file and Optuna's heartbeat. The loop is
the project's own, on public APIs only: mlp/sweep/worker.py.

The launcher is hydra-submitit-launcher's, whose wait for each job never outlasts the job
(mlp/sweep/slurm.py): a job SLURM no longer runs fails its trial with SLURM's reason within
``poll_s + result_wait_s`` seconds, and the trial runs again (``max_retry``). Every key of
hydra-submitit-launcher's ``submitit_slurm`` is accepted.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import DictConfig, OmegaConf


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.mlp_sweeper.sweeper.StudySweeper"
    best_config: str | None = None  # the study's winner file; null: none is written
    pruner: Any = None  # an Optuna pruner (_target_ + arguments); null or NopPruner: no pruning
    heartbeat_interval: float = 10.0  # seconds between heartbeats of a running trial (RDB storages)
    grace_period: float = 30.0  # a trial with no heartbeat for this long is failed (its worker died)
    max_retry: int = 1  # times a trial whose worker died (or SLURM job was lost) runs again
    timeout: float | None = None  # seconds after which this worker starts no new trial; null: n_trials decides
    replace_winner: bool = False  # write the winner file even when the one there scored better
    enqueue_trials: list[Any] = field(default_factory=list)  # a new study's first trials: {searched key: value}
    objectives: list[str] = field(default_factory=lambda: ["val_acc"])  # what each direction applies to, in order
    compact_within: float = 0.002  # several objectives: the compact pick is within this of the best val_acc


ConfigStore.instance().store(group="hydra/sweeper", name="study_sweeper_schema", node=StudySweeperConf, provider="mlp")


class StudySweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        pass  # the settings are read from the composed config in sweep(), with the rest of it

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        # Here, not at the top: Hydra imports every plugin on each start.
        from mlp.errors import UserError, no_space_line, out_of_space, written_by
        from mlp.sqlite_files import sqlite_file
        from mlp.sweep import protocol
        from mlp.sweep.worker import run_worker

        # Inherited by the jobs that launchers start in processes of their own (mlp.sweep.job.follow_worker).
        os.environ[protocol.ENV_WORKER] = f"{os.uname().nodename}:{os.getpid()}"
        try:
            run_worker(self.config, self.launcher, arguments)
        except Exception as e:
            if (full := out_of_space(e)) is None or written_by(e) != "optuna":
                raise
            storage = self.config.hydra.sweeper.storage  # the study storage's disk is full: name its file
            where = full[0] or sqlite_file(storage) or storage
            raise UserError(no_space_line(where, full[1], "hydra.sweeper.storage")) from e


@dataclass
class SlurmLauncherConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.mlp_sweeper.sweeper.SlurmLauncher"
    poll_s: float = 10.0  # seconds between two looks at a worker's jobs (one squeue for all of them)
    result_wait_s: float = 15.0  # seconds a result file may appear after SLURM ended its job (shared file systems)


ConfigStore.instance().store(group="hydra/launcher", name="slurm_schema", node=SlurmLauncherConf, provider="mlp")


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, poll_s: float, result_wait_s: float, **params: Any) -> None:
        super().__init__(**params)
        self.poll_s, self.result_wait_s = poll_s, result_wait_s

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Each job submitted on its own (as hydra-submitit-launcher's ``launch``, less its job arrays),
        then waited for by mlp.sweep.slurm."""
        import submitit  # here, not at the top: Hydra imports every plugin on each start

        from mlp.sweep import slurm  # idem

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        slurm.QUEUE.period = self.poll_s
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            args = (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            jobs.append(slurm.submit(executor, self, args, self.params))
            slurm.record_job(overrides, jobs[-1].job_id)
        retries = int(self.config.hydra.sweeper.get("max_retry", 0))  # the project's sweeper's; other sweepers: none
        waits = zip(jobs, job_overrides, strict=True)
        return [slurm.outcome(job, overrides, self.params, self.result_wait_s, retries) for job, overrides in waits]
