"""Helpers the tests import (not a test file, not fixtures: those are in conftest.py). Use:

from tests.helpers import ROOT, CONF, TINY, compose_cfg, run_train, subprocess_env, Sweep, seed_store, run_sweep_py
from tests.helpers import winner_of

ROOT, CONF                      # the repository, its conf/ folder (a str, as Hydra takes it)
TINY                            # overrides of a tiny, quick run: synthetic data, 2 epochs, CPU
compose_cfg(overrides)          # the config composed with Hydra's compose API
subprocess_env(**extra)         # the environment of a command a user types
run_train(*args, cwd=, env=)    # ``python train.py ARGS`` in a subprocess
Sweep(tmp_path, study, store)   # one temporary sweep set-up: storage, tracking store, sweep dir, winner file
seed_store(mlruns, empty_store)  # a copy of an empty MLflow store (conftest's empty_store) in mlruns/
run_sweep_py(capsys, *args)     # ``python sweep.py ARGS`` in process: (exit status, stdout, stderr)
winner_of(path)                 # (study, trial) that a winner file holds, or None

A process of its own (to kill, or to run beside others) that starts with torch, MLflow, Hydra and
Optuna already imported: tests/forked.py (``forked.run``, ``forked.start``; Sweep.run uses it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

import mlp.run.config  # noqa: F401 - registers the schema
import sweep as sweep_py
from mlp.run.winner_files import winner_record
from tests import forked

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")

# Tiny and quick: 600 synthetic images, 2 epochs, CPU, no progress bar.
TINY = ["data=synthetic", "trainer.epochs=2", "trainer.batch_size=64", "trainer.device=cpu", "trainer.progress=false"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF):
        return compose(config_name="config", overrides=overrides)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a command a user types: no tracking URI or Hydra flags of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return {**env, **extra}


def run_train(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=subprocess_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


class Sweep:
    """One temporary sweep set-up: storage, tracking store, sweep dir and winner file; the tracking
    store a copy of ``store`` when given (conftest's ``empty_store``: where how a store is made is
    not the point, 1.3 s of a sweep's CPU)."""

    def __init__(self, root: Path, study: str = "test", store: Path | None = None):
        self.root, self.study = root, study
        self.storage = f"sqlite:///{root}/optuna.db"
        self.mlruns = root / "mlruns"
        self.best = root / "conf" / "model" / f"best_{study}.yaml"
        if store is not None:
            seed_store(self.mlruns, store)

    def args(self, n_trials: int, *extra: str) -> list[str]:
        epochs = [] if any(e.startswith("trainer.epochs=") for e in extra) else ["trainer.epochs=1"]
        return [
            "-m", "hydra/sweeper=optuna", "data=synthetic", *epochs, "trainer.batch_size=64",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={self.study}",
            f"hydra.sweeper.storage={self.storage}", f"hydra.sweeper.best_config={self.best}",
            f"tracking.dir={self.mlruns}", f"hydra.sweep.dir={self.root}/multirun", *extra,
        ]  # fmt: skip

    def run(self, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
        """The sweep, a process of its own (tests/forked.py: its libraries already imported)."""
        done = forked.run(ROOT / "train.py", self.args(n_trials, *extra), cwd=self.root, env=subprocess_env())
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def study_trials(self) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=self.study, storage=self.storage).trials

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.mlruns}/mlflow.db")

    def runs(self, role: str) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("mnist-mlp")
        runs = client.search_runs([experiment.experiment_id])
        return [r for r in runs if ("mlflow.parentRunId" in r.data.tags) == (role == "child")]

    def sweep_py(self, *args: str) -> subprocess.CompletedProcess:
        env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{self.mlruns}/mlflow.db")
        return forked.run(ROOT / "sweep.py", [*args, "--storage", self.storage], cwd=Path.cwd(), env=env, timeout=120)


def seed_store(mlruns: Path, empty_store: Path) -> Path:
    """A copy of an empty MLflow store (conftest's ``empty_store``) as ``mlruns``/mlflow.db."""
    mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, mlruns / "mlflow.db")
    return mlruns


def run_sweep_py(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``python sweep.py ARGS`` in process: (exit status, stdout, stderr)."""
    capsys.readouterr()  # what came before (MLflow's notes as a store is made) is not the command's
    try:
        sweep_py.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def winner_of(path: Path) -> tuple[str, int] | None:
    """(study, trial) that a winner file's ``# winner:`` line says it holds, or None."""
    record = winner_record(path)
    return None if record is None else (record.study, record.trial)
