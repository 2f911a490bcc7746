"""Shared fixtures and hooks: configs composed with Hydra's compose API, tiny synthetic data,
MLflow in a temporary SQLite file, CPU only; the session's champion trained on the real MNIST
(the tests that use it, or digit_photos or web_app, are marked slow). The helpers the tests
import (ROOT, TINY, compose_cfg, run_train, Sweep, ...) are in tests/helpers.py."""

from __future__ import annotations

import logging
import os
import runpy
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from mlp.sweep import protocol
from tests.helpers import ROOT, TINY, compose_cfg, seed_store, subprocess_env


@pytest.fixture
def mlruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh tracking folder; MLflow is never pointed at the user's own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "mlruns"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store as MLflow itself creates it (its tables migrated: 1.5 s), made once
    per test process for the tests that only log to a store (``seeded_store``)."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def seeded_store(mlruns: Path, empty_store: Path) -> Path:
    """``mlruns`` holding a copy of that store: for tests of what a run logs, not of how a store
    is made (the tests that start from nothing, and every command-line test, still make it)."""
    return seed_store(mlruns, empty_store)


@pytest.fixture
def tiny_cfg(mlruns: Path):
    """Compose the tiny config with any extra overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg([*TINY, f"tracking.dir={mlruns}", *overrides])

    return make


@pytest.fixture
def train_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``python train.py ARGS`` in this process, from ``tmp_path``, outputs and runs there (later
    arguments win): (exit status, stdout, stderr lines). What a subprocess would show, without its
    seconds of imports; the signal handler and the environment that the command line sets are put
    back afterwards (Hydra clears its own state as the command ends)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def call(*args: str) -> tuple[int, str, list[str]]:
        argv = ["train.py", f"hydra.run.dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", *args]
        monkeypatch.setattr(sys, "argv", argv)
        handler, raising = signal.getsignal(signal.SIGTERM), logging.raiseExceptions
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            signal.signal(signal.SIGTERM, handler)
            logging.raiseExceptions = raising
            for name in ("HYDRA_FULL_ERROR", protocol.ENV_WORKER):  # set by run_cli, and by a sweep for its jobs
                monkeypatch.delenv(name, raising=False)
        out = capsys.readouterr()
        return code, out.out, out.err.strip().splitlines()

    return call


@pytest.fixture(scope="session")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small network trained on the real MNIST (2x256, 2 epochs: seconds) and registered as
    models:/mnist-mlp@champion in a store of its own; what predict.py, the web app and the
    browser tests read. Keys: tracking_uri, result (the RunResult), env (for subprocesses)."""
    from mlp.run.experiment import run

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

    from mlp.run import data
    from mlp.serve import images
    from mlp.serve.recognizer import DEFAULT_URI, Recognizer

    folder = tmp_path_factory.mktemp("photos")
    _, _, test_x, test_y = data.read_mnist(ROOT / "data")
    recognizer = Recognizer(DEFAULT_URI, champion["tracking_uri"])
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
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real PostgreSQL (a cluster of Debian's postgresql-common) and `mlflow server` on it, as
    `make services` starts them (scripts/services.py), on free ports; deleted at the end."""
    from scripts import services  # only for the tests that start the servers
    from tests.web import free_port

    if not shutil.which("pg_ctlcluster") and (os.geteuid() != 0 or not shutil.which("apt-get")):
        pytest.skip("no PostgreSQL server: apt-get install postgresql (as root the tests install it)")
    folder = tmp_path_factory.mktemp("services")
    try:
        # A free port of its own: two test runs at once would otherwise both take Debian's next one.
        yield services.start(folder, mlflow_port=0, workers=1, pg_port=free_port())
    finally:
        services.stop(folder, purge=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real one-node SLURM cluster (scripts/cluster.py, tests/slurm.py), for the session: SLURM_CONF, folder."""
    from tests.slurm import running_cluster  # only for the tests that start the cluster

    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def web_app(champion: dict) -> Iterator[str]:
    """The web app (`python -m mlp.serve`, as `make serve` starts it) serving the champion; its URL."""
    from tests.web import running_app

    with running_app(champion["env"]) as url:
        yield url


# Session fixtures made once per worker, by group: the SLURM tests of the shared sweep use both servers and cluster.
SHARED = {"champion": "champion", "services": "servers", "slurm_cluster": "servers"}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test` runs workers with --dist loadgroup) a test goes to whichever
    worker is free, except where a fixture is made once per worker: the tests that read the
    session's champion model all run on one worker (trained once), so do those of the PostgreSQL
    server and mlflow server (``services``) and of the SLURM cluster (both started once), and a
    module's tests where it has a module fixture. Groups start first, then the other slow tests,
    so that nothing long starts last while the other workers are idle."""
    rank = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        defs = getattr(item, "_fixtureinfo", None)
        scoped = defs is not None and any(d[-1].scope == "module" for d in defs.name2fixturedefs.values())
        group = next((g for n, g in SHARED.items() if n in names), item.module.__name__ if scoped else None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        rank[item] = 0 if group else 1 if item.get_closest_marker("slow") else 2
    items.sort(key=rank.__getitem__)  # stable: a module's tests keep their order
