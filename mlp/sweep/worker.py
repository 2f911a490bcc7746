"""The sweep worker: asks Optuna for trials, launches them through Hydra's launcher, tells
Optuna how they ended. One worker is one `python train.py -m hydra/sweeper=optuna`; any number
of them, on one machine or many, join one study through its storage URL.

What a worker does, in order:
1. checks everything it was given before it writes anything (mlp.sweep.settings.Plan);
2. creates the study, or joins it (mlp.sweep.study): whichever worker creates it records the
   study's fixed config (everything not searched), opens the study's one MLflow parent run, and
   enqueues the base config and the winner file's configuration as the first trials;
3. runs ``n_trials`` trials with ``n_jobs`` in flight: each of its slots asks for a trial,
   launches its job through the launcher and tells Optuna how it ended, then asks for the next
   at once (``run_slots``), so that no slot waits for another's trial. Each trial is sampled with
   a seed of its own (mlp.sweep.sampler). While trials run the worker records Optuna's heartbeat
   for them; before each ask it fails the trials whose worker died (any machine: no heartbeat,
   or lost inside ``study.ask``), ends their MLflow runs KILLED, and Optuna's
   ``RetryHeartbeatStaleTrialCallback`` enqueues their configuration once more;
4. before it ends, it runs retries that are still waiting and waits (at most one grace period)
   for trials of workers that may have died; then it logs the leaderboard and Optuna's plots to
   the parent run, updates the study's winner file if the best trial changed, and ends the
   parent run when no trial of the study is running any more.

A trial's MLflow run is created here, nested under the parent, and its id stored on the Optuna
trial (``protocol.ATTR_RUN_ID``); the job resumes that run. Everything Optuna- or
MLflow-specific goes through public APIs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from mlp.errors import UserError, first_line
from mlp.sweep import front, protocol, report
from mlp.sweep.export import WinnerKept, register_compact, update_winner
from mlp.sweep.kill_points import reach
from mlp.sweep.settings import Plan
from mlp.sweep.study import Joined, end_run, join

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING
MAX_DUPLICATE_ASKS = 20  # proposals of configurations the study already has, before it counts as exhausted


def run_worker(config: DictConfig, launcher: Any, arguments: list[str]) -> None:
    """One worker's whole part in its study: plan, join, run (what ``-m`` with our sweeper does)."""
    plan = Plan.of(config, arguments)
    with quiet_optuna():
        Worker(plan, join(plan, config), config, launcher).run()


class Heartbeat:
    """Records Optuna's heartbeat for the trials a worker has in flight, every ``interval`` s."""

    def __init__(self, storage: optuna.storages.RDBStorage, flying: dict[int, tuple[Any, int]], interval: float):
        self.storage, self.flying, self.interval = storage, flying, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="optuna-heartbeat", daemon=True)

    def beat(self) -> None:
        while True:
            for _, trial_id in list(self.flying.values()):  # a copy: slots add and remove trials meanwhile
                try:
                    self.storage.record_heartbeat(trial_id)
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


