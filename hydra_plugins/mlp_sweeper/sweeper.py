"""The project's Optuna sweeper for Hydra: `python train.py -m hydra/sweeper=optuna`.

Its settings are the official hydra-optuna-sweeper's (its config schema and sampler configs
are reused as they are) plus a pruner, the winner file and Optuna's heartbeat. The loop is the
project's own, on public APIs only: mlp/sweep/worker.py.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.mlp_sweeper.sweeper.StudySweeper"
    best_config: str | None = None  # the study's winner file; null: none is written
    pruner: Any = None  # an Optuna pruner (_target_ + arguments); null or NopPruner: no pruning
    heartbeat_interval: float = 10.0  # seconds between heartbeats of a running trial (RDB storages)
    grace_period: float = 30.0  # a trial with no heartbeat for this long is failed (its worker died)
    max_retry: int = 1  # times a dead worker's trial is run again by another worker
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
