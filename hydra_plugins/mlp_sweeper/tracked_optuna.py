"""The official Optuna sweeper with every one of its settings, plus what this project needs
of a sweep: each trial is told its study and trial number, runs nested under one MLflow
parent run, trials can be pruned (each reports every epoch to its Optuna trial), and
the sweep ends by logging a leaderboard and Optuna's plots and by writing
conf/model/best.yaml. The work is in mlp/sweeps.py; this class only wires it in."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig


@dataclass
class TrackedOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.mlp_sweeper.tracked_optuna.TrackedOptunaSweeper"
    best_config: str | None = None  # where the sweep writes its best trial's config; null: nowhere
    pruner: Any = None  # an Optuna pruner (_target_ + arguments); null or NopPruner: no pruning


ConfigStore.instance().store(
    group="hydra/sweeper", name="tracked_optuna_schema", node=TrackedOptunaSweeperConf, provider="mlp"
)


class TrackedOptunaSweeper(OptunaSweeper):
    def __init__(self, best_config: str | None = None, pruner: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # best_config and pruner are read from the config in TrackedSweep

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def sweep(self, arguments: list[str]) -> None:
        from mlp.sweeps import TrackedSweep

        TrackedSweep(self.sweeper, self.config, arguments).run()
