"""The sweep worker: asks Optuna for trials, launches them through Hydra's launcher, tells
Optuna how they ended. One worker is one `python train.py -m hydra/sweeper=optuna`; any number
of them, on one machine or many, join one study through its storage URL.

A worker checks everything it was given (mlp.sweep.settings.Plan, its only settings), creates
or joins the study (mlp.sweep.study), then runs ``n_trials`` trials with ``n_jobs`` in flight as
Optuna's ``optimize(n_jobs=...)`` does: whenever fewer are in flight it asks for a trial and
launches its job in a thread of its own, and tells Optuna how each ended as soon as its job
returns, so no trial waits for another. Every ask and tell happens in the worker's main thread.
It records the heartbeat of its trials and, before each ask, fails the trials whose worker died
(mlp.sweep.recovery); at the end it runs the retries still waiting, waits (at most a grace period)
for other workers' trials that may be dead, and ends its part of the study (mlp.sweep.finish).
A trial's MLflow run is opened here, under the study's parent; its job resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig

from mlp import processes
from mlp.errors import UserError, first_line
from mlp.sweep import front, protocol, report
from mlp.sweep.finish import finish
from mlp.sweep.kill_points import reach
from mlp.sweep.recovery import Heartbeat, fail_dead
from mlp.sweep.settings import Plan
from mlp.sweep.study import Joined, end_run, join, open_trial_run, quiet_optuna, same_params, space_exhausted

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING
MAX_DUPLICATE_ASKS = 20  # proposals of configurations the study already has, before it counts as exhausted
RetryCallback = optuna.storages.RetryHeartbeatStaleTrialCallback


def run_worker(config: DictConfig, launcher: Any, arguments: list[str]) -> None:
    """One worker's whole part in its study: plan, join, run (what ``-m`` with our sweeper does)."""
    plan = Plan.of(config, arguments)
    with quiet_optuna():
        Worker(plan, join(plan, config), launcher).run()


@dataclass(frozen=True)
class InFlight:
    """A trial this worker asked and has not told yet."""

    trial: optuna.trial.Trial
    trial_id: int  # the storage's id of it
    slot: int | None  # which of the n_jobs trials in flight it is (the job's sweep.slot); None: one at a time