class Worker:
    """One worker's part of a study (see the module docstring); all its state is set here."""

    def __init__(self, plan: Plan, joined: Joined, config: DictConfig, launcher: Any):
        self.plan, self.joined, self.config, self.launcher = plan, joined, config, launcher
        self.study, self.client = joined.study, joined.client
        self.lock = threading.Lock()  # one ask or tell at a time; it guards the counters below
        self.job_idx = 0  # Hydra's job index of the next launch
        self.mine: list[int] = []  # numbers of the trials this worker asked
        self.told = 0  # of those, how many have ended
        self.failures = 0  # of those, how many failed
        self.flying: dict[int, tuple[optuna.trial.Trial, int]] = {}  # in flight (asked, not told): number -> trial, id
        self.errors: list[BaseException] = []  # what stopped a slot (the others then stop asking)
        log.info(
            "study %s (%s): %s; this worker runs %d trial(s), %d at a time; MLflow parent run %s",
            plan.study_name, plan.storage or "in memory",
            "created" if joined.created else f"joined ({len(self.study.trials)} trials so far)",
            plan.n_trials, plan.n_jobs, joined.parent_id,
        )  # fmt: skip

    # -- the worker's life -----------------------------------------------------------------

    def run(self) -> None:
        status = "FAILED"
        try:
            with self.heartbeat():
                self.run_trials()
                self.settle()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.finish(status)

    def run_trials(self) -> None:
        """``n_trials`` trials, ``n_jobs`` in flight, until the timeout; stop when too many fail."""
        settings, said = self.plan.settings, []
        deadline = time.monotonic() + float(settings.timeout or math.inf)

        def more() -> bool:  # called under the lock, before each ask
            if time.monotonic() > deadline:
                if not said:
                    log.info("timeout of %s s reached after %d trial(s): no new trial started", settings.timeout,
                             len(self.mine))  # fmt: skip
                said.append(True)
                return False
            if len(self.mine) >= self.plan.n_trials or self.too_many_failures():
                return False
            if self.plan.extend is None and self.plan.space.exhausted([t.params for t in self.tried()]):
                if not said:
                    log.info("every configuration of the search space has run: no new trial")
                said.append(True)
                return False
            return True

        self.run_slots(more)
        if self.too_many_failures():
            raise UserError(
                f"{self.failures} of this worker's {self.told} trials failed, more than max_failure_rate "
                f"{settings.max_failure_rate}: stopping (see each trial's {protocol.FAILURE} in MLflow)"
            )

    def tried(self) -> list[optuna.trial.FrozenTrial]:
        """The study's trials that ran or run, not the skipped repeats (``ask``)."""
        trials = self.study.get_trials(deepcopy=False, states=(COMPLETE, PRUNED, FAIL, RUNNING))
        return [t for t in trials if not t.user_attrs.get(protocol.ATTR_FAILURE, "").startswith(protocol.DUPLICATE)]

    def too_many_failures(self) -> bool:
        return self.told > 0 and self.failures / self.told > float(self.plan.settings.max_failure_rate)

    def run_slots(self, more: Callable[[], bool]) -> None:
        """Keep ``n_jobs`` trials in flight: each slot asks for its next trial as soon as its own
        has ended, while ``more()`` says so. One slot runs in this thread (Hydra's basic launcher
        runs the job here and needs the main thread); several run in threads of their own, each
        launching one job at a time through the launcher, and this thread waits, ready for Ctrl-C."""
        if self.plan.n_jobs == 1:
            self.slot(None, more)
            return
        slots = [threading.Thread(target=self.guarded_slot, args=(i, more), daemon=True)
                 for i in range(self.plan.n_jobs)]  # fmt: skip
        for thread in slots:
            thread.start()
        try:
            for thread in slots:
                while thread.is_alive():
                    thread.join(timeout=0.2)  # short waits: Ctrl-C and SIGTERM reach this thread
        except BaseException as e:
            self.interrupted(e)
            raise
        if self.errors:
            raise self.errors[0]

    def interrupted(self, e: BaseException) -> None:
        """Ctrl-C or SIGTERM while slots run: no slot asks again, the trials in flight end
        KILLED, and their jobs (this process's children with joblib and submitit_local) stop."""
        self.errors.append(e)
        locked = self.lock.acquire(timeout=10)  # a slot inside ask adds its trial first
        try:
            for trial, _ in list(self.flying.values()):
                self.end_trial(trial, "interrupted", killed=True)
        finally:
            if locked:
                self.lock.release()
        stop_children()

    def guarded_slot(self, slot: int, more: Callable[[], bool]) -> None:
        try:
            self.slot(slot, more)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.errors.append(e)

    def slot(self, slot: int | None, more: Callable[[], bool]) -> None:
        """Ask -> launch -> tell, one trial after another, while ``more()``."""
        while True:
            with self.lock:
                if self.errors or not more():
                    return
                self.fail_dead()
                trial, overrides = self.ask(slot)
                job_idx, self.job_idx = self.job_idx, self.job_idx + 1
            if self.errors:  # interrupted while it asked
                return
            try:
                reach("asked")
                (ret,) = self.launcher.launch([overrides], initial_job_idx=job_idx)
            except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or the launcher broke
                interrupted = isinstance(e, KeyboardInterrupt)
                reason = "interrupted" if interrupted else f"launcher failed: {first_line(e)}"
                self.end_trial(trial, reason, killed=interrupted)
                raise
            reach("tell")
            with self.lock:
                self.tell(trial, ret)

    # -- ask ---------------------------------------------------------------------------------

    def ask(self, slot: int | None) -> tuple[optuna.trial.Trial, list[str]]:
        """A new trial (or a waiting one: a reference config, a retry), in flight from here on,
        its MLflow run and its overrides."""
        for attempt in range(MAX_DUPLICATE_ASKS):
            trial, trial_id, frozen = self.new_trial()
            retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
            twin = None if retry_of is not None else self.same_config(frozen)
            if twin is None:
                break
            # The sampler proposed a configuration the study already has: skip it and ask again,
            # unless the search space looks exhausted (then the repeat runs).
            if attempt < MAX_DUPLICATE_ASKS - 1:
                trial.set_user_attr(protocol.ATTR_FAILURE, f"{protocol.DUPLICATE} trial {twin}: not run")
                self.study.tell(trial, state=FAIL)
                continue
            log.warning("trial %d repeats trial %d: the search space looks exhausted", trial.number, twin)
        self.mine.append(trial.number)
        self.flying[trial.number] = (trial, trial_id)
        run_id = self.open_run(trial, retry_of)
        return trial, [*self.plan.space.overrides(trial.params), *self.job_overrides(trial, run_id, slot)]

    def new_trial(self) -> tuple[optuna.trial.Trial, int, optuna.trial.FrozenTrial]:
        """Optuna's next trial with its parameters suggested, its id, and the trial as stored (retry
        attributes). Its first heartbeat is recorded at once, then this worker claims it
        (``fail_dead``: a trial that dies before its claim was lost inside ``study.ask``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we record it
            trial = self.study.ask()
        trial_id = self.trial_id(trial)  # one lookup in the storage for the uses below
        if self.joined.rdb is not None:
            self.joined.rdb.record_heartbeat(trial_id)
        trial.set_user_attr(protocol.ATTR_WORKER, f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr(protocol.ATTR_CLAIMED, trial.number)
        self.plan.space.suggest(trial)
        if self.plan.extend is not None:
            self.plan.extend(self.config, trial)
        return trial, trial_id, self.joined.storage.get_trial(trial_id)

    def same_config(self, trial: optuna.trial.FrozenTrial) -> int | None:
        """The number of an earlier trial with the same parameters that ran or runs, if any."""
        for other in self.tried():
            if other.number != trial.number and other.params == trial.params:
                return other.number
        return None

    def open_run(self, trial: optuna.trial.Trial, retry_of: int | None) -> str:
        """The trial's MLflow run under the study's parent, its id and the job's needs on the trial."""
        tags = {
            protocol.PARENT_RUN: self.joined.parent_id,
            protocol.TAG_STUDY: self.plan.study_name,
            protocol.TAG_TRIAL: str(trial.number),
            protocol.TAG_DIR: str(self.config.hydra.sweep.dir),
        }
        if retry_of is not None:
            tags[protocol.TAG_RETRY_OF] = str(retry_of)
        run = self.client.create_run(self.joined.experiment_id, run_name=f"trial-{trial.number:03d}", tags=tags)
        trial.set_user_attr(protocol.ATTR_RUN_ID, run.info.run_id)
        if self.plan.pruner_spec is not None:
            trial.set_user_attr(protocol.ATTR_PRUNER, self.plan.pruner_spec)  # the job reads it from the storage
        return run.info.run_id

    def job_overrides(self, trial: optuna.trial.Trial, run_id: str, slot: int | None) -> list[str]:
        """What tells the job which trial it is (and its slot when trials run in parallel);
        parallel trials share the cores, recorded in the trial's config so that model=best reruns
        the winner with the same arithmetic."""
        storage = self.plan.storage  # None: in memory, nothing for a job to report to
        overrides = protocol.trial_overrides(self.plan.study_name, trial.number, run_id, storage, slot)
        if slot is not None and self.config.trainer.threads == 0:
            overrides.append(f"{protocol.THREADS}={max(1, (os.cpu_count() or 1) // self.plan.n_jobs)}")
        return overrides

    def trial_id(self, trial: optuna.trial.Trial) -> int:
        return self.joined.storage.get_trial_id_from_study_id_trial_number(self.joined.study_id, trial.number)

    def heartbeat(self) -> contextlib.AbstractContextManager:
        if self.joined.rdb is None:
            return contextlib.nullcontext()
        return Heartbeat(self.joined.rdb, self.flying, self.plan.heartbeat_interval)

    # -- tell --------------------------------------------------------------------------------

    def tell(self, trial: optuna.trial.Trial, ret: Any) -> None:
        try:
            value = float(ret.return_value)
        except Exception as e:  # noqa: BLE001 - whatever the job raised fails this trial only
            self.end_trial(trial, f"{type(e).__name__}: {e}")
            log.warning("trial %d failed: %s", trial.number, first_line(e))
            return
        if not math.isfinite(value):
            self.end_trial(trial, f"objective {value}")
            return
        pruned_at = self.joined.storage.get_trial(self.trial_id(trial)).user_attrs.get(protocol.ATTR_PRUNED_AT)
        if pruned_at is not None:  # its job stopped when the pruner said so: value = last report
            self.study.tell(trial, state=PRUNED, skip_if_finished=True)
            self.landed(trial)
            log.info("trial %d: pruned after epoch %d (val acc %.4f)", trial.number, pruned_at, value)
            return
        values = self.objectives(trial, value)
        if isinstance(values, str):
            self.end_trial(trial, values)
            log.warning("trial %d failed: %s", trial.number, values)
            return
        self.study.tell(trial, values, skip_if_finished=True)
        self.landed(trial)
        shown = f"val acc {value:.4f}" if len(values) == 1 else front.shown(self.plan.objectives, values)
        params = " ".join(f"{k}={report.shown(v)}" for k, v in trial.params.items())
        log.info("trial %d: %s  %s", trial.number, shown, params)

    def objectives(self, trial: optuna.trial.Trial, val_acc: float) -> list[float] | str:
        """The trial's objectives in the study's order (the costs from its run's metrics), or why not."""
        if len(self.plan.objectives) == 1:
            return [val_acc]
        try:
            metrics = self.client.get_run(trial.user_attrs[protocol.ATTR_RUN_ID]).data.metrics
        except Exception as e:  # noqa: BLE001 - the tracking store went away: this trial cannot be scored
            return f"its MLflow run could not be read: {first_line(e)}"
        return front.measured(metrics, self.plan.objectives, val_acc)

    def end_trial(self, trial: optuna.trial.Trial, reason: str, killed: bool = False) -> None:
        """FAIL in Optuna, FAILED (or KILLED) in MLflow, with the reason in both."""
        self.failures += 1
        with contextlib.suppress(Exception):
            trial.set_user_attr(protocol.ATTR_FAILURE, reason[:1000])
        with contextlib.suppress(Exception):
            self.study.tell(trial, state=FAIL, skip_if_finished=True)
        self.landed(trial)
        end_run(self.client, trial.user_attrs.get(protocol.ATTR_RUN_ID), "KILLED" if killed else "FAILED", reason)

    def landed(self, trial: optuna.trial.Trial) -> None:
        """A trial of this worker's told: out of flight (its heartbeat stops), counted."""
        self.flying.pop(trial.number, None)
        self.told += 1

    def fail_dead(self) -> None:
        """Fail the trials whose worker died, on any machine: those whose heartbeat stopped, and
        those lost inside ``study.ask`` (RUNNING for a grace period without their worker's claim,
        ``protocol.ATTR_CLAIMED``). Their MLflow runs end KILLED and Optuna's retry callback
        enqueues their configuration once more (mlp.sweep.study.EndRunAndRetry)."""
        rdb = self.joined.rdb
        if rdb is None:
            return
        optuna.storages.fail_stale_trials(self.study)
        lost_before = datetime.datetime.now() - datetime.timedelta(seconds=self.plan.grace)  # Optuna's clock: local
        for t in self.study.get_trials(deepcopy=False, states=(RUNNING,)):
            claimed = t.user_attrs.get(protocol.ATTR_CLAIMED) == t.number
            if claimed or not t.datetime_start or t.datetime_start > lost_before:
                continue
            trial_id = self.joined.storage.get_trial_id_from_study_id_trial_number(self.joined.study_id, t.number)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if rdb.set_trial_state_values(trial_id, state=FAIL):  # False: another worker failed it first
                    rdb.get_heartbeat_stale_trial_callback()(self.study, rdb.get_trial(trial_id))

    def count(self, *states: optuna.trial.TrialState, others: bool = False) -> int:
        trials = self.study.get_trials(deepcopy=False, states=states)
        return sum(1 for t in trials if not others or t.number not in self.mine)

    # -- the end -----------------------------------------------------------------------------

    def settle(self) -> None:
        """Leave nothing behind: run retries still waiting, and give trials of other workers
        that may have died one grace period to be failed (and retried here)."""
        if self.joined.rdb is None:
            return
        patience = self.plan.grace + 2 * self.plan.heartbeat_interval
        deadline, said = time.monotonic() + patience, False
        while True:
            self.fail_dead()
            if self.count(WAITING):
                self.run_slots(lambda: self.count(WAITING) > 0)
                deadline = time.monotonic() + patience
                continue
            others = self.count(RUNNING, others=True)
            if not others or time.monotonic() > deadline:
                return
            if not said:
                log.info("waiting up to %.0f s for %d trial(s) of other workers (a dead worker's are retried here)",
                         deadline - time.monotonic(), others)  # fmt: skip
                said = True
            time.sleep(min(self.plan.heartbeat_interval, 2.0))

    def finish(self, status: str) -> None:
        """Report to the parent run, update the winner file, end the parent if the study is idle:
        KILLED when interrupted (here too), FAILED when the sweep or this step failed."""
        try:
            best = self.report_and_export()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED" if status == "FINISHED" else status
            raise
        finally:
            self.end_parent(status)
        if status == "FINISHED" and best is None:
            states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
            raise UserError(
                f"no trial of study {self.plan.study_name!r} completed ({states.count('FAIL')} failed, "
                f"{states.count('PRUNED')} pruned): there is no best trial; see each trial's {protocol.FAILURE} "
                "in MLflow, then run more trials (hydra.sweeper.n_trials) or a gentler pruner"
            )

    def report_and_export(self) -> optuna.trial.FrozenTrial | None:
        """The study's report on its parent run, and its best trial to the winner file; the best trial."""
        parent_id, settings = self.joined.parent_id, self.plan.settings
        try:
            report.report(self.study, self.client, parent_id)
        except Exception as e:  # noqa: BLE001 - a report that cannot be drawn must not lose the winner below
            log.warning("the study's report (leaderboard, plots) was not logged: %s", first_line(e))
        reach("report")
        best = front.most_accurate(self.study)
        if best is not None and settings.best_config:
            try:
                update_winner(
                    self.study, best, self.client, parent_id, settings.best_config, bool(settings.replace_winner)
                )
            except WinnerKept as kept:
                log.warning("%s", kept)
                self.client.set_tag(parent_id, protocol.PARENT_WINNER_KEPT, kept.tag)
        if front.several(self.study) and self.config.tracking.register is not False:
            self.register_compact()
        return best

    def register_compact(self) -> None:
        """A multi-objective study's compact pick (mlp.sweep.front) under the alias compact."""
        within = float(self.plan.settings.compact_within)
        if (pick := front.compact_pick(self.study, within)) is None:
            return
        try:
            done = register_compact(self.study, pick, self.client, within, self.config.tracking.registered_model)
            log.info("compact pick: trial %d (%s)", pick.number, done.summary())
        except UserError as e:
            log.warning("compact pick: trial %d not registered: %s", pick.number, e)

    def end_parent(self, status: str) -> None:
        """End the study's parent run with ``status`` unless a trial of the study still runs or
        waits (another worker's: that worker ends it)."""
        try:
            busy = self.count(RUNNING, WAITING)
        except Exception as e:  # noqa: BLE001 - the storage is gone: the parent must not stay RUNNING
            log.warning("the study's trials could not be counted (%s): its parent run ends %s", first_line(e), status)
            busy = 0
        if not busy:
            try:
                self.client.set_terminated(self.joined.parent_id, status)
            except Exception as e:  # noqa: BLE001 - the tracking store is gone: say so, keep the error under way
                log.warning("MLflow parent run %s not ended %s: %s", self.joined.parent_id, status, first_line(e))


def stop_children(patience: float = 3.0) -> None:
    """SIGTERM this process's descendants (the jobs of parallel launchers), then SIGKILL those
    still there after ``patience`` seconds (submitit's jobs ignore SIGTERM)."""
    found = job_processes(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + patience
        while (found := [p for p in found if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running (not ended, nor a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def job_processes(pid: int) -> list[int]:
    """The processes under ``pid`` (Linux's /proc; elsewhere none) but joblib's resource tracker:
    it ends by itself with its parent (killed, it warns of leaks)."""
    return [p for p in descendants(pid) if b"resource_tracker" not in command_line(p)]


def descendants(pid: int) -> list[int]:
    """The processes under ``pid``, from /proc (no psutil): children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += parents.get(child, [])
    return found


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs each tell at INFO; the worker logs its own line per trial."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
