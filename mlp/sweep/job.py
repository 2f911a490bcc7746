"""The job's side of a sweep trial: report each epoch to its Optuna trial, stop when told, and
end with the worker (``follow_worker``) when it runs in a process of its own.

The worker tells a job which trial it is (mlp.sweep.protocol's ``sweep.*`` overrides);
the job opens that trial in the study storage and, after every epoch, reports its validation
accuracy and asks the pruner, as Optuna's ``report`` / ``should_prune`` do, through public
methods of the storage and the pruner. A job told to stop records the epoch on
its trial (``protocol.ATTR_PRUNED_AT``), logs what it has and returns; the sweeper then tells Optuna
PRUNED. (Raising ``TrialPruned`` out of the job would work too, but Hydra's launchers report
every exception from a job as an error with its traceback.) Nothing here imports the worker.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from typing import Any

import optuna
import psutil
from hydra.utils import instantiate

from mlp import processes
from mlp.errors import ConfigError, UserError, first_line
from mlp.sweep import protocol
from mlp.sweep.kill_points import reach
from mlp.sweep.storage import open_storage

log = logging.getLogger(__name__)


def progress_step(epoch: int, epochs: int) -> int:
    """The step a trial reports at: the percentage of its epochs done. Trials of 5 and of 20
    epochs are then compared at the same point of their learning-rate schedules."""
    return round(100 * epoch / epochs)


@functools.cache
def job_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for all the trials a process runs: a sweep's
    in-process trials would otherwise each open a pool of their own."""
    return open_storage(url)


PRUNER_CHOICES = (
    "hydra/sweeper/pruner=percentile|median|successive_halving|hyperband|none, "
    "or a mapping with _target_: optuna.pruners.<Class> and its arguments"
)


def make_pruner(spec: Any) -> optuna.pruners.BasePruner | None:
    """The Optuna pruner a ``hydra.sweeper.pruner`` config asks for; None for no pruning."""
    if not spec:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    try:
        pruner = instantiate(spec, _execution_whitelist_="optuna.pruners.*")
    except Exception as e:
        reason = f"cannot make {spec['_target_']} ({first_line(e)})"
        raise UserError(f"hydra.sweeper.pruner: {reason}; expected {PRUNER_CHOICES}") from e
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError("hydra.sweeper.pruner", spec, PRUNER_CHOICES)
    return None if isinstance(pruner, optuna.pruners.NopPruner) else pruner


def judge(sweep: Any) -> TrialLink | None:
    """What hears a job's epochs: its trial's link when the job is a pruned sweep trial (the
    run config's ``sweep`` group, set by the worker), else None. A sweep trial's job in a process
    of its own also starts following its worker here (``follow_worker``)."""
    if sweep.trial is not None:
        follow_worker()
        reach("job")
    return TrialLink.open(sweep.storage, sweep.study, sweep.trial)


@functools.cache  # one watch per process: joblib's processes run one trial after another
def follow_worker(poll: float = 1.0, grace: float = 5.0) -> None:
    """When this job runs in another process than its sweep worker on the same machine (the
    joblib and submitit_local launchers; ``protocol.ENV_WORKER`` names the worker), end this
    process once the worker is gone (killed, or its machine's OOM killer): the trial is the
    study's to retry, and a job left running, or an idle joblib process, would hold the cores for
    minutes. First as Ctrl-C (where the process takes it, as submitit's do, the trial's MLflow run
    ends KILLED; joblib's ignore it), then for sure after ``grace`` seconds. A job that starts after
    its worker died ends at once."""
    host, _, pid = os.environ.get(protocol.ENV_WORKER, "").partition(":")
    if host != os.uname().nodename or not pid.isdigit() or int(pid) == os.getpid():
        return  # in the worker's own process (the basic launcher), or on another machine (SLURM)
    try:
        worker = psutil.Process(int(pid))
    except psutil.NoSuchProcess:
        worker = None

    def watch() -> None:
        while worker is not None and processes.running(worker):  # a zombie, or a new process with its pid: gone
            time.sleep(poll)
        log.warning("the sweep worker (pid %s) is gone: this trial's job ends", pid)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # joblib's processes ignore Ctrl-C
            signal.raise_signal(signal.SIGINT)
            time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="follow-worker", daemon=True).start()


class TrialLink:
    """One running trial of a pruned sweep, opened from its storage by study name and number.
    It reports and asks the pruner through the storage's and the pruner's public methods (what
    ``Trial.report`` and ``Trial.should_prune`` do), since a job cannot be handed the sweeper's
    ``Trial`` object."""

    def __init__(
        self, study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int, pruner: optuna.pruners.BasePruner
    ):
        self.study, self.storage, self.trial_id, self.pruner = study, storage, trial_id, pruner

    @classmethod
    def open(cls, storage: str | None, study_name: str | None, number: int | None) -> TrialLink | None:
        """The link when the trial belongs to a pruned sweep, else None (nothing to report)."""
        if storage is None or study_name is None or number is None:
            return None
        rdb = job_storage(storage)
        trial_id = rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study_name), number)
        pruner = make_pruner(rdb.get_trial(trial_id).user_attrs.get(protocol.ATTR_PRUNER))
        if pruner is None:
            return None
        return cls(optuna.load_study(study_name=study_name, storage=rdb, pruner=pruner), rdb, trial_id, pruner)

    def should_stop(self, epoch: int, epochs: int, val_acc: float) -> bool:
        """Report this epoch; True when the pruner stops the trial (never after its last epoch)."""
        self.storage.set_trial_intermediate_value(self.trial_id, progress_step(epoch, epochs), val_acc)
        if epoch < epochs and self.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            self.storage.set_trial_user_attr(self.trial_id, protocol.ATTR_PRUNED_AT, epoch)  # the worker tells PRUNED
            return True
        return False
