"""How the SLURM launcher waits for a job (mlp/sweep/slurm.py), against a scripted ``squeue``: a
job SLURM ended without a result fails in one line naming SLURM's state and reason; a result
file ends the wait whatever SLURM says; an unanswered ``squeue`` decides nothing; a job that can
never start is cancelled in one line. The real cluster's faults: tests/test_slurm.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import FailedJobError, UncompletedJobError

from mlp.errors import UserError
from mlp.sweep import slurm

ASKED = {"gpus_per_node": None, "cpus_per_task": 64, "mem_gb": 2, "partition": None, "timeout_min": 60}


class Job:
    """A submitit job as the launcher sees it: an id, a result file that may appear, cancel()."""

    def __init__(self, folder: Path):
        self.job_id, self.cancelled = "7", False
        self.paths = SimpleNamespace(result_pickle=folder / "7_0_result.pkl")
        self.result: JobReturn | Exception = JobReturn(status=JobStatus.COMPLETED, _return_value=0.9)

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True

    def results(self) -> list[JobReturn]:
        if isinstance(self.result, Exception):
            raise self.result
        return [self.result]


@pytest.fixture
def squeue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Script squeue's answers, one per look (the last one repeats); the job then appears if asked."""

    def script(*answers: tuple[str, str] | None, result_after: int | None = None) -> Job:
        job, asked = Job(tmp_path), []

        def ask(job_ids: list[str]) -> dict[str, tuple[str, str]]:
            asked.append(job_ids)
            if result_after is not None and len(asked) > result_after:
                job.paths.result_pickle.touch()
            answer = answers[min(len(asked), len(answers)) - 1]
            return {} if answer is None else {"7": answer}

        monkeypatch.setattr(slurm.Queue, "ask", staticmethod(ask))
        monkeypatch.setattr(slurm, "QUEUE", slurm.Queue())
        slurm.QUEUE.period = 0.01
        return job

    return script


def outcome(job: Job) -> JobReturn:
    return slurm.outcome(job, [], ASKED, result_wait_s=0.05, max_retry=1)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([("RUNNING", "None"), ("CANCELLED", "None")], "SLURM job 7 ended CANCELLED without a result"),
        ([("RUNNING", "None"), ("TIMEOUT", "TimeLimit")], "SLURM job 7 ended TIMEOUT (TimeLimit) without a result"),
        ([("RUNNING", "None"), ("NODE_FAIL", "NodeDown")], "SLURM job 7 ended NODE_FAIL (NodeDown) without a result"),
        ([("RUNNING", "None"), slurm.GONE], "SLURM job 7 is no longer known to SLURM without a result"),
    ],
)
def test_a_job_ended_without_a_result_fails_with_slurms_reason(squeue, answers: list, reason: str) -> None:
    ret = outcome(squeue(*answers))
    assert ret.status == JobStatus.FAILED
    with pytest.raises(slurm.JobLost, match=f"^{re.escape(reason)}$"):
        ret.return_value  # noqa: B018 - what the worker reads: it raises the job's failure


TIMED_OUT = UncompletedJobError("Job not requeued because: timed-out too many times.")  # submitit's, on SLURM's signal
TRACE = "Traceback (most recent call last):\n  File ...\nModuleNotFoundError: No module named 'mlp'"


@pytest.mark.parametrize(
    ("result", "reason"),
    [  # the signal inside the task (Hydra returns it failed) or outside it (submitit raises it with its trace)
        (JobReturn(status=JobStatus.FAILED, _return_value=TIMED_OUT), "its time limit was reached"),
        (FailedJobError(f"Job (task=0) failed during processing with trace:\n{'-' * 22}\n{TRACE}\n{'-' * 22}\n"
                        "You can check full logs with 'job.stderr(0)'"), "ModuleNotFoundError: No module named 'mlp'"),
    ],
)  # fmt: skip
def test_a_job_that_ended_itself_outside_its_task_fails_in_one_line(squeue, result: object, reason: str) -> None:
    job = squeue(("RUNNING", "None"), result_after=0)
    job.result = result
    with pytest.raises(slurm.JobLost, match=re.escape(f"SLURM job 7: {reason}")):
        outcome(job).return_value  # noqa: B018 - what the worker reads


def test_a_result_file_ends_the_wait_whatever_slurm_says(squeue) -> None:
    job = squeue(("RUNNING", "None"), None, ("COMPLETED", "None"), result_after=2)  # found just as SLURM ends it
    assert outcome(job).return_value == 0.9 and not job.cancelled


def test_while_squeue_does_not_answer_nothing_is_decided(squeue) -> None:
    job = squeue(("RUNNING", "None"), *[None] * 30, result_after=20)  # slurmctld restarting: 20 looks unanswered
    assert outcome(job).return_value == 0.9


def test_a_job_that_can_never_start_is_cancelled_in_one_line(squeue) -> None:
    job = squeue(("PENDING", "None"), ("PENDING", "PartitionConfig"))
    line = ("SLURM cannot ever start job 7 (PartitionConfig): it asked for hydra.launcher.gpus_per_node=null, "
            "cpus_per_task=64, mem_gb=2, partition=null, timeout_min=60; ")  # fmt: skip
    with pytest.raises(UserError, match=f"^{re.escape(line)}"):
        outcome(job)
    assert job.cancelled and not slurm.QUEUE.jobs


def test_a_waiting_job_says_why_once(squeue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    down = ("PENDING", "ReqNodeNotAvail, UnavailableNodes:mlp1")
    job = squeue(("PENDING", "None"), down, down, down, ("PENDING", "Resources"), ("RUNNING", "None"), result_after=8)
    monkeypatch.setattr(slurm.log, "disabled", False)  # Hydra's logging config, run by an earlier test, disables it
    with caplog.at_level(logging.INFO, logger=slurm.__name__):
        assert outcome(job).return_value == 0.9
    assert [r.getMessage() for r in caplog.records] == ["SLURM job 7 waits: ReqNodeNotAvail, UnavailableNodes:mlp1"]


def test_an_interrupted_wait_cancels_the_job(squeue, monkeypatch: pytest.MonkeyPatch) -> None:
    job = squeue(("RUNNING", "None"))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        outcome(job)
    assert job.cancelled and not slurm.QUEUE.jobs
