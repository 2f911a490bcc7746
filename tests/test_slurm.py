"""Sweeps on a real SLURM cluster (scripts/cluster.py: munged, slurmctld and one slurmd, started once
per test process, no accounting) with ``hydra/launcher=slurm_cpu``, and the cluster's faults: a job
cancelled for good, a job that reaches its time limit, slurmctld restarted, the node set DOWN, the
worker killed while its job runs, a job sbatch refuses, a job that can never start. Each fault ends
within a stated bound, leaves no Optuna trial and no MLflow run RUNNING, fails its trial with a
one-line reason, retries it at most max_retry (1) times, and the parent run ends FINISHED.

The jobs to fault are held: the first jobs of a sweep take a hold file each and wait, as a shell
ignoring SIGTERM (as submitit's jobs do), until the test releases or faults them (no CPU meanwhile);
every other job trains at once (synthetic data, 1 epoch)."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from mlp.errors import UserError
from mlp.sweep import protocol
from tests import forked
from tests.helpers import ROOT, Sweep, subprocess_env

pytestmark = pytest.mark.slow

POLL, RESULT_WAIT, KILL_WAIT = 0.5, 1.0, 2.0  # hydra.launcher.poll_s, result_wait_s; the cluster's KillWait
NOTICED = POLL + RESULT_WAIT  # a job SLURM ended is told FAIL within this (plus the storage's and MLflow's writes)
SLACK = 5.0  # seconds for this machine's load (2 cores shared by the whole test suite)
TIME_LIMIT = 60  # timeout_min=1; SLURM checks limits every 30 s and then waits KillWait
GRACE = 3  # hydra.sweeper.grace_period: a trial without a heartbeat this long is dead
STARTED: list[forked.Forked] = []  # the workers the tests started


def env_of(cluster: dict, **extra: str) -> dict[str, str]:
    # PYTHONPATH: the jobs import this checkout's package and plugins, whichever copy is installed.
    return subprocess_env(SLURM_CONF=cluster["SLURM_CONF"], PYTHONPATH=str(ROOT), **extra)


def held(root: Path) -> str:
    """The launcher's setup line that holds the first jobs of a sweep (module docstring): a job that
    renames ``root/hold-NAME`` to ``taken-hold-NAME.<job id>`` runs the commands in it (none, or
    one that raises its own time limit), then waits while that file is there."""
    line = (f"for h in {root}/hold-*; do t={root}/taken-$(basename $h).$SLURM_JOB_ID; if mv $h $t 2>/dev/null; "
            "then . $t; trap : TERM; while [ -e $t ]; do sleep 0.2; done; break; fi; done")  # fmt: skip
    return f'hydra.launcher.setup=["{line}"]'


def start_worker(sweep: Sweep, cluster: dict, n_trials: int, *extra: str, name: str = "worker") -> forked.Forked:
    args = sweep.args(
        n_trials, "hydra/launcher=slurm_cpu", f"hydra.launcher.poll_s={POLL}",
        f"hydra.launcher.result_wait_s={RESULT_WAIT}", "hydra.sweeper.heartbeat_interval=1",
        f"hydra.sweeper.grace_period={GRACE}", "hydra.sweeper.max_retry=1", held(sweep.root), *extra,
    )  # fmt: skip
    STARTED.append(
        forked.start(ROOT / "train.py", args, cwd=sweep.root, env=env_of(cluster), log=sweep.root / f"{name}.log")
    )
    return STARTED[-1]


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    """A test that fails midway leaves no worker running (the module's background one has its fixture)."""
    started = len(STARTED)
    yield
    for worker in STARTED[started:]:
        if worker.poll() is None:
            worker.kill()


def finished(worker: forked.Forked, sweep: Sweep, name: str = "worker", timeout: float = 240) -> str:
    """Wait for the worker; its log, where sacct is named at most once (here: never)."""
    code = worker.wait(timeout=timeout)
    log = (sweep.root / f"{name}.log").read_text()
    assert code == 0, log[-3000:]
    assert sum("sacct" in line for line in log.splitlines()) <= 1
    return log


def holding(root: Path, names: list[str], timeout: float = 120) -> dict[str, str]:
    """Hold files ``hold-NAME`` for the sweep's first jobs; once each is taken: NAME -> job id."""
    for name in names:
        (root / f"hold-{name}").touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(jobs := taken(root)) == len(names):
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"the jobs never took the hold files {names}")


