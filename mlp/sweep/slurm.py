"""Trials as SLURM jobs (``hydra/launcher=slurm``, hydra_plugins/mlp_sweeper/sweeper.py): wait for each
job's result, and never for a job SLURM no longer runs.

SLURM is asked with ``squeue``: one call for all of a worker's jobs, at most every ``poll_s`` seconds,
the same with or without accounting (submitit's own watch calls ``sacct``, which a cluster without
accounting answers with an error on every poll; it is not used). A job

- whose result file appears: its result, as hydra-submitit-launcher returns it;
- that SLURM ended without a result (cancelled, timed out, its node lost, preempted, or no longer
  listed) and whose file has not appeared ``result_wait_s`` seconds later (shared file systems lag):
  its trial fails with SLURM's state and reason (``JobLost``), and its configuration is queued again
  as a dead worker's would be (Optuna's retry, at most ``hydra.sweeper.max_retry`` times);
- that can never start (pending for a reason only an administrator can clear: it asks for more than
  any node has): cancelled, and the sweep stops with one line naming what it asked for;
- while SLURM does not answer (slurmctld restarting): waited for; its jobs run on.

Each trial records its job id (``protocol.ATTR_SLURM_JOB``): a worker that finds the trial's worker
dead cancels the job (mlp.sweep.study.EndRunAndRetry). Jobs still running when their worker stops
on Ctrl-C or SIGTERM are cancelled on its way out.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import math
import subprocess
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus

from mlp.errors import UserError
from mlp.sweep import protocol
from mlp.sweep.job import job_storage

log = logging.getLogger(__name__)
# squeue's states of a job that has ended (any other, RUNNING, PENDING, SUSPENDED, COMPLETING..., may still end well).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "TIMEOUT", "GONE"}  # fmt: skip
# Pending reasons that waiting does not clear: the job asks for more than the partition's nodes have.
NEVER = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints"}
# The resources a job asks for (hydra.launcher keys), named in the line that says it cannot run.
ASKED = ("gpus_per_node", "cpus_per_task", "mem_gb", "partition", "timeout_min")
UNANSWERED = ("?", "SLURM does not answer")  # squeue failed: nothing is decided until it answers again
GONE = ("GONE", "None")  # squeue answered without it: purged (MinJobAge) before a poll saw it end, or lost


class JobLost(Exception):
    """A trial's SLURM job ended without a result (its trial fails; its configuration runs again)."""


class Queue:
    """What SLURM says of the jobs this process waits for: (state, reason) by job id, from one
    ``squeue`` for all of them at most every ``period`` seconds (threads share it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, Any] = {}  # job id -> submitit job, while waited for (cancelled at exit)
        self.states: dict[str, tuple[str, str]] = {}
        self.asked, self.period = -math.inf, 10.0

    def state(self, job_id: str) -> tuple[str, str]:
        with self.lock:
            if time.monotonic() - self.asked >= self.period:
                self.states, self.asked = self.ask(sorted(self.jobs)), time.monotonic()
            return self.states.get(job_id, UNANSWERED)

    @staticmethod
    def ask(job_ids: list[str]) -> dict[str, tuple[str, str]]:
        command = ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i|%T|%r"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        # squeue exits 1 when the only job asked for is unknown, 0 when one of several is: both mean gone.
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            return {}
        listed = dict(line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)
        return {j: tuple(listed[j].split("|")) if j in listed else GONE for j in job_ids}

    def cancel_all(self) -> None:
        for job in list(self.jobs.values()):
            with contextlib.suppress(Exception):
                job.cancel(check=False)


QUEUE = Queue()
atexit.register(QUEUE.cancel_all)  # Ctrl-C or SIGTERM stopped the worker: its jobs would run for nothing


def submit(executor: Any, launcher: Any, args: Sequence[Any], asked: dict[str, Any]) -> Any:
    """Submit one job (``launcher(*args)``); sbatch's refusal as one line naming what was asked for."""
    import submitit  # only where trials are SLURM jobs

    with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors: they are in the line below
        try:
            return executor.submit(launcher, *args)
        except submitit.core.utils.FailedJobError as e:
            said = [line.removeprefix("sbatch: error: ") for line in str(e).splitlines() if line.strip()]
            raise UserError(f"sbatch refused the trial's job: {'; '.join(said)} ({request(asked)})") from e


