"""The job's side of a sweep trial: report each epoch to its Optuna trial, stop when told.

The sweeper tells a job which trial it is (``sweep.study``, ``sweep.trial``, ``sweep.storage``);
the job opens that trial in the study storage and, as in Optuna's own pruning examples,
reports and asks ``should_prune()`` after every epoch. A job told to stop records the epoch on
its trial (``pruned_at_epoch``), logs what it has and returns; the sweeper then tells Optuna
PRUNED. (Raising ``TrialPruned`` out of the job would work too, but Hydra's launchers report
every exception from a job as an error with its traceback.) Nothing here imports the sweeper.
"""

from __future__ import annotations

import functools
from typing import Any

import optuna

from mlp.filelock import sqlite_creation_lock


def progress_step(epoch: int, epochs: int) -> int:
    """The step a trial reports at: the percentage of its epochs done. Trials of 5 and of 20
    epochs are then compared at the same point of their learning-rate schedules."""
    return round(100 * epoch / epochs)


def open_storage(url: str, **heartbeat: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``. SQLite waits for a lock (several processes share the
    file), and a new database is created by one process at a time."""
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    with sqlite_creation_lock(url):
        return optuna.storages.RDBStorage(url, **kwargs, **heartbeat)


@functools.cache
def job_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for all the trials a process runs: a sweep's
    in-process trials would otherwise each open a pool of their own."""
    return open_storage(url)


class TrialLink:
    """One running trial of a pruned sweep, opened from its storage by study name and number."""

    def __init__(self, study: optuna.Study, trial_id: int):
        self.trial = optuna.trial.Trial(study, trial_id)

    @classmethod
    def open(cls, storage: str | None, study_name: str | None, number: int | None) -> TrialLink | None:
        """The link when the trial belongs to a pruned sweep, else None (nothing to report)."""
        if storage is None or study_name is None or number is None:
            return None
        rdb = job_storage(storage)
        trial_id = rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study_name), number)
        pruner = cls.pruner(rdb.get_trial(trial_id).user_attrs.get("pruner"))
        if pruner is None:
            return None
        return cls(optuna.load_study(study_name=study_name, storage=rdb, pruner=pruner), trial_id)

    @staticmethod
    def pruner(spec: dict | None) -> optuna.pruners.BasePruner | None:
        """The pruner the sweeper recorded on the trial (``_target_`` + arguments); None: none."""
        if not spec:
            return None
        from hydra.utils import instantiate

        pruner = instantiate(spec, _execution_whitelist_="optuna.pruners.*")
        return None if isinstance(pruner, optuna.pruners.NopPruner) else pruner

    def should_stop(self, epoch: int, epochs: int, val_acc: float) -> bool:
        """Report this epoch; True when the pruner stops the trial (never after its last epoch)."""
        self.trial.report(val_acc, progress_step(epoch, epochs))
        if epoch < epochs and self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", epoch)  # the sweeper tells Optuna PRUNED
            return True
        return False
