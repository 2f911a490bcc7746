"""Shared fixtures: configs composed with Hydra's compose API, tiny synthetic data, MLflow
in a temporary SQLite file, CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
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


class Sweep:
    """One temporary sweep set-up: storage, tracking store, sweep dir and winner file."""

    def __init__(self, root: Path, study: str = "test"):
        self.root, self.study = root, study
        self.storage = f"sqlite:///{root}/optuna.db"
        self.mlruns = root / "mlruns"
        self.best = root / "conf" / "model" / f"best_{study}.yaml"

    def args(self, n_trials: int, *extra: str) -> list[str]:
        epochs = [] if any(e.startswith("trainer.epochs=") for e in extra) else ["trainer.epochs=1"]
        return [
            "-m", "hydra/sweeper=optuna", "data=synthetic", *epochs, "trainer.batch_size=64",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={self.study}",
            f"hydra.sweeper.storage={self.storage}", f"hydra.sweeper.best_config={self.best}",
            f"tracking.dir={self.mlruns}", f"hydra.sweep.dir={self.root}/multirun", *extra,
        ]  # fmt: skip

    def run(self, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
        done = run_train(*self.args(n_trials, *extra), cwd=self.root)
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
        return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args, "--storage", self.storage],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.fixture(scope="session")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small network trained on the real MNIST (2x256, 2 epochs: seconds) and registered as
    models:/mnist-mlp@champion in a store of its own; what predict.py, the web app and the
    browser tests read. Keys: tracking_uri, result (the RunResult), env (for subprocesses)."""
    from mlp.experiment import run

    mlruns = tmp_path_factory.mktemp("champion") / "mlruns"
    overrides = ["model.num_layers=2", "model.layer_size=256", "trainer.epochs=2", "trainer.device=cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = compose_cfg([*overrides, "trainer.progress=false", f"tracking.dir={mlruns}", "tracking.register=true"])
        result = run(cfg)
    uri = result.tracking_uri  # (MLflow itself sets $MLFLOW_TRACKING_URI in-process: not a guide afterwards)
    return {"tracking_uri": uri, "result": result, "env": subprocess_env(MLFLOW_TRACKING_URI=uri)}


@pytest.fixture(scope="session")
def digit_photos(champion: dict, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """Photo-like files of MNIST test digits (dark on light, JPEG/PNG/WebP) that the champion
    reads correctly, one of each of the digits 0-9: (path, label)."""
    import io

    import numpy as np
    from PIL import Image

    from mlp import data, images, registry

    folder = tmp_path_factory.mktemp("photos")
    _, _, test_x, test_y = data.read_mnist(ROOT / "data")
    recognizer = registry.Recognizer(registry.DEFAULT_URI, champion["tracking_uri"])
    rng = np.random.default_rng(0)
    found: dict[int, Path] = {}
    for i, (digit, label) in enumerate(zip(test_x.numpy()[:200], test_y[:200].tolist(), strict=True)):
        if label in found:
            continue
        fmt = ("JPEG", "PNG", "WEBP")[len(found) % 3]
        path = folder / f"test{i:04d}-digit{label}.{fmt.lower()}"
        Image.open(io.BytesIO(images.photo_like(digit, rng))).save(path, fmt)
        if recognizer.predict(images.load_digit(path)[None])[0].argmax() == label:
            found[label] = path
    return [(found[k], k) for k in sorted(found)]


@pytest.fixture(scope="session")
def web_app(champion: dict) -> Iterator[str]:
    """The web app (`python -m mlp.serve`, as `make serve` starts it) serving the champion; its URL."""
    from tests.web import running_app

    with running_app(champion["env"]) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test` runs two workers, --dist loadgroup), each module runs on
    one worker, so its module fixtures are made once, and the tests that read the session's
    champion model all run on the same worker, so it is trained once."""
    for item in items:
        group = "champion" if "champion" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