def request(asked: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={'null' if asked.get(k) is None else asked[k]}" for k in ASKED)
    return f"it asked for hydra.launcher.{shown}; on a cluster without GPUs use hydra/launcher=slurm_cpu"


def outcome(
    job: Any, overrides: Sequence[str], asked: dict[str, Any], result_wait_s: float, max_retry: int
) -> JobReturn:
    """The job's JobReturn once its result file appears, or a failed one once SLURM ended it without
    (its configuration then queued again, at most ``max_retry`` times). Cancelled if the wait is cut
    short (Ctrl-C, SIGTERM) or the job can never start."""
    QUEUE.jobs[job.job_id] = job
    try:
        if (reason := wait(job, asked, result_wait_s)) is not None:
            return lost(overrides, reason, max_retry)
        try:
            ret = job.results()[0]
        except Exception as e:  # noqa: BLE001 - the job failed outside the task: its traceback is in the message
            return lost(overrides, f"SLURM job {job.job_id}: {job_error(str(e), asked)}", max_retry)
        if (signal := signalled(ret)) is not None:
            return lost(overrides, f"SLURM job {job.job_id}: {job_error(str(signal), asked)}", max_retry)
        return ret
    except BaseException:
        job.cancel(check=False)  # nobody would read its result
        raise
    finally:
        QUEUE.jobs.pop(job.job_id, None)


def wait(job: Any, asked: dict[str, Any], result_wait_s: float) -> str | None:
    """Until the job's result file appears (None) or SLURM has ended it ``result_wait_s`` ago (why)."""
    ended_at, said = math.inf, "None"
    while not job.paths.result_pickle.exists():
        state, reason = QUEUE.state(job.job_id)
        if state == "PENDING" and reason in NEVER:
            raise UserError(f"SLURM cannot ever start job {job.job_id} ({reason}): {request(asked)}")
        if state == "PENDING" and reason not in (said, "None", "Priority", "Resources"):
            log.info("SLURM job %s waits: %s", job.job_id, reason)  # e.g. its nodes are down
            said = reason
        if state not in ENDED:
            ended_at = math.inf
        else:
            ended_at = min(ended_at, time.monotonic())
            if time.monotonic() - ended_at > result_wait_s:
                why = "is no longer known to SLURM" if state == GONE[0] else f"ended {state}"
                return f"SLURM job {job.job_id} {why}{f' ({reason})' if reason != 'None' else ''} without a result"
        time.sleep(min(1.0, QUEUE.period))
    return None


def signalled(ret: JobReturn) -> Exception | None:
    """submitit's error when SLURM's warning signal (``signal_delay_s`` before the time limit) ended
    the task, which Hydra returns as the task's failure; else None."""
    from submitit.core.utils import UncompletedJobError  # only where trials are SLURM jobs

    if ret.status != JobStatus.FAILED:
        return None
    with contextlib.redirect_stderr(io.StringIO()):  # Hydra's "Error executing job" line: the worker prints it
        try:
            ret.return_value  # noqa: B018 - a failed job's return value raises its error
        except UncompletedJobError as e:
            return e
        except Exception:  # noqa: BLE001 - the task's own failure: the worker tells it
            return None
    return None


def job_error(text: str, asked: dict[str, Any]) -> str:
    """The last line of a job's traceback (submitit's FailedJobError holds it between dashed lines);
    submitit's words when SLURM signalled the job ``signal_delay_s`` before its time limit, plainly."""
    parts = text.split("-" * 22)
    lines = (parts[1] if len(parts) > 2 else text).strip().splitlines() or ["no message"]
    if "timed-out" in lines[-1]:  # "Job not requeued because: timed-out too many times."
        return f"its time limit was reached (hydra.launcher.timeout_min={asked.get('timeout_min')})"
    return lines[-1]


def lost(overrides: Sequence[str], reason: str, max_retry: int) -> JobReturn:
    """A failed JobReturn (the worker fails the trial with ``reason``); the trial queued again."""
    retry(overrides, max_retry)
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=JobLost(reason))


def trial_of(overrides: Sequence[str]) -> tuple[optuna.storages.RDBStorage, str, int] | None:
    """The study storage, study name and trial id a job's overrides name (None: a study in memory)."""
    values = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(overrides))}
    if values.get(protocol.STORAGE) is None or values.get(protocol.TRIAL) is None:
        return None
    storage, name = job_storage(values[protocol.STORAGE]), values[protocol.STUDY]
    study_id = storage.get_study_id_from_name(name)
    return storage, name, storage.get_trial_id_from_study_id_trial_number(study_id, int(values[protocol.TRIAL]))


def record_job(overrides: Sequence[str], job_id: str) -> None:
    """Store the trial's job id on it: a worker that finds this worker dead cancels the job."""
    if (found := trial_of(overrides)) is not None:
        storage, _, trial_id = found
        storage.set_trial_user_attr(trial_id, protocol.ATTR_SLURM_JOB, job_id)


def retry(overrides: Sequence[str], max_retry: int) -> None:
    """Queue the trial's configuration again, as Optuna's retry of a dead worker's trial does."""
    if (found := trial_of(overrides)) is not None:
        storage, name, trial_id = found
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            again = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        again(optuna.load_study(study_name=name, storage=storage), storage.get_trial(trial_id))


def cancel(job_id: str | None) -> None:
    """``scancel`` a job, if there is one and SLURM can be reached from here."""
    if job_id:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
