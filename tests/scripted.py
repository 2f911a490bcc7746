"""A Hydra launcher for testing the sweep worker in process: its jobs are Python functions a test
writes, so a whole sweep (ask, launch, tell, the study's end) runs in milliseconds on a SQLite
study. As Hydra tests its own launchers and sweepers (hydra/test_utils/launcher_common_tests.py:
the task is a Python function), the job is called as Hydra's basic launcher calls a task: in the
launching thread (the worker's own, or the one it gives each trial when several are in flight);
what it returns is the job's return value, an exception it raises fails the job (a FAILED
JobReturn, raised again by ``return_value``), a KeyboardInterrupt goes through as Ctrl-C would.

    launcher = run_in_process(Sweep(tmp_path), job, n_trials=3, "hydra.sweeper.n_jobs=2", ...)

runs ``python train.py -m hydra/sweeper=optuna ...`` (``Sweep.args``) in this process, with
``job(Job)`` as each trial's job; ``launcher.jobs`` lists the jobs it ran, in order.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlp.run.config import GROUPS
from mlp.sweep import protocol
from mlp.sweep.worker import run_worker
from tests.helpers import CONF, Sweep


@dataclass
class Job:
    """One trial's job as the worker launched it: its overrides, and their values as Hydra reads them."""

    overrides: list[str]
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, overrides: Sequence[str]) -> Job:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        return cls(list(overrides), {o.key_or_group: o.value() for o in parsed})

    @property
    def trial(self) -> int:
        return self.values[protocol.TRIAL]

    @property
    def run_id(self) -> str:
        return str(self.values[protocol.RUN_ID])

    def log_run(self, client: MlflowClient, val_acc: float, **metrics: float) -> float:
        """What train.py leaves on the trial's run: config.yaml and the group choices (a winner
        file is written from them), val/acc and ``metrics``; the run ended FINISHED. Returns val_acc."""
        cfg = config_of(self.overrides)
        resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        client.log_text(self.run_id, OmegaConf.to_yaml(resolved), "config.yaml")
        now = int(time.time() * 1000)
        client.log_batch(
            self.run_id,
            metrics=[Metric(name, value, now, 0) for name, value in {"val/acc": val_acc, **metrics}.items()],
            tags=[RunTag(f"hydra.choice.{g}", str(cfg.hydra.runtime.choices[g])) for g in GROUPS],
        )
        client.set_terminated(self.run_id, "FINISHED")
        return val_acc


def config_of(overrides: list[str]) -> DictConfig:
    """The config Hydra composes for ``overrides`` (a sweep's values left out, as with -m): the
    group options composed once for each set of them (a compose takes tenths of a second), then
    each key's value set on a copy as Hydra's config loader sets it."""
    parsed = [o for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    cfg = copy.deepcopy(_composed(tuple(o.input_line for o in parsed if "." not in o.key_or_group)))
    for o in (o for o in parsed if "." in o.key_or_group):
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add())
    return cfg


@functools.cache
def _composed(groups: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF):
        return compose("config", list(groups), return_hydra_config=True)


class ScriptedLauncher(Launcher):
    """Runs each job as ``job(Job)`` in the calling thread (see the module docstring)."""

    def __init__(self, job: Callable[[Job], Any]):
        self.job = job
        self.jobs: list[Job] = []  # every job launched, in order
        self.lock = threading.Lock()

    def setup(self, **_: Any) -> None:
        pass

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = []
        for overrides in job_overrides:
            job = Job.of(overrides)
            with self.lock:
                self.jobs.append(job)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            try:
                ret.return_value = self.job(job)
            except Exception as e:  # noqa: BLE001 - what Hydra's run_job does: the job failed, the launch did not
                ret.return_value, ret.status = e, JobStatus.FAILED
            returns.append(ret)
        return returns


def sweep_config(sweep: Sweep, n_trials: int, *extra: str) -> tuple[DictConfig, list[str]]:
    """The config ``python train.py`` composes for ``sweep.args(n_trials, *extra)``, and the
    command line's task overrides (what Hydra hands the sweeper); ``extra`` replaces what
    ``sweep.args`` sets for the same key."""
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    args = [a for a in sweep.args(n_trials) if a != "-m" and a.split("=", 1)[0] not in keys] + list(extra)
    parsed = OverridesParser.create().parse_overrides(args)
    return config_of(args), [o.input_line for o in parsed if not o.is_hydra_override()]


def run_in_process(sweep: Sweep, job: Callable[[Job], Any], n_trials: int, *extra: str) -> ScriptedLauncher:
    """One worker of ``sweep``'s study, in this process, its trials' jobs ``job``."""
    config, arguments = sweep_config(sweep, n_trials, *extra)
    launcher = ScriptedLauncher(job)
    run_worker(config, launcher, arguments)
    return launcher