def until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.2)


def taken(root: Path) -> dict[str, str]:
    """The hold files taken so far: NAME -> job id."""
    return {p.stem.removeprefix("taken-hold-"): p.suffix[1:] for p in root.glob("taken-*")}


def slurm(cluster: dict, *command: str) -> str:
    return subprocess.run(command, env=env_of(cluster), capture_output=True, text=True, check=True).stdout


def job_state(cluster: dict, job_id: str, field: str = "%T") -> str:
    """The job's state (or another of squeue's fields: %S its start), while SLURM remembers the job (MinJobAge)."""
    return slurm(cluster, "squeue", "--noheader", "--states=all", f"--jobs={job_id}", f"--format={field}").strip()


def restart_controller(cluster: dict, down: float = 2.0) -> None:
    """Stop slurmctld (SIGTERM: it saves its state; the jobs run on), leave it down ``down`` seconds
    (the worker's squeue calls meet no controller), start it again."""
    pid = int((cluster["folder"] / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:  # gone, or a zombie nobody reaps (its parent is this container's first process)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    time.sleep(down)
    slurm(cluster, "slurmctld")


def trial_of_job(trials: list[optuna.trial.FrozenTrial], job_id: str) -> optuna.trial.FrozenTrial:
    """The trial that ran the job (its retry carries the job id too until its own job is submitted)."""
    return min((t for t in trials if t.user_attrs.get(protocol.ATTR_SLURM_JOB) == job_id), key=lambda t: t.number)


def check_faulted(sweep: Sweep, failed: dict[int, str], retries: int = 1) -> list[optuna.trial.FrozenTrial]:
    """Nothing RUNNING; exactly the trials ``failed`` (number -> reason, one line) FAIL, each retried
    ``retries`` times, every other trial COMPLETE; each run ended as its trial, the parent FINISHED."""
    trials = sweep.study_trials()
    assert {t.number: t.state.name for t in trials if t.state.name != "COMPLETE"} == dict.fromkeys(failed, "FAIL")
    for number, reason in failed.items():
        assert trials[number].user_attrs[protocol.ATTR_FAILURE] == reason and "\n" not in reason
        copies = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(copies) == retries and all(t.params == trials[number].params for t in copies)
    runs = {r.info.run_id: r for r in sweep.runs("child")}
    assert len(runs) == len(trials) and not [r for r in runs.values() if r.info.status == "RUNNING"]
    for t in trials:
        run = runs[t.user_attrs[protocol.ATTR_RUN_ID]]
        assert run.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "FAILED")
        assert run.data.tags.get(protocol.FAILURE) == failed.get(t.number)
    (parent,) = sweep.runs("parent")
    assert parent.info.status == "FINISHED"
    return trials


def ended_within(trial: optuna.trial.FrozenTrial, since: datetime.datetime, bound: float) -> float:
    took = (trial.datetime_complete - since).total_seconds()
    assert 0 <= took <= bound, f"trial {trial.number} ended {took:.1f} s after its fault (bound {bound} s)"
    print(f"trial {trial.number} ended {took:.1f} s after its fault (bound {bound} s)")  # the docs' figures: pytest -s
    return took


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory: pytest.TempPathFactory, slurm_cluster: dict, empty_store: Path) -> Iterator[tuple]:
    """A sweep started before this module's first test, its two jobs held: one to reach its time
    limit (timeout_min=1), one (its limit raised to 10 minutes) whose node goes DOWN after that.
    The other tests run while SLURM lets the minute pass; test_a_job_past_its_time_limit_then_a_node_down,
    the module's last, checks it."""
    sweep = Sweep(tmp_path_factory.mktemp("background"), store=empty_store)
    (sweep.root / "hold-limit").touch()
    (sweep.root / "hold-node").write_text("scontrol update jobid=$SLURM_JOB_ID timelimit=10\n")
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5"]
    # n_trials=3: the slot whose job timed out asks once more and runs the retry while the other job is held.
    worker = start_worker(sweep, slurm_cluster, 3, "hydra.sweeper.n_jobs=2", *limit)
    yield sweep, worker
    if worker.poll() is None:
        worker.kill()