class Worker:
    """One worker's part of a study (see the module docstring); all its state is set here."""

    def __init__(self, plan: Plan, joined: Joined, launcher: Any):
        self.plan, self.joined, self.launcher = plan, joined, launcher
        self.study, self.client = joined.study, joined.client
        self.in_flight: dict[int, InFlight] = {}  # by trial number
        self.in_flight_lock = threading.Lock()  # the heartbeat's thread reads in_flight while this one changes it
        # How each launched job ended, (trial number, Hydra's JobReturn or what the launch raised), from their threads.
        self.endings: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.asked: set[int] = set()  # numbers of the trials this worker ran or runs (not the repeats it skipped)
        self.ended = 0  # of those, how many have ended
        self.failed = 0  # of those, how many failed
        self.job_idx = 0  # Hydra's job index of the next launch
        self.launcher_error: Exception | None = None  # the launcher broke: no new trial, raised when the others end
        self.not_jobs = processes.descendants()  # processes there before any job: never stopped as jobs
        log.info(
            "study %s (%s): %s; this worker runs %d trial(s), %d at a time; MLflow parent run %s",
            plan.study_name, plan.storage or "in memory",
            "created" if joined.created else f"joined ({len(self.study.trials)} trials so far)",
            plan.n_trials, plan.n_jobs, joined.parent_id,
        )  # fmt: skip

    def run(self) -> None:
        status = "FAILED"
        try:
            with Heartbeat.of(self.joined, self.trial_ids_in_flight, self.plan.heartbeat_interval):
                self.run_trials()
                self.settle()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            finish(self.joined, self.plan, status)

    def run_trials(self) -> None:
        """``n_trials`` trials, ``n_jobs`` in flight, until the timeout or until every configuration
        of a finite search space has run; stop when too many fail."""
        deadline = time.monotonic() + (self.plan.timeout or math.inf)
        self.keep_in_flight(lambda: self.trials_left() and time.monotonic() < deadline)
        if self.too_many_failures():
            raise UserError(
                f"{self.failed} of this worker's {self.ended} trials failed, more than max_failure_rate "
                f"{self.plan.max_failure_rate}: stopping (see each trial's {protocol.FAILURE} in MLflow)"
            )
        if len(self.asked) < self.plan.n_trials and space_exhausted(self.study, self.plan):
            log.info("every configuration of the search space has run: no new trial")
        elif len(self.asked) < self.plan.n_trials:
            log.info("timeout of %s s reached after %d trial(s): no new trial started", self.plan.timeout,
                     len(self.asked))  # fmt: skip

    def trials_left(self) -> bool:
        left = len(self.asked) < self.plan.n_trials and not self.too_many_failures()
        return left and not space_exhausted(self.study, self.plan)

    def too_many_failures(self) -> bool:
        return self.ended > 0 and self.failed / self.ended > self.plan.max_failure_rate

    def settle(self) -> None:
        """Leave nothing behind: run retries still waiting, and give trials of other workers
        that may have died one grace period to be failed (and retried here). Reference trials
        still waiting (a new study's enqueued configurations) are not run past ``n_trials``:
        the study's next worker runs them first."""
        if self.joined.rdb is None:
            return
        patience = self.plan.grace + 2 * self.plan.heartbeat_interval
        deadline, told_why = time.monotonic() + patience, False
        while True:
            fail_dead(self.joined, self.plan.grace)
            if self.retries_waiting():
                self.keep_in_flight(self.retries_waiting)
                deadline = time.monotonic() + patience
                continue
            others = self.count(RUNNING, others=True)
            if others and not told_why:  # said before the deadline is checked: a slow storage may pass it at once
                log.info("waiting up to %.0f s for %d trial(s) of other workers (a dead worker's are retried here)",
                         max(0.0, deadline - time.monotonic()), others)  # fmt: skip
                told_why = True
            if not others or time.monotonic() > deadline:
                return
            time.sleep(min(self.plan.heartbeat_interval, 2.0))

    def retries_waiting(self) -> bool:
        waiting = self.study.get_trials(deepcopy=False, states=(WAITING,))
        return any(RetryCallback.retried_trial_number(t) is not None for t in waiting)

    def count(self, *states: optuna.trial.TrialState, others: bool = False) -> int:
        trials = self.study.get_trials(deepcopy=False, states=states)
        return sum(1 for t in trials if not (others and t.number in self.asked))

    def keep_in_flight(self, wanted: Callable[[], bool]) -> None:
        """Ask for trials while fewer than ``n_jobs`` are in flight and ``wanted()``; tell each as
        it ends. Ctrl-C, SIGTERM or an error here ends the trials in flight and stops their jobs."""
        try:
            while True:
                while len(self.in_flight) < self.plan.n_jobs and self.launcher_error is None and wanted():
                    fail_dead(self.joined, self.plan.grace)
                    self.launch(*self.ask())
                if not self.in_flight:
                    break
                number, ending = self.next_ending()
                self.tell(self.in_flight[number], ending)
        except BaseException as e:
            self.stop_in_flight(e)
            raise
        if self.launcher_error is not None:
            raise self.launcher_error

    def next_ending(self) -> tuple[int, Any]:
        while True:
            with contextlib.suppress(queue.Empty):
                return self.endings.get(timeout=0.2)  # short waits: Ctrl-C and SIGTERM reach this thread

    def launch(self, flight: InFlight, overrides: list[str]) -> None:
        """Start the trial's job in a thread of its own; here when one runs at a time (Hydra's
        basic launcher runs the job in the calling thread, and needs the main one)."""
        args, self.job_idx = (flight.trial.number, overrides, self.job_idx), self.job_idx + 1
        if self.plan.n_jobs == 1:
            self.run_job(*args)
        else:
            threading.Thread(target=self.run_job, args=args, name=f"trial-{flight.trial.number}", daemon=True).start()

    def run_job(self, number: int, overrides: list[str], job_idx: int) -> None:
        try:
            reach("asked")
            (ending,) = self.launcher.launch([overrides], initial_job_idx=job_idx)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which tells or raises it
            ending = e
        self.endings.put((number, ending))

    def stop_in_flight(self, error: BaseException) -> None:
        """The trials in flight stop: their jobs first (this process's children with joblib and
        submitit_local; a job still starting would set its run RUNNING again), then the trials end
        (KILLED when interrupted)."""
        processes.stop(processes.job_processes(spared=self.not_jobs))
        interrupted = isinstance(error, KeyboardInterrupt)
        reason = "interrupted" if interrupted else f"the worker failed: {first_line(error)}"
        for flight in list(self.in_flight.values()):
            self.end_trial(flight, reason, killed=interrupted)

    def trial_ids_in_flight(self) -> list[int]:
        with self.in_flight_lock:
            return [flight.trial_id for flight in self.in_flight.values()]

    def take_off(self, flight: InFlight) -> None:
        with self.in_flight_lock:
            self.in_flight.pop(flight.trial.number, None)

    def ask(self) -> tuple[InFlight, list[str]]:
        """A new trial (or a waiting one: a reference config, a retry), in flight, its MLflow run
        opened, and its job's overrides."""
        for attempt in range(MAX_DUPLICATE_ASKS):
            flight, stored = self.new_trial()
            retry_of = RetryCallback.retried_trial_number(stored)
            earlier = None if retry_of is not None else same_params(self.study, stored)
            if earlier is None:
                break
            # The sampler proposed a configuration the study already has: skip it and ask again,
            # unless the search space looks exhausted (then the repeat runs).
            if attempt < MAX_DUPLICATE_ASKS - 1:
                flight.trial.set_user_attr(protocol.ATTR_FAILURE, f"{protocol.DUPLICATE} trial {earlier}: not run")
                self.study.tell(flight.trial, state=FAIL)
                self.take_off(flight)
                continue
            log.warning("trial %d repeats trial %d: the search space looks exhausted", flight.trial.number, earlier)
        trial = flight.trial
        self.asked.add(trial.number)
        run_id = open_trial_run(self.joined, self.plan, trial, retry_of)
        overrides = protocol.trial_overrides(self.plan.study_name, trial.number, run_id, self.plan.storage, flight.slot)
        if self.plan.job_threads is not None:
            overrides.append(f"{protocol.THREADS}={self.plan.job_threads}")
        return flight, [*self.plan.space.overrides(trial.params), *overrides]

    def new_trial(self) -> tuple[InFlight, optuna.trial.FrozenTrial]:
        """Optuna's next trial, in flight from the start (its heartbeat recorded at once), claimed
        (a trial that dies before its claim was lost inside ``study.ask``: recovery.fail_dead), its
        parameters suggested; and the trial as stored (its retry attributes)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we record it
            trial = self.study.ask()
        taken = {flight.slot for flight in self.in_flight.values()}
        slot = None if self.plan.n_jobs == 1 else min(set(range(self.plan.n_jobs)) - taken)
        flight = InFlight(trial, self.joined.trial_id(trial.number), slot)
        with self.in_flight_lock:
            self.in_flight[trial.number] = flight
        if self.joined.rdb is not None:
            self.joined.rdb.record_heartbeat(flight.trial_id)
        trial.set_user_attr(protocol.ATTR_WORKER, f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr(protocol.ATTR_CLAIMED, trial.number)
        self.plan.space.suggest(trial)
        if self.plan.extend is not None:
            self.plan.extend(trial)
        return flight, self.joined.storage.get_trial(flight.trial_id)

    def tell(self, flight: InFlight, ending: Any) -> None:
        """How the trial's job ended (Hydra's JobReturn, or what its launch raised) to Optuna."""
        reach("tell")
        if isinstance(ending, BaseException):
            if not isinstance(ending, Exception):
                raise ending  # Ctrl-C or SIGTERM while the job ran in this thread
            self.launcher_error = ending
            self.end_trial(flight, f"launcher failed: {first_line(ending)}")
            return
        trial = flight.trial
        try:
            value = float(ending.return_value)  # raises what the job raised
        except Exception as e:  # noqa: BLE001 - whatever the job raised fails this trial only
            self.end_trial(flight, f"{type(e).__name__}: {e}")
            return
        values = front.measured(self.client, trial.user_attrs[protocol.ATTR_RUN_ID], self.plan.objectives, value)
        if isinstance(values, str):
            self.end_trial(flight, values)
            return
        pruned_at = self.joined.storage.get_trial(flight.trial_id).user_attrs.get(protocol.ATTR_PRUNED_AT)
        if pruned_at is not None:  # its job stopped when the pruner said so: value = last report
            self.study.tell(trial, state=PRUNED, skip_if_finished=True)
            log.info("trial %d: pruned after epoch %d (val acc %.4f)", trial.number, pruned_at, value)
        else:
            self.study.tell(trial, values, skip_if_finished=True)
            shown = f"val acc {value:.4f}" if len(values) == 1 else front.shown(self.plan.objectives, values)
            params = " ".join(f"{k}={report.shown(v)}" for k, v in trial.params.items())
            log.info("trial %d: %s  %s", trial.number, shown, params)
        self.land(flight)

    def end_trial(self, flight: InFlight, reason: str, killed: bool = False) -> None:
        """FAIL in Optuna, FAILED (or KILLED) in MLflow, with the reason in both."""
        log.warning("trial %d failed: %s", flight.trial.number, reason.partition("\n")[0])
        with contextlib.suppress(Exception):
            flight.trial.set_user_attr(protocol.ATTR_FAILURE, reason[:1000])
        with contextlib.suppress(Exception):
            self.study.tell(flight.trial, state=FAIL, skip_if_finished=True)
        self.land(flight, failed=True)
        run_id = flight.trial.user_attrs.get(protocol.ATTR_RUN_ID)
        end_run(self.client, run_id, "KILLED" if killed else "FAILED", reason)

    def land(self, flight: InFlight, failed: bool = False) -> None:
        """A trial of this worker's told: out of flight (its heartbeat stops), counted."""
        self.take_off(flight)
        self.ended += 1
        self.failed += failed
