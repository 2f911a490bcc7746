"""Trials in flight: with ``hydra.sweeper.n_jobs=2`` and a parallel launcher, a slot asks for its
next trial as soon as its own has ended, never waiting for the other slot's trial; SIGTERM ends
the trials in flight, their runs and the parent KILLED, and stops their jobs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from mlp import processes
from tests.helpers import ROOT, Sweep, run_train, subprocess_env

pytestmark = pytest.mark.slow
LONG = 1  # the long trial's number


def one_long_trial(cfg: object, trial: optuna.trial.Trial) -> None:
    """A custom_search_space: trial 1 takes one image per step (3000 steps), the others one batch
    per epoch: the other slot ends trial 0 long before trial 1 ends."""
    size = 1 if trial.number == LONG else 512
    trial.suggest_int("trainer.batch_size", size, size)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_slot_takes_its_next_trial_while_the_other_still_runs(tmp_path: Path, launcher: str) -> None:
    sweep = Sweep(tmp_path, study="async")
    args = sweep.args(
        4, "trainer.epochs=6", "hydra/sweeper/pruner=none", f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.custom_search_space=tests.test_async_trials.one_long_trial",
    )  # fmt: skip
    done = run_train(*[a for a in args if not a.startswith("trainer.batch_size=")], cwd=tmp_path)  # searched here
    assert done.returncode == 0, done.stderr[-3000:]
    trials = sweep.study_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    long = trials[LONG]
    # In batches of two, trial 2 would start once trials 0 and 1 had both ended.
    started = [t.number for t in trials if long.datetime_start < t.datetime_start < long.datetime_complete]
    assert started[:1] == [2], [(t.number, t.datetime_start, t.datetime_complete) for t in trials]
    assert len({t.user_attrs["worker"] for t in trials}) == 1  # one worker did it all
    assert [t.params["trainer.batch_size"] for t in trials].count(1) == 1


def test_sigterm_ends_the_trials_in_flight_and_stops_their_jobs(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, study="stopped")
    args = sweep.args(
        4, "trainer.epochs=300", "hydra/sweeper/pruner=none", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"
    )
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((tmp_path / "multirun" / n / ".hydra").exists() for n in "01"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(3.0)  # both jobs into their epochs
    jobs = processes.job_processes(proc.pid)
    assert jobs
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: stopped by SIGTERM; the MLflow run(s) it had open ended KILLED"
    assert not [p for p in jobs if processes.running(p)]  # no job left training
    trials = sweep.study_trials()
    assert [(t.state.name, t.user_attrs["failure_reason"]) for t in trials] == [("FAIL", "interrupted")] * 2
    assert sorted(r.info.status for r in sweep.runs("child")) == ["KILLED"] * 2
    (parent,) = sweep.runs("parent")
    assert parent.info.status == "KILLED"