def test_a_job_cancelled_for_good_and_a_controller_restarted(
    tmp_path: Path, slurm_cluster: dict, empty_store: Path
) -> None:
    """Two jobs held at once: one cancelled for good (scancel: SIGTERM, ignored, then SIGKILL after
    KillWait), one held while slurmctld restarts, then released: it completes."""
    sweep = Sweep(tmp_path, store=empty_store)
    worker = start_worker(sweep, slurm_cluster, 2, "hydra.sweeper.n_jobs=2")
    jobs = holding(tmp_path, ["cancel", "restart"])
    cancelled_at = datetime.datetime.now()
    slurm(slurm_cluster, "scancel", jobs["cancel"])
    restart_controller(slurm_cluster)
    down = (datetime.datetime.now() - cancelled_at).total_seconds()  # nothing is seen while slurmctld is down
    (tmp_path / f"taken-hold-restart.{jobs['restart']}").unlink()  # released: it trains and completes
    finished(worker, sweep)
    trials = sweep.study_trials()
    cancel = trial_of_job(trials, jobs["cancel"])
    check_faulted(sweep, {cancel.number: f"JobLost: SLURM job {jobs['cancel']} ended CANCELLED without a result"})
    assert trial_of_job(trials, jobs["restart"]).state.name == "COMPLETE"
    assert job_state(slurm_cluster, jobs["cancel"]) == "CANCELLED"
    ended_within(cancel, cancelled_at, down + KILL_WAIT + NOTICED + SLACK)


def test_a_worker_killed_while_its_job_runs(tmp_path: Path, slurm_cluster: dict, empty_store: Path) -> None:
    """The worker SIGKILLed while its job runs: the next worker of the study finds the trial dead
    (no heartbeat for grace_period), cancels its job, ends its run KILLED and runs it again."""
    sweep = Sweep(tmp_path, store=empty_store)
    first = start_worker(sweep, slurm_cluster, 1, name="first")
    jobs = holding(tmp_path, ["killed"])
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The trial is dead (no heartbeat for grace_period) before the second worker asks: it runs the retry only.
    time.sleep(GRACE + 1)  # + 1: SQLite's clock, which dates the heartbeats, counts whole seconds
    second = start_worker(sweep, slurm_cluster, 1, name="second")
    finished(second, sweep, name="second")
    trials = sweep.study_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.params == trials[0].params
    assert job_state(slurm_cluster, jobs["killed"]) == "CANCELLED"  # its result would be read by nobody
    runs = {r.info.run_id: r for r in sweep.runs("child")}
    assert [runs[t.user_attrs[protocol.ATTR_RUN_ID]].info.status for t in trials] == ["KILLED", "FINISHED"]
    (parent,) = sweep.runs("parent")
    assert parent.info.status == "FINISHED"


def test_a_worker_stopped_by_sigterm_cancels_its_jobs(tmp_path: Path, slurm_cluster: dict, empty_store: Path) -> None:
    """SIGTERM (or Ctrl-C) while two jobs run: both are cancelled on the worker's way out, its trials
    FAIL "interrupted", their runs and the parent KILLED."""
    sweep = Sweep(tmp_path, store=empty_store)
    worker = start_worker(sweep, slurm_cluster, 2, "hydra.sweeper.n_jobs=2")
    jobs = holding(tmp_path, ["a", "b"])
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 143
    assert {job_state(slurm_cluster, j) for j in jobs.values()} <= {"COMPLETING", "CANCELLED"}
    trials = sweep.study_trials()
    assert [(t.state.name, t.user_attrs[protocol.ATTR_FAILURE]) for t in trials] == [("FAIL", "interrupted")] * 2
    assert [r.info.status for r in sweep.runs("child") + sweep.runs("parent")] == ["KILLED"] * 3


