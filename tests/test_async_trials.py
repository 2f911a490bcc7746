"""Trials in flight in real processes: with ``hydra.sweeper.n_jobs=2`` and joblib's launcher,
SIGTERM to the worker ends the trials in flight, their runs and the parent KILLED, and stops
their jobs (the worker's logic in process: tests/test_worker.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mlp import processes
from tests import forked
from tests.helpers import ROOT, Sweep, subprocess_env

pytestmark = pytest.mark.slow


def test_sigterm_ends_the_trials_in_flight_and_stops_their_jobs(tmp_path: Path, empty_store: Path) -> None:
    sweep = Sweep(tmp_path, "stopped", empty_store)
    args = sweep.args(
        4, "trainer.epochs=300", "hydra/sweeper/pruner=none", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"
    )
    proc = forked.start(ROOT / "train.py", args, cwd=tmp_path, env=subprocess_env())
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
