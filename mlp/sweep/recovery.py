"""Dead trials: a worker records Optuna's heartbeat for the trials it runs (``Heartbeat``); any
worker fails the trials whose worker died (``fail_dead``), on any machine, through the storage's
stale-trial callback (mlp.sweep.study.EndRunAndRetry: their MLflow runs end KILLED, their
configuration is enqueued once more).

A trial is dead when its heartbeat stopped for the storage's grace period, or when it was lost
inside ``study.ask`` (RUNNING for a grace period without its worker's claim,
``protocol.ATTR_CLAIMED``: its worker died before the first heartbeat)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from collections.abc import Callable

import optuna

from mlp.errors import first_line
from mlp.sweep import protocol
from mlp.sweep.study import Joined

log = logging.getLogger(__name__)
RUNNING, FAIL = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL


def fail_dead(joined: Joined, grace: float) -> None:
    """Fail the study's dead trials (see the module docstring), whichever worker ran them; each
    goes through the storage's stale-trial callback. In memory, no trial can be another's."""
    rdb = joined.rdb
    if rdb is None:
        return
    optuna.storages.fail_stale_trials(joined.study)
    lost_before = datetime.datetime.now() - datetime.timedelta(seconds=grace)  # Optuna's clock: local
    for trial in joined.study.get_trials(deepcopy=False, states=(RUNNING,)):
        claimed = trial.user_attrs.get(protocol.ATTR_CLAIMED) == trial.number
        if claimed or not trial.datetime_start or trial.datetime_start > lost_before:
            continue
        trial_id = joined.trial_id(trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if rdb.set_trial_state_values(trial_id, state=FAIL):  # False: another worker failed it first
                rdb.get_heartbeat_stale_trial_callback()(joined.study, rdb.get_trial(trial_id))


class Heartbeat:
    """Records Optuna's heartbeat, every ``interval`` s, for the trials ``in_flight()`` names (ids)."""

    def __init__(self, rdb: optuna.storages.RDBStorage, in_flight: Callable[[], list[int]], interval: float):
        self.rdb, self.in_flight, self.interval = rdb, in_flight, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="optuna-heartbeat", daemon=True)

    @classmethod
    def of(
        cls, joined: Joined, in_flight: Callable[[], list[int]], interval: float
    ) -> contextlib.AbstractContextManager:
        """The heartbeat of a database storage; nothing for one in memory (no other worker sees it)."""
        return contextlib.nullcontext() if joined.rdb is None else cls(joined.rdb, in_flight, interval)

    def beat(self) -> None:
        while True:
            for trial_id in self.in_flight():
                try:
                    self.rdb.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a blip of the database: the next beat retries
                    log.warning("heartbeat of trial id %d not recorded: %s", trial_id, first_line(e))
            if self.stopped.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