def test_a_job_sbatch_refuses_stops_the_sweep_in_one_line(
    tmp_path: Path, slurm_cluster: dict, empty_store: Path
) -> None:
    """hydra/launcher=slurm asks for a GPU; this cluster has none: one line naming it, exit 2, and
    neither the trial nor the parent run is left RUNNING."""
    sweep = Sweep(tmp_path, store=empty_store)
    args = sweep.args(1, "hydra/launcher=slurm", "hydra.launcher.mem_gb=1")
    done = forked.run(ROOT / "train.py", args, cwd=tmp_path, env=env_of(slurm_cluster), timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # stderr holds that line only
    assert line.startswith("error: sbatch refused the trial's job: Invalid generic resource (gres) specification")
    assert "hydra.launcher.gpus_per_node=1" in line and "hydra/launcher=slurm_cpu" in line
    (trial,) = sweep.study_trials()
    assert trial.state.name == "FAIL" and "Invalid generic resource" in trial.user_attrs[protocol.ATTR_FAILURE]
    assert [r.info.status for r in sweep.runs("child")] == ["FAILED"]
    assert [r.info.status for r in sweep.runs("parent")] == ["FAILED"]


def test_a_job_that_can_never_start_is_cancelled_in_one_line(
    tmp_path: Path, slurm_cluster: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More CPUs than any node has: SLURM queues the job (PartitionConfig) rather than refusing it;
    the launcher's first look at it cancels it and says so in one line."""
    import submitit

    from mlp.sweep import slurm as watch

    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    monkeypatch.setattr(watch.QUEUE, "period", POLL)
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    asked = {"cpus_per_task": 64, "timeout_min": 5}
    executor.update_parameters(cpus_per_task=64, timeout_min=5, mem_gb=1)
    job = watch.submit(executor, print, ("never",), asked)
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"^SLURM cannot ever start job {job.job_id} \(PartitionConfig\): "
                       r"it asked for hydra.launcher.gpus_per_node=null, cpus_per_task=64, "):  # fmt: skip
        watch.outcome(job, [], asked, RESULT_WAIT, max_retry=1)
    assert time.monotonic() - start <= 2 * POLL + SLACK
    deadline = time.monotonic() + 10
    while job_state(slurm_cluster, job.job_id) != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_state(slurm_cluster, job.job_id) == "CANCELLED"


def test_a_job_past_its_time_limit_then_a_node_down(background: tuple, slurm_cluster: dict) -> None:
    """The module's background sweep (its fixture): the job left to its time limit ends TIMEOUT a
    minute (and SLURM's check, every 30 s) after it began (squeue's start time: its trial was asked
    earlier); once its retry has completed, the node is set DOWN under the other: it ends NODE_FAIL
    at once (slurm.yaml asks for no requeue), its retry waits for the node, which comes back. Both
    trials fail, both retries complete."""
    sweep, worker = background
    until(lambda: len(taken(sweep.root)) == 2, 120)  # taken long ago, unless this test runs alone
    jobs = taken(sweep.root)
    until(lambda: trial_of_job(sweep.study_trials(), jobs["limit"]).state.name == "FAIL", 150)
    began = datetime.datetime.fromisoformat(job_state(slurm_cluster, jobs["limit"], "%S"))  # its limit counts from here
    until(lambda: [t.state.name for t in sweep.study_trials() if "failed_trial" in t.system_attrs] == ["COMPLETE"], 120)
    down_at = datetime.datetime.now()
    slurm(slurm_cluster, "scontrol", "update", "nodename=mlp1", "state=down", "reason=test")
    try:
        until(lambda: trial_of_job(sweep.study_trials(), jobs["node"]).state.name == "FAIL", 30)
        time.sleep(2 * POLL)  # the retry is submitted and waits for the node
    finally:
        slurm(slurm_cluster, "scontrol", "update", "nodename=mlp1", "state=resume")
    log = finished(worker, sweep)
    trials = sweep.study_trials()
    limit, node = trial_of_job(trials, jobs["limit"]), trial_of_job(trials, jobs["node"])
    check_faulted(sweep, {
        limit.number: f"JobLost: SLURM job {jobs['limit']} ended TIMEOUT (TimeLimit) without a result",
        node.number: f"JobLost: SLURM job {jobs['node']} ended NODE_FAIL (NodeDown) without a result",
    })  # fmt: skip
    took = ended_within(limit, began, TIME_LIMIT + 30 + KILL_WAIT + NOTICED + SLACK)
    assert took >= TIME_LIMIT
    ended_within(node, down_at, NOTICED + SLACK)
    assert re.search(r"SLURM job \d+ waits: (ReqNodeNotAvail|Nodes required for job are DOWN)", log)
