"""Shared fixtures: configs composed with Hydra's compose API, tiny synthetic data, MLflow
in a temporary SQLite file, CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import mlp.config  # noqa: F401 - registers the schema

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")

# Tiny and quick: 600 synthetic images, 2 epochs, CPU, no progress bar.
TINY = ["data=synthetic", "trainer.epochs=2", "trainer.batch_size=64", "trainer.device=cpu", "trainer.progress=false"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def mlruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh tracking folder; MLflow is never pointed at the user's own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "mlruns"


@pytest.fixture
def tiny_cfg(mlruns: Path):
    """Compose the tiny config with any extra overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg([*TINY, f"tracking.dir={mlruns}", *overrides])

    return make


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
